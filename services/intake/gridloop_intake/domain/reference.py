"""The district's reference data as the API shows it: grids as GeoJSON, the catalogue as a tree."""

from __future__ import annotations

from typing import Any

from gridloop_district import CategoryItem, District


def _named(node: Any) -> dict[str, Any]:
    out = {"code": node.code, "name": node.name}
    if node.name_en:
        out["name_en"] = node.name_en
    return out


def grids_geojson(district: District) -> dict[str, Any]:
    """A FeatureCollection of grid polygons (positions [lon, lat]) with each grid's place in the
    hierarchy, plus the hierarchy itself as a tree under the foreign member `hierarchy`."""
    features: list[dict[str, Any]] = []
    streets: list[dict[str, Any]] = []
    for street in district.streets:
        communities = []
        for community in street.communities:
            compounds = []
            for compound in community.compounds:
                grids = []
                for grid in compound.grids:
                    grids.append({**_named(grid), "kind": grid.kind.value,
                                  "micro_grids": [_named(m) for m in grid.micro_grids]})
                    features.append({
                        "type": "Feature",
                        "id": grid.code,
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[list(p) for p in ring] for ring in grid.boundary],
                        },
                        "properties": {
                            "grid_code": grid.code,
                            "grid_name": grid.name,
                            "grid_kind": grid.kind.value,
                            "households": grid.households,
                            "street_code": street.code,
                            "street_name": street.name,
                            "community_code": community.code,
                            "community_name": community.name,
                            "compound_code": compound.code,
                            "compound_name": compound.name,
                            "centre": {"type": "Point", "coordinates": list(grid.centre)},
                        },
                    })
                compounds.append({**_named(compound), "grids": grids})
            communities.append({**_named(community), "kind": community.kind.value,
                                "compounds": compounds})
        streets.append({**_named(street), "communities": communities})
    return {
        "type": "FeatureCollection",
        "features": features,
        "district": {**_named(district.data), "data_version": district.data_version},
        "hierarchy": {**_named(district.data), "streets": streets},
    }


def _item(item: CategoryItem) -> dict[str, Any]:
    return {
        **_named(item),
        "kind": item.kind.value,
        "department": item.department,
        "limits": item.limits.model_dump(),
        "overrides": {
            severity.value: o.model_dump(mode="json", exclude_none=True)
            for severity, o in item.overrides.items()
        },
    }


def categories_doc(district: District) -> dict[str, Any]:
    """Classes → sub-classes → items with each item's kind and time limits (seconds)."""
    catalogue = district.catalogue
    return {
        "district": district.code,
        "data_version": district.data_version,
        "classes": [
            {**_named(k), "subclasses": [
                {**_named(s), "items": [_item(i) for i in s.items]} for s in k.subclasses
            ]}
            for k in catalogue.classes
        ],
        "other": _item(catalogue.other),
    }
