"""报到率: did the unit a case was escalated to report in (accept it)?

Every CaseDispatched with `escalation=True` is one whistle for its unit; the first CaseAccepted
by that unit while that dispatch is still the case's current one is its report-in. A unit that
lets the case go on up the ladder (or back to triage) before accepting has not reported in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from gridloop_events.catalogue import CaseAccepted, CaseDispatched
from gridloop_events.envelope import Envelope
from gridloop_events.lifecycle import CaseState, Status


@dataclass(frozen=True)
class EscalationDispatch:
    dispatch_id: str
    case_id: str
    unit_code: str
    tier: str
    escalation_level: int
    dispatched_at: datetime
    accept_due: datetime
    accepted_at: datetime | None = None
    on_time: bool | None = None

    @property
    def reported_in(self) -> bool:
        return self.accepted_at is not None


def escalation_dispatch(event: Envelope) -> EscalationDispatch | None:
    p = event.payload
    if not isinstance(p, CaseDispatched) or not p.escalation:
        return None
    return EscalationDispatch(
        dispatch_id=str(event.event_id),
        case_id=event.case_id,
        unit_code=p.unit_code,
        tier=p.tier.value,
        escalation_level=p.escalation_level,
        dispatched_at=event.occurred_at,
        accept_due=p.deadlines.accept_due,
    )


def reported_in(
    before: CaseState, event: Envelope, current: EscalationDispatch | None
) -> EscalationDispatch | None:
    """The escalation dispatch this event answers, now accepted; None if it answers none."""
    p = event.payload
    if not isinstance(p, CaseAccepted) or current is None:
        return None
    if (
        current.dispatch_id != before.last_dispatch_id
        or current.reported_in
        or before.status is not Status.dispatched
        or p.unit_code != current.unit_code
    ):
        return None
    return replace(current, accepted_at=event.occurred_at,
                   on_time=event.occurred_at <= current.accept_due)


def rate(reported: int, dispatched: int) -> float | None:
    return reported / dispatched if dispatched else None
