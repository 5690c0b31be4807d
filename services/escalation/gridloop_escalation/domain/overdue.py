"""The supervision list (督办): open cases that have missed a deadline in this handling round.

A case enters on its first DeadlineMissed and stays, following its current unit, tier and
escalation level, until the round ends: it is closed (CaseClosed) or, for a missed callback,
rated (CallbackRated). A case reopened by an unsatisfied rating starts a fresh round.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from gridloop_events.catalogue import CallbackRated, CaseClosed, DeadlineMissed
from gridloop_events.envelope import Envelope
from gridloop_events.lifecycle import CaseState
from gridloop_events.vocabulary import DeadlineKind


@dataclass(frozen=True)
class OverdueCase:
    case_id: str
    district: str
    unit_code: str | None
    tier: str | None
    escalation_level: int
    status: str
    missed_count: int
    first_missed_at: datetime
    last_missed_at: datetime
    last_missed_kind: DeadlineKind
    last_deadline_id: str


def overdue_after(prev: OverdueCase | None, event: Envelope, after: CaseState) -> OverdueCase | None:
    p = event.payload
    if isinstance(p, CaseClosed | CallbackRated):
        return None
    if isinstance(p, DeadlineMissed):
        base = prev or OverdueCase(
            case_id=after.case_id,
            district=after.district,
            unit_code=None,
            tier=None,
            escalation_level=0,
            status=after.status.value,
            missed_count=0,
            first_missed_at=event.occurred_at,
            last_missed_at=event.occurred_at,
            last_missed_kind=p.deadline,
            last_deadline_id=p.deadline_id,
        )
        prev = replace(
            base,
            missed_count=base.missed_count + 1,
            last_missed_at=event.occurred_at,
            last_missed_kind=p.deadline,
            last_deadline_id=p.deadline_id,
        )
    if prev is None:
        return None
    return replace(
        prev,
        unit_code=after.unit_code,
        tier=after.tier.value if after.tier else None,
        escalation_level=after.escalation_level,
        status=after.status.value,
    )
