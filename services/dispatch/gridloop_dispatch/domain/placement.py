"""Where a case goes: the tier table of 003 and the ladder 网格吹哨、部门报到 climbs.

Pure lookups in the district's reference data; every failure to place a case is an answer
(`Unplaceable`) rather than an exception, because such cases must wait for a dispatcher,
never fall out of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gridloop_district import (
    OTHER_CATEGORY,
    District,
    TimeLimits,
    Unit,
    UnitKind,
    default_tier,
    is_urgent,
)
from gridloop_events.catalogue import Deadlines
from gridloop_events.vocabulary import ProblemKind, Severity, Tier, TriageReason


@dataclass(frozen=True)
class Placement:
    unit_code: str
    tier: Tier
    kind: ProblemKind
    urgent: bool
    reason: str


@dataclass(frozen=True)
class Unplaceable:
    reason: TriageReason
    detail: str


def limits_for(district: District, category: str | None, severity: Severity | None) -> TimeLimits:
    """The category's limits at this severity; an unknown category gets OTHER's."""
    sev = severity or Severity.normal
    try:
        return district.time_limits(category or OTHER_CATEGORY, sev)
    except LookupError:
        return district.catalogue.other.limits_for(sev)


def kind_for(district: District, category: str | None, severity: Severity | None) -> ProblemKind:
    try:
        kind = district.kind_for(category or OTHER_CATEGORY, severity or Severity.normal)
    except LookupError:
        kind = district.catalogue.other.kind
    return ProblemKind(kind)


def deadlines_from(limits: TimeLimits, start: datetime) -> Deadlines:
    return Deadlines(
        accept_due=start + timedelta(seconds=limits.accept_seconds),
        resolve_due=start + timedelta(seconds=limits.resolve_seconds),
    )


def dispatch_due_from(limits: TimeLimits, start: datetime) -> datetime:
    return start + timedelta(seconds=limits.dispatch_seconds)


def place(
    district: District, category: str | None, severity: Severity | None, grid: str | None
) -> Placement | Unplaceable:
    """The first placement of a new case, by category and severity (severity may change the kind)."""
    sev = severity or Severity.normal
    if category is None or category == OTHER_CATEGORY:
        return Unplaceable(TriageReason.uncategorised, "category OTHER: a dispatcher must place it")
    try:
        item = district.category(category)
    except LookupError:
        return Unplaceable(TriageReason.uncategorised, f"unknown category {category}")
    kind = ProblemKind(item.kind_for(sev))
    tier = Tier(default_tier(kind))
    urgent = is_urgent(kind)
    why = f"{category} is {kind.value} at severity {sev.value}"
    if tier is Tier.district:
        # A department covers the whole district: it needs no grid.
        try:
            unit = district.department_for(category)
        except LookupError:
            return Unplaceable(
                TriageReason.uncategorised, f"category {category} has no competent department"
            )
        return Placement(unit.code, tier, kind, urgent, f"{why}: competent department")
    if grid is None:
        return Unplaceable(TriageReason.no_grid, "the location names no grid")
    try:
        unit = district.unit_for(tier, grid, category)
    except LookupError:
        return Unplaceable(TriageReason.no_grid, f"no {tier.value} unit for grid {grid}")
    return Placement(unit.code, tier, kind, urgent, f"{why}: {tier.value} tier")


def _street_of_community(district: District, community: str) -> str | None:
    for street in district.streets:
        if any(c.code == community for c in street.communities):
            return street.code
    return None


def unit_above(district: District, unit: Unit, category: str | None) -> Unit | None:
    """The unit one tier up from `unit` for this case; None at the top or when there is none."""
    try:
        if unit.kind is UnitKind.grid_team:
            return district.committee(unit.area)
        if unit.kind is UnitKind.community_committee:
            street = _street_of_community(district, unit.area)
            return district.street_office(street) if street else None
        if unit.kind is UnitKind.street_office:
            return district.department_for(category or OTHER_CATEGORY)
    except LookupError:
        return None
    return None


def street_office_for(district: District, street: str | None, grid: str | None) -> Unit | None:
    """The street office a missed dispatch deadline goes to."""
    try:
        if street is not None:
            return district.street_office(street)
        if grid is not None:
            return district.street_office(district.street_of(grid).code)
        if len(district.streets) == 1:
            # One street office covers the whole district: it is the only one to send to.
            return district.street_office(district.streets[0].code)
    except LookupError:
        return None
    return None


def find_unit(district: District, code: str | None) -> Unit | None:
    if code is None:
        return None
    try:
        return district.unit(code)
    except LookupError:
        return None
