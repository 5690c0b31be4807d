"""What dispatch does on its own when an event arrives: triage, escalation, re-dispatch (重办).

Each rule takes the event that caused it, the case's state just before that event (`before`),
the case's state now (`current`, at or after the event) and the district, and returns the
events to append, built with `caused(...)` so a redelivered cause re-emits the same ids.
`current` may be later than the cause (a reload after a conflict): every rule checks that
what it reacts to still holds there, and returns nothing otherwise.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gridloop_district import District, TimeLimits
from gridloop_events.catalogue import (
    CallbackRated,
    CaseDispatched,
    CaseReported,
    CaseTriageQueued,
    DeadlineMissed,
)
from gridloop_events.envelope import Actor, Envelope, StoredEvent
from gridloop_events.lifecycle import CaseState, Status
from gridloop_events.vocabulary import DeadlineKind, Rating, Tier, TriageReason

from .placement import (
    Placement,
    Unplaceable,
    deadlines_from,
    dispatch_due_from,
    find_unit,
    kind_for,
    limits_for,
    place,
    street_office_for,
    unit_above,
)

ACTOR = Actor.system("dispatch")
DISPATCHER = "dispatch-rules"

PURPOSE_TRIAGE = "dispatch.triage"
PURPOSE_ESCALATE = "dispatch.escalate"
PURPOSE_REDO = "dispatch.redo"

# A missed deadline only matters while the assignment it belongs to is still the same one.
_STATUSES_FOR_MISS = {
    DeadlineKind.accept: {Status.dispatched},
    DeadlineKind.resolve: {Status.dispatched, Status.accepted},
    DeadlineKind.dispatch: {Status.triage},
}


def react(
    stored: StoredEvent, before: CaseState, current: CaseState, district: District
) -> list[Envelope]:
    if current.district and current.district != district.code:
        return []  # another district's dispatch places it
    payload = stored.envelope.payload
    if isinstance(payload, CaseReported):
        return on_reported(stored, current, district)
    if isinstance(payload, DeadlineMissed):
        return on_deadline_missed(stored, before, current, district)
    if isinstance(payload, CallbackRated):
        return on_callback_rated(stored, current, district)
    return []


# --- triage ----------------------------------------------------------------------------------


def on_reported(stored: StoredEvent, current: CaseState, district: District) -> list[Envelope]:
    if current.status is not Status.reported or current.dispatch_count:
        return []
    report = stored.envelope.payload
    assert isinstance(report, CaseReported)
    start = current.reported_at or stored.envelope.occurred_at
    grid, located = current.grid, ""
    if grid is None and report.location.lat is not None and report.location.lon is not None:
        found = district.grid_at(report.location.lat, report.location.lon)
        if found is not None:
            grid, located = found.code, " (grid located from the coordinates)"
    limits = limits_for(district, current.category_code, current.severity)
    target = place(district, current.category_code, current.severity, grid)
    if isinstance(target, Unplaceable):
        queued = CaseTriageQueued(
            reason=target.reason,
            detail=target.detail,
            dispatch_due=dispatch_due_from(limits, start),
        )
        return [stored.envelope.caused(queued, actor=ACTOR, purpose=PURPOSE_TRIAGE)]
    dispatched = _dispatch_to(target, limits, start, f"triage: {target.reason}{located}")
    return [stored.envelope.caused(dispatched, actor=ACTOR, purpose=PURPOSE_TRIAGE)]


# --- supervision: a missed deadline climbs one tier ------------------------------------------


def on_deadline_missed(
    stored: StoredEvent, before: CaseState, current: CaseState, district: District
) -> list[Envelope]:
    missed = stored.envelope.payload
    assert isinstance(missed, DeadlineMissed)
    allowed = _STATUSES_FOR_MISS.get(missed.deadline)
    if allowed is None:
        return []
    live = before.deadlines.get(missed.deadline)
    if live is None or live.id != missed.deadline_id or before.status not in allowed:
        return []  # a stale or repeated miss: the deadline it names was no longer running
    if (
        not current.is_open
        or current.status not in allowed
        or current.last_dispatch_id != before.last_dispatch_id
    ):
        return []  # the case moved on since (accepted late, re-dispatched, closed)
    start = stored.envelope.occurred_at
    limits = limits_for(district, current.category_code, current.severity)
    what = f"{missed.deadline.value} deadline missed (due {missed.due_at.isoformat()})"

    if missed.deadline is DeadlineKind.dispatch:
        office = street_office_for(district, current.street, current.grid)
        if office is None:
            requeued = CaseTriageQueued(
                reason=TriageReason.no_grid,
                detail=_cut(f"{what}; no street office to escalate to"),
                dispatch_due=dispatch_due_from(limits, start),
            )
            return [stored.envelope.caused(requeued, actor=ACTOR, purpose=PURPOSE_ESCALATE)]
        kind = current.kind or kind_for(district, current.category_code, current.severity)
        target = Placement(office.code, Tier.street, kind, current.urgent,
                           f"{what} in the triage queue; escalated to the street office")
    else:
        target = _one_tier_up(district, current, what)

    dispatched = _dispatch_to(target, limits, start, target.reason, escalation=True,
                              escalation_level=missed.escalation_level,
                              previous_unit=current.unit_code)
    return [stored.envelope.caused(dispatched, actor=ACTOR, purpose=PURPOSE_ESCALATE)]


def _one_tier_up(district: District, state: CaseState, why: str) -> Placement:
    """The next unit up the ladder; at the top, or with nothing above, the case stays put
    (with fresh deadlines, so supervision keeps following it). Only called for a case that
    is dispatched or accepted, which always has an assignee."""
    assert state.unit_code is not None
    kind = state.kind or kind_for(district, state.category_code, state.severity)
    here = find_unit(district, state.unit_code)
    above = unit_above(district, here, state.category_code) if here is not None else None
    if above is None and here is None and state.grid is not None and state.tier is not None:
        # The assignee is gone from the reference data: climb from the case's grid instead.
        nxt = state.tier.next()
        if nxt is not None:
            try:
                above = district.unit_for(nxt, state.grid, state.category_code)
            except (LookupError, ValueError):
                above = None
    if above is not None:
        tier = Tier(above.tier)
        return Placement(above.code, tier, kind, state.urgent,
                         f"{why}; escalated from {state.unit_code} to the {tier.value} tier")
    stay_tier = Tier(here.tier) if here is not None else (state.tier or Tier.district)
    top = "top of the ladder" if stay_tier is Tier.district else "no unit above"
    return Placement(state.unit_code, stay_tier, kind, state.urgent,
                     f"{why}; {top}: stays with {state.unit_code}")


# --- 重办: an unsatisfied callback sends the case back ---------------------------------------


def on_callback_rated(stored: StoredEvent, current: CaseState, district: District) -> list[Envelope]:
    rated = stored.envelope.payload
    assert isinstance(rated, CallbackRated)
    if rated.rating is not Rating.unsatisfied or current.status is not Status.reopened:
        return []
    start = stored.envelope.occurred_at
    limits = limits_for(district, current.category_code, current.severity)
    if current.unit_code is None:
        target = place(district, current.category_code, current.severity, current.grid)
        if isinstance(target, Unplaceable):
            queued = CaseTriageQueued(reason=target.reason, detail=target.detail,
                                      dispatch_due=dispatch_due_from(limits, start))
            return [stored.envelope.caused(queued, actor=ACTOR, purpose=PURPOSE_REDO)]
        first, level = True, current.escalation_level
    elif current.unsatisfied_count <= 1:
        kind = current.kind or kind_for(district, current.category_code, current.severity)
        target = Placement(current.unit_code, current.tier or Tier.grid, kind, current.urgent,
                           "resident unsatisfied: redone by the same unit")
        first, level = True, current.escalation_level
    else:
        target = _one_tier_up(
            district, current, f"resident unsatisfied {current.unsatisfied_count} times"
        )
        first, level = False, current.escalation_level + 1
    dispatched = _dispatch_to(target, limits, start, target.reason, redispatch=first,
                              escalation=not first, escalation_level=level,
                              previous_unit=current.unit_code)
    return [stored.envelope.caused(dispatched, actor=ACTOR, purpose=PURPOSE_REDO)]


def _dispatch_to(target: Placement, limits: TimeLimits, start: datetime, reason: str,
                 **flags: Any) -> CaseDispatched:
    """The rules' dispatch to `target`, with deadlines counted from `start`; `flags` say why
    (redispatch, escalation and its level, the previous unit)."""
    return CaseDispatched(
        unit_code=target.unit_code,
        tier=target.tier,
        kind=target.kind,
        urgent=target.urgent,
        dispatcher=DISPATCHER,
        deadlines=deadlines_from(limits, start),
        reason=_cut(reason),
        **flags,
    )


def _cut(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
