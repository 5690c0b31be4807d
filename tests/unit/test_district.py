"""gridloop_district: the demo district's figures, the queries triage uses, and loader errors."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from gridloop_district import (
    OTHER_CATEGORY,
    District,
    GridKind,
    NoCompetentUnitError,
    ProblemKind,
    ReferenceDataError,
    Severity,
    Tier,
    TimeLimits,
    UnitKind,
    UnknownCodeError,
    default_district,
    demo,
    district_from_dict,
    dump_district,
    load_district,
    next_tier,
    point_in_polygon,
)


@pytest.fixture(scope="module")
def d() -> District:
    return default_district()


# --- a tiny district for the loader's error cases ---------------------------------------------


def _square(lon: float, lat: float, size: float = 0.01) -> list[list[float]]:
    return [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]


def tiny() -> dict[str, Any]:
    """One street, one community, two grids side by side; a one-item catalogue."""
    c = "370199001001"
    grids = [
        {
            "code": f"{c}00{i}",
            "name": f"第{i}网格",
            "kind": "urban",
            "boundary": [_square(117.0 + 0.01 * (i - 1), 36.0)],
            "centre": [117.005 + 0.01 * (i - 1), 36.005],
        }
        for i in (1, 2)
    ]
    return {
        "schema_version": 1,
        "data_version": "t1",
        "code": "370199",
        "name": "测试区",
        "streets": [
            {
                "code": "370199001",
                "name": "测试街道",
                "communities": [
                    {
                        "code": c,
                        "name": "测试社区",
                        "compounds": [{"code": f"{c}01", "name": "测试小区", "grids": grids}],
                    },
                ],
            }
        ],
        "units": [
            {"code": "GT-1", "name": "一格", "kind": "grid_team", "area": c, "grids": [f"{c}001"]},
            {"code": "GT-2", "name": "二格", "kind": "grid_team", "area": c, "grids": [f"{c}002"]},
            {"code": "CC-1", "name": "两委", "kind": "community_committee", "area": c},
            {"code": "SO-1", "name": "街道办", "kind": "street_office", "area": "370199001"},
            {
                "code": "DEP-A",
                "name": "城管局",
                "kind": "department",
                "area": "370199",
                "competence": ["X"],
            },
        ],
        "catalogue": {
            "classes": [
                {
                    "code": "C1",
                    "name": "现场办",
                    "subclasses": [
                        {
                            "code": "X",
                            "name": "市容",
                            "items": [
                                {
                                    "code": "X-0101",
                                    "name": "垃圾",
                                    "kind": "general",
                                    "department": "DEP-A",
                                },
                            ],
                        }
                    ],
                }
            ],
            "other": {"code": "OTHER", "name": "其他", "kind": "general"},
        },
    }


def write(tmp_path: Path, doc: dict[str, Any], name: str = "district.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return p


def load_error(tmp_path: Path, doc: dict[str, Any]) -> ReferenceDataError:
    p = write(tmp_path, doc)
    with pytest.raises(ReferenceDataError) as info:
        load_district(p)
    assert str(p) in str(info.value)
    return info.value


# --- the demo district --------------------------------------------------------------------------


def test_demo_has_tianping_figures(d: District) -> None:
    assert d.schema_version == 1 and d.data_version
    assert len(d.streets) == 1
    assert len(d.communities) == 37
    assert len(d.grids) == 488
    assert Counter(g.kind for g in d.grids) == {
        GridKind.rural: 82,
        GridKind.urban: 78,
        GridKind.special: 328,
    }
    assert all(len(c.compounds) >= 2 for c in d.communities)
    assert all(g.micro_grids for g in d.grids)


def test_demo_catalogue_matches_mashan(d: District) -> None:
    cat = d.catalogue
    assert len(cat.classes) == 3
    assert sum(len(c.subclasses) for c in cat.classes) == 7
    assert len(cat.items) == 54
    assert cat.other.code == OTHER_CATEGORY
    assert len(d.categories) == 55 and d.category(OTHER_CATEGORY) is cat.other
    assert d.class_of(OTHER_CATEGORY) is None and d.subclass_of("CM-0104").code == "CM"


def test_demo_units(d: District) -> None:
    kinds = Counter(u.kind for u in d.units)
    assert kinds == {
        UnitKind.grid_team: 488,
        UnitKind.community_committee: 37,
        UnitKind.street_office: 1,
        UnitKind.department: 8,
    }
    assert {u.code for u in d.departments} >= {
        "DEP-URBAN",
        "DEP-CIVIL",
        "DEP-JUSTICE",
        "DEP-EMERGENCY",
        "DEP-ECOLOGY",
        "DEP-HOUSING",
        "DEP-HRSS",
        "DEP-POLICE",
    }
    for item in d.categories:
        if item.code != OTHER_CATEGORY:
            assert d.unit(item.department).kind is UnitKind.department


def test_demo_file_is_what_the_generator_writes() -> None:
    shipped = (
        resources.files("gridloop_district")
        .joinpath("data/demo_district.json")
        .read_text(encoding="utf-8")
    )
    assert demo.render() == shipped
    assert len(shipped.encode("utf-8")) < 1_500_000


# --- geometry -------------------------------------------------------------------------------


def test_every_grid_centre_maps_back_to_its_grid(d: District) -> None:
    for g in d.grids:
        assert d.grid_at(g.lat, g.lon) is g


def test_grid_at_outside_the_district(d: District) -> None:
    assert d.grid_at(36.65, 116.9) is None
    assert d.grid_at(0.0, 0.0) is None
    assert d.grid_at(float("nan"), 117.05) is None


def test_grid_at_agrees_with_brute_force_and_grids_do_not_overlap(d: District) -> None:
    rng = random.Random(7)
    lons = [p[0] for g in d.grids for p in g.boundary[0]]
    lats = [p[1] for g in d.grids for p in g.boundary[0]]
    misses = 0
    for _ in range(400):
        lat, lon = rng.uniform(min(lats), max(lats)), rng.uniform(min(lons), max(lons))
        holders = [g for g in d.grids if point_in_polygon(lat, lon, g.boundary)]
        assert len(holders) <= 1
        assert d.grid_at(lat, lon) is (holders[0] if holders else None)
        misses += not holders
    assert misses  # the lattice leaves a notch and ragged edges inside its bounding box


def test_point_in_polygon_holes_and_concave_rings() -> None:
    outer = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]
    assert point_in_polygon(2, 2, [outer, hole])
    assert not point_in_polygon(5, 5, [outer, hole])
    assert not point_in_polygon(5, 11, [outer])
    u_shape = [[0, 0], [3, 0], [3, 3], [2, 3], [2, 1], [1, 1], [1, 3], [0, 3], [0, 0]]  # (lon, lat)
    assert not point_in_polygon(2, 1.5, [u_shape])  # lat 2 inside the notch
    assert point_in_polygon(2, 0.5, [u_shape])


# --- queries ---------------------------------------------------------------------------------


def test_hierarchy_queries(d: District) -> None:
    g = d.grids[100]
    path = d.grid_path(g.code)
    assert (path.district, path.street, path.grid) == (d.code, d.streets[0].code, g.code)
    assert path.community == d.community_of(g.code).code == g.code[:12]
    assert g in d.compound(path.compound).grids
    assert d.street_of(g.code) is d.streets[0]
    assert d.is_grid_code(g.code)
    assert not d.is_grid_code("370105001007012") and not d.is_grid_code(path.community)
    with pytest.raises(UnknownCodeError) as info:
        d.grid("370190001099001")
    assert "grid" in str(info.value) and isinstance(info.value, KeyError)


def test_unit_for_every_tier(d: District) -> None:
    g = d.grids[0].code
    community, street = d.community_of(g).code, d.street_of(g).code
    team = d.unit_for(Tier.grid, g, "CM-0101")
    assert team.kind is UnitKind.grid_team and team.grids == (g,)
    assert d.unit_for("community", g).code == f"CC-{community}"
    assert d.unit_for(Tier.street, g).code == f"SO-{street}"
    assert d.unit_for(Tier.district, g, "CM-0104").code == "DEP-URBAN"
    assert d.unit_for(Tier.district, g, "DS-0105").code == "DEP-HRSS"
    assert d.unit_for(Tier.district, g, "EV-0302").code == "DEP-ECOLOGY"
    with pytest.raises(NoCompetentUnitError):
        d.unit_for(Tier.district, g, OTHER_CATEGORY)
    with pytest.raises(ValueError):
        d.unit_for(Tier.district, g)
    with pytest.raises(UnknownCodeError):
        d.unit_for(Tier.grid, "370190001099001")


def test_units_covering_lowest_tier_first(d: District) -> None:
    g = d.grids[-1].code
    covering = d.units_covering(g)
    assert [u.tier for u in covering[:3]] == [Tier.grid, Tier.community, Tier.street]
    assert {u.tier for u in covering[3:]} == {Tier.district} and len(covering) == 3 + 8
    committee = covering[1]
    assert g in d.grids_covered_by(committee.code)
    assert len(d.grids_covered_by(covering[2].code)) == 488


def test_next_tier_ladder(d: District) -> None:
    assert next_tier(Tier.grid) is Tier.community
    assert next_tier("community") is Tier.street
    assert d.next_tier(Tier.street) is Tier.district
    assert next_tier(Tier.district) is None
    assert [t.value for t in Tier] == ["grid", "community", "street", "district"]


def test_time_limits_default_and_overrides(d: District) -> None:
    assert d.time_limits("CM-0102", Severity.normal) == TimeLimits(
        accept_seconds=60, dispatch_seconds=900, resolve_seconds=86400, callback_seconds=86400
    )
    high = d.time_limits("CM-0101", "high")
    assert high.resolve_seconds == 4 * 3600 and high.accept_seconds == 60
    assert d.time_limits("CM-0101", Severity.low).resolve_seconds == 12 * 3600
    critical = d.time_limits("CM-0104", Severity.critical)
    assert (critical.dispatch_seconds, critical.resolve_seconds) == (300, 4 * 3600)
    assert critical.seconds("resolve") == 4 * 3600


def test_kind_for_severity(d: District) -> None:
    assert d.kind_for("CM-0104", Severity.normal) is ProblemKind.district_wide
    assert d.kind_for("CM-0104", "critical") is ProblemKind.major
    assert d.tier_for("CM-0104", Severity.critical) is Tier.community
    assert d.tier_for("WF-0201") is Tier.street
    assert d.kind_for("EV-0302", Severity.high) is ProblemKind.district_wide
    with pytest.raises(UnknownCodeError):
        d.kind_for("NOPE-0000", Severity.normal)


# --- files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["district.yaml", "district.yml", "district.json"])
def test_round_trip(d: District, tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    dump_district(d, p)
    assert load_district(p) == d


def test_env_var_overrides_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDLOOP_DISTRICT_FILE", str(write(tmp_path, tiny())))
    assert default_district().code == "370199"


def test_tiny_district_loads(tmp_path: Path) -> None:
    t = load_district(write(tmp_path, tiny()))
    assert t.grid_at(36.005, 117.015).code == "370199001001002"
    assert t.unit("GT-1").tier is Tier.grid  # derived from the kind


GRIDS = "streets[0].communities[0].compounds[0].grids"


def tiny_grids(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["streets"][0]["communities"][0]["compounds"][0]["grids"]


def test_unit_referencing_missing_grid(tmp_path: Path) -> None:
    doc = tiny()
    doc["units"][0]["grids"] = ["370199001001009"]
    err = str(load_error(tmp_path, doc))
    assert "units[0].grids[0]: grid '370199001001009' does not exist" in err
    assert f"{GRIDS}[0]: no grid team covers grid '370199001001001'" in err


def test_duplicate_code(tmp_path: Path) -> None:
    doc = tiny()
    grids = tiny_grids(doc)
    grids[1]["code"] = grids[0]["code"]
    err = str(load_error(tmp_path, doc))
    assert f"{GRIDS}[1].code: duplicate code '370199001001001' (first at {GRIDS}[0])" in err

    doc = tiny()
    doc["units"][1]["code"] = "GT-1"
    assert "units[1].code: duplicate unit code 'GT-1'" in str(load_error(tmp_path, doc))


def test_code_scheme(tmp_path: Path) -> None:
    doc = tiny()
    tiny_grids(doc)[1]["code"] = "370199001002002"
    doc["units"][1]["grids"] = ["370199001002002"]
    err = str(load_error(tmp_path, doc))
    assert f"{GRIDS}[1].code: code '370199001002002' must be its parent's '370199001001'" in err


def test_malformed_polygons(tmp_path: Path) -> None:
    ring = f"{GRIDS}[0].boundary[0]"
    doc = tiny()
    tiny_grids(doc)[0]["boundary"][0][-1] = [117.0, 36.001]
    err = str(load_error(tmp_path, doc))
    assert f"{ring}: ring is not closed" in err and "[in 370199001001001]" in err

    doc = tiny()
    tiny_grids(doc)[0]["boundary"][0] = [[117, 36], [117.01, 36], [117, 36]]
    assert f"{ring}: ring has 3 positions" in str(load_error(tmp_path, doc))

    doc = tiny()
    tiny_grids(doc)[0]["boundary"][0][1] = [36.0, 217.0]
    err = str(load_error(tmp_path, doc))
    assert f"{ring}[1]: [36.0, 217.0] is not a [lon, lat] position" in err

    doc = tiny()
    tiny_grids(doc)[0]["centre"] = [117.5, 36.5]
    err = str(load_error(tmp_path, doc))
    assert f"{GRIDS}[0].centre: centre [117.5, 36.5] of '370199001001001' is outside" in err


def test_cross_reference_problems(tmp_path: Path) -> None:
    doc = tiny()
    del doc["units"][2]  # the committee
    doc["catalogue"]["classes"][0]["subclasses"][0]["items"][0]["department"] = "DEP-NONE"
    doc["units"][-1]["competence"] = ["X", "Y-0101"]
    err = load_error(tmp_path, doc)
    text = str(err)
    assert (
        "streets[0].communities[0]: no community committee covers community '370199001001'" in text
    )
    item = "catalogue.classes[0].subclasses[0].items[0]"
    assert f"{item}.department: department 'DEP-NONE' of item 'X-0101' is not a unit" in text
    assert "units[3].competence[1]: category 'Y-0101' does not exist" in text
    assert len(err.problems) == 3

    doc = tiny()
    doc["units"][-1]["competence"] = ["C2"]
    doc["catalogue"]["classes"].append(dict(doc["catalogue"]["classes"][0], code="C2"))
    doc["catalogue"]["classes"][1]["subclasses"] = [{"code": "Z", "name": "z", "items": []}]
    err = load_error(tmp_path, doc)
    assert [str(p) for p in err.problems] == [
        "catalogue.classes[1].subclasses[0].items: "
        "Tuple should have at least 1 item after validation, not 0 [in Z]"
    ]


def test_field_errors_name_their_path(tmp_path: Path) -> None:
    doc = tiny()
    del tiny_grids(doc)[1]["kind"]
    doc["units"][1]["kind"] = "team"
    doc["units"][3]["tier"] = "district"
    doc["catalogue"]["other"]["overrides"] = {"urgent": {"kind": "major"}}
    err = str(load_error(tmp_path, doc))
    assert f"{GRIDS}[1].kind: Field required [in 370199001001002]" in err
    assert "units[1].kind: Input should be" in err and "(got 'team')" in err
    assert "units[3]: tier 'district' does not match kind 'street_office'" in err
    assert "catalogue.other.overrides.urgent: key: Input should be 'low'" in err
    # a bad grid empties its compound's tuple; pydantic's follow-on "too short" is left out
    assert "at least 1 item" not in err


def test_competence_must_cover_the_item(tmp_path: Path) -> None:
    doc = tiny()
    doc["units"][-1]["competence"] = []
    err = str(load_error(tmp_path, doc))
    assert "'DEP-A' lacks competence for item 'X-0101'" in err


def test_unsupported_schema_version(tmp_path: Path) -> None:
    doc = tiny()
    doc["schema_version"] = 2
    err = load_error(tmp_path, doc)
    assert "schema_version: schema_version 2 is not supported" in str(err)
    assert len(err.problems) == 1


def test_bad_json_and_yaml(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('{"schema_version": 1,\n "code": }', encoding="utf-8")
    with pytest.raises(ReferenceDataError, match=r"not valid JSON: .* line 2 column 10") as info:
        load_district(p)
    assert str(p) in str(info.value)

    p = tmp_path / "bad.yaml"
    p.write_text("schema_version: 1\ncode: [370199\nname: x\n", encoding="utf-8")
    with pytest.raises(ReferenceDataError, match=r"not valid YAML: .* line \d+ column \d+") as info:
        load_district(p)
    assert str(p) in str(info.value)

    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ReferenceDataError, match="top level must be a mapping"):
        load_district(p)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ReferenceDataError, match="cannot read the file"):
        load_district(tmp_path / "nope.json")
    with pytest.raises(ReferenceDataError, match="unknown file type '.toml'"):
        load_district(tmp_path / "d.toml")


def test_district_from_dict_checks_without_a_file() -> None:
    doc = copy.deepcopy(tiny())
    doc["units"] = doc["units"][1:]
    with pytest.raises(ReferenceDataError, match="<district data>"):
        district_from_dict(doc)
