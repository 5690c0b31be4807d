"""What the events mean for a case, on plain data: given events, then state."""

from __future__ import annotations

from datetime import timedelta

from gridloop_events.case_projection import state_from_json, state_to_json
from gridloop_events.catalogue import CallbackRated, CallbackScheduled, DeadlineMissed
from gridloop_events.envelope import Actor
from gridloop_events.lifecycle import CaseState, Status, fold
from gridloop_events.testing import T0, accepted, closed, dispatched, reported, stored
from gridloop_events.vocabulary import CallbackMethod, DeadlineKind, Rating


def test_a_new_report_is_reported_with_its_grid() -> None:
    state = fold(stored([reported("c1")]))
    assert state.status is Status.reported
    assert state.grid == "370105001007012" and state.version == 1 and state.events == 1


def test_dispatch_sets_accept_and_resolve_deadlines_for_the_unit() -> None:
    r = reported("c1")
    d = dispatched(r)
    state = fold(stored([r, d]))
    assert state.status is Status.dispatched and state.unit_code == "GT-370105001007012"
    assert set(state.deadlines) == {DeadlineKind.accept, DeadlineKind.resolve}
    assert state.deadlines[DeadlineKind.accept].due_at == T0 + timedelta(minutes=1)
    assert state.deadlines[DeadlineKind.accept].id == f"accept:{d.event_id}"


def test_accept_clears_the_accept_deadline_and_names_the_first_responsible() -> None:
    r = reported("c1")
    d = dispatched(r)
    state = fold(stored([r, d, accepted(d, handler="gw-1"), accepted(d, handler="gw-2")]))
    assert state.status is Status.accepted and state.handler_id == "gw-1"
    assert set(state.deadlines) == {DeadlineKind.resolve}


def test_missed_deadline_is_recorded_once_and_raises_the_level() -> None:
    r = reported("c1")
    d = dispatched(r)
    missed = d.caused(
        DeadlineMissed(
            deadline=DeadlineKind.accept,
            deadline_id=f"accept:{d.event_id}",
            due_at=T0 + timedelta(minutes=1),
            detected_at=T0 + timedelta(minutes=2),
            assignee_unit="GT-370105001007012",
            escalation_level=1,
        ),
        actor=Actor.system("escalation"),
        purpose="missed",
    )
    state = fold(stored([r, d, missed]))
    assert state.missed == {f"accept:{d.event_id}"}
    assert state.escalation_level == 1
    assert DeadlineKind.accept not in state.deadlines


def test_closing_then_unsatisfied_rating_reopens_the_case() -> None:
    r = reported("c1")
    d = dispatched(r)
    c = closed(d)
    sched = c.caused(CallbackScheduled(due_at=T0 + timedelta(days=2), round=1),
                     actor=Actor.system("feedback"), purpose="callback")
    rated = sched.caused(
        CallbackRated(rating=Rating.unsatisfied, handled_lawfully=True,
                      measures_carried_out=False, party_accepts=False,
                      method=CallbackMethod.phone, rated_by="op-1"),
        actor=Actor(kind="operator", id="op-1"),
        purpose="rate",
    )
    state = fold(stored([r, d, c, sched]))
    assert state.status is Status.closed and DeadlineKind.callback in state.deadlines
    state = fold(stored([r, d, c, sched, rated]))
    assert state.status is Status.reopened and state.unsatisfied_count == 1
    assert state.deadlines == {}


def test_state_survives_its_json_form() -> None:
    r = reported("c1")
    d = dispatched(r)
    state = fold(stored([r, d, accepted(d)]))
    assert state_from_json(state_to_json(state)) == state
    assert state_from_json(state_to_json(CaseState())) == CaseState()
