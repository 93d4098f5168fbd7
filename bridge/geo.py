"""Geometry on the Earth's surface: distances between GPS points."""

from __future__ import annotations

import math

from bridge.messages import Position

# The IUGG mean Earth radius: the usual choice for haversine on a sphere.
EARTH_RADIUS_M = 6_371_008.8


def haversine_m(a: Position, b: Position) -> float:
    """Great-circle distance in metres between two points (spherical Earth)."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    # min() guards asin against rounding just above 1 for antipodal points.
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def eta_s(here: Position, destination: Position, speed_kmh: float) -> float | None:
    """Seconds to cover the straight-line distance at ``speed_kmh``; None when not moving."""
    if speed_kmh <= 0:
        return None
    return haversine_m(here, destination) / (speed_kmh / 3.6)


def position_doc(position: Position | None) -> dict[str, float] | None:
    """The legacy ``{lat, lon}`` sub-document of a position."""
    if position is None:
        return None
    return {"lat": position.lat, "lon": position.lon}


def position_from_doc(doc: object) -> Position | None:
    """A position back from a stored ``{lat, lon}`` sub-document (None if absent)."""
    if not isinstance(doc, dict):
        return None
    return Position(float(doc["lat"]), float(doc["lon"]))
