"""Timers: one per live deadline of a case, and what each event does to them.

A timer is the durable twin of a `lifecycle.Deadline`. It is derived from events alone — the
live set is `CaseState.deadlines` after each event — so a rebuild of the table equals the live
one. Which timers are due at a given `now` is decided here too; the SQL in the ticker mirrors it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from gridloop_events.catalogue import DeadlineApproaching, DeadlineMissed
from gridloop_events.envelope import Envelope
from gridloop_events.lifecycle import CaseState, Deadline
from gridloop_events.vocabulary import DeadlineKind

# The warning goes out when this share of the allowed time has passed.
WARN_SHARE = 0.8


class TimerStatus(StrEnum):
    pending = "pending"
    warned = "warned"
    missed = "missed"
    cancelled = "cancelled"


ACTIVE = frozenset({TimerStatus.pending, TimerStatus.warned})


@dataclass(frozen=True)
class Timer:
    deadline_id: str
    case_id: str
    district: str
    kind: DeadlineKind
    set_at: datetime
    due_at: datetime
    warn_at: datetime
    unit_code: str | None
    correlation_id: str
    status: TimerStatus = TimerStatus.pending

    @property
    def set_by(self) -> str:
        return setting_event(self.deadline_id)


@dataclass(frozen=True)
class TimerEnd:
    """A timer leaves the live set: missed, or cancelled because the deadline was met/replaced."""

    deadline_id: str
    status: TimerStatus
    ended_by: str  # the event type that ended it
    at: datetime


@dataclass(frozen=True)
class TimerChanges:
    started: tuple[Timer, ...] = ()
    ended: tuple[TimerEnd, ...] = ()
    warned: tuple[str, ...] = ()


def setting_event(deadline_id: str) -> str:
    """A deadline id is "<kind>:<id of the event that set it>" (catalogue.deadline_id)."""
    _, _, event_id = deadline_id.partition(":")
    if not event_id:
        raise ValueError(f"deadline id {deadline_id!r} does not name its setting event")
    return event_id


def setting_event_uuid(deadline_id: str) -> UUID:
    return UUID(setting_event(deadline_id))


def warn_at(set_at: datetime, due_at: datetime) -> datetime:
    if due_at <= set_at:
        return due_at
    return set_at + (due_at - set_at) * WARN_SHARE


def timer_for(deadline: Deadline, state: CaseState, correlation_id: str) -> Timer:
    return Timer(
        deadline_id=deadline.id,
        case_id=state.case_id,
        district=state.district,
        kind=deadline.kind,
        set_at=deadline.set_at,
        due_at=deadline.due_at,
        warn_at=warn_at(deadline.set_at, deadline.due_at),
        unit_code=deadline.unit_code,
        correlation_id=correlation_id,
    )


def timer_changes(before: CaseState, after: CaseState, event: Envelope) -> TimerChanges:
    """What one event does to the case's timers, given the states around it."""
    before_ids = {d.id for d in before.deadlines.values()}
    after_ids = {d.id for d in after.deadlines.values()}
    payload = event.payload
    missed_id = payload.deadline_id if isinstance(payload, DeadlineMissed) else None

    # A deadline appears only on the event that sets it, so that event's correlation is the
    # deadline's: the DeadlineMissed it may cause carries the same correlation id.
    started = tuple(
        timer_for(d, after, event.correlation_id)
        for d in sorted(after.deadlines.values(), key=lambda d: d.kind.value)
        if d.id not in before_ids
    )
    ended = [
        TimerEnd(
            deadline_id=did,
            status=TimerStatus.missed if did == missed_id else TimerStatus.cancelled,
            ended_by=event.event_type,
            at=event.occurred_at,
        )
        for did in sorted(before_ids - after_ids)
    ]
    if missed_id is not None and missed_id not in before_ids - after_ids:
        # The log says missed even if the deadline had already left the live set: record it.
        ended.append(TimerEnd(missed_id, TimerStatus.missed, event.event_type, event.occurred_at))
    warned = (payload.deadline_id,) if isinstance(payload, DeadlineApproaching) else ()
    return TimerChanges(started=started, ended=tuple(ended), warned=warned)


def is_due(timer: Timer, now: datetime) -> bool:
    return timer.status in ACTIVE and timer.due_at <= now


def needs_warning(timer: Timer, now: datetime) -> bool:
    # Past the due time the miss is reported instead; a warning after it would be noise.
    return timer.status is TimerStatus.pending and timer.warn_at <= now < timer.due_at


def due_timers(timers: Iterable[Timer], now: datetime) -> list[Timer]:
    return sorted((t for t in timers if is_due(t, now)), key=lambda t: (t.due_at, t.deadline_id))


def timers_to_warn(timers: Iterable[Timer], now: datetime) -> list[Timer]:
    return sorted(
        (t for t in timers if needs_warning(t, now)), key=lambda t: (t.warn_at, t.deadline_id)
    )
