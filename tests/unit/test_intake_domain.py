"""Intake's rules on plain data: given a report (and the district), then a payload or a refusal;
given events, then a timeline that carries no personal data."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import timedelta

import pytest
from gridloop_district import District, default_district
from gridloop_events.catalogue import (
    AttachmentRef,
    CallbackRated,
    CaseReturned,
    DeadlineMissed,
    ProgressNoted,
    ReporterContact,
)
from gridloop_events.codec import encode
from gridloop_events.envelope import Actor, Envelope
from gridloop_events.http import DomainError
from gridloop_events.lifecycle import fold
from gridloop_events.testing import T0, accepted, closed, dispatched, reported, stored
from gridloop_events.vocabulary import CallbackMethod, Channel, DeadlineKind, Rating, Severity

from gridloop_intake.domain.commands import ReportCase, ReportRejected
from gridloop_intake.domain.idempotency import (
    body_digest,
    check_key,
    key_digest,
    keyed_ids,
    settle_retry,
)
from gridloop_intake.domain.listing import MAX_LIMIT, Cursor, parse_case_query
from gridloop_intake.domain.location import resolve_location
from gridloop_intake.domain.parsing import parse_report
from gridloop_intake.domain.reference import categories_doc, grids_geojson
from gridloop_intake.domain.register import event_columns, overdue_since, state_columns
from gridloop_intake.domain.report import prepare_report, reporter_contact
from gridloop_intake.domain.timeline import case_view_from_history, summarize
from gridloop_intake.domain.views import CaseView

NAME, PHONE, ID_NUMBER, NOTE = "李四", "13912345678", "370102199001011234", "下午五点后在家"


@pytest.fixture(scope="module")
def district() -> District:
    return default_district()


@pytest.fixture(scope="module")
def grid(district: District):  # type: ignore[no-untyped-def]
    return district.grids[0]


def report(grid_code: str | None = None, **changes: object) -> ReportCase:
    base = ReportCase(
        channel=Channel.hotline,
        category_code="CM-0101",
        description="小区门口垃圾三天没人清运",
        grid_code=grid_code,
        address=None if grid_code else "泉平街道某小区3号楼",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def rejected(fn, *args, **kwargs) -> ReportRejected:  # type: ignore[no-untyped-def]
    with pytest.raises(ReportRejected) as info:
        fn(*args, **kwargs)
    return info.value


# --- location ------------------------------------------------------------------------------


def test_a_grid_code_resolves_to_its_full_path(district: District, grid) -> None:  # type: ignore[no-untyped-def]
    loc = resolve_location(district, grid.code, None, None, None)
    assert loc.grid_path is not None
    assert loc.grid_path.grid == grid.code
    assert loc.grid_path.district == district.code
    assert loc.grid_path.community == district.community_of(grid.code).code
    assert loc.grid_path.street == district.street_of(grid.code).code


def test_coordinates_resolve_to_the_grid_that_holds_them(district: District, grid) -> None:  # type: ignore[no-untyped-def]
    loc = resolve_location(district, None, grid.lat, grid.lon, None)
    assert loc.grid_path is not None and loc.grid_path.grid == grid.code
    assert (loc.lat, loc.lon) == (grid.lat, grid.lon)


def test_a_named_grid_outranks_the_point(district: District, grid) -> None:  # type: ignore[no-untyped-def]
    other = district.grids[5]
    loc = resolve_location(district, other.code, grid.lat, grid.lon, None)
    assert loc.grid_path is not None and loc.grid_path.grid == other.code


def test_an_address_alone_leaves_the_case_without_a_grid(district: District) -> None:
    loc = resolve_location(district, None, None, None, "  泉平街道某小区  ")
    assert loc.grid_path is None and loc.address == "泉平街道某小区"


@pytest.mark.parametrize(
    ("grid_code", "lat", "lon", "address", "field"),
    [
        ("370190999999999", None, None, None, "location.grid_code"),
        ("nonsense", None, None, None, "location.grid_code"),
        (None, 0.0, 0.0, None, "location"),
        (None, 36.6, None, None, "location.lon"),
        (None, None, 117.0, None, "location.lat"),
        (None, 91.0, 117.0, None, "location.lat"),
        (None, 36.6, -181.0, None, "location.lon"),
        (None, float("nan"), 117.0, None, "location.lat"),
        (None, "36.6", 117.0, None, "location.lat"),
        (None, True, 117.0, None, "location.lat"),
        (None, None, None, None, "location"),
        (None, None, None, "   ", "location"),
        (None, None, None, "x" * 301, "location.address"),
    ],
)
def test_a_place_that_cannot_be_right_is_refused_naming_the_field(
    district: District, grid_code, lat, lon, address, field  # type: ignore[no-untyped-def]
) -> None:
    err = rejected(resolve_location, district, grid_code, lat, lon, address)
    assert err.field == field and err.status == 422 and err.reason


# --- the report ----------------------------------------------------------------------------


def test_a_good_report_becomes_a_case_reported_payload(district: District, grid) -> None:  # type: ignore[no-untyped-def]
    cmd = report(grid.code, description="  垃圾没清运  ", severity=Severity.high,
                 reporter=ReporterContact(name=NAME, phone="+86 139-1234-5678"),
                 attachments=(AttachmentRef(uri="s3://b/1.jpg", media_type="image/jpeg"),),
                 first_contact="op-7")
    p = prepare_report(cmd, district, idempotency_digest="d" * 64)
    assert p.description == "垃圾没清运" and p.severity is Severity.high
    assert p.location.grid_path is not None and p.location.grid_path.grid == grid.code
    # The contact is sealed by the shell with the case's key, never put in the payload here.
    assert p.reporter is None
    assert reporter_contact(cmd) is not None and reporter_contact(cmd).phone == "+86 139-1234-5678"
    assert p.first_contact == "op-7" and p.idempotency_digest == "d" * 64
    assert len(p.attachments) == 1


def test_the_catch_all_category_is_accepted(district: District) -> None:
    assert prepare_report(report(category_code="OTHER"), district).category_code == "OTHER"


def test_a_blank_reporter_is_no_reporter(district: District) -> None:
    p = prepare_report(report(reporter=ReporterContact(name="  ", phone="")), district)
    assert p.reporter is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"category_code": "NOPE-01"}, "category_code"),
        ({"category_code": ""}, "category_code"),
        ({"description": ""}, "description"),
        ({"description": " \n\t "}, "description"),
        ({"description": "a" * 4001}, "description"),
        ({"channel": "fax"}, "channel"),
        ({"severity": "urgent"}, "severity"),
        ({"reporter": ReporterContact(phone="call me")}, "reporter.phone"),
        ({"reporter": ReporterContact(phone="123")}, "reporter.phone"),
        ({"reporter": ReporterContact(phone="1380000000012345678901")}, "reporter.phone"),
        ({"first_contact": "x" * 129}, "first_contact"),
        ({"attachments": tuple(AttachmentRef(uri=f"u{i}") for i in range(21))}, "attachments"),
    ],
)
def test_a_report_that_cannot_be_right_is_refused_naming_the_field(
    district: District, changes, field  # type: ignore[no-untyped-def]
) -> None:
    err = rejected(prepare_report, report(address="某地", **changes), district)
    assert err.field == field and err.status == 422


def test_exactly_4000_characters_of_description_are_accepted(district: District) -> None:
    assert len(prepare_report(report(description="a" * 4000), district).description) == 4000


# --- the native JSON body ------------------------------------------------------------------


def body(**changes: object) -> dict[str, object]:
    return {
        "channel": "wechat",
        "category_code": "CM-0101",
        "description": "垃圾",
        "location": {"lat": 36.63, "lon": 117.0},
        **changes,
    }


def test_a_json_body_parses_into_a_report_command() -> None:
    cmd = parse_report(body(reporter={"name": NAME, "phone": PHONE},
                            attachments=[{"uri": "https://x/1.jpg", "sha256": "AB" * 32}],
                            severity="critical", first_contact=None), "key-1")
    assert cmd.channel is Channel.wechat and cmd.severity is Severity.critical
    assert (cmd.lat, cmd.lon, cmd.grid_code) == (36.63, 117.0, None)
    assert cmd.reporter == ReporterContact(name=NAME, phone=PHONE)
    assert cmd.attachments[0].sha256 == "ab" * 32
    assert cmd.idempotency_key == "key-1" and cmd.first_contact is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([1, 2], "body"),
        ("report", "body"),
        (body(colour="red"), "colour"),
        ({k: v for k, v in body().items() if k != "channel"}, "channel"),
        (body(channel="fax"), "channel"),
        (body(category_code=7), "category_code"),
        ({k: v for k, v in body().items() if k != "description"}, "description"),
        (body(description=["a"]), "description"),
        (body(location=None), "location"),
        (body(location="泉平街道"), "location"),
        (body(location={"lat": "36.6", "lon": 117.0}), "location.lat"),
        (body(location={"lat": 36.6, "lon": False}), "location.lon"),
        (body(location={"grid_code": 370190001001001}), "location.grid_code"),
        (body(location={"street": "x"}), "location.street"),
        (body(severity="urgent"), "severity"),
        (body(reporter="张三"), "reporter"),
        (body(reporter={"phone": 13800000000}), "reporter.phone"),
        (body(reporter={"email": "a@b"}), "reporter.email"),
        (body(reporter={"name": "x" * 101}), "reporter.name"),
        (body(attachments={"uri": "x"}), "attachments"),
        (body(attachments=[{"media_type": "image/png"}]), "attachments[0].uri"),
        (body(attachments=[{"uri": "x", "sha256": "nothex"}]), "attachments[0].sha256"),
    ],
)
def test_a_malformed_body_is_refused_naming_the_field(raw, field) -> None:  # type: ignore[no-untyped-def]
    err = rejected(parse_report, raw)
    assert err.field == field and err.status == 422


# --- idempotency ---------------------------------------------------------------------------


def test_one_key_names_one_case_and_only_its_digest_is_kept(district: District, grid) -> None:  # type: ignore[no-untyped-def]
    key = "client-42:retry-safe"
    a, b = keyed_ids(district.code, key), keyed_ids(district.code, key)
    assert a == b and a.case_id == b.case_id
    assert len(a.digest) == 64 and key not in a.digest
    assert keyed_ids("370105", key).case_id != a.case_id  # scoped to the district
    payload = prepare_report(report(grid.code), district, idempotency_digest=a.digest)
    assert a.event_id(payload) == b.event_id(payload)
    envelope = Envelope.new(payload, case_id=a.case_id, district=district.code,
                            actor=Actor(kind="operator", id="op-1"), correlation_id="c",
                            event_id=a.event_id(payload))
    assert key.encode() not in encode(envelope)
    assert key_digest(district.code, key) == a.digest


def test_a_different_body_under_the_same_key_gets_another_event_id(district: District, grid) -> None:  # type: ignore[no-untyped-def]
    ids = keyed_ids(district.code, "k")
    one = prepare_report(report(grid.code), district, idempotency_digest=ids.digest)
    two = prepare_report(report(grid.code, description="另一件事"), district,
                         idempotency_digest=ids.digest)
    assert body_digest(one) != body_digest(two)
    assert ids.event_id(one) != ids.event_id(two)


def test_a_retry_is_settled_by_comparing_the_stored_report(district: District, grid) -> None:  # type: ignore[no-untyped-def]
    ids = keyed_ids(district.code, "k")
    first = prepare_report(report(grid.code), district, idempotency_digest=ids.digest)
    stored_first = Envelope.new(first, case_id=ids.case_id, district=district.code,
                                actor=Actor(kind="operator", id="op-1"), correlation_id="c1",
                                occurred_at=T0)
    same = prepare_report(report(grid.code), district, idempotency_digest=ids.digest)
    settle_retry(stored_first, same, ids)

    changed = prepare_report(report(grid.code, severity=Severity.high), district,
                             idempotency_digest=ids.digest)
    err = rejected(settle_retry, stored_first, changed, ids)
    assert err.status == 409 and err.field == "Idempotency-Key"

    other_ids = keyed_ids(district.code, "another-key")
    err = rejected(settle_retry, stored_first, same, other_ids)
    assert err.status == 409


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "中文"])
def test_an_unusable_key_is_refused(key: str) -> None:
    err = rejected(check_key, key)
    assert err.field == "Idempotency-Key" and 400 <= err.status < 500


# --- the timeline --------------------------------------------------------------------------


def personal_history():  # type: ignore[no-untyped-def]
    r = reported("c1", reporter=ReporterContact(name=NAME, phone=PHONE, id_number=ID_NUMBER,
                                                 contact_note=NOTE),
                 description=f"{NAME}家门口垃圾，电话{PHONE}")
    d = dispatched(r)
    a = accepted(d)
    note = a.caused(ProgressNoted(unit_code="GT-370105001007012", author_id="gw-1",
                                  note=f"已联系{NAME} {PHONE}"),
                    actor=Actor(kind="grid_worker", id="gw-1"), purpose="note")
    back = note.caused(CaseReturned(unit_code="GT-370105001007012", handler_id="gw-1",
                                    reason=f"{NAME}说不是这里", dispatch_due=T0 + timedelta(hours=1)),
                       actor=Actor(kind="grid_worker", id="gw-1"), purpose="return")
    d2 = dispatched(back, at=T0 + timedelta(minutes=30))
    c = closed(d2)
    rated = c.caused(CallbackRated(rating=Rating.satisfied, handled_lawfully=True,
                                   measures_carried_out=True, party_accepts=True,
                                   method=CallbackMethod.phone, comment=f"{NAME}很满意 {PHONE}",
                                   rated_by="cc-1"),
                     actor=Actor(kind="operator", id="cc-1"), purpose="rate")
    return stored([r, d, a, note, back, d2, c, rated])


def test_timeline_summaries_carry_no_personal_data() -> None:
    history = personal_history()
    for s in history:
        text = summarize(s.envelope)
        assert text
        for secret in (NAME, PHONE, ID_NUMBER, NOTE, "垃圾"):
            assert secret not in text, (s.envelope.event_type, text)


def test_the_view_is_the_fold_with_a_timeline_and_never_the_reporter() -> None:
    history = personal_history()
    view = case_view_from_history(history)
    assert view.status == "done" and view.outcome == "resolved" and view.resolution == "已清理"
    assert view.grid_code == "370105001007012" and view.channel == "hotline"
    assert [e.event_type for e in view.timeline] == [s.envelope.event_type for s in history]
    first, second = view.timeline[0], view.timeline[1]
    assert (first.actor_kind, first.actor_id, first.caused_by) == ("operator", "op-7", None)
    assert second.caused_by == first.event_id and second.sequence == 2
    assert "reporter" not in {f.name for f in fields(CaseView)}
    flat = repr(view)
    for secret in (ID_NUMBER, NOTE):
        assert secret not in flat


def test_summaries_name_what_happened() -> None:
    r = reported("c1")
    d = dispatched(r)
    assert summarize(r).startswith("reported via hotline: category CM-0101")
    assert "grid 370105001007012" in summarize(r)
    assert "dispatched to GT-370105001007012 at grid tier" in summarize(d)
    assert summarize(closed(d)) == "closed as resolved"


# --- the register row ----------------------------------------------------------------------


def test_register_columns_come_from_state_and_event_without_the_reporter() -> None:
    r = reported("c1", reporter=ReporterContact(name=NAME, phone=PHONE))
    d = dispatched(r)
    history = stored([r, d])
    row = state_columns(fold(history))
    assert row["status"] == "dispatched" and row["unit_code"] == "GT-370105001007012"
    assert row["reported_at"] == T0 and row["updated_at"] == T0
    assert row["next_due"] == row["accept_due"] == T0 + timedelta(minutes=1)
    cols = event_columns(history[0])
    assert cols["description"] == r.payload.description and cols["channel"] == "hotline"
    assert NAME not in repr(cols) and PHONE not in repr(cols)
    assert event_columns(history[1]) == {}


def test_overdue_since_follows_missed_and_fresh_deadlines() -> None:
    r = reported("c1")
    d = dispatched(r)
    before = fold(stored([r, d]))
    miss = d.caused(DeadlineMissed(deadline=DeadlineKind.accept, deadline_id=f"accept:{d.event_id}",
                                   due_at=T0 + timedelta(minutes=1),
                                   detected_at=T0 + timedelta(minutes=2), escalation_level=1),
                    actor=Actor.system("escalation"), purpose="miss")
    stale = d.caused(DeadlineMissed(deadline=DeadlineKind.accept, deadline_id="accept:old",
                                    due_at=T0, detected_at=T0, escalation_level=1),
                     actor=Actor.system("escalation"), purpose="stale")
    [s_miss, s_stale] = stored([miss, stale], start=3)
    assert overdue_since(None, s_stale, before) is None
    since = overdue_since(None, s_miss, before)
    assert since == T0 + timedelta(minutes=2)
    assert overdue_since(since, s_miss, before) == since
    redispatch = stored([dispatched(miss, at=T0 + timedelta(minutes=3))], start=4)[0]
    assert overdue_since(since, redispatch, before) is None
    assert overdue_since(since, stored([accepted(d)], start=4)[0], before) == since


# --- the register query --------------------------------------------------------------------


def test_list_filters_parse_into_a_query() -> None:
    q = parse_case_query({"status": "reported,triage", "category": "CM-0101", "grid": "g",
                          "reported_from": "2026-11-23T00:00:00Z", "overdue": "true",
                          "limit": "200"}, T0)
    assert q.statuses == ("reported", "triage") and q.categories == ("CM-0101",)
    assert q.reported_from is not None and q.reported_from.utcoffset() == timedelta(0)
    assert q.overdue is True and q.now == T0 and q.limit == MAX_LIMIT


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "201"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"status": "lost"}, "status"),
        ({"channel": "fax"}, "channel"),
        ({"reported_to": "yesterday"}, "reported_to"),
        ({"reported_from": "2026-11-23T00:00:00"}, "reported_from"),
        ({"overdue": "maybe"}, "overdue"),
        ({"cursor": "!!!"}, "cursor"),
        ({"sort": "oldest"}, "sort"),
        ({"offset": "5", "cursor": Cursor(T0, "c1").encode()}, "offset"),
    ],
)
def test_bad_list_filters_are_refused_naming_the_field(params, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DomainError) as info:
        parse_case_query(params, T0)
    assert info.value.field == field and info.value.status == 422


def test_a_cursor_round_trips() -> None:
    c = Cursor(T0, "0190-abc")
    assert Cursor.decode(c.encode()) == c


# --- reference data ------------------------------------------------------------------------


def test_grids_are_a_feature_collection_with_the_hierarchy(district: District) -> None:
    doc = grids_geojson(district)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(district.grids)
    f = doc["features"][0]
    assert f["geometry"]["type"] == "Polygon"
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring[0]) == 2
    props = f["properties"]
    for key in ("grid_code", "grid_name", "street_code", "street_name", "community_code",
                "community_name", "compound_code", "compound_name"):
        assert props[key]
    assert props["centre"]["type"] == "Point"
    tree = doc["hierarchy"]
    assert tree["code"] == district.code
    assert tree["streets"][0]["communities"][0]["compounds"][0]["grids"][0]["code"] == f["id"]


def test_categories_are_classes_subclasses_items_with_kind_and_limits(district: District) -> None:
    doc = categories_doc(district)
    item = doc["classes"][0]["subclasses"][0]["items"][0]
    assert item["code"] == "CM-0101" and item["kind"] == "general"
    assert set(item["limits"]) == {"accept_seconds", "dispatch_seconds", "resolve_seconds",
                                   "callback_seconds"}
    assert doc["other"]["code"] == "OTHER"
    count = sum(len(s["items"]) for k in doc["classes"] for s in k["subclasses"])
    assert count == len(district.categories) - 1
