"""The event contract on plain data: envelope, codec, registry and upcasting, subjects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from pydantic import ValidationError

from gridloop_events.catalogue import CaseClosed, CaseReported, Location
from gridloop_events.codec import CodecError, decode, default_registry, encode
from gridloop_events.envelope import Actor, derived_event_id, new_event_id
from gridloop_events.subjects import Subjects, partition_of
from gridloop_events.testing import T0, ClosedV2, closed_v2_registry, dispatched, reported
from gridloop_events.vocabulary import Outcome, Tier


def test_event_ids_are_uuid7_and_time_ordered() -> None:
    a = new_event_id(T0)
    b = new_event_id(T0 + timedelta(milliseconds=5))
    assert a.version == 7 and b.version == 7
    assert str(a) < str(b)


def test_derived_ids_are_stable_and_distinct_by_purpose() -> None:
    cause = new_event_id(T0)
    assert derived_event_id(cause, "dispatch") == derived_event_id(cause, "dispatch")
    assert derived_event_id(cause, "dispatch") != derived_event_id(cause, "escalate")
    assert derived_event_id(cause, "dispatch", 0) != derived_event_id(cause, "dispatch", 1)
    assert derived_event_id(cause, "x").version == 7


def test_serialisation_is_deterministic_and_round_trips() -> None:
    event = reported()
    data = encode(event)
    assert encode(decode(data)) == data
    assert json.loads(data)["event_type"] == "CaseReported"
    assert list(json.loads(data)) == sorted(json.loads(data))


def test_caused_events_are_byte_identical_on_retry() -> None:
    r = reported()
    assert encode(dispatched(r)) == encode(dispatched(r))
    assert dispatched(r).correlation_id == r.correlation_id
    assert dispatched(r).causation_id == str(r.event_id)


def test_envelope_is_frozen_and_times_are_utc() -> None:
    plus8 = timezone(timedelta(hours=8))
    event = reported(at=datetime(2026, 11, 23, 16, 0, tzinfo=plus8))
    assert event.occurred_at.tzinfo == UTC and event.occurred_at.hour == 8
    with pytest.raises(ValidationError):
        event.case_id = "other"  # type: ignore[misc]


def test_naive_times_and_bad_tokens_are_refused() -> None:
    with pytest.raises(ValidationError):
        reported(at=datetime(2026, 1, 1))  # naive
    with pytest.raises(ValidationError):
        reported(case_id="a.b>")  # would inject into the subject


def test_payload_validation_names_the_problem() -> None:
    with pytest.raises(ValidationError, match="duplicate_of"):
        CaseClosed(outcome=Outcome.duplicate, resolution="same as another", closed_by="x")
    with pytest.raises(ValidationError, match="lat and lon"):
        Location(lat=36.6)


def test_decode_rejects_garbage_with_a_reason() -> None:
    with pytest.raises(CodecError, match="not JSON"):
        decode(b"\xff\x00")
    with pytest.raises(CodecError, match="unknown event type"):
        decode(json.dumps({"event_type": "Nope", "schema_version": 1, "payload": {}}).encode())
    raw = json.loads(encode(reported()))
    raw["payload"]["channel"] = "carrier-pigeon"
    with pytest.raises(CodecError, match="channel"):
        decode(json.dumps(raw).encode())
    raw = json.loads(encode(reported()))
    raw["schema_version"] = 99
    with pytest.raises(CodecError, match="newer"):
        decode(json.dumps(raw).encode())


def test_v1_event_is_read_as_v2_through_the_upcaster() -> None:
    r = reported()
    v1 = r.caused(
        CaseClosed(outcome=Outcome.resolved, resolution="已清理楼道", closed_by="gw-1"),
        actor=Actor.system("t"),
        purpose="close",
    )
    event = decode(encode(v1), closed_v2_registry())
    assert event.schema_version == 2
    assert isinstance(event.payload, ClosedV2)
    assert event.payload.details == "已清理楼道"
    assert event.event_id == v1.event_id


def test_missing_upcaster_is_an_error_not_a_guess() -> None:
    registry = default_registry()
    registry._classes["CaseClosed"] = ClosedV2
    v1 = reported().caused(
        CaseClosed(outcome=Outcome.resolved, resolution="x", closed_by="gw"),
        actor=Actor.system("t"),
        purpose="close",
    )
    with pytest.raises(CodecError, match="no upcaster"):
        decode(encode(v1), registry)


def test_registry_refuses_two_classes_for_one_name() -> None:
    registry = default_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ClosedV2)


def test_subject_scheme_filters_by_district_type_and_case() -> None:
    s = Subjects("gridloop")
    p = s.partition("c-1")
    assert 0 <= p < 16 and p == partition_of("c-1")  # stable: a hash, not Python's hash()
    subject = s.event("370105", "c-1", "CaseReported")
    assert subject == f"gridloop.case.370105.{p:02d}.c-1.CaseReported"
    assert s.parse(subject) == ("370105", "c-1", "CaseReported")
    assert s.partition_of_subject(subject) == p
    assert s.district("370105") == "gridloop.case.370105.>"
    assert s.of_type("CaseClosed") == "gridloop.case.*.*.*.CaseClosed"
    assert s.case("c-1") == f"gridloop.case.*.{p:02d}.c-1.*"
    assert s.of_partition(3) == "gridloop.case.*.03.>"
    assert s.stream_name == "GRIDLOOP_CASES"
    with pytest.raises(ValueError):
        s.parse("other.case.x.y.z")
    # Cases spread over the partitions.
    assert len({s.partition(f"case-{i}") for i in range(200)}) == 16


def test_partition_shares_for_instances() -> None:
    from gridloop_events.service import parse_partitions

    assert parse_partitions(None, None) is None
    assert parse_partitions("0-3,8", None) == [0, 1, 2, 3, 8]
    assert parse_partitions(None, "1/4") == [1, 5, 9, 13]
    shares = [set(parse_partitions(None, f"{i}/3") or []) for i in range(3)]
    assert set().union(*shares) == set(range(16)) and sum(map(len, shares)) == 16
    with pytest.raises(ValueError):
        parse_partitions(None, "3/3")


def test_an_instance_share_absorbs_the_other_shares_unless_told_not_to() -> None:
    from gridloop_events.service import spare_partitions

    assert spare_partitions("1/4", "1") == [p for p in range(16) if p % 4 != 1]
    assert spare_partitions("1/4", "0") == [] and spare_partitions("1/4", "off") == []
    assert spare_partitions(None, "1") == []  # one instance owns everything already


def test_personal_fields_are_declared_on_the_payload() -> None:
    assert CaseReported.personal_fields == frozenset({"reporter"})
    assert isinstance(reported().event_id, UUID)


def test_dispatch_builder_uses_tier_vocabulary() -> None:
    assert dispatched(reported()).payload.tier is Tier.grid
    assert Tier.grid.next() is Tier.community and Tier.district.next() is None
