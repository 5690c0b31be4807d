"""Feedback's rules on plain data: callback scheduling, when a rating is allowed, the figures."""

from __future__ import annotations

from gridloop_events.subjects import Subjects

from datetime import UTC, datetime, timedelta

import pytest
from gridloop_district import default_district
from gridloop_events.catalogue import (
    CallbackRated,
    CallbackScheduled,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    CaseTriageQueued,
    DeadlineMissed,
    Deadlines,
    ExtensionDecided,
    GridPath,
    Location,
    deadline_id,
)
from gridloop_events.envelope import Actor, ActorKind, Envelope, StoredEvent
from gridloop_events.http import DomainError
from gridloop_events.lifecycle import CaseState, Status, fold
from gridloop_events.vocabulary import (
    CallbackMethod,
    Channel,
    DeadlineKind,
    Outcome,
    ProblemKind,
    Rating,
    Severity,
    Tier,
    TriageReason,
)
from pydantic import ValidationError

from gridloop_feedback.domain import (
    DEFAULT_CALLBACK_SECONDS,
    Rate,
    RateCallback,
    callback_pending,
    closure_timing,
    decide_rating,
    district_callback_limits,
    is_resolved,
    is_satisfied,
    rating_refusal,
    report_month,
    schedule_callback,
)

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
DISTRICT = "370190"
PATH = GridPath(district=DISTRICT, street="370190001", community="370190001001",
                grid="370190001001001")
OPERATOR = Actor(kind=ActorKind.operator, id="op-1")
LIMITS = district_callback_limits(default_district())


class Case:
    """A case's history built event by event, each stored at the next sequence."""

    def __init__(self, case_id: str = "C-1") -> None:
        self.case_id = case_id
        self.history: list[StoredEvent] = []

    def add(self, payload, at: datetime) -> StoredEvent:  # type: ignore[no-untyped-def]
        env = Envelope.new(payload, case_id=self.case_id, district=DISTRICT, actor=OPERATOR,
                           correlation_id="corr-1", occurred_at=at)
        stored = StoredEvent(sequence=len(self.history) + 1,
                             subject=Subjects().event(DISTRICT, self.case_id, env.event_type),
                             envelope=env)
        self.history.append(stored)
        return stored

    @property
    def state(self) -> CaseState:
        return fold(self.history)

    def report(self, category: str = "CM-0102", severity: Severity = Severity.normal,
               at: datetime = T0) -> StoredEvent:
        return self.add(CaseReported(channel=Channel.hotline, category_code=category,
                                     description="楼道堆放杂物", location=Location(grid_path=PATH),
                                     severity=severity), at)

    def dispatch(self, at: datetime, resolve_in: timedelta = timedelta(days=1),
                 unit: str = "GT-1", escalation: bool = False) -> StoredEvent:
        return self.add(CaseDispatched(
            unit_code=unit, tier=Tier.grid, kind=ProblemKind.general, dispatcher="dispatch",
            deadlines=Deadlines(accept_due=at + timedelta(minutes=1), resolve_due=at + resolve_in),
            reason="rule", escalation=escalation), at)

    def accept(self, at: datetime, unit: str = "GT-1") -> StoredEvent:
        return self.add(CaseAccepted(unit_code=unit, handler_id="gw-1"), at)

    def close(self, at: datetime, outcome: Outcome = Outcome.resolved) -> StoredEvent:
        return self.add(CaseClosed(outcome=outcome, resolution="已清理", closed_by="gw-1"), at)

    def rate(self, at: datetime, rating: Rating = Rating.satisfied) -> StoredEvent:
        return self.add(CallbackRated(rating=rating, handled_lawfully=True,
                                      measures_carried_out=True, party_accepts=True,
                                      method=CallbackMethod.phone, rated_by="op-2"), at)


def handled_and_closed(category: str = "CM-0102") -> tuple[Case, StoredEvent]:
    case = Case()
    case.report(category)
    case.dispatch(T0 + timedelta(minutes=5))
    case.accept(T0 + timedelta(minutes=6))
    closure = case.close(T0 + timedelta(hours=3))
    return case, closure


def command(rating: Rating = Rating.satisfied) -> RateCallback:
    return RateCallback(rating=rating, handled_lawfully=True, measures_carried_out=True,
                        party_accepts=False, method=CallbackMethod.on_site, rated_by="op-2",
                        comment="已回访")


# --- scheduling the callback -----------------------------------------------------------------


def test_a_closure_schedules_round_one_due_a_day_after_the_closure() -> None:
    case, closure = handled_and_closed("CM-0102")
    [event] = schedule_callback(closure, case.state, LIMITS)(case.state)
    assert isinstance(event.payload, CallbackScheduled)
    assert event.payload.round == 1
    assert event.payload.due_at == closure.envelope.occurred_at + timedelta(days=1)
    assert event.occurred_at == closure.envelope.occurred_at
    assert event.causation_id == str(closure.envelope.event_id)
    assert event.correlation_id == closure.envelope.correlation_id
    assert event.actor == Actor.system("feedback")


def test_the_callback_limit_comes_from_the_category() -> None:
    # WF-0201 (a subsistence-allowance item) allows three days for the callback.
    case, closure = handled_and_closed("WF-0201")
    [event] = schedule_callback(closure, case.state, LIMITS)(case.state)
    assert event.payload.due_at == closure.envelope.occurred_at + timedelta(days=3)


def test_the_severity_reaches_the_limit_lookup() -> None:
    case = Case()
    case.report("CM-0102", severity=Severity.critical)
    case.dispatch(T0)
    closure = case.close(T0 + timedelta(hours=1))
    seen: list[tuple[str | None, str | None]] = []

    def limits(category: str | None, severity: str | None) -> int:
        seen.append((category, severity))
        return 3600

    [event] = schedule_callback(closure, case.state, limits)(case.state)
    assert seen == [("CM-0102", "critical")]
    assert event.payload.due_at == closure.envelope.occurred_at + timedelta(hours=1)


def test_an_unknown_or_missing_category_gets_the_default_day() -> None:
    assert LIMITS("NOT-A-CATEGORY", "normal") == DEFAULT_CALLBACK_SECONDS == 86400
    assert LIMITS(None, None) == 86400


def test_scheduling_twice_gives_the_same_event() -> None:
    case, closure = handled_and_closed()
    decide = schedule_callback(closure, case.state, LIMITS)
    assert decide(case.state) == decide(case.state)


def test_a_scheduled_round_is_not_scheduled_again() -> None:
    case, closure = handled_and_closed()
    decide = schedule_callback(closure, case.state, LIMITS)
    [event] = decide(case.state)
    case.history.append(StoredEvent(sequence=len(case.history) + 1, subject="s", envelope=event))
    assert decide(case.state) == []


def test_a_round_rated_before_its_schedule_landed_is_not_scheduled() -> None:
    case, closure = handled_and_closed()
    closed = case.state
    case.rate(T0 + timedelta(hours=4))
    assert schedule_callback(closure, closed, LIMITS)(case.state) == []


def test_the_second_closure_schedules_round_two_and_supersedes_the_first() -> None:
    case, first = handled_and_closed()
    after_first = case.state
    case.rate(T0 + timedelta(hours=4), Rating.unsatisfied)
    case.dispatch(T0 + timedelta(hours=5))
    second = case.close(T0 + timedelta(hours=8))
    assert schedule_callback(first, after_first, LIMITS)(case.state) == []
    [event] = schedule_callback(second, case.state, LIMITS)(case.state)
    assert event.payload.round == 2
    assert callback_pending(case.state, 2) and not callback_pending(case.state, 1)


# --- rating ----------------------------------------------------------------------------------


def test_a_closed_case_takes_a_rating() -> None:
    case, _ = handled_and_closed()
    now = T0 + timedelta(hours=5)
    [event] = decide_rating(case.state, command(), actor=OPERATOR, correlation_id="req-9", now=now)
    assert isinstance(event.payload, CallbackRated)
    assert event.payload.rating is Rating.satisfied
    assert (event.payload.handled_lawfully, event.payload.measures_carried_out,
            event.payload.party_accepts) == (True, True, False)
    assert event.payload.method is CallbackMethod.on_site
    assert event.occurred_at == now
    assert event.correlation_id == "req-9"
    assert event.case_id == "C-1" and event.district == DISTRICT


def test_an_unknown_case_is_404() -> None:
    with pytest.raises(DomainError) as refused:
        decide_rating(CaseState(), command(), actor=OPERATOR, correlation_id="c", now=T0)
    assert refused.value.status == 404


@pytest.mark.parametrize("steps", [1, 2, 3], ids=["reported", "dispatched", "accepted"])
def test_an_open_case_is_not_rated(steps: int) -> None:
    case = Case()
    case.report()
    if steps >= 2:
        case.dispatch(T0)
    if steps >= 3:
        case.accept(T0)
    refusal = rating_refusal(case.state)
    assert refusal is not None and refusal.status == 409


@pytest.mark.parametrize("rating", list(Rating))
def test_a_round_is_rated_once(rating: Rating) -> None:
    case, _ = handled_and_closed()
    case.rate(T0 + timedelta(hours=4), rating)
    with pytest.raises(DomainError) as refused:
        decide_rating(case.state, command(), actor=OPERATOR, correlation_id="c", now=T0)
    assert refused.value.status == 409
    assert "already rated" in refused.value.reason


def test_an_unsatisfied_rating_reopens_and_the_next_closure_is_rated_again() -> None:
    case, _ = handled_and_closed()
    case.rate(T0 + timedelta(hours=4), Rating.unsatisfied)
    assert case.state.status is Status.reopened
    case.dispatch(T0 + timedelta(hours=5))
    case.close(T0 + timedelta(hours=9))
    assert rating_refusal(case.state) is None
    assert case.state.close_count == 2


def test_the_body_names_what_is_wrong() -> None:
    with pytest.raises(ValidationError) as bad:
        RateCallback.model_validate({"rating": "great", "handled_lawfully": True,
                                     "measures_carried_out": True, "party_accepts": True,
                                     "method": "phone", "rated_by": "op"})
    assert bad.value.errors()[0]["loc"] == ("rating",)


# --- the figures -----------------------------------------------------------------------------


def test_rate_arithmetic() -> None:
    assert Rate(3, 4).value == 0.75
    assert Rate(0, 0).value is None
    assert Rate(2, 3) + Rate(1, 1) == Rate(3, 4)
    assert Rate(1, 3).as_dict() == {"numerator": 1, "denominator": 3, "rate": 1 / 3}
    with pytest.raises(ValueError):
        Rate(5, 4)
    with pytest.raises(ValueError):
        Rate(-1, 4)


def test_satisfied_and_basically_satisfied_count_as_satisfied() -> None:
    assert is_satisfied(Rating.satisfied) and is_satisfied(Rating.basically_satisfied)
    assert not is_satisfied(Rating.unsatisfied)


@pytest.mark.parametrize(
    ("outcome", "then_rate", "resolved"),
    [
        (Outcome.resolved, None, True),
        (Outcome.answered, Rating.satisfied, True),
        (Outcome.resolved, Rating.unsatisfied, False),
        (Outcome.invalid, None, False),
    ],
)
def test_resolved_means_still_closed_as_resolved_or_answered(
    outcome: Outcome, then_rate: Rating | None, resolved: bool
) -> None:
    case = Case()
    case.report()
    case.dispatch(T0)
    case.close(T0 + timedelta(hours=1), outcome)
    if then_rate:
        case.rate(T0 + timedelta(hours=2), then_rate)
    assert is_resolved(case.state) is resolved


def test_an_open_case_is_not_resolved() -> None:
    case = Case()
    case.report()
    assert not is_resolved(case.state)


def test_closed_exactly_at_the_resolve_deadline_is_on_time() -> None:
    case = Case()
    case.report()
    case.dispatch(T0, resolve_in=timedelta(hours=4))
    timing = closure_timing(case.state, T0 + timedelta(hours=4))
    assert (timing.timed, timing.on_time, timing.resolve_due) == (
        True, True, T0 + timedelta(hours=4))
    assert not closure_timing(case.state, T0 + timedelta(hours=4, seconds=1)).on_time


def test_a_closure_after_a_missed_resolve_deadline_is_late() -> None:
    case = Case()
    case.report()
    dispatch = case.dispatch(T0, resolve_in=timedelta(hours=4))
    case.accept(T0 + timedelta(minutes=1))
    case.add(DeadlineMissed(
        deadline=DeadlineKind.resolve,
        deadline_id=deadline_id(DeadlineKind.resolve, str(dispatch.envelope.event_id)),
        due_at=T0 + timedelta(hours=4), detected_at=T0 + timedelta(hours=4),
        escalation_level=1), T0 + timedelta(hours=4))
    timing = closure_timing(case.state, T0 + timedelta(hours=5))
    assert (timing.timed, timing.on_time) == (True, False)


def test_an_approved_extension_is_the_deadline_in_force() -> None:
    case = Case()
    case.report()
    case.dispatch(T0, resolve_in=timedelta(hours=4))
    case.add(ExtensionDecided(request_event_id="x", approved=True,
                              resolve_due=T0 + timedelta(hours=10), supervisor_id="s"),
             T0 + timedelta(hours=2))
    assert closure_timing(case.state, T0 + timedelta(hours=9)).on_time


def test_a_closure_straight_from_triage_is_outside_the_on_time_figure() -> None:
    case = Case()
    case.report()
    case.add(CaseTriageQueued(reason=TriageReason.uncategorised,
                              dispatch_due=T0 + timedelta(minutes=15)), T0)
    timing = closure_timing(case.state, T0 + timedelta(minutes=3))
    assert (timing.timed, timing.on_time) == (False, False)


def test_the_report_month_is_shanghai_time() -> None:
    assert report_month(datetime(2026, 1, 31, 15, 59, tzinfo=UTC)) == "2026-01"
    assert report_month(datetime(2026, 1, 31, 16, 0, tzinfo=UTC)) == "2026-02"
    assert report_month(None) is None
