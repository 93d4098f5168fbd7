"""Places: hospitals, stations and any named area, and where an ambulance is among them.

Pure (no I/O). The data half (``Place``, GeoJSON in and out, stored documents)
is in ``bridge.places_geojson`` and re-exported here; this module holds the
geometry: distances, an index for "which places are here", and the
enter/exit rule with hysteresis.

Geometry is shapely's, in lon/lat degrees. Distances are metres on a sphere
(``bridge.geo.haversine_m``). Places are city-sized and local, so two
simplifications are made and stated: the antimeridian (longitude ±180) is
not handled, and for a polygon the nearest point is found in a local
equirectangular projection (longitude scaled by cos(latitude)), which is
exact enough (well under 1 %) over the kilometres that matter here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from shapely import STRtree, box
from shapely.affinity import scale
from shapely.geometry import Point
from shapely.ops import nearest_points

from bridge.geo import EARTH_RADIUS_M, haversine_m
from bridge.messages import Position
from bridge.places_geojson import (
    MAX_PLACES,
    MAX_RADIUS_M,
    MAX_VERTICES,
    PLACE_ID,
    Place,
    PlaceError,
    place_doc,
    place_feature,
    place_from_doc,
    places_from_geojson,
    slug,
)

__all__ = [
    "MAX_PLACES",
    "MAX_RADIUS_M",
    "MAX_VERTICES",
    "PLACE_ID",
    "Place",
    "PlaceError",
    "PlaceIndex",
    "contains",
    "distance_m",
    "membership",
    "place_doc",
    "place_feature",
    "place_from_doc",
    "places_from_geojson",
    "slug",
]


def _degrees(metres: float, lat: float) -> tuple[float, float]:
    """(Δlon, Δlat) in degrees covering ``metres`` around latitude ``lat``."""
    dlat = math.degrees(metres / EARTH_RADIUS_M)
    # Near the poles a degree of longitude shrinks to nothing: clamp, the box only grows.
    cos = max(math.cos(math.radians(min(abs(lat) + dlat, 89.9))), 1e-3)
    return min(dlat / cos, 360.0), dlat


def contains(place: Place, position: Position) -> bool:
    """Whether ``position`` is in the place (its edge included)."""
    if place.geometry is None:
        assert place.center is not None and place.radius_m is not None
        return haversine_m(position, place.center) <= place.radius_m
    return bool(place.geometry.covers(Point(position.lon, position.lat)))


def distance_m(position: Position, place: Place) -> float:
    """Metres from ``position`` to the place's nearest point; 0 inside."""
    if place.geometry is None:
        assert place.center is not None and place.radius_m is not None
        return max(0.0, haversine_m(position, place.center) - place.radius_m)
    point = Point(position.lon, position.lat)
    if place.geometry.covers(point):
        return 0.0
    # Nearest point where a metre east is as long as a metre north, then back to degrees.
    k = math.cos(math.radians(position.lat)) or 1e-9
    flat = scale(place.geometry, xfact=k, yfact=1.0, origin=(0, 0))
    near, _ = nearest_points(flat, Point(position.lon * k, position.lat))
    return haversine_m(position, Position(near.y, near.x / k))


# The grid of PlaceIndex: cells of 0.01 degree (about a kilometre), a place in at most
# MAX_CELLS of them (a town-sized area); wider places are checked at every query.
CELL = 0.01
MAX_CELLS = 4096


def _cell(degrees: float) -> int:
    return math.floor(degrees / CELL)


def _overlaps(
    bounds: tuple[float, float, float, float], west: float, south: float, east: float, north: float
) -> bool:
    b_west, b_south, b_east, b_north = bounds
    return b_west <= east and west <= b_east and b_south <= north and south <= b_north


class PlaceIndex:
    """Live places with an STRtree over their bounding boxes: fast "which places are near".

    Built once from a snapshot of the places; rebuild it when they change.
    Removed places (``removed_at`` set) are left out.
    """

    def __init__(self, places: Iterable[Place]) -> None:
        self._places: dict[str, Place] = {p.id: p for p in places if p.removed_at is None}
        self._order: list[Place] = list(self._places.values())
        self._bounds = [self._box(p) for p in self._order]
        self._tree = STRtree([box(*bounds) for bounds in self._bounds])
        # The bridge asks for every point: a grid of CELL-degree cells answers
        # "which boxes are here" with a dict lookup, where a query of the tree
        # costs tens of microseconds. Places wider than MAX_CELLS cells, and
        # queries with a wide margin, go to the tree.
        self._grid: dict[tuple[int, int], list[int]] = {}
        self._wide: list[int] = []
        for i, (west, south, east, north) in enumerate(self._bounds):
            xs = range(_cell(west), _cell(east) + 1)
            ys = range(_cell(south), _cell(north) + 1)
            if len(xs) * len(ys) > MAX_CELLS:
                self._wide.append(i)
                continue
            for x in xs:
                for y in ys:
                    self._grid.setdefault((x, y), []).append(i)

    @staticmethod
    def _box(place: Place) -> tuple[float, float, float, float]:
        if place.geometry is None:  # a circle: its centre's box, widened by the radius
            assert place.center is not None and place.radius_m is not None
            dlon, dlat = _degrees(place.radius_m, place.center.lat)
            c = place.center
            return c.lon - dlon, c.lat - dlat, c.lon + dlon, c.lat + dlat
        west, south, east, north = place.geometry.bounds
        return west, south, east, north

    def __len__(self) -> int:
        return len(self._places)

    @property
    def places(self) -> Iterable[Place]:
        return self._order

    def get(self, place_id: str) -> Place | None:
        return self._places.get(place_id)

    def _candidates(self, position: Position, margin_m: float) -> list[Place]:
        """Places whose box is within ``margin_m`` of ``position`` (a superset of the answer)."""
        if not self._order:
            return []
        dlon, dlat = _degrees(max(margin_m, 0.0), position.lat)
        west, east = position.lon - dlon, position.lon + dlon
        south, north = position.lat - dlat, position.lat + dlat
        if dlat > CELL or dlon > CELL:
            area = box(west, south, east, north)
            return [self._order[i] for i in self._tree.query(area)]
        found: set[int] = set(self._wide)
        for x in range(_cell(west), _cell(east) + 1):  # at most three cells a side
            for y in range(_cell(south), _cell(north) + 1):
                found.update(self._grid.get((x, y), ()))
        return [
            self._order[i] for i in sorted(found)
            if _overlaps(self._bounds[i], west, south, east, north)
        ]

    def containing(self, position: Position) -> set[str]:
        """Ids of the places ``position`` is in."""
        # Asked for every point: one cell, no margin to widen it by.
        lon, lat = position.lon, position.lat
        cell = self._grid.get((_cell(lon), _cell(lat)), ())
        return {
            self._order[i].id for i in (*cell, *self._wide)
            if _overlaps(self._bounds[i], lon, lat, lon, lat) and contains(self._order[i], position)
        }

    def near(self, position: Position, margin_m: float) -> set[str]:
        """Ids of the places within ``margin_m`` metres of ``position`` (inside counts)."""
        return {
            p.id for p in self._candidates(position, margin_m)
            if distance_m(position, p) <= margin_m
        }

    def nearest(self, position: Position, max_m: float) -> tuple[Place, float] | None:
        """The nearest place within ``max_m`` metres and its distance (ties: lowest id)."""
        found = [(distance_m(position, p), p.id, p) for p in self._candidates(position, max_m)]
        found = [item for item in found if item[0] <= max_m]
        if not found:
            return None
        distance, _, place = min(found, key=lambda item: (item[0], item[1]))
        return place, distance


def membership(
    inside: frozenset[str] | set[str], position: Position, index: PlaceIndex, margin_m: float
) -> tuple[set[str], list[str], list[str]]:
    """The places an ambulance is in after ``position``: (inside now, entered, exited).

    Hysteresis, so that a point jittering across an edge makes no storm of
    events: a place is ENTERED when the point is in it, and EXITED only once
    the point is more than ``margin_m`` metres outside it. Between the two
    (outside, but within the margin) nothing changes: an ambulance that was
    in stays in, one that was out stays out.

    A place of ``inside`` that is no longer in ``index`` (removed, or its id
    changed) is dropped from the set silently: it is in neither list, since
    the ambulance did not leave it, the place went away.
    """
    kept: set[str] = set()
    exited: list[str] = []
    for place_id in inside:
        place = index.get(place_id)
        if place is None:
            continue
        if distance_m(position, place) <= margin_m:
            kept.add(place_id)
        else:
            exited.append(place_id)
    entered = index.containing(position) - set(inside)
    return kept | entered, sorted(entered), sorted(exited)
