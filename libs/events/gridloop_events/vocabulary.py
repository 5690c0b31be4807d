"""Closed sets of words the events use. Their string values are part of the public contract."""

from enum import StrEnum


class Channel(StrEnum):
    hotline = "hotline"
    wechat = "wechat"
    app = "app"
    walk_in = "walk_in"
    patrol = "patrol"
    open311 = "open311"


class Severity(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    critical = "critical"


class ProblemKind(StrEnum):
    """How the seeds sort a problem (003): it decides the tier that handles it."""

    general = "general"
    coordination = "coordination"
    district_wide = "district_wide"
    major = "major"
    approval = "approval"


class Tier(StrEnum):
    """Handling tiers, lowest first: the supervision ladder 网格吹哨、部门报到 climbs them."""

    grid = "grid"
    community = "community"
    street = "street"
    district = "district"

    def next(self) -> "Tier | None":
        order = list(Tier)
        i = order.index(self)
        return order[i + 1] if i + 1 < len(order) else None


class DeadlineKind(StrEnum):
    accept = "accept"
    dispatch = "dispatch"
    resolve = "resolve"
    callback = "callback"


class Outcome(StrEnum):
    resolved = "resolved"
    answered = "answered"
    invalid = "invalid"
    duplicate = "duplicate"


class Rating(StrEnum):
    satisfied = "satisfied"
    basically_satisfied = "basically_satisfied"
    unsatisfied = "unsatisfied"

    @property
    def is_satisfied(self) -> bool:
        return self is not Rating.unsatisfied


class CallbackMethod(StrEnum):
    phone = "phone"
    on_site = "on_site"
    wechat = "wechat"
    sms = "sms"
    app = "app"


class TriageReason(StrEnum):
    uncategorised = "uncategorised"
    no_grid = "no_grid"
    disputed = "disputed"
    returned = "returned"
    needs_approval = "needs_approval"
