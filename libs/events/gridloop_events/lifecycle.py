"""What the events mean for a case: the lifecycle every service agrees on.

This is the shared contract of the events' meaning, a pure fold: `evolve(state, stored) -> state`.
Each service decides on top of it in its own `domain/`; none of them re-derives status or
deadlines on its own, so the four read models cannot drift apart in what "overdue" means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum

from .catalogue import (
    CallbackRated,
    CallbackScheduled,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    CaseReturned,
    CaseTriageQueued,
    DeadlineApproaching,
    DeadlineMissed,
    ExtensionDecided,
    ExtensionRequested,
    deadline_id,
)
from .envelope import StoredEvent
from .vocabulary import DeadlineKind, Outcome, ProblemKind, Rating, Severity, Tier


class Status(StrEnum):
    new = "new"  # nothing recorded yet
    reported = "reported"
    triage = "triage"  # waiting in the dispatchers' queue
    dispatched = "dispatched"
    accepted = "accepted"
    closed = "closed"  # waiting for the callback
    reopened = "reopened"  # rated unsatisfied, waiting for re-dispatch (重办)
    done = "done"  # closed and rated satisfied: the loop is complete


OPEN_STATUSES = frozenset(
    {Status.reported, Status.triage, Status.dispatched, Status.accepted, Status.reopened}
)


@dataclass(frozen=True)
class Deadline:
    id: str
    kind: DeadlineKind
    due_at: datetime
    set_at: datetime
    unit_code: str | None = None


@dataclass(frozen=True)
class CaseState:
    case_id: str = ""
    district: str = ""
    version: int = 0
    events: int = 0
    status: Status = Status.new
    reported_at: datetime | None = None
    category_code: str | None = None
    severity: Severity | None = None
    grid: str | None = None
    community: str | None = None
    street: str | None = None
    tier: Tier | None = None
    kind: ProblemKind | None = None
    unit_code: str | None = None
    urgent: bool = False
    escalation_level: int = 0
    dispatch_count: int = 0
    handler_id: str | None = None
    last_dispatch_id: str | None = None
    deadlines: dict[DeadlineKind, Deadline] = field(default_factory=dict)
    missed: frozenset[str] = frozenset()
    warned: frozenset[str] = frozenset()
    pending_extension: str | None = None
    closed_at: datetime | None = None
    close_count: int = 0
    outcome: Outcome | None = None
    callback_round: int = 0
    rating: Rating | None = None
    unsatisfied_count: int = 0
    last_event_at: datetime | None = None
    last_hash: str | None = None
    # Every event folded in: a copy of one (its bytes republished under another message id)
    # is recognised and not applied twice.
    event_ids: frozenset[str] = frozenset()

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def deadline(self, kind: DeadlineKind) -> Deadline | None:
        return self.deadlines.get(kind)


_STATE_FIELDS = frozenset(f.name for f in fields(CaseState))


def replace(state: CaseState, **changes: object) -> CaseState:
    """`dataclasses.replace` for the fold's hot path: a copy of the attributes with the changes,
    without re-running `__init__` (the state was valid and every change is a known field)."""
    unknown = changes.keys() - _STATE_FIELDS
    if unknown:
        raise TypeError(f"CaseState has no field(s) {sorted(unknown)}")
    new = object.__new__(CaseState)
    attrs = new.__dict__
    attrs.update(state.__dict__)
    attrs.update(changes)
    return new


def _without(deadlines: dict[DeadlineKind, Deadline], *kinds: DeadlineKind) -> dict:
    return {k: v for k, v in deadlines.items() if k not in kinds}


def evolve(state: CaseState, stored: StoredEvent) -> CaseState:
    e = stored.envelope
    p = e.payload
    eid = str(e.event_id)
    if eid in state.event_ids:
        # A copy of an event already folded (its bytes published again under another message
        # id): it means nothing new, but it is the case subject's latest message, so the
        # version — what the store's concurrency guard compares — moves on.
        return replace(state, version=max(state.version, stored.sequence))
    s = replace(
        state,
        case_id=e.case_id,
        district=e.district,
        version=stored.sequence,
        events=state.events + 1,
        last_event_at=e.occurred_at,
        last_hash=stored.content_hash or state.last_hash,
        event_ids=state.event_ids | {str(e.event_id)},
    )
    match p:
        case CaseReported():
            path = p.location.grid_path
            return replace(
                s,
                status=Status.reported,
                reported_at=e.occurred_at,
                category_code=p.category_code,
                severity=p.severity,
                grid=path.grid if path else None,
                community=path.community if path else None,
                street=path.street if path else None,
            )
        case CaseTriageQueued() | CaseReturned():
            d = Deadline(deadline_id(DeadlineKind.dispatch, eid), DeadlineKind.dispatch,
                         p.dispatch_due, e.occurred_at)
            return replace(
                s,
                status=Status.triage,
                unit_code=None,
                handler_id=None,
                deadlines={**_without(s.deadlines, DeadlineKind.accept, DeadlineKind.resolve),
                           DeadlineKind.dispatch: d},
            )
        case CaseDispatched():
            accept = Deadline(deadline_id(DeadlineKind.accept, eid), DeadlineKind.accept,
                              p.deadlines.accept_due, e.occurred_at, p.unit_code)
            resolve = Deadline(deadline_id(DeadlineKind.resolve, eid), DeadlineKind.resolve,
                               p.deadlines.resolve_due, e.occurred_at, p.unit_code)
            return replace(
                s,
                status=Status.dispatched,
                tier=p.tier,
                kind=p.kind,
                unit_code=p.unit_code,
                urgent=p.urgent,
                escalation_level=max(s.escalation_level, p.escalation_level),
                dispatch_count=s.dispatch_count + 1,
                handler_id=None,
                last_dispatch_id=eid,
                pending_extension=None,
                deadlines={
                    **_without(s.deadlines, DeadlineKind.dispatch, DeadlineKind.callback),
                    DeadlineKind.accept: accept,
                    DeadlineKind.resolve: resolve,
                },
            )
        case CaseAccepted():
            return replace(
                s,
                status=Status.accepted,
                handler_id=s.handler_id or p.handler_id,
                deadlines=_without(s.deadlines, DeadlineKind.accept),
            )
        case ExtensionRequested():
            return replace(s, pending_extension=eid)
        case ExtensionDecided():
            if not p.approved or p.resolve_due is None:
                return replace(s, pending_extension=None)
            old = s.deadlines.get(DeadlineKind.resolve)
            resolve = Deadline(deadline_id(DeadlineKind.resolve, eid), DeadlineKind.resolve,
                               p.resolve_due, e.occurred_at, old.unit_code if old else s.unit_code)
            return replace(s, pending_extension=None,
                           deadlines={**s.deadlines, DeadlineKind.resolve: resolve})
        case DeadlineApproaching():
            return replace(s, warned=s.warned | {p.deadline_id})
        case DeadlineMissed():
            live = s.deadlines.get(p.deadline)
            deadlines = s.deadlines
            if live is not None and live.id == p.deadline_id:
                deadlines = _without(s.deadlines, p.deadline)
            return replace(
                s,
                missed=s.missed | {p.deadline_id},
                escalation_level=max(s.escalation_level, p.escalation_level),
                deadlines=deadlines,
            )
        case CaseClosed():
            return replace(
                s,
                status=Status.closed,
                closed_at=e.occurred_at,
                close_count=s.close_count + 1,
                outcome=p.outcome,
                rating=None,
                deadlines=_without(s.deadlines, DeadlineKind.accept, DeadlineKind.resolve,
                                   DeadlineKind.dispatch),
            )
        case CallbackScheduled():
            d = Deadline(deadline_id(DeadlineKind.callback, eid), DeadlineKind.callback,
                         p.due_at, e.occurred_at)
            return replace(s, callback_round=p.round,
                           deadlines={**s.deadlines, DeadlineKind.callback: d})
        case CallbackRated():
            unsatisfied = p.rating is Rating.unsatisfied
            return replace(
                s,
                status=Status.reopened if unsatisfied else Status.done,
                rating=p.rating,
                unsatisfied_count=s.unsatisfied_count + (1 if unsatisfied else 0),
                deadlines=_without(s.deadlines, DeadlineKind.callback),
            )
        case _:
            return s


def fold(history: Iterable[StoredEvent], state: CaseState | None = None) -> CaseState:
    state = state or CaseState()
    for stored in history:
        state = evolve(state, stored)
    return state
