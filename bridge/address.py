"""A human-readable place for a position: the nearest known place, else the nearest town.

Offline: known places are the bridge's own (``bridge.places``); towns come from
the GeoNames cities ``reverse_geocode`` bundles. Its first lookup loads them
(about half a second), so ``warm_up`` runs once in a thread when the bridge
starts, and no lookup on the bridge's path waits for the disk or a network.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import reverse_geocode

from bridge.geo import haversine_m
from bridge.messages import Position
from bridge.places import PlaceIndex

# A known place this close names the position ("near"); farther, the town does.
NEAR_PLACE_M = 1000.0
# Farther than this from the town's centre, the distance is part of the name.
TOWN_CENTRE_M = 2000.0


def warm_up() -> None:
    """Load the cities (blocking: call it in a thread)."""
    _town(0.0, 0.0)


def describe(position: Position, places: PlaceIndex | None) -> str | None:
    """``"at Maharaj Hospital"``, ``"near Station 3 (420 m)"``, ``"Chiang Mai, Thailand"``."""
    if places is not None:
        found = places.nearest(position, NEAR_PLACE_M)
        if found is not None:
            place, distance = found
            if distance <= 0:
                return f"at {place.name}"
            return f"near {place.name} ({distance:.0f} m)"
    town = _town(round(position.lat, 3), round(position.lon, 3))
    if town is None:
        return None
    names = [town.get("city"), town.get("state"), town.get("country")]
    label = ", ".join(dict.fromkeys(name for name in names if name))
    centre = Position(float(town["latitude"]), float(town["longitude"]))
    away = haversine_m(position, centre)
    if away > TOWN_CENTRE_M:
        return f"{label} ({away / 1000:.0f} km from the centre)"
    return label


@lru_cache(maxsize=4096)
def _town(lat: float, lon: float) -> dict[str, Any] | None:
    # Rounded to ~100 m before the lookup, so the cache serves a crash's repeats.
    try:
        found: dict[str, Any] = reverse_geocode.get((lat, lon))
    except Exception:  # an unexpected failure costs a name, never the alarm
        return None
    return found
