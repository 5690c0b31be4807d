"""Plane geometry on [lon, lat] rings, pure Python.

Grids are a few hundred metres across, so treating degrees as plane coordinates is exact enough
for deciding which grid a report lies in. The Python API takes (lat, lon) like grid_at; stored
positions are [lon, lat] like GeoJSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

Position = Sequence[float]  # [lon, lat]
Ring = Sequence[Position]
BBox = tuple[float, float, float, float]  # min_lon, min_lat, max_lon, max_lat

T = TypeVar("T")


def point_in_ring(lat: float, lon: float, ring: Ring) -> bool:
    """Ray casting; the half-open edge test puts a point on an edge shared by two rings in one."""
    inside = False
    x1, y1 = ring[-1][0], ring[-1][1]
    for p in ring:
        x2, y2 = p[0], p[1]
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
        x1, y1 = x2, y2
    return inside


def point_in_polygon(lat: float, lon: float, rings: Sequence[Ring]) -> bool:
    """Even-odd over all rings, so the rings after the first act as holes."""
    inside = False
    for ring in rings:
        if point_in_ring(lat, lon, ring):
            inside = not inside
    return inside


def ring_area(ring: Ring) -> float:
    """Signed shoelace area in square degrees; positive when counter-clockwise."""
    s = 0.0
    for a, b in zip(ring, ring[1:]):
        s += a[0] * b[1] - b[0] * a[1]
    return s / 2.0


def ring_centroid(ring: Ring) -> tuple[float, float]:
    """(lon, lat) centroid of a closed ring with non-zero area."""
    a = cx = cy = 0.0
    for p, q in zip(ring, ring[1:]):
        cross = p[0] * q[1] - q[0] * p[1]
        a += cross
        cx += (p[0] + q[0]) * cross
        cy += (p[1] + q[1]) * cross
    return cx / (3.0 * a), cy / (3.0 * a)


def bbox(rings: Iterable[Ring]) -> BBox:
    lons = [p[0] for ring in rings for p in ring]
    lats = [p[1] for ring in rings for p in ring]
    return min(lons), min(lats), max(lons), max(lats)


class BucketIndex(Generic[T]):
    """Which polygon holds a point: a uniform bucket grid over the bounding boxes.

    About one bucket per polygon keeps each lookup to a handful of ray casts.
    """

    def __init__(self, shapes: Iterable[tuple[T, Sequence[Ring]]]) -> None:
        self._shapes: list[tuple[T, BBox, Sequence[Ring]]] = [
            (key, bbox(rings), rings) for key, rings in shapes
        ]
        if not self._shapes:
            self._extent: BBox = (0.0, 0.0, 0.0, 0.0)
            self._nx = self._ny = 1
            self._buckets: list[list[int]] = [[]]
            return
        min_lon = min(b[0] for _, b, _ in self._shapes)
        min_lat = min(b[1] for _, b, _ in self._shapes)
        max_lon = max(b[2] for _, b, _ in self._shapes)
        max_lat = max(b[3] for _, b, _ in self._shapes)
        self._extent = (min_lon, min_lat, max_lon, max_lat)
        side = max(1, math.isqrt(len(self._shapes)))
        self._nx = self._ny = side
        self._dx = (max_lon - min_lon) / side or 1.0
        self._dy = (max_lat - min_lat) / side or 1.0
        self._buckets = [[] for _ in range(side * side)]
        for i, (_, (x0, y0, x1, y1), _) in enumerate(self._shapes):
            cx0, cy0 = self._cell(x0, y0)
            cx1, cy1 = self._cell(x1, y1)
            for cy in range(cy0, cy1 + 1):
                for cx in range(cx0, cx1 + 1):
                    self._buckets[cy * self._nx + cx].append(i)

    def _cell(self, lon: float, lat: float) -> tuple[int, int]:
        cx = min(self._nx - 1, max(0, int((lon - self._extent[0]) / self._dx)))
        cy = min(self._ny - 1, max(0, int((lat - self._extent[1]) / self._dy)))
        return cx, cy

    def find(self, lat: float, lon: float) -> T | None:
        min_lon, min_lat, max_lon, max_lat = self._extent
        if not (min_lon <= lon <= max_lon and min_lat <= lat <= max_lat) or not self._shapes:
            return None
        cx, cy = self._cell(lon, lat)
        for i in self._buckets[cy * self._nx + cx]:
            key, (x0, y0, x1, y1), rings = self._shapes[i]
            if x0 <= lon <= x1 and y0 <= lat <= y1 and point_in_polygon(lat, lon, rings):
                return key
        return None
