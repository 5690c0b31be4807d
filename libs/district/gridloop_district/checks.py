"""Cross-reference checks that a single field's validation cannot make.

Each problem carries the path of the offending field in the file, so a data maintainer can find
it; codes are quoted in the message because index paths alone are hard to read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

from .codes import (
    COMMUNITY_DIGITS,
    COMPOUND_DIGITS,
    GRID_DIGITS,
    MICRO_GRID_DIGITS,
    STREET_DIGITS,
    is_child_code,
)
from .errors import Problem
from .geo import point_in_polygon
from .model import OTHER_CATEGORY, CategoryItem, Community, DistrictData, Grid, Street, Unit
from .vocab import UnitKind

Report = Callable[[str, str], None]  # (path, message)


def check_district(data: DistrictData) -> list[Problem]:
    problems: list[Problem] = []

    def report(path: str, message: str) -> None:
        problems.append(Problem(path, message))

    places = _check_hierarchy(data, report)
    categories = _check_catalogue_codes(data, report)
    _check_units(data, places, categories, report)
    _check_departments(data, categories, report)
    return problems


class _Places:
    """Where each street, community and grid sits in the file, by code."""

    def __init__(self) -> None:
        self.streets: dict[str, str] = {}
        self.communities: dict[str, str] = {}
        self.grids: dict[str, str] = {}
        self.grid_community: dict[str, str] = {}


def _nodes(data: DistrictData) -> Iterator[tuple[str, str, str, int, object]]:
    """(path, code, parent code, digits the code adds, node) over the whole hierarchy."""
    for si, s in enumerate(data.streets):
        sp = f"streets[{si}]"
        yield sp, s.code, data.code, STREET_DIGITS, s
        for ci, c in enumerate(s.communities):
            cp = f"{sp}.communities[{ci}]"
            yield cp, c.code, s.code, COMMUNITY_DIGITS, c
            for ki, k in enumerate(c.compounds):
                kp = f"{cp}.compounds[{ki}]"
                yield kp, k.code, c.code, COMPOUND_DIGITS, k
                for gi, g in enumerate(k.grids):
                    gp = f"{kp}.grids[{gi}]"
                    yield gp, g.code, c.code, GRID_DIGITS, g
                    for mi, m in enumerate(g.micro_grids):
                        yield f"{gp}.micro_grids[{mi}]", m.code, g.code, MICRO_GRID_DIGITS, m


def _check_hierarchy(data: DistrictData, report: Report) -> _Places:
    seen: dict[str, str] = {}
    places = _Places()
    if not (data.code.isascii() and data.code.isdigit()):
        report("code", f"district code {data.code!r} must be digits")
    for path, code, parent, digits, node in _nodes(data):
        if code in seen:
            report(f"{path}.code", f"duplicate code {code!r} (first at {seen[code]})")
            continue
        seen[code] = path
        if not is_child_code(parent, code, digits):
            report(
                f"{path}.code", f"code {code!r} must be its parent's {parent!r} + {digits} digits"
            )
        if isinstance(node, Street):
            places.streets[code] = path
        elif isinstance(node, Community):
            places.communities[code] = path
        elif isinstance(node, Grid):
            places.grids[code] = path
            places.grid_community[code] = parent
            if not point_in_polygon(node.lat, node.lon, node.boundary):
                report(
                    f"{path}.centre",
                    f"centre {list(node.centre)} of {code!r} is outside its boundary",
                )
    return places


def _check_catalogue_codes(data: DistrictData, report: Report) -> dict[str, tuple[str, ...]]:
    """Category code -> the codes that place it (itself, its sub-class, its class)."""
    placed: dict[str, tuple[str, ...]] = {}
    paths: dict[str, str] = {}

    def add(code: str, path: str, chain: tuple[str, ...]) -> None:
        if code in paths:
            report(f"{path}.code", f"duplicate category code {code!r} (first at {paths[code]})")
        else:
            paths[code] = path
            placed[code] = chain

    for ci, klass in enumerate(data.catalogue.classes):
        cp = f"catalogue.classes[{ci}]"
        add(klass.code, cp, (klass.code,))
        for si, sub in enumerate(klass.subclasses):
            sp = f"{cp}.subclasses[{si}]"
            add(sub.code, sp, (sub.code, klass.code))
            for ii, item in enumerate(sub.items):
                add(item.code, f"{sp}.items[{ii}]", (item.code, sub.code, klass.code))
    add(data.catalogue.other.code, "catalogue.other", (data.catalogue.other.code,))
    return placed


def _check_units(
    data: DistrictData, places: _Places, categories: dict[str, tuple[str, ...]], report: Report
) -> None:
    seen: dict[str, str] = {}
    teams: dict[str, list[str]] = defaultdict(list)
    committees: dict[str, list[str]] = defaultdict(list)
    offices: dict[str, list[str]] = defaultdict(list)

    for ui, u in enumerate(data.units):
        up = f"units[{ui}]"
        if u.code in seen:
            report(f"{up}.code", f"duplicate unit code {u.code!r} (first at {seen[u.code]})")
        else:
            seen[u.code] = up
        if u.kind is UnitKind.department:
            if u.area != data.code:
                report(
                    f"{up}.area", f"a department serves the district {data.code!r}, not {u.area!r}"
                )
            for ci, c in enumerate(u.competence):
                if c not in categories:
                    report(f"{up}.competence[{ci}]", f"category {c!r} does not exist")
            continue
        if u.kind is UnitKind.street_office:
            if u.area not in places.streets:
                report(f"{up}.area", f"street {u.area!r} does not exist")
            offices[u.area].append(up)
            continue
        if u.area not in places.communities:
            report(f"{up}.area", f"community {u.area!r} does not exist")
        if u.kind is UnitKind.community_committee:
            committees[u.area].append(up)
        for gi, g in enumerate(u.grids):
            if g not in places.grids:
                report(f"{up}.grids[{gi}]", f"grid {g!r} does not exist")
                continue
            teams[g].append(up)
            if places.grid_community[g] != u.area:
                report(
                    f"{up}.grids[{gi}]",
                    f"grid {g!r} lies in community {places.grid_community[g]!r}, "
                    f"not in the team's area {u.area!r}",
                )

    _exactly_one(places.grids, teams, "grid team", "grid", report)
    _exactly_one(places.communities, committees, "community committee", "community", report)
    _exactly_one(places.streets, offices, "street office", "street", report)


def _exactly_one(
    nodes: dict[str, str], units: dict[str, list[str]], unit: str, node: str, report: Report
) -> None:
    for code, path in nodes.items():
        found = units.get(code, [])
        if not found:
            report(path, f"no {unit} covers {node} {code!r}")
        elif len(found) > 1:
            report(path, f"{node} {code!r} is covered by {len(found)} {unit}s ({', '.join(found)})")


def _check_departments(
    data: DistrictData, categories: dict[str, tuple[str, ...]], report: Report
) -> None:
    units: dict[str, Unit] = {}
    for u in data.units:
        units.setdefault(u.code, u)
    cat = data.catalogue
    located: list[tuple[str, CategoryItem]] = [
        (f"catalogue.classes[{ci}].subclasses[{si}].items[{ii}]", item)
        for ci, klass in enumerate(cat.classes)
        for si, sub in enumerate(klass.subclasses)
        for ii, item in enumerate(sub.items)
    ]
    located.append(("catalogue.other", cat.other))
    for path, item in located:
        where, dept_code = f"{path}.department", item.department
        if dept_code is None:
            if item.code != OTHER_CATEGORY:
                report(where, f"item {item.code!r} needs a competent department")
            continue
        dept = units.get(dept_code)
        if dept is None:
            report(where, f"department {dept_code!r} of item {item.code!r} is not a unit")
        elif dept.kind is not UnitKind.department:
            report(where, f"unit {dept_code!r} is a {dept.kind.value}, not a department")
        elif not set(categories.get(item.code, ())) & set(dept.competence):
            report(
                where, f"{dept_code!r} lacks competence for item {item.code!r} or its (sub-)class"
            )
