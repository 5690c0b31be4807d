"""The four figures feedback reports, defined once, exactly, from events.

These figures judge people (DOMAIN.md: case handling counts in each worker's assessment), so
each is a plain count over recorded events, shown with its numerator and denominator, and the
classifiers below are the only place that decides what counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from gridloop_events.lifecycle import CaseState, Status
from gridloop_events.vocabulary import DeadlineKind, Outcome, Rating

REPORTING_ZONE = ZoneInfo("Asia/Shanghai")

# Shared by the code and the API documentation, so the two cannot say different things.
DEFINITIONS: dict[str, str] = {
    "satisfaction": (
        "Ratings that are `satisfied` or `basically_satisfied` / all ratings. Every "
        "CallbackRated counts once; a case takes one rating per closure round (a reopened case "
        "closed again is rated again and counts again). Unit: the unit named by the rated "
        "round's CaseClosed (else the unit the case was dispatched to)."
    ),
    "resolution": (
        "Reported cases whose latest CaseClosed has outcome `resolved` or `answered` and which "
        "are still closed (not reopened by an unsatisfied rating, not re-dispatched) / all "
        "reported cases (every CaseReported, whatever its outcome). Unit: the unit of the "
        "case's latest dispatch; none before its first dispatch or after it was returned."
    ),
    "on_time_closure": (
        "Closures at or before the resolve deadline in force at the closure / closures of cases "
        "under handling. Every CaseClosed of a case that was dispatched or accepted counts once; "
        "a closure whose resolve deadline was already missed (DeadlineMissed) is late. Closures "
        "straight from report, triage or a reopening (no unit held the case, so no resolve "
        "deadline ran) are outside this figure. Unit: the closing unit."
    ),
    "report_in": (
        "Escalation dispatches (CaseDispatched with escalation=true, 网格吹哨) that the "
        "receiving unit accepted (CaseAccepted while that dispatch was the case's latest, "
        "部门报到) / all escalation dispatches. Unit: the unit the escalation went to."
    ),
    "dimensions": (
        "grid, category and district are the case's as reported; month is the calendar month, "
        "Asia/Shanghai time, of the case's CaseReported. The `from`/`to` month filters select "
        "cases by that report month, inclusive."
    ),
}


@dataclass(frozen=True)
class Rate:
    """A figure with its counts; the value is None when nothing was counted (not 0, not 100%)."""

    numerator: int
    denominator: int

    def __post_init__(self) -> None:
        if self.denominator < 0 or not 0 <= self.numerator <= self.denominator:
            raise ValueError(f"bad counts {self.numerator}/{self.denominator}")

    @property
    def value(self) -> float | None:
        return self.numerator / self.denominator if self.denominator else None

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.numerator + other.numerator, self.denominator + other.denominator)

    def as_dict(self) -> dict[str, int | float | None]:
        return {"numerator": self.numerator, "denominator": self.denominator, "rate": self.value}


def is_satisfied(rating: Rating) -> bool:
    return rating in (Rating.satisfied, Rating.basically_satisfied)


def is_resolved(state: CaseState) -> bool:
    """Whether the case counts as resolved now (the resolution figure's numerator)."""
    return state.status in (Status.closed, Status.done) and state.outcome in (
        Outcome.resolved,
        Outcome.answered,
    )


@dataclass(frozen=True)
class ClosureTiming:
    timed: bool  # counts in the on-time figure's denominator
    on_time: bool
    resolve_due: datetime | None


HANDLING = frozenset({Status.dispatched, Status.accepted})


def closure_timing(before: CaseState, closed_at: datetime) -> ClosureTiming:
    """How a CaseClosed at `closed_at` counts, given the case's state just before it.

    The lifecycle drops a resolve deadline from a case under handling only when it is missed,
    so a handled case without one was closed late.
    """
    if before.status not in HANDLING:
        return ClosureTiming(timed=False, on_time=False, resolve_due=None)
    deadline = before.deadline(DeadlineKind.resolve)
    if deadline is None:
        return ClosureTiming(timed=True, on_time=False, resolve_due=None)
    return ClosureTiming(
        timed=True, on_time=closed_at <= deadline.due_at, resolve_due=deadline.due_at
    )


def report_month(reported_at: datetime | None) -> str | None:
    if reported_at is None:
        return None
    return reported_at.astimezone(REPORTING_ZONE).strftime("%Y-%m")
