"""Feedback's four figures recomputed from the log alone, by their published definitions.

Written apart from the feedback service on purpose (its code is what is being checked): the
same words (`gridloop_feedback.domain.rates.DEFINITIONS`), read again, counted again.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..catalogue import CallbackRated, CaseAccepted, CaseClosed, CaseDispatched, CaseReported
from ..envelope import StoredEvent
from ..lifecycle import CaseState, Status, evolve
from ..vocabulary import DeadlineKind, Outcome, Rating

FIGURES = ("satisfaction", "resolution", "on_time_closure", "report_in")
SATISFIED = frozenset({Rating.satisfied, Rating.basically_satisfied})
RESOLVED = frozenset({Outcome.resolved, Outcome.answered})
HANDLING = frozenset({Status.dispatched, Status.accepted})


def figures_of(histories: Iterable[list[StoredEvent]]) -> dict[str, tuple[int, int]]:
    counts = {name: [0, 0] for name in FIGURES}

    def count(name: str, hit: bool) -> None:
        counts[name][0] += int(hit)
        counts[name][1] += 1

    for history in histories:
        state = CaseState()
        escalations: dict[str, bool] = {}  # escalation dispatch id -> reported in
        for stored in history:
            p = stored.envelope.payload
            before, state = state, evolve(state, stored)
            match p:
                case CallbackRated():
                    count("satisfaction", p.rating in SATISFIED)
                case CaseClosed() if before.status in HANDLING:
                    due = before.deadline(DeadlineKind.resolve)
                    count("on_time_closure",
                          due is not None and stored.envelope.occurred_at <= due.due_at)
                case CaseDispatched() if p.escalation:
                    escalations[str(stored.envelope.event_id)] = False
                case CaseAccepted() if before.last_dispatch_id in escalations:
                    escalations[before.last_dispatch_id] = True  # type: ignore[index]
        if any(isinstance(s.envelope.payload, CaseReported) for s in history):
            count("resolution", state.status in (Status.closed, Status.done)
                  and state.outcome in RESOLVED)
        for answered in escalations.values():
            count("report_in", answered)
    return {name: (n, d) for name, (n, d) in counts.items()}
