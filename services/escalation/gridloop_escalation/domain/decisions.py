"""Whistle-blowing: decide DeadlineMissed / DeadlineApproaching on a case's current state.

The ticker finds candidates in its timer table, but the table may lag the log (a CaseAccepted a
moment ago is not there yet), so the decision is taken again here on the state folded from the
log: only a deadline that is still live, still unreported and really due is reported.

Event ids derive from the deadline's setting event and the deadline id, never from the clock:
two instances, or a restart, racing on one timer produce the same id, and the store keeps one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gridloop_events.catalogue import DeadlineApproaching, DeadlineMissed
from gridloop_events.commands import Decide
from gridloop_events.envelope import Actor, Envelope, Payload, derived_event_id
from gridloop_events.lifecycle import CaseState, Deadline
from gridloop_events.vocabulary import DeadlineKind

from .timers import Timer, setting_event, setting_event_uuid, warn_at

SERVICE = "escalation"
ACTOR = Actor.system(SERVICE)

# Missing these sends the case up a tier (网格吹哨); a missed callback is the centre's own
# lapse and does not move the case.
ESCALATING = frozenset({DeadlineKind.accept, DeadlineKind.dispatch, DeadlineKind.resolve})


def missed_purpose(deadline_id: str) -> str:
    return f"escalation:missed:{deadline_id}"


def warned_purpose(deadline_id: str) -> str:
    return f"escalation:approaching:{deadline_id}"


def escalation_level_after_miss(state: CaseState, kind: DeadlineKind) -> int:
    return state.escalation_level + 1 if kind in ESCALATING else state.escalation_level


def live_deadline(state: CaseState, timer: Timer) -> Deadline | None:
    live = state.deadlines.get(timer.kind)
    if live is None or live.id != timer.deadline_id or live.id in state.missed:
        return None
    return live


def _envelope(state: CaseState, timer: Timer, payload: Payload, purpose: str,
              now: datetime) -> Envelope:
    return Envelope(
        # No `at`: the id's time part comes from the setting event, so every racer agrees.
        event_id=derived_event_id(setting_event_uuid(timer.deadline_id), purpose),
        event_type=payload.event_type,
        schema_version=payload.schema_version,
        case_id=state.case_id,
        district=state.district,
        occurred_at=now,
        recorded_at=now,
        actor=ACTOR,
        correlation_id=timer.correlation_id,
        causation_id=setting_event(timer.deadline_id),
        payload=payload,
    )


def missed_event(state: CaseState, timer: Timer, now: datetime) -> Envelope | None:
    live = live_deadline(state, timer)
    if live is None or live.due_at > now:
        return None
    payload = DeadlineMissed(
        deadline=live.kind,
        deadline_id=live.id,
        due_at=live.due_at,
        detected_at=now,
        assignee_unit=live.unit_code,
        tier=state.tier,
        escalation_level=escalation_level_after_miss(state, live.kind),
    )
    return _envelope(state, timer, payload, missed_purpose(live.id), now)


def warning_event(state: CaseState, timer: Timer, now: datetime) -> Envelope | None:
    live = live_deadline(state, timer)
    if live is None or live.id in state.warned:
        return None
    if not warn_at(live.set_at, live.due_at) <= now < live.due_at:
        return None
    payload = DeadlineApproaching(
        deadline=live.kind,
        deadline_id=live.id,
        due_at=live.due_at,
        warned_at=now,
        assignee_unit=live.unit_code,
    )
    return _envelope(state, timer, payload, warned_purpose(live.id), now)


def decide_missed(timer: Timer, now: datetime) -> Decide:
    def decide(state: CaseState) -> Sequence[Envelope]:
        event = missed_event(state, timer, now)
        return (event,) if event else ()

    return decide


def decide_warning(timer: Timer, now: datetime) -> Decide:
    def decide(state: CaseState) -> Sequence[Envelope]:
        event = warning_event(state, timer, now)
        return (event,) if event else ()

    return decide
