"""Scheduling the callback (回访) that follows every closure.

A closure starts a callback round: round n is the n-th CaseClosed of the case, due a category's
callback limit after the closure (002's default: within one day).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from gridloop_district import District, TimeLimits, UnknownCodeError
from gridloop_events.catalogue import CallbackScheduled
from gridloop_events.commands import Decide
from gridloop_events.envelope import Actor, Envelope, StoredEvent
from gridloop_events.lifecycle import CaseState, Status

DEFAULT_CALLBACK_SECONDS = TimeLimits().callback_seconds
PURPOSE_SCHEDULE = "feedback.callback.schedule"
ACTOR = Actor.system("feedback")

# (category_code, severity) -> seconds allowed for the callback
CallbackLimits = Callable[[str | None, str | None], int]


def district_callback_limits(district: District) -> CallbackLimits:
    """The district's callback limit by category and severity; the default for what it lacks.

    A case can carry a category the district no longer lists (reference data changes under old
    cases); its callback is still owed, so it falls back to the default rather than failing.
    """

    def limit(category: str | None, severity: str | None) -> int:
        if category is None:
            return DEFAULT_CALLBACK_SECONDS
        try:
            return district.time_limits(category, severity or "normal").callback_seconds
        except (UnknownCodeError, ValueError):
            return DEFAULT_CALLBACK_SECONDS

    return limit


def callback_due_at(closed_at: datetime, state: CaseState, limits: CallbackLimits) -> datetime:
    severity = state.severity.value if state.severity is not None else None
    return closed_at + timedelta(seconds=limits(state.category_code, severity))


def callback_pending(state: CaseState, round_: int) -> bool:
    """Whether round `round_` still needs its callback scheduled in `state`.

    Not when the case was closed again since (the later closure schedules its own round), when
    the round is already scheduled, or when it was rated before the schedule landed.
    """
    return (
        state.status is Status.closed
        and state.close_count == round_
        and state.callback_round < round_
    )


def schedule_callback(cause: StoredEvent, closed: CaseState, limits: CallbackLimits) -> Decide:
    """The reaction to a CaseClosed: `closed` is the case's state right after that closure.

    The event id derives from the closure, and the decision re-checks the current state, so a
    redelivered or replayed closure never schedules a round twice.
    """
    round_ = closed.close_count
    due_at = callback_due_at(cause.envelope.occurred_at, closed, limits)

    def decide(state: CaseState) -> list[Envelope]:
        if not callback_pending(state, round_):
            return []
        payload = CallbackScheduled(due_at=due_at, round=round_)
        return [cause.envelope.caused(payload, actor=ACTOR, purpose=PURPOSE_SCHEDULE)]

    return decide
