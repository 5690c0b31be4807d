"""Dispatch's rules on plain data: given events (folded into CaseState), when a reaction or a
command, then the events it records. No I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from gridloop_district import District, default_district
from gridloop_dispatch.domain import (
    AcceptCase,
    CloseCase,
    DecideExtension,
    DispatchCase,
    NoteProgress,
    RequestExtension,
    ReturnCase,
    decide_accept,
    decide_close,
    decide_dispatch,
    decide_extension,
    decide_extension_request,
    decide_note,
    decide_return,
    react,
)
from gridloop_events.catalogue import (
    CallbackRated,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    CaseReturned,
    CaseTriageQueued,
    DeadlineMissed,
    ExtensionDecided,
    ExtensionRequested,
    GridPath,
    Location,
    ProgressNoted,

)
from gridloop_events.envelope import Actor, Envelope, Payload, StoredEvent
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

T0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


@pytest.fixture(scope="module")
def d() -> District:
    return default_district()


@pytest.fixture(scope="module")
def grid(d: District) -> str:
    return d.grids[0].code


@pytest.fixture(scope="module")
def units(d: District, grid: str) -> dict[Tier, str]:
    return {
        Tier.grid: d.grid_team(grid).code,
        Tier.community: d.committee(d.community_of(grid).code).code,
        Tier.street: d.street_office(d.street_of(grid).code).code,
    }


class Case:
    """A case's history, built one event at a time, with the stream sequences it would get."""

    def __init__(self, d: District, case_id: str = "C-1") -> None:
        self.d = d
        self.case_id = case_id
        self.history: list[StoredEvent] = []

    def _store(self, envelope: Envelope) -> StoredEvent:
        stored = StoredEvent(sequence=len(self.history) + 1, subject="t", envelope=envelope)
        self.history.append(stored)
        return stored

    def add(self, payload: Payload, at: datetime, actor: Actor | None = None) -> StoredEvent:
        return self._store(
            Envelope.new(
                payload,
                case_id=self.case_id,
                district=self.d.code,
                actor=actor or Actor.system("test"),
                correlation_id="corr-1",
                occurred_at=at,
            )
        )

    def record(self, envelopes: list[Envelope]) -> None:
        for e in envelopes:
            self._store(e)

    @property
    def state(self) -> CaseState:
        return fold(self.history)

    def report(
        self,
        category: str,
        severity: Severity = Severity.normal,
        grid: str | None = None,
        at: datetime = T0,
        lat: float | None = None,
        lon: float | None = None,
    ) -> StoredEvent:
        path = None
        if grid is not None:
            p = self.d.grid_path(grid)
            path = GridPath(district=p.district, street=p.street, community=p.community,
                            compound=p.compound, grid=p.grid)
        return self.add(
            CaseReported(
                channel=Channel.hotline,
                category_code=category,
                description="a report",
                location=Location(grid_path=path, lat=lat, lon=lon),
                severity=severity,
            ),
            at,
        )

    def react_to(self, stored: StoredEvent) -> list[Envelope]:
        """The reaction as the live runner runs it: state before the event, state after it."""
        i = self.history.index(stored)
        return react(stored, fold(self.history[:i]), fold(self.history[: i + 1]), self.d)

    def react_and_record(self, stored: StoredEvent) -> list[Envelope]:
        out = self.react_to(stored)
        self.record(out)
        return out

    def miss(self, kind: DeadlineKind, at: datetime, level: int = 1,
             deadline_id: str | None = None) -> StoredEvent:
        state = self.state
        live = state.deadline(kind)
        return self.add(
            DeadlineMissed(
                deadline=kind,
                deadline_id=deadline_id or live.id,
                due_at=live.due_at if live else at,
                detected_at=at,
                assignee_unit=state.unit_code,
                tier=state.tier,
                escalation_level=level,
            ),
            at,
            Actor.system("escalation"),
        )

    def rate(self, rating: Rating, at: datetime) -> StoredEvent:
        return self.add(
            CallbackRated(rating=rating, handled_lawfully=True, measures_carried_out=True,
                          party_accepts=rating is not Rating.unsatisfied,
                          method=CallbackMethod.phone, rated_by="op-1"),
            at,
        )


def only(events: list[Envelope], kind: type[Payload]) -> Payload:
    assert len(events) == 1, events
    assert isinstance(events[0].payload, kind), events[0].payload
    return events[0].payload


def dispatched_case(d: District, grid: str, category: str = "CM-0102") -> Case:
    case = Case(d)
    case.react_and_record(case.report(category, grid=grid))
    assert case.state.status is Status.dispatched
    return case


# --- triage: every tier ------------------------------------------------------------------------


def test_general_goes_to_the_grid_team_with_the_default_limits(d, grid, units) -> None:
    case = Case(d)
    events = case.react_to(case.report("CM-0102", grid=grid))
    p = only(events, CaseDispatched)
    assert (p.unit_code, p.tier, p.kind, p.urgent) == (units[Tier.grid], Tier.grid,
                                                      ProblemKind.general, False)
    assert p.deadlines.accept_due == T0 + MINUTE
    assert p.deadlines.resolve_due == T0 + DAY
    assert not p.escalation and not p.redispatch and p.escalation_level == 0
    e = events[0]
    assert e.actor == Actor.system("dispatch")
    assert e.causation_id == str(case.history[0].envelope.event_id)
    assert e.occurred_at == T0


def test_coordination_goes_to_the_community_committee(d, grid, units) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("CM-0103", grid=grid)), CaseDispatched)
    assert (p.unit_code, p.tier, p.kind) == (units[Tier.community], Tier.community,
                                            ProblemKind.coordination)


def test_district_wide_goes_to_the_competent_department(d, grid) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("CM-0106", grid=grid)), CaseDispatched)
    assert (p.unit_code, p.tier, p.kind) == ("DEP-URBAN", Tier.district, ProblemKind.district_wide)
    assert p.deadlines.resolve_due == T0 + 3 * DAY


def test_district_wide_needs_no_grid(d) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("EV-0301")), CaseDispatched)
    assert (p.unit_code, p.tier) == ("DEP-ECOLOGY", Tier.district)


def test_major_goes_to_community_leadership_at_once_and_urgent(d, grid, units) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("SF-0103", grid=grid)), CaseDispatched)
    assert (p.unit_code, p.tier, p.kind, p.urgent) == (units[Tier.community], Tier.community,
                                                      ProblemKind.major, True)
    assert p.deadlines.accept_due == T0 + timedelta(seconds=30)
    assert p.deadlines.resolve_due == T0 + 2 * HOUR


def test_approval_goes_to_the_street_office(d, grid, units) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("WF-0201", grid=grid)), CaseDispatched)
    assert (p.unit_code, p.tier, p.kind) == (units[Tier.street], Tier.street, ProblemKind.approval)
    assert p.deadlines.resolve_due == T0 + 15 * DAY


@pytest.mark.parametrize(
    ("severity", "tier", "kind", "urgent", "resolve"),
    [
        (Severity.normal, Tier.grid, ProblemKind.general, False, 4 * HOUR),
        (Severity.high, Tier.community, ProblemKind.coordination, False, 4 * HOUR),
        (Severity.critical, Tier.community, ProblemKind.major, True, HOUR),
    ],
)
def test_severity_overrides_kind_and_limits(d, grid, units, severity, tier, kind, urgent,
                                            resolve) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("CM-0108", severity, grid=grid)), CaseDispatched)
    assert (p.unit_code, p.tier, p.kind, p.urgent) == (units[tier], tier, kind, urgent)
    assert p.deadlines.resolve_due == T0 + resolve


def test_severity_override_of_limits_only(d, grid, units) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("CM-0101", Severity.high, grid=grid)), CaseDispatched)
    assert (p.unit_code, p.kind) == (units[Tier.grid], ProblemKind.general)
    assert p.deadlines.resolve_due == T0 + 4 * HOUR


# --- triage: what the rules cannot place waits for a dispatcher --------------------------------


def test_other_goes_to_the_triage_queue_with_the_dispatch_deadline(d, grid) -> None:
    case = Case(d)
    events = case.react_to(case.report("OTHER", grid=grid))
    p = only(events, CaseTriageQueued)
    assert p.reason is TriageReason.uncategorised
    assert p.dispatch_due == T0 + timedelta(minutes=15)
    case.record(events)
    assert case.state.status is Status.triage


def test_unknown_category_goes_to_the_triage_queue(d, grid) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("NO-SUCH", grid=grid)), CaseTriageQueued)
    assert p.reason is TriageReason.uncategorised
    assert "NO-SUCH" in p.detail


def test_no_grid_goes_to_the_triage_queue(d) -> None:
    case = Case(d)
    p = only(case.react_to(case.report("CM-0102")), CaseTriageQueued)
    assert p.reason is TriageReason.no_grid


def test_coordinates_locate_the_grid_when_the_path_is_missing(d) -> None:
    g = d.grids[5]
    case = Case(d)
    p = only(case.react_to(case.report("CM-0102", lat=g.lat, lon=g.lon)), CaseDispatched)
    assert p.unit_code == d.grid_team(g.code).code


def test_triage_is_idempotent_and_only_for_a_new_report(d, grid) -> None:
    case = Case(d)
    reported = case.report("CM-0102", grid=grid)
    first, again = case.react_to(reported), case.react_to(reported)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert first[0].model_dump() == again[0].model_dump()
    case.record(first)
    # Redelivered after the dispatch was recorded: nothing more.
    assert react(reported, CaseState(), case.state, d) == []


def test_another_districts_case_is_left_alone(d, grid) -> None:
    case = Case(d)
    reported = case.report("CM-0102", grid=grid)
    state = fold(case.history)
    assert react(reported, CaseState(), replace(state, district="999999"), d) == []


# --- supervision: a missed deadline climbs the ladder ------------------------------------------


def test_missed_accept_at_the_grid_goes_to_the_community(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    missed_at = T0 + 2 * MINUTE
    events = case.react_to(case.miss(DeadlineKind.accept, missed_at, level=1))
    p = only(events, CaseDispatched)
    assert (p.unit_code, p.tier) == (units[Tier.community], Tier.community)
    assert p.escalation and not p.redispatch
    assert p.escalation_level == 1
    assert p.previous_unit == units[Tier.grid]
    assert "accept deadline missed" in p.reason
    assert p.deadlines.accept_due == missed_at + MINUTE
    assert p.deadlines.resolve_due == missed_at + DAY
    assert events[0].occurred_at == missed_at


def test_the_ladder_climbs_to_the_department_and_stays_there(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    at = T0
    seen = []
    for level in range(1, 5):
        at += 2 * MINUTE
        p = only(case.react_and_record(case.miss(DeadlineKind.accept, at, level)), CaseDispatched)
        seen.append((p.unit_code, p.tier, p.escalation_level))
    assert seen == [
        (units[Tier.community], Tier.community, 1),
        (units[Tier.street], Tier.street, 2),
        ("DEP-URBAN", Tier.district, 3),
        ("DEP-URBAN", Tier.district, 4),
    ]
    assert "top of the ladder" in case.history[-1].envelope.payload.reason
    assert case.state.escalation_level == 4


def test_missed_resolve_while_accepted_climbs_too(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    case.add(CaseAccepted(unit_code=units[Tier.grid], handler_id="w-1"), T0 + timedelta(seconds=30))
    p = only(case.react_to(case.miss(DeadlineKind.resolve, T0 + DAY + MINUTE)), CaseDispatched)
    assert p.unit_code == units[Tier.community]
    assert "resolve deadline missed" in p.reason


def test_a_stale_deadline_id_is_ignored(d, grid) -> None:
    case = dispatched_case(d, grid)
    stale = case.miss(DeadlineKind.accept, T0 + 2 * MINUTE, deadline_id="accept:not-the-live-one")
    assert case.react_to(stale) == []


def test_a_repeated_miss_is_ignored(d, grid) -> None:
    case = dispatched_case(d, grid)
    live = case.state.deadline(DeadlineKind.accept).id
    first = case.miss(DeadlineKind.accept, T0 + 2 * MINUTE)
    case.react_and_record(first)
    # The escalation service reports the old deadline again: it is no longer the live one.
    again = case.miss(DeadlineKind.accept, T0 + 3 * MINUTE, deadline_id=live)
    assert case.react_to(again) == []


def test_a_miss_after_acceptance_or_closure_is_ignored(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    missed = case.miss(DeadlineKind.accept, T0 + 2 * MINUTE)
    before = fold(case.history[:-1])
    # Accepted late, before the reaction ran: the unit keeps the case.
    case.add(CaseAccepted(unit_code=units[Tier.grid], handler_id="w-1"), T0 + 3 * MINUTE)
    assert react(missed, before, case.state, d) == []

    closed = dispatched_case(d, grid)
    closed.add(CaseClosed(outcome=Outcome.resolved, resolution="done", closed_by="w-1"),
               T0 + HOUR)
    missed = closed.miss(DeadlineKind.resolve, T0 + DAY, deadline_id="resolve:x")
    assert closed.react_to(missed) == []


def test_a_missed_dispatch_deadline_escalates_to_the_street_office(d, grid, units) -> None:
    case = Case(d)
    case.react_and_record(case.report("OTHER", grid=grid))
    at = T0 + 16 * MINUTE
    p = only(case.react_to(case.miss(DeadlineKind.dispatch, at, level=1)), CaseDispatched)
    assert (p.unit_code, p.tier) == (units[Tier.street], Tier.street)
    assert p.escalation and p.escalation_level == 1 and p.previous_unit is None
    assert "dispatch deadline missed" in p.reason
    assert p.deadlines.accept_due == at + MINUTE


def test_a_missed_dispatch_deadline_without_a_grid_goes_to_the_only_street(d, units) -> None:
    case = Case(d)
    case.react_and_record(case.report("CM-0102"))
    p = only(case.react_to(case.miss(DeadlineKind.dispatch, T0 + 16 * MINUTE)), CaseDispatched)
    assert p.unit_code == units[Tier.street]


def test_callback_deadlines_are_not_dispatchs_business(d, grid) -> None:
    case = dispatched_case(d, grid)
    missed = case.add(
        DeadlineMissed(deadline=DeadlineKind.callback, deadline_id="callback:x", due_at=T0,
                       detected_at=T0, escalation_level=1),
        T0 + HOUR,
    )
    assert case.react_to(missed) == []


# --- 重办: unsatisfied callbacks ----------------------------------------------------------------


def closed_case(d: District, grid: str) -> Case:
    case = dispatched_case(d, grid)
    case.add(CaseClosed(outcome=Outcome.resolved, resolution="cleared", closed_by="w-1"), T0 + HOUR)
    return case


def test_first_unsatisfied_rating_redoes_with_the_same_unit(d, grid, units) -> None:
    case = closed_case(d, grid)
    at = T0 + 2 * HOUR
    p = only(case.react_to(case.rate(Rating.unsatisfied, at)), CaseDispatched)
    assert p.unit_code == units[Tier.grid] and p.tier is Tier.grid
    assert p.redispatch and not p.escalation
    assert p.escalation_level == 0
    assert p.deadlines.resolve_due == at + DAY


def test_second_unsatisfied_rating_climbs_one_tier(d, grid, units) -> None:
    case = closed_case(d, grid)
    case.react_and_record(case.rate(Rating.unsatisfied, T0 + 2 * HOUR))
    case.add(CaseClosed(outcome=Outcome.resolved, resolution="again", closed_by="w-1"),
             T0 + 3 * HOUR)
    p = only(case.react_to(case.rate(Rating.unsatisfied, T0 + 4 * HOUR)), CaseDispatched)
    assert (p.unit_code, p.tier) == (units[Tier.community], Tier.community)
    assert p.escalation and not p.redispatch
    assert p.escalation_level == 1
    assert p.previous_unit == units[Tier.grid]


def test_a_satisfied_rating_needs_nothing(d, grid) -> None:
    case = closed_case(d, grid)
    assert case.react_to(case.rate(Rating.satisfied, T0 + 2 * HOUR)) == []


# --- commands ----------------------------------------------------------------------------------


def test_accept_by_the_assignee_then_again_is_idempotent(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    cmd = AcceptCase(unit_code=units[Tier.grid], handler_id="w-1")
    p = only_payload(decide_accept(case.state, cmd), CaseAccepted)
    case.add(p, T0 + timedelta(seconds=30))
    assert case.state.handler_id == "w-1"
    assert decide_accept(case.state, AcceptCase(unit_code=units[Tier.grid], handler_id="w-2")) == []


def test_accept_refusals(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    with pytest.raises(DomainError) as e:
        decide_accept(case.state, AcceptCase(unit_code=units[Tier.street], handler_id="x"))
    assert e.value.status == 409 and e.value.field == "unit_code"
    with pytest.raises(DomainError) as e:
        decide_accept(CaseState(), AcceptCase(unit_code=units[Tier.grid], handler_id="x"))
    assert e.value.status == 404
    queued = Case(d)
    queued.react_and_record(queued.report("OTHER", grid=grid))
    with pytest.raises(DomainError) as e:
        decide_accept(queued.state, AcceptCase(unit_code=units[Tier.grid], handler_id="x"))
    assert e.value.status == 409


def only_payload(payloads: list[Payload], kind: type[Payload]) -> Payload:
    assert len(payloads) == 1 and isinstance(payloads[0], kind), payloads
    return payloads[0]


def test_return_sends_the_case_to_triage_with_a_dispatch_deadline(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    now = T0 + 5 * MINUTE
    p = only_payload(
        decide_return(case.state, ReturnCase(unit_code=units[Tier.grid], handler_id="w-1",
                                             reason="not ours"), now, d),
        CaseReturned,
    )
    assert p.dispatch_due == now + 15 * MINUTE
    case.add(p, now)
    assert case.state.status is Status.triage and case.state.unit_code is None


def test_extension_request_and_approval_move_the_resolve_deadline(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    unit = units[Tier.grid]
    now = T0 + HOUR
    wanted = T0 + 3 * DAY
    req = only_payload(
        decide_extension_request(case.state, RequestExtension(
            unit_code=unit, handler_id="w-1", requested_resolve_due=wanted, reason="parts"), now),
        ExtensionRequested,
    )
    stored = case.add(req, now)
    with pytest.raises(DomainError):  # one request at a time
        decide_extension_request(case.state, RequestExtension(
            unit_code=unit, handler_id="w-1", requested_resolve_due=wanted, reason="x"), now)
    pending = (str(stored.envelope.event_id), wanted)
    decision = only_payload(
        decide_extension(case.state, DecideExtension(approved=True, supervisor_id="s-1"),
                         now + MINUTE, pending),
        ExtensionDecided,
    )
    assert decision.resolve_due == wanted
    assert decision.request_event_id == str(stored.envelope.event_id)
    case.add(decision, now + MINUTE)
    assert case.state.deadline(DeadlineKind.resolve).due_at == wanted
    with pytest.raises(DomainError):  # nothing pending any more
        decide_extension(case.state, DecideExtension(approved=False, supervisor_id="s-1"),
                         now, pending)


def test_extension_refusals(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    unit = units[Tier.grid]
    late = T0 + DAY + MINUTE
    with pytest.raises(DomainError) as e:
        decide_extension_request(case.state, RequestExtension(
            unit_code=unit, handler_id="w", requested_resolve_due=late + DAY, reason="x"), late)
    assert e.value.status == 409
    with pytest.raises(DomainError) as e:
        decide_extension_request(case.state, RequestExtension(
            unit_code=unit, handler_id="w", requested_resolve_due=T0 + HOUR, reason="x"), T0)
    assert e.value.status == 422 and e.value.field == "requested_resolve_due"


def test_notes_only_on_open_cases(d, grid) -> None:
    case = dispatched_case(d, grid)
    only_payload(decide_note(case.state, NoteProgress(author_id="w-1", note="on site")),
                 ProgressNoted)
    case.add(CaseClosed(outcome=Outcome.answered, resolution="ok", closed_by="w"), T0 + HOUR)
    with pytest.raises(DomainError):
        decide_note(case.state, NoteProgress(author_id="w-1", note="late"))


def test_close_then_close_again_is_refused(d, grid, units) -> None:
    case = dispatched_case(d, grid)
    p = only_payload(
        decide_close(case.state, CloseCase(outcome=Outcome.resolved, resolution="cleared"), "op-9"),
        CaseClosed,
    )
    assert p.closed_by == "op-9" and p.unit_code == units[Tier.grid]
    case.add(p, T0 + HOUR)
    with pytest.raises(DomainError) as e:
        decide_close(case.state, CloseCase(outcome=Outcome.resolved, resolution="x"), "op-9")
    assert e.value.status == 409


def test_close_validation(d, grid) -> None:
    with pytest.raises(ValidationError):
        CloseCase(outcome="fixed", resolution="x")
    with pytest.raises(ValidationError):
        CloseCase(outcome=Outcome.duplicate, resolution="x")
    case = dispatched_case(d, grid)
    with pytest.raises(DomainError) as e:
        decide_close(case.state, CloseCase(outcome=Outcome.duplicate, resolution="x",
                                           duplicate_of=case.case_id), "op")
    assert e.value.status == 422
    p = decide_close(case.state, CloseCase(outcome=Outcome.duplicate, resolution="x",
                                           duplicate_of="C-0"), "op")[0]
    assert p.duplicate_of == "C-0"


def test_manual_dispatch_takes_the_tier_from_the_unit(d, grid, units) -> None:
    case = Case(d)
    case.react_and_record(case.report("OTHER", grid=grid))
    now = T0 + 5 * MINUTE
    p = only_payload(
        decide_dispatch(case.state, DispatchCase(unit_code="DEP-POLICE", reason="noise at night"),
                        now, d, "disp-1"),
        CaseDispatched,
    )
    assert (p.unit_code, p.tier, p.dispatcher) == ("DEP-POLICE", Tier.district, "disp-1")
    assert p.deadlines.accept_due == now + MINUTE
    assert not p.redispatch
    case.add(p, now)
    p2 = only_payload(
        decide_dispatch(case.state, DispatchCase(unit_code=units[Tier.community]), now, d, "disp-1"),
        CaseDispatched,
    )
    assert p2.tier is Tier.community and p2.redispatch and p2.previous_unit == "DEP-POLICE"
    with pytest.raises(DomainError) as e:
        decide_dispatch(case.state, DispatchCase(unit_code="NOPE"), now, d, "disp-1")
    assert e.value.status == 422 and e.value.field == "unit_code"
    with pytest.raises(DomainError) as e:
        decide_dispatch(case.state, DispatchCase(unit_code="DEP-POLICE"), now, d, "disp-1")
    assert e.value.status == 409
