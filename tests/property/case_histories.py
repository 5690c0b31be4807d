"""Hypothesis strategies for case histories: what a resident, a handler, a supervisor or the
callback desk may do next, given where a case stands.

Every strategy here takes the case's state folded from the log, so what it draws is a command
the services must accept; it never guesses a reaction (triage, escalation, 重办, the callback
schedule) — those happen in the services. A `Step` is plain data, printable as one line of the
history a failing example reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gridloop_district import OTHER_CATEGORY, District
from gridloop_events.envelope import utcnow
from gridloop_events.lifecycle import CaseState, Status
from gridloop_events.vocabulary import (
    CallbackMethod,
    Channel,
    DeadlineKind,
    Outcome,
    Rating,
    Severity,
)
from hypothesis import strategies as st

# One category of each kind, so triage sends cases to every tier, plus OTHER (the dispatchers'
# queue) and an item that a critical severity turns into a major matter.
CATEGORIES = ("CM-0101", "CM-0103", "CM-0104", "SF-0103", "WF-0201", "SF-0101", OTHER_CATEGORY)
GRIDS_USED = 6
HANDLERS = ("gw-1", "gw-2", "cc-1", "so-1", "dep-1")


@dataclass(frozen=True)
class Step:
    """One command: which service, which route, which body; `case` is None for a report."""

    service: str
    action: str
    path: str
    body: dict[str, Any]
    case: str | None = None
    unit: str | None = None  # the unit the case is with, when the command is that unit's

    def describe(self, names: dict[str, str]) -> str:
        who = names.get(self.case, self.case) if self.case else "new case"
        brief = {k: v for k, v in self.body.items()
                 if k not in ("description", "reporter", "resolution", "reason", "note",
                              "comment")}
        return f"{who}: {self.action} {brief}"


@dataclass(frozen=True)
class Miss:
    """Move escalation's clock past one live deadline of a case (and so past every earlier one)."""

    case: str
    kind: DeadlineKind
    due_at: datetime

    def describe(self, names: dict[str, str]) -> str:
        return f"clock past {names.get(self.case, self.case)}'s {self.kind.value} deadline"


# --- reports -----------------------------------------------------------------------------------


def reports(district: District) -> st.SearchStrategy[Step]:
    grids = [g.code for g in district.grids[:GRIDS_USED]]
    location = st.one_of(
        st.builds(lambda g: {"grid_code": g}, st.sampled_from(grids)),
        # An address alone names no grid: dispatch queues the case for a human dispatcher.
        st.just({"address": "东关大街12号院"}),
    )
    return st.builds(
        lambda channel, category, severity, where, named: Step(
            "intake", "report", "/v1/cases",
            {
                "channel": channel.value,
                "category_code": category,
                "description": "楼道堆放杂物",
                "location": where,
                "severity": severity.value,
                **({"reporter": {"name": "王五", "phone": "13800000000"}} if named else {}),
            },
        ),
        st.sampled_from([c for c in Channel if c is not Channel.open311]),
        st.sampled_from(CATEGORIES),
        st.sampled_from(list(Severity)),
        location,
        st.booleans(),
    )


# --- what can happen to a case -----------------------------------------------------------------


def candidate_units(state: CaseState, district: District) -> list[str]:
    """Units a dispatcher may hand the case to by hand, from the grid up to a department."""
    units: list[str] = []
    if state.grid is not None:
        units.append(district.grid_team(state.grid).code)
        units.append(district.committee(district.community_of(state.grid).code).code)
        units.append(district.street_office(district.street_of(state.grid).code).code)
    category = state.category_code or OTHER_CATEGORY
    try:
        units.append(district.department_for(category).code)
    except LookupError:
        units.append("DEP-URBAN")
    return [u for u in dict.fromkeys(units)
            if not (state.status in (Status.dispatched, Status.accepted) and u == state.unit_code)]


def _post(case: str, action: str, body: dict[str, Any], service: str = "dispatch",
          unit: str | None = None) -> Step:
    route = {"decide": "extension/decision", "rate": "callback"}.get(action, action)
    return Step(service, action, f"/v1/cases/{case}/{route}", body, case, unit=unit)


def case_steps(state: CaseState, district: District, others: list[str]
               ) -> st.SearchStrategy[Step] | None:
    """What may be done to this case now, or None when nothing is (it is done, or waiting for a
    service's reaction, which a settled system never leaves it waiting for)."""
    case = state.case_id
    handler = st.sampled_from(HANDLERS)
    options: list[st.SearchStrategy[Step]] = []

    # The loop's way forward comes first, so the simplest example hypothesis draws is the happy
    # path of every case; the detours follow.
    if state.status is Status.dispatched:
        options.append(st.builds(
            lambda who: _post(case, "accept", {"unit_code": state.unit_code, "handler_id": who}),
            handler))
    if state.status in (Status.dispatched, Status.accepted):
        options.append(closures(case, state.unit_code, [o for o in others if o != case]))
    if state.status is Status.closed:
        options.append(ratings(case))
    if state.status in (Status.triage, Status.dispatched, Status.accepted):
        units = candidate_units(state, district)
        if units:
            options.append(st.builds(
                lambda u: _post(case, "dispatch", {"unit_code": u, "reason": "dispatcher's call"}),
                st.sampled_from(units)))
    if state.status in (Status.dispatched, Status.accepted):
        unit = state.unit_code
        if state.pending_extension is not None:
            options.append(extension_decisions(case, state.pending_extension))
        resolve = state.deadline(DeadlineKind.resolve)
        if state.pending_extension is None and resolve is not None and resolve.due_at > utcnow():
            options.append(st.builds(
                lambda hours, who: _post(case, "extension", {
                    "unit_code": unit, "handler_id": who,
                    "requested_resolve_due": (resolve.due_at + timedelta(hours=hours)).isoformat(),
                    "reason": "需要协调物业"}),
                st.integers(1, 72), handler))
        options.append(st.builds(
            lambda who: _post(case, "return", {"unit_code": unit, "handler_id": who,
                                               "reason": "不属于本单位职责"}),
            handler))
    if state.is_open:
        options.append(st.builds(
            lambda who: _post(case, "notes", {"author_id": who, "note": "已到现场查看"}),
            handler))

    return st.one_of(options) if options else None


def closures(case: str, unit: str | None, others: list[str]) -> st.SearchStrategy[Step]:
    plain = st.builds(
        lambda outcome, named, who: _post(case, "close", {
            "outcome": outcome.value, "resolution": "已清理完毕",
            "closed_by": who, **({"unit_code": unit} if named and unit else {})}, unit=unit),
        st.sampled_from([Outcome.resolved, Outcome.answered, Outcome.invalid]),
        st.booleans(), st.sampled_from(HANDLERS))
    if not others:
        return plain
    duplicate = st.builds(
        lambda original: _post(case, "close", {
            "outcome": Outcome.duplicate.value, "resolution": "与已有工单重复",
            "duplicate_of": original}, unit=unit),
        st.sampled_from(others))
    return st.one_of(plain, duplicate)


def extension_decisions(case: str, request_event_id: str) -> st.SearchStrategy[Step]:
    return st.builds(
        lambda approved, name_request: _post(case, "decide", {
            "approved": approved, "supervisor_id": "sup-1",
            "note": "同意" if approved else "不同意",
            **({"request_event_id": request_event_id} if name_request else {})}),
        st.booleans(), st.booleans())


def ratings(case: str) -> st.SearchStrategy[Step]:
    return st.builds(
        lambda rating, lawful, done, accepts, method, said: _post(case, "rate", {
            "rating": rating.value, "handled_lawfully": lawful,
            "measures_carried_out": done, "party_accepts": accepts,
            "method": method.value, "rated_by": "callback-1",
            **({"comment": "回访"} if said else {})}, service="feedback"),
        # Unsatisfied twice as often: its 重办 and, the second time, escalation are the detours.
        st.sampled_from([Rating.satisfied, Rating.unsatisfied, Rating.basically_satisfied,
                         Rating.unsatisfied]),
        st.booleans(), st.booleans(), st.booleans(),
        st.sampled_from(list(CallbackMethod)), st.booleans())


def misses(states: list[CaseState]) -> st.SearchStrategy[Miss] | None:
    """Any live deadline of any case; passing it passes every deadline due before it too."""
    live = [Miss(s.case_id, d.kind, d.due_at)
            for s in states for d in s.deadlines.values() if d.id not in s.missed]
    live.sort(key=lambda m: (m.due_at, m.case, m.kind.value))
    return st.sampled_from(live) if live else None
