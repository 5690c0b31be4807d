"""Closed sets of words the reference data uses.

Tiers, problem kinds and severities are the event contract's own words (gridloop_events), so
reference data and events can never disagree on them; the rest belong to the reference data.
"""

from enum import StrEnum

from gridloop_events.vocabulary import ProblemKind, Severity, Tier

__all__ = ["CommunityKind", "GridKind", "ProblemKind", "Severity", "Tier", "UnitKind"]


class UnitKind(StrEnum):
    grid_team = "grid_team"
    community_committee = "community_committee"
    street_office = "street_office"
    department = "department"


class GridKind(StrEnum):
    """天平街道 (002) counts 农村网格, 城市网格 and 专属网格 (schools, markets, enterprises...)."""

    urban = "urban"
    rural = "rural"
    special = "special"


class CommunityKind(StrEnum):
    community = "community"  # 社区
    village = "village"  # 村


TIER_LADDER: tuple[Tier, ...] = (Tier.grid, Tier.community, Tier.street, Tier.district)

# 003's table: general stays in the grid, coordination goes to the 社区两委, district-wide to the
# competent department, major/sudden to community leadership at once, approval to community/street.
KIND_TIER: dict[ProblemKind, Tier] = {
    ProblemKind.general: Tier.grid,
    ProblemKind.coordination: Tier.community,
    ProblemKind.district_wide: Tier.district,
    ProblemKind.major: Tier.community,
    ProblemKind.approval: Tier.street,
}

UNIT_KIND_TIER: dict[UnitKind, Tier] = {
    UnitKind.grid_team: Tier.grid,
    UnitKind.community_committee: Tier.community,
    UnitKind.street_office: Tier.street,
    UnitKind.department: Tier.district,
}


def next_tier(tier: Tier | str) -> Tier | None:
    """The tier a case escalates to from `tier`; None at the top of the ladder."""
    i = TIER_LADDER.index(Tier(tier))
    return TIER_LADDER[i + 1] if i + 1 < len(TIER_LADDER) else None


def default_tier(kind: ProblemKind | str) -> Tier:
    return KIND_TIER[ProblemKind(kind)]


def is_urgent(kind: ProblemKind | str) -> bool:
    """Major or sudden problems are flagged urgent and go to community leadership at once."""
    return ProblemKind(kind) is ProblemKind.major
