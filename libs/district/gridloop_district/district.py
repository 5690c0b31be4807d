"""District: the checked reference data with the indexes and the queries triage needs.

Everything here is pure and in memory; building a District runs the cross-reference checks, so a
District in hand is always consistent.
"""

from __future__ import annotations

from .checks import check_district
from .codes import grid_code_length
from .errors import NoCompetentUnitError, ReferenceDataError, UnknownCodeError
from .geo import BucketIndex
from .model import (
    Catalogue,
    CategoryClass,
    CategoryItem,
    CategorySubclass,
    Community,
    Compound,
    DistrictData,
    Grid,
    GridPath,
    Street,
    TimeLimits,
    Unit,
)
from .vocab import ProblemKind, Severity, Tier, UnitKind, default_tier
from .vocab import next_tier as _next_tier


class District:
    def __init__(self, data: DistrictData, *, source: str | None = None) -> None:
        problems = check_district(data)
        if problems:
            raise ReferenceDataError(source, problems)
        self.data = data
        self.source = source
        self._grid_len = grid_code_length(data.code)

        self._streets: dict[str, Street] = {}
        self._communities: dict[str, Community] = {}
        self._compounds: dict[str, Compound] = {}
        self._grids: dict[str, Grid] = {}
        self._grid_parents: dict[str, tuple[Street, Community, Compound]] = {}
        for s in data.streets:
            self._streets[s.code] = s
            for c in s.communities:
                self._communities[c.code] = c
                for k in c.compounds:
                    self._compounds[k.code] = k
                    for g in k.grids:
                        self._grids[g.code] = g
                        self._grid_parents[g.code] = (s, c, k)

        self._units = {u.code: u for u in data.units}
        self._team_of_grid: dict[str, Unit] = {}
        self._unit_of_area: dict[tuple[UnitKind, str], Unit] = {}
        for u in data.units:
            if u.kind is UnitKind.grid_team:
                for g in u.grids:
                    self._team_of_grid[g] = u
            elif u.kind is not UnitKind.department:
                self._unit_of_area[(u.kind, u.area)] = u
        self._departments = tuple(u for u in data.units if u.kind is UnitKind.department)

        self._items: dict[str, CategoryItem] = {}
        self._item_place: dict[str, tuple[CategoryClass, CategorySubclass]] = {}
        for klass in data.catalogue.classes:
            for sub in klass.subclasses:
                for item in sub.items:
                    self._items[item.code] = item
                    self._item_place[item.code] = (klass, sub)
        self._items[data.catalogue.other.code] = data.catalogue.other

        self._locator: BucketIndex[Grid] = BucketIndex(
            (g, g.boundary) for g in self._grids.values()
        )

    # --- identity ----------------------------------------------------------------------------

    @property
    def code(self) -> str:
        return self.data.code

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def schema_version(self) -> int:
        return self.data.schema_version

    @property
    def data_version(self) -> str:
        return self.data.data_version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, District) and self.data == other.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = len(self._grids)
        return f"District({self.code} {self.name}, data {self.data_version!r}, {n} grids)"

    # --- the hierarchy -----------------------------------------------------------------------

    @property
    def streets(self) -> tuple[Street, ...]:
        return self.data.streets

    @property
    def communities(self) -> tuple[Community, ...]:
        return tuple(self._communities.values())

    @property
    def grids(self) -> tuple[Grid, ...]:
        return tuple(self._grids.values())

    def is_grid_code(self, code: str) -> bool:
        """Cheap: the scheme fixes a grid code's length and prefix before the index is asked."""
        return (
            len(code) == self._grid_len and code.startswith(self.data.code) and code in self._grids
        )

    def grid(self, code: str) -> Grid:
        try:
            return self._grids[code]
        except KeyError:
            raise UnknownCodeError("grid", code) from None

    def street(self, code: str) -> Street:
        try:
            return self._streets[code]
        except KeyError:
            raise UnknownCodeError("street", code) from None

    def community(self, code: str) -> Community:
        try:
            return self._communities[code]
        except KeyError:
            raise UnknownCodeError("community", code) from None

    def compound(self, code: str) -> Compound:
        try:
            return self._compounds[code]
        except KeyError:
            raise UnknownCodeError("compound", code) from None

    def _parents(self, grid_code: str) -> tuple[Street, Community, Compound]:
        try:
            return self._grid_parents[grid_code]
        except KeyError:
            raise UnknownCodeError("grid", grid_code) from None

    def street_of(self, grid_code: str) -> Street:
        return self._parents(grid_code)[0]

    def community_of(self, grid_code: str) -> Community:
        return self._parents(grid_code)[1]

    def compound_of(self, grid_code: str) -> Compound:
        return self._parents(grid_code)[2]

    def grid_path(self, grid_code: str) -> GridPath:
        s, c, k = self._parents(grid_code)
        return GridPath(
            district=self.data.code,
            street=s.code,
            community=c.code,
            compound=k.code,
            grid=grid_code,
        )

    def grid_at(self, lat: float, lon: float) -> Grid | None:
        """The grid whose boundary holds the point, or None outside the district."""
        return self._locator.find(lat, lon)

    # --- units -------------------------------------------------------------------------------

    @property
    def units(self) -> tuple[Unit, ...]:
        return self.data.units

    @property
    def departments(self) -> tuple[Unit, ...]:
        return self._departments

    def unit(self, code: str) -> Unit:
        try:
            return self._units[code]
        except KeyError:
            raise UnknownCodeError("unit", code) from None

    def grid_team(self, grid_code: str) -> Unit:
        self._parents(grid_code)
        return self._team_of_grid[grid_code]

    def committee(self, community_code: str) -> Unit:
        try:
            return self._unit_of_area[(UnitKind.community_committee, community_code)]
        except KeyError:
            raise UnknownCodeError("community", community_code) from None

    def street_office(self, street_code: str) -> Unit:
        try:
            return self._unit_of_area[(UnitKind.street_office, street_code)]
        except KeyError:
            raise UnknownCodeError("street", street_code) from None

    def department_for(self, category_code: str) -> Unit:
        item = self.category(category_code)
        if item.department is None:
            raise NoCompetentUnitError(
                f"category {category_code!r} has no competent department; a dispatcher places it"
            )
        return self._units[item.department]

    def unit_for(self, tier: Tier | str, grid_code: str, category_code: str | None = None) -> Unit:
        """Who handles a case at `tier`: the grid's team, its community committee, its street
        office, or (district) the category's competent department."""
        tier = Tier(tier)
        street, community, _ = self._parents(grid_code)
        if tier is Tier.grid:
            return self._team_of_grid[grid_code]
        if tier is Tier.community:
            return self.committee(community.code)
        if tier is Tier.street:
            return self.street_office(street.code)
        if category_code is None:
            raise ValueError("the district tier needs a category to find the competent department")
        return self.department_for(category_code)

    def units_covering(self, grid_code: str) -> tuple[Unit, ...]:
        """Every unit that covers the grid, lowest tier first (departments cover all grids)."""
        street, community, _ = self._parents(grid_code)
        return (
            self._team_of_grid[grid_code],
            self.committee(community.code),
            self.street_office(street.code),
            *self._departments,
        )

    def grids_covered_by(self, unit_code: str) -> tuple[str, ...]:
        u = self.unit(unit_code)
        if u.kind is UnitKind.grid_team:
            return u.grids
        if u.kind is UnitKind.community_committee:
            return tuple(g.code for g in self._communities[u.area].grids)
        if u.kind is UnitKind.street_office:
            return tuple(g.code for c in self._streets[u.area].communities for g in c.grids)
        return tuple(self._grids)

    @staticmethod
    def next_tier(tier: Tier | str) -> Tier | None:
        return _next_tier(tier)

    # --- categories --------------------------------------------------------------------------

    @property
    def catalogue(self) -> Catalogue:
        return self.data.catalogue

    @property
    def categories(self) -> tuple[CategoryItem, ...]:
        """Every item, OTHER last."""
        return tuple(self._items.values())

    def category(self, code: str) -> CategoryItem:
        try:
            return self._items[code]
        except KeyError:
            raise UnknownCodeError("category", code) from None

    def class_of(self, category_code: str) -> CategoryClass | None:
        """The item's class; None for OTHER, which sits outside the classes."""
        self.category(category_code)
        place = self._item_place.get(category_code)
        return place[0] if place else None

    def subclass_of(self, category_code: str) -> CategorySubclass | None:
        self.category(category_code)
        place = self._item_place.get(category_code)
        return place[1] if place else None

    def kind_for(
        self, category_code: str, severity: Severity | str = Severity.normal
    ) -> ProblemKind:
        return self.category(category_code).kind_for(severity)

    def tier_for(self, category_code: str, severity: Severity | str = Severity.normal) -> Tier:
        """The tier a new case starts at, from its kind."""
        return default_tier(self.kind_for(category_code, severity))

    def time_limits(
        self, category_code: str, severity: Severity | str = Severity.normal
    ) -> TimeLimits:
        return self.category(category_code).limits_for(severity)
