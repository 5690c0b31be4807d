"""Which event may follow which status: the lifecycle's rules, written down once for checking.

The fold (`lifecycle.evolve`) accepts any event in any state, because the log is the truth and
must always replay. The services' deciders are what keep the log inside these rules; the checker
holds the log to them, so a decider that slipped (or a forged event) shows up by case and event.
"""

from __future__ import annotations

from ..lifecycle import OPEN_STATUSES, CaseState, Status

HANDLING = frozenset({Status.dispatched, Status.accepted})
ANY_RECORDED = frozenset(Status) - {Status.new}

# The statuses a case may be in just before an event of each type.
ALLOWED_BEFORE: dict[str, frozenset[Status]] = {
    "CaseReported": frozenset({Status.new}),
    "CaseTriageQueued": frozenset({Status.reported, Status.triage, Status.reopened}),
    "CaseDispatched": OPEN_STATUSES,
    "CaseAccepted": frozenset({Status.dispatched}),
    "CaseReturned": HANDLING,
    "ExtensionRequested": HANDLING,
    "ExtensionDecided": HANDLING,
    "ProgressNoted": OPEN_STATUSES,
    # The lifecycle records a closure of any open case; feedback counts the ones not under
    # handling apart (rates.DEFINITIONS["on_time_closure"]).
    "CaseClosed": OPEN_STATUSES,
    "CallbackScheduled": frozenset({Status.closed}),
    "CallbackRated": frozenset({Status.closed}),
    # Deadline events need the deadline they name to be live: checked against the state.
    "DeadlineApproaching": ANY_RECORDED,
    "DeadlineMissed": ANY_RECORDED,
}


def transition_error(before: CaseState, event_type: str, payload: object) -> str | None:
    """Why an event of `event_type` could not follow `before`, or None when it may."""
    allowed = ALLOWED_BEFORE.get(event_type)
    if allowed is None:
        return f"unknown event type {event_type}"
    if before.status not in allowed:
        return f"{event_type} after status {before.status.value}"
    if event_type in ("DeadlineMissed", "DeadlineApproaching"):
        kind = getattr(payload, "deadline")
        deadline_id = getattr(payload, "deadline_id")
        live = before.deadlines.get(kind)
        if live is None or live.id != deadline_id:
            return f"{event_type} for {deadline_id}, which was not a live deadline"
        if event_type == "DeadlineMissed" and getattr(payload, "detected_at") < live.due_at:
            return f"DeadlineMissed for {deadline_id} before it was due"
    if event_type == "CallbackScheduled":
        round_ = getattr(payload, "round")
        if round_ != before.close_count or round_ <= before.callback_round:
            return (f"CallbackScheduled round {round_} after {before.close_count} closures "
                    f"and round {before.callback_round}")
    return None
