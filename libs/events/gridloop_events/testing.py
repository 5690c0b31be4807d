"""Builders of valid events for tests and the simulator: plain data, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import uuid4

from .catalogue import (
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    Deadlines,
    GridPath,
    Location,
    ReporterContact,
    SealedContact,
)
from .codec import Registry, default_registry
from .crypto import DataKey, seal_contact
from .subjects import Subjects
from .envelope import Actor, Envelope, Payload, StoredEvent, new_event_id
from .vocabulary import Channel, Outcome, ProblemKind, Tier

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
DISTRICT = "370105"
PATH = GridPath(
    district=DISTRICT, street="370105001", community="370105001007", grid="370105001007012"
)
RESIDENT = ReporterContact(name="张三", phone="13800000000")
# Tests only: a fixed data key, so built events are reproducible. Intake's keys are random.
TEST_DATA_KEY = bytes(range(32))


def reported(case_id: str | None = None, at: datetime = T0, category: str = "CM-0101",
             reporter: ReporterContact | SealedContact | None = RESIDENT,
             **changes: object) -> Envelope:
    """A CaseReported; a clear `reporter` is sealed with TEST_DATA_KEY, as intake would."""
    case_id = case_id or str(new_event_id(at))
    if isinstance(reporter, ReporterContact):
        reporter = seal_contact(DataKey(case_id, TEST_DATA_KEY), case_id, reporter)
    fields: dict[str, object] = {
        "channel": Channel.hotline,
        "category_code": category,
        "description": "楼道堆放杂物，堵塞消防通道",
        "location": Location(grid_path=PATH, lat=36.65, lon=117.05),
        "reporter": reporter,
        **changes,
    }
    payload = CaseReported(**fields)  # type: ignore[arg-type]
    return Envelope.new(
        payload,
        case_id=case_id,
        district=DISTRICT,
        actor=Actor(kind="operator", id="op-7", role="hotline"),
        correlation_id=str(uuid4()),
        occurred_at=at,
    )


def dispatched(cause: Envelope, unit: str = "GT-370105001007012", tier: Tier = Tier.grid,
               at: datetime | None = None, **changes: object) -> Envelope:
    at = at or cause.occurred_at
    payload = CaseDispatched(
        unit_code=unit,
        tier=tier,
        kind=ProblemKind.general,
        dispatcher="dispatch",
        deadlines=Deadlines(accept_due=at + timedelta(minutes=1),
                            resolve_due=at + timedelta(days=1)),
        reason="triage: general → grid team",
        **changes,  # type: ignore[arg-type]
    )
    return cause.caused(payload, actor=Actor.system("dispatch"), purpose="dispatch", occurred_at=at)


def accepted(cause: Envelope, unit: str = "GT-370105001007012", handler: str = "gw-1") -> Envelope:
    return cause.caused(CaseAccepted(unit_code=unit, handler_id=handler),
                        actor=Actor(kind="grid_worker", id=handler), purpose="accept")


def closed(cause: Envelope, outcome: Outcome = Outcome.resolved) -> Envelope:
    return cause.caused(
        CaseClosed(outcome=outcome, resolution="已清理", closed_by="gw-1"),
        actor=Actor(kind="grid_worker", id="gw-1"),
        purpose="close",
    )


def stored(envelopes: list[Envelope], start: int = 1, prefix: str = "gridloop") -> list[StoredEvent]:
    return [
        StoredEvent(sequence=start + i,
                    subject=Subjects(prefix).event(e.district, e.case_id, e.event_type),
                    envelope=e)
        for i, e in enumerate(envelopes)
    ]


class ClosedV2(Payload):
    """A v2 of CaseClosed that exists only to prove upcasting: `resolution` became
    `summary` + `details`."""

    event_type: ClassVar[str] = "CaseClosed"
    schema_version: ClassVar[int] = 2
    outcome: Outcome
    summary: str
    details: str
    closed_by: str
    unit_code: str | None = None
    duplicate_of: str | None = None


def closed_v2_registry() -> Registry:
    registry = default_registry()
    registry._classes["CaseClosed"] = ClosedV2

    @registry.upcaster("CaseClosed", 1)
    def split(payload: dict[str, Any]) -> dict[str, Any]:
        text = payload.pop("resolution")
        return {**payload, "summary": text[:20], "details": text}

    return registry
