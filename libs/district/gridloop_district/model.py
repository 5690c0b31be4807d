"""The district reference data as frozen pydantic models; this is also the file format.

district → street → community → compound → grid → micro-grid, the units that handle cases, and
the category catalogue (classes → sub-classes → items) with each item's kind and time limits.
Stored positions are [lon, lat] (GeoJSON order).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    NonNegativeInt,
    PositiveInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from .codes import CODE_PATTERN
from .geo import ring_area
from .vocab import (
    UNIT_KIND_TIER,
    CommunityKind,
    GridKind,
    ProblemKind,
    Severity,
    Tier,
    UnitKind,
)

SCHEMA_VERSION = 1
OTHER_CATEGORY = "OTHER"

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _check_position(p: tuple[float, float]) -> tuple[float, float]:
    lon, lat = p
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ValueError(
            f"[{lon}, {lat}] is not a [lon, lat] position (lon -180..180, lat -90..90)"
        )
    return p


def _check_ring(ring: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    if len(ring) < 4:
        raise ValueError(f"ring has {len(ring)} positions; a closed ring needs at least 4")
    if ring[0] != ring[-1]:
        raise ValueError(
            f"ring is not closed: first position {list(ring[0])} != last {list(ring[-1])}"
        )
    if len(set(ring)) < 3 or ring_area(ring) == 0.0:
        raise ValueError("ring encloses no area")
    return ring


Position = Annotated[tuple[FiniteFloat, FiniteFloat], AfterValidator(_check_position)]
Ring = Annotated[tuple[Position, ...], AfterValidator(_check_ring)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Named(_Frozen):
    code: Code
    name: Name
    name_en: Name | None = None


# --- the hierarchy ---------------------------------------------------------------------------


class MicroGrid(_Named):
    """微网格 or building (楼栋): an address inside a grid; no boundary of its own."""


class Grid(_Named):
    kind: GridKind
    boundary: tuple[Ring, ...] = Field(min_length=1)  # exterior ring, then holes
    centre: Position  # [lon, lat], inside the boundary
    households: NonNegativeInt | None = None
    micro_grids: tuple[MicroGrid, ...] = ()

    @property
    def lat(self) -> float:
        return self.centre[1]

    @property
    def lon(self) -> float:
        return self.centre[0]


class Compound(_Named):
    """小区 (or a village's 片区, or the premises of a special-purpose grid)."""

    grids: tuple[Grid, ...] = ()


class Community(_Named):
    kind: CommunityKind = CommunityKind.community
    compounds: tuple[Compound, ...] = Field(min_length=1)

    @property
    def grids(self) -> tuple[Grid, ...]:
        return tuple(g for c in self.compounds for g in c.grids)


class Street(_Named):
    communities: tuple[Community, ...] = Field(min_length=1)


class GridPath(_Frozen):
    """Where a grid lies; same fields as gridloop_events.catalogue.GridPath."""

    district: Code
    street: Code
    community: Code
    compound: Code | None = None
    grid: Code


# --- units -----------------------------------------------------------------------------------


class Unit(_Named):
    """A body that handles cases at one tier.

    `area` is the hierarchy node the unit serves: a grid team's and a committee's community, a
    street office's street, a department's district. Only grid teams list their grids; the
    others cover every grid under their area.
    """

    kind: UnitKind
    tier: Tier  # derived from kind when the file leaves it out
    area: Code
    grids: tuple[Code, ...] = ()
    competence: tuple[Code, ...] = ()  # departments: category class, sub-class or item codes

    @model_validator(mode="before")
    @classmethod
    def _derive_tier(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("tier") is None:
            kind = data.get("kind")
            if isinstance(kind, str) and kind in UNIT_KIND_TIER:
                return {**data, "tier": UNIT_KIND_TIER[UnitKind(kind)]}
        return data

    @model_validator(mode="after")
    def _kind_rules(self) -> Unit:
        expected = UNIT_KIND_TIER[self.kind]
        if self.tier is not expected:
            raise ValueError(
                f"tier {self.tier.value!r} does not match kind {self.kind.value!r}"
                f" (expected {expected.value!r})"
            )
        if self.kind is UnitKind.grid_team and not self.grids:
            raise ValueError("a grid team must list the grids it covers")
        if self.kind is not UnitKind.grid_team and self.grids:
            raise ValueError(
                f"only grid teams list grids; a {self.kind.value} covers every grid of its area"
            )
        if self.kind is not UnitKind.department and self.competence:
            raise ValueError("only departments have a competence list")
        return self


# --- the category catalogue ------------------------------------------------------------------


class TimeLimits(_Frozen):
    """Seconds allowed per stage; the defaults are 002's 一分钟接单、一刻钟派单、一天内解决."""

    accept_seconds: PositiveInt = 60
    dispatch_seconds: PositiveInt = 900
    resolve_seconds: PositiveInt = 86400
    callback_seconds: PositiveInt = 86400

    def seconds(self, deadline: str) -> int:
        """Seconds for a deadline kind named as in gridloop_events (accept, dispatch, ...)."""
        if deadline not in ("accept", "dispatch", "resolve", "callback"):
            raise ValueError(f"unknown deadline kind {deadline!r}")
        return getattr(self, f"{deadline}_seconds")


class SeverityOverride(_Frozen):
    kind: ProblemKind | None = None
    accept_seconds: PositiveInt | None = None
    dispatch_seconds: PositiveInt | None = None
    resolve_seconds: PositiveInt | None = None
    callback_seconds: PositiveInt | None = None


class CategoryItem(_Named):
    kind: ProblemKind
    department: Code | None = None  # the competent department's unit code; only OTHER may lack one
    limits: TimeLimits = TimeLimits()
    overrides: dict[Severity, SeverityOverride] = {}

    def kind_for(self, severity: Severity | str = Severity.normal) -> ProblemKind:
        o = self.overrides.get(Severity(severity))
        return o.kind if o is not None and o.kind is not None else self.kind

    def limits_for(self, severity: Severity | str = Severity.normal) -> TimeLimits:
        o = self.overrides.get(Severity(severity))
        if o is None:
            return self.limits
        changes = o.model_dump(exclude={"kind"}, exclude_none=True)
        return self.limits.model_copy(update=changes) if changes else self.limits


class CategorySubclass(_Named):
    items: tuple[CategoryItem, ...] = Field(min_length=1)


class CategoryClass(_Named):
    subclasses: tuple[CategorySubclass, ...] = Field(min_length=1)


class Catalogue(_Frozen):
    classes: tuple[CategoryClass, ...] = Field(min_length=1)
    other: CategoryItem  # what the rules cannot place: dispatch queues it for a human dispatcher

    @field_validator("other")
    @classmethod
    def _other_code(cls, item: CategoryItem) -> CategoryItem:
        if item.code != OTHER_CATEGORY:
            raise ValueError(
                f"the catch-all item must have code {OTHER_CATEGORY!r}, not {item.code!r}"
            )
        return item

    @property
    def items(self) -> tuple[CategoryItem, ...]:
        """The catalogued items, without OTHER."""
        return tuple(i for c in self.classes for s in c.subclasses for i in s.items)


# --- the file --------------------------------------------------------------------------------


class DistrictData(_Frozen):
    """One district's reference data, as stored in a .json/.yaml file."""

    schema_version: int  # the file format's version
    data_version: Name  # the data's own version, e.g. a date or a release tag
    code: Code
    name: Name
    name_en: Name | None = None
    streets: tuple[Street, ...] = Field(min_length=1)
    units: tuple[Unit, ...] = ()
    catalogue: Catalogue

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {v} is not supported; this package reads {SCHEMA_VERSION}"
            )
        return v
