"""Where a report lies: a grid code, coordinates or an address, resolved to a grid path."""

from __future__ import annotations

import math

from gridloop_district import District
from gridloop_events.catalogue import GridPath, Location

from .commands import ReportRejected

MAX_ADDRESS = 300


def _coordinate(name: str, value: float | None, bound: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportRejected(f"location.{name}", "must be a number")
    if not math.isfinite(value) or not -bound <= value <= bound:
        raise ReportRejected(f"location.{name}", f"must be between -{bound:g} and {bound:g}")
    return float(value)


def resolve_location(
    district: District,
    grid_code: str | None,
    lat: float | None,
    lon: float | None,
    address: str | None,
) -> Location:
    """A grid code names the grid; coordinates are looked up in the district; an address alone
    leaves the case without a grid, and dispatch queues it for a human dispatcher."""
    lat = _coordinate("lat", lat, 90)
    lon = _coordinate("lon", lon, 180)
    if (lat is None) != (lon is None):
        missing = "lon" if lon is None else "lat"
        raise ReportRejected(f"location.{missing}", "lat and lon must be given together")
    if address is not None:
        address = address.strip() or None
    if address is not None and len(address) > MAX_ADDRESS:
        raise ReportRejected("location.address", f"must be at most {MAX_ADDRESS} characters")
    if grid_code is not None:
        grid_code = grid_code.strip() or None

    grid: str | None = None
    if lat is not None and lon is not None:
        found = district.grid_at(lat, lon)
        if found is None:
            raise ReportRejected(
                "location", f"coordinates ({lat}, {lon}) lie outside district {district.code}"
            )
        grid = found.code
    if grid_code is not None:
        if not district.is_grid_code(grid_code):
            raise ReportRejected("location.grid_code", f"unknown grid {grid_code!r}")
        # A named grid outranks the point: a worker on a boundary knows whose grid it is.
        grid = grid_code
    if grid is None and address is None:
        raise ReportRejected("location", "give a grid_code, coordinates (lat and lon) or an address")

    path = None
    if grid is not None:
        path = GridPath.model_validate(district.grid_path(grid).model_dump())
    return Location(grid_path=path, lat=lat, lon=lon, address=address)
