"""Escalation's pure rules, given/when/then: timers, due selection, whistles, overdue, report-in."""

from __future__ import annotations

from gridloop_events.subjects import Subjects

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from gridloop_escalation.domain.decisions import (
    decide_missed,
    missed_event,
    warning_event,
)
from gridloop_escalation.domain.overdue import overdue_after
from gridloop_escalation.domain.report_in import escalation_dispatch, rate, reported_in
from gridloop_escalation.domain.timers import (
    Timer,
    TimerStatus,
    due_timers,
    timer_changes,
    timer_for,
    timers_to_warn,
    warn_at,
)
from gridloop_events.catalogue import (
    CallbackRated,
    CallbackScheduled,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    Deadlines,
    DeadlineMissed,
    GridPath,
    Location,
)
from gridloop_events.envelope import Actor, Envelope, StoredEvent
from gridloop_events.lifecycle import CaseState, evolve
from gridloop_events.vocabulary import (
    CallbackMethod,
    Channel,
    DeadlineKind,
    Outcome,
    ProblemKind,
    Rating,
    Tier,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DISTRICT = "370105"
GRID_TEAM = "GT-0001"
COMMITTEE = "CC-0001"
STREET = "SO-0001"


# --- builders: plain data, no I/O --------------------------------------------------------


def reported(at: datetime = T0) -> Envelope:
    return Envelope.new(
        CaseReported(
            channel=Channel.hotline,
            category_code="CM-0101",
            description="楼道堆放杂物",
            location=Location(grid_path=GridPath(district=DISTRICT, street="S1",
                                                 community="C1", grid="G1")),
        ),
        case_id=f"case-{uuid4().hex[:12]}",
        district=DISTRICT,
        actor=Actor(kind="operator", id="op-1"),
        correlation_id=str(uuid4()),
        occurred_at=at,
    )


def dispatched(cause: Envelope, at: datetime, unit: str = GRID_TEAM, tier: Tier = Tier.grid,
               accept_in: timedelta = timedelta(minutes=1),
               resolve_in: timedelta = timedelta(days=1), escalation: bool = False,
               level: int = 0) -> Envelope:
    return cause.caused(
        CaseDispatched(
            unit_code=unit, tier=tier, kind=ProblemKind.general, dispatcher="dispatch",
            deadlines=Deadlines(accept_due=at + accept_in, resolve_due=at + resolve_in),
            reason="rules", escalation=escalation, redispatch=escalation,
            escalation_level=level,
        ),
        actor=Actor.system("dispatch"), purpose=f"dispatch:{unit}:{at.isoformat()}",
        occurred_at=at,
    )


def accepted(cause: Envelope, at: datetime, unit: str = GRID_TEAM) -> Envelope:
    return cause.caused(CaseAccepted(unit_code=unit, handler_id="gw-1"),
                        actor=Actor(kind="grid_worker", id="gw-1"),
                        purpose=f"accept:{at.isoformat()}", occurred_at=at)


def closed(cause: Envelope, at: datetime) -> Envelope:
    return cause.caused(CaseClosed(outcome=Outcome.resolved, resolution="已清理", closed_by="gw-1"),
                        actor=Actor(kind="grid_worker", id="gw-1"), purpose="close",
                        occurred_at=at)


def callback_scheduled(cause: Envelope, at: datetime, due: datetime) -> Envelope:
    return cause.caused(CallbackScheduled(due_at=due, round=1), actor=Actor.system("feedback"),
                        purpose="callback", occurred_at=at)


def rated(cause: Envelope, at: datetime, rating: Rating = Rating.satisfied) -> Envelope:
    return cause.caused(
        CallbackRated(rating=rating, handled_lawfully=True, measures_carried_out=True,
                      party_accepts=True, method=CallbackMethod.phone, rated_by="op-1"),
        actor=Actor(kind="operator", id="op-1"), purpose="rate", occurred_at=at)


class Case:
    """A case's history, folded as it grows, with the states around the last event."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.state = CaseState()
        self.before = CaseState()

    def add(self, envelope: Envelope) -> Envelope:
        self.before = self.state
        self.events.append(envelope)
        stored = StoredEvent(sequence=len(self.events),
                             subject=Subjects().event(DISTRICT, envelope.case_id, "x"),
                             envelope=envelope)
        self.state = evolve(self.state, stored)
        return envelope

    def timer(self, kind: DeadlineKind) -> Timer:
        deadline = self.state.deadlines[kind]
        return timer_for(deadline, self.state, self.events[0].correlation_id)


def dispatched_case(accept_in: timedelta = timedelta(minutes=1)) -> tuple[Case, Envelope]:
    case = Case()
    r = case.add(reported())
    d = case.add(dispatched(r, T0 + timedelta(seconds=5), accept_in=accept_in))
    return case, d


# --- timers from events ------------------------------------------------------------------


def test_warning_time_is_eighty_percent_of_the_allowed_time() -> None:
    assert warn_at(T0, T0 + timedelta(seconds=100)) == T0 + timedelta(seconds=80)
    assert warn_at(T0, T0 + timedelta(days=1)) == T0 + timedelta(hours=19, minutes=12)
    # A deadline already due when set warns at its due time (and is reported as missed).
    assert warn_at(T0, T0 - timedelta(seconds=1)) == T0 - timedelta(seconds=1)


def test_a_dispatch_starts_accept_and_resolve_timers() -> None:
    case = Case()
    r = case.add(reported())
    d = case.add(dispatched(r, T0, accept_in=timedelta(seconds=60)))

    changes = timer_changes(case.before, case.state, d)

    assert [t.kind for t in changes.started] == [DeadlineKind.accept, DeadlineKind.resolve]
    accept = changes.started[0]
    assert accept.deadline_id == f"accept:{d.event_id}"
    assert accept.due_at == T0 + timedelta(seconds=60)
    assert accept.warn_at == T0 + timedelta(seconds=48)
    assert accept.unit_code == GRID_TEAM
    assert accept.status is TimerStatus.pending
    assert accept.correlation_id == d.correlation_id
    assert changes.ended == () and changes.warned == ()


def test_acceptance_cancels_the_accept_timer_only() -> None:
    case, d = dispatched_case()
    a = case.add(accepted(d, T0 + timedelta(seconds=30)))

    changes = timer_changes(case.before, case.state, a)

    assert changes.started == ()
    assert [(e.deadline_id, e.status, e.ended_by) for e in changes.ended] == [
        (f"accept:{d.event_id}", TimerStatus.cancelled, "CaseAccepted")
    ]


def test_a_recorded_miss_marks_the_timer_missed() -> None:
    case, d = dispatched_case()
    now = T0 + timedelta(minutes=2)
    m = case.add(missed_event(case.state, case.timer(DeadlineKind.accept), now))

    changes = timer_changes(case.before, case.state, m)

    assert [(e.deadline_id, e.status, e.at) for e in changes.ended] == [
        (f"accept:{d.event_id}", TimerStatus.missed, now)
    ]


def test_a_redispatch_cancels_the_old_timers_and_starts_new_ones() -> None:
    case, d = dispatched_case()
    d2 = case.add(dispatched(d, T0 + timedelta(minutes=3), unit=COMMITTEE, tier=Tier.community,
                             escalation=True, level=1))

    changes = timer_changes(case.before, case.state, d2)

    assert {t.deadline_id for t in changes.started} == {f"accept:{d2.event_id}",
                                                        f"resolve:{d2.event_id}"}
    assert {(e.deadline_id, e.status) for e in changes.ended} == {
        (f"accept:{d.event_id}", TimerStatus.cancelled),
        (f"resolve:{d.event_id}", TimerStatus.cancelled),
    }


def test_a_warning_marks_the_timer_warned() -> None:
    case, d = dispatched_case()
    w = case.add(warning_event(case.state, case.timer(DeadlineKind.accept),
                               T0 + timedelta(seconds=55)))

    changes = timer_changes(case.before, case.state, w)

    assert changes.warned == (f"accept:{d.event_id}",)
    assert changes.ended == () and changes.started == ()


# --- which timers are due ----------------------------------------------------------------


def _timer(name: str, due: datetime, status: TimerStatus = TimerStatus.pending,
           set_at: datetime = T0) -> Timer:
    return Timer(deadline_id=f"accept:{name}", case_id=name, district=DISTRICT,
                 kind=DeadlineKind.accept, set_at=set_at, due_at=due,
                 warn_at=warn_at(set_at, due), unit_code=GRID_TEAM, correlation_id="c",
                 status=status)


def test_due_timers_are_the_live_ones_at_or_past_their_due_time() -> None:
    now = T0 + timedelta(seconds=100)
    timers = [
        _timer("exactly", now),
        _timer("past", now - timedelta(seconds=1)),
        _timer("warned", now - timedelta(seconds=5), TimerStatus.warned),
        _timer("future", now + timedelta(milliseconds=1)),
        _timer("already-missed", now - timedelta(seconds=9), TimerStatus.missed),
        _timer("cancelled", now - timedelta(seconds=9), TimerStatus.cancelled),
    ]

    assert [t.case_id for t in due_timers(timers, now)] == ["warned", "past", "exactly"]


def test_warnings_go_to_pending_timers_between_eighty_percent_and_due() -> None:
    due = T0 + timedelta(seconds=100)
    timers = [_timer("pending", due), _timer("warned", due, TimerStatus.warned),
              _timer("cancelled", due, TimerStatus.cancelled)]

    assert timers_to_warn(timers, T0 + timedelta(seconds=79)) == []
    assert [t.case_id for t in timers_to_warn(timers, T0 + timedelta(seconds=80))] == ["pending"]
    assert timers_to_warn(timers, due) == []  # past due: the miss is reported instead


# --- DeadlineMissed ----------------------------------------------------------------------


def test_a_due_accept_deadline_is_reported_missed_one_level_up() -> None:
    case, d = dispatched_case()
    now = T0 + timedelta(seconds=70)

    event = missed_event(case.state, case.timer(DeadlineKind.accept), now)

    assert event is not None
    p = event.payload
    assert isinstance(p, DeadlineMissed)
    assert (p.deadline, p.deadline_id) == (DeadlineKind.accept, f"accept:{d.event_id}")
    assert p.due_at == T0 + timedelta(seconds=65)
    assert p.detected_at == now and event.occurred_at == now
    assert p.assignee_unit == GRID_TEAM and p.tier is Tier.grid
    assert p.escalation_level == 1
    assert event.causation_id == str(d.event_id)
    assert event.actor == Actor.system("escalation")


def test_the_missed_event_id_depends_on_the_deadline_not_on_when_it_was_seen() -> None:
    case, _ = dispatched_case()
    accept = case.timer(DeadlineKind.accept)
    resolve = case.timer(DeadlineKind.resolve)
    late = T0 + timedelta(days=2)

    first = missed_event(case.state, accept, T0 + timedelta(seconds=66))
    again = missed_event(case.state, accept, late)
    other = missed_event(case.state, resolve, late)

    assert first is not None and again is not None and other is not None
    assert first.event_id == again.event_id
    assert other.event_id != first.event_id


def test_nothing_is_reported_before_the_due_time() -> None:
    case, _ = dispatched_case()

    assert missed_event(case.state, case.timer(DeadlineKind.accept),
                        T0 + timedelta(seconds=64)) is None


def test_a_deadline_met_a_moment_ago_is_not_reported() -> None:
    case, d = dispatched_case()
    timer = case.timer(DeadlineKind.accept)
    case.add(accepted(d, T0 + timedelta(seconds=64)))

    assert missed_event(case.state, timer, T0 + timedelta(seconds=70)) is None


def test_a_deadline_is_reported_missed_once() -> None:
    case, _ = dispatched_case()
    timer = case.timer(DeadlineKind.accept)
    now = T0 + timedelta(seconds=70)
    case.add(missed_event(case.state, timer, now))

    assert decide_missed(timer, now + timedelta(seconds=5))(case.state) == ()


def test_a_replaced_deadline_is_not_reported() -> None:
    case, d = dispatched_case()
    old = case.timer(DeadlineKind.accept)
    case.add(dispatched(d, T0 + timedelta(seconds=30), unit=COMMITTEE, tier=Tier.community))

    assert missed_event(case.state, old, T0 + timedelta(minutes=5)) is None


def test_a_missed_resolve_after_an_escalation_climbs_from_the_current_level() -> None:
    case, d = dispatched_case()
    d2 = case.add(dispatched(d, T0 + timedelta(minutes=2), unit=STREET, tier=Tier.street,
                             escalation=True, level=2))
    case.add(accepted(d2, T0 + timedelta(minutes=2, seconds=30), unit=STREET))

    event = missed_event(case.state, case.timer(DeadlineKind.resolve), T0 + timedelta(days=2))

    assert event is not None
    assert event.payload.escalation_level == 3
    assert event.payload.tier is Tier.street and event.payload.assignee_unit == STREET


def test_a_missed_callback_keeps_the_escalation_level() -> None:
    case, d = dispatched_case()
    d2 = case.add(dispatched(d, T0 + timedelta(minutes=2), unit=COMMITTEE, tier=Tier.community,
                             escalation=True, level=1))
    a = case.add(accepted(d2, T0 + timedelta(minutes=3), unit=COMMITTEE))
    c = case.add(closed(a, T0 + timedelta(hours=2)))
    case.add(callback_scheduled(c, T0 + timedelta(hours=2), T0 + timedelta(hours=26)))

    event = missed_event(case.state, case.timer(DeadlineKind.callback), T0 + timedelta(hours=27))

    assert event is not None
    assert event.payload.deadline is DeadlineKind.callback
    assert event.payload.escalation_level == 1
    assert event.payload.assignee_unit is None


@given(offset=st.integers(min_value=0, max_value=3 * 86400))
def test_once_recorded_no_instant_reports_it_again(offset: int) -> None:
    case, _ = dispatched_case()
    timer = case.timer(DeadlineKind.accept)
    case.add(missed_event(case.state, timer, T0 + timedelta(seconds=65)))

    assert missed_event(case.state, timer, T0 + timedelta(seconds=65 + offset)) is None


# --- DeadlineApproaching -----------------------------------------------------------------


def test_a_warning_goes_out_once_from_eighty_percent_until_due() -> None:
    case, _ = dispatched_case(accept_in=timedelta(seconds=100))
    timer = case.timer(DeadlineKind.accept)  # set at T0+5s, due T0+105s, warn at T0+85s

    assert warning_event(case.state, timer, T0 + timedelta(seconds=84)) is None
    warning = warning_event(case.state, timer, T0 + timedelta(seconds=85))
    assert warning is not None
    assert warning.payload.warned_at == T0 + timedelta(seconds=85)
    assert warning.payload.due_at == T0 + timedelta(seconds=105)
    assert warning_event(case.state, timer, T0 + timedelta(seconds=105)) is None

    case.add(warning)
    assert warning_event(case.state, timer, T0 + timedelta(seconds=90)) is None
    # A warned deadline is still reported when it is missed.
    assert missed_event(case.state, timer, T0 + timedelta(seconds=105)) is not None


def test_warning_and_miss_of_one_deadline_have_different_ids() -> None:
    case, _ = dispatched_case(accept_in=timedelta(seconds=100))
    timer = case.timer(DeadlineKind.accept)

    warning = warning_event(case.state, timer, T0 + timedelta(seconds=90))
    miss = missed_event(case.state, timer, T0 + timedelta(seconds=110))

    assert warning is not None and miss is not None
    assert warning.event_id != miss.event_id


# --- the overdue list --------------------------------------------------------------------


def test_a_case_is_overdue_from_its_first_miss_until_closed() -> None:
    case, d = dispatched_case()
    assert overdue_after(None, d, case.state) is None

    m = case.add(missed_event(case.state, case.timer(DeadlineKind.accept),
                              T0 + timedelta(seconds=70)))
    entry = overdue_after(None, m, case.state)
    assert entry is not None
    assert (entry.unit_code, entry.escalation_level, entry.missed_count) == (GRID_TEAM, 1, 1)
    assert entry.first_missed_at == T0 + timedelta(seconds=70)
    assert entry.last_missed_kind is DeadlineKind.accept

    d2 = case.add(dispatched(m, T0 + timedelta(seconds=75), unit=COMMITTEE, tier=Tier.community,
                             escalation=True, level=1))
    entry = overdue_after(entry, d2, case.state)
    assert entry is not None
    assert (entry.unit_code, entry.tier, entry.escalation_level) == (COMMITTEE, "community", 1)
    assert entry.status == "dispatched"

    a = case.add(accepted(d2, T0 + timedelta(seconds=80), unit=COMMITTEE))
    entry = overdue_after(entry, a, case.state)
    assert entry is not None and entry.status == "accepted"

    c = case.add(closed(a, T0 + timedelta(hours=1)))
    assert overdue_after(entry, c, case.state) is None


def test_a_missed_callback_is_overdue_until_rated() -> None:
    case, d = dispatched_case()
    a = case.add(accepted(d, T0 + timedelta(seconds=30)))
    c = case.add(closed(a, T0 + timedelta(hours=1)))
    case.add(callback_scheduled(c, T0 + timedelta(hours=1), T0 + timedelta(hours=25)))
    m = case.add(missed_event(case.state, case.timer(DeadlineKind.callback),
                              T0 + timedelta(hours=26)))

    entry = overdue_after(None, m, case.state)
    assert entry is not None and entry.status == "closed"
    assert entry.escalation_level == 0

    r = case.add(rated(m, T0 + timedelta(hours=27)))
    assert overdue_after(entry, r, case.state) is None


# --- report-in (报到率) -------------------------------------------------------------------


def test_an_escalated_case_accepted_by_its_unit_counts_as_reported_in() -> None:
    case, d = dispatched_case()
    assert escalation_dispatch(d) is None  # an ordinary dispatch is no whistle

    d2 = case.add(dispatched(d, T0 + timedelta(minutes=2), unit=COMMITTEE, tier=Tier.community,
                             escalation=True, level=1))
    whistle = escalation_dispatch(d2)
    assert whistle is not None
    assert (whistle.unit_code, whistle.tier, whistle.escalation_level) == (COMMITTEE,
                                                                           "community", 1)

    a = case.add(accepted(d2, T0 + timedelta(minutes=2, seconds=30), unit=COMMITTEE))
    answered = reported_in(case.before, a, whistle)
    assert answered is not None
    assert answered.accepted_at == T0 + timedelta(minutes=2, seconds=30)
    assert answered.on_time is True


def test_a_late_acceptance_is_a_report_in_but_not_on_time() -> None:
    case, d = dispatched_case()
    d2 = case.add(dispatched(d, T0 + timedelta(minutes=2), unit=COMMITTEE, tier=Tier.community,
                             escalation=True, level=1))
    a = case.add(accepted(d2, T0 + timedelta(minutes=10), unit=COMMITTEE))

    answered = reported_in(case.before, a, escalation_dispatch(d2))

    assert answered is not None and answered.on_time is False


def test_a_unit_passed_over_before_accepting_has_not_reported_in() -> None:
    case, d = dispatched_case()
    d2 = case.add(dispatched(d, T0 + timedelta(minutes=2), unit=COMMITTEE, tier=Tier.community,
                             escalation=True, level=1))
    d3 = case.add(dispatched(d2, T0 + timedelta(minutes=4), unit=STREET, tier=Tier.street,
                             escalation=True, level=2))
    a = case.add(accepted(d3, T0 + timedelta(minutes=5), unit=STREET))

    assert reported_in(case.before, a, escalation_dispatch(d2)) is None
    assert reported_in(case.before, a, escalation_dispatch(d3)) is not None


def test_an_acceptance_by_another_unit_is_not_the_units_report_in() -> None:
    case, d = dispatched_case()
    d2 = case.add(dispatched(d, T0 + timedelta(minutes=2), unit=COMMITTEE, tier=Tier.community,
                             escalation=True, level=1))
    a = case.add(accepted(d2, T0 + timedelta(minutes=3), unit=STREET))

    assert reported_in(case.before, a, escalation_dispatch(d2)) is None


def test_report_in_rate() -> None:
    assert rate(0, 0) is None
    assert rate(3, 4) == 0.75
    assert rate(60, 60) == 1.0

