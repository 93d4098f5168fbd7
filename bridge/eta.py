"""The estimated time of arrival: remaining distance over recent average speed.

The model is deliberately simple and shows its inputs in every estimate, so
that a better one (road routing, traffic) can replace it behind the same
fields:

- **Distance**: the straight line from the latest point to the destination
  (to a place's edge; 0 inside it). Roads are longer: the estimate is early.
- **Speed**: an exponential moving average of the reported speeds, with time
  constant ``window_s`` (``AOC_ETA_WINDOW_SECONDS``): the speed of the last
  few minutes, not of the whole trip, and not of one point at a red light.
- **Floor**: a stopped vehicle would never arrive; below ``floor_kmh``
  (``AOC_ETA_MIN_SPEED_KMH``) the floor is used, and the estimate says so
  (``speed_basis: "floor"``).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

MODEL = "straight-line"


def recent_speed(
    previous: float | None, speed_kmh: float, seconds: float | None, window_s: float
) -> float:
    """The moving average after a point at ``speed_kmh``, ``seconds`` after the one before.

    Weighted by time, so points sent at 1 Hz or every 30 s average over the same span.
    """
    if previous is None or seconds is None or window_s <= 0:
        return speed_kmh
    weight = 1.0 - math.exp(-max(0.0, seconds) / window_s)
    return previous + weight * (speed_kmh - previous)


def estimate(
    distance_m: float, speed_kmh: float | None, at: datetime, *, window_s: float, floor_kmh: float
) -> dict[str, Any]:
    """The ETA document for ``distance_m`` to go, as of ``at``: inputs and result."""
    recent = speed_kmh or 0.0
    basis = "recent" if recent >= floor_kmh else "floor"
    used = max(recent, floor_kmh)
    seconds = distance_m / (used / 3.6) if used > 0 else 0.0
    return {
        "distance_m": round(distance_m, 1),
        "speed_kmh": round(used, 1),
        "speed_basis": basis,
        "window_s": window_s,
        "floor_kmh": floor_kmh,
        "seconds": round(seconds, 1),
        "arrive_at": at + timedelta(milliseconds=round(seconds * 1000)),
        "computed_at": at,
        "model": MODEL,
    }


def arrived(at: datetime, *, window_s: float, floor_kmh: float) -> dict[str, Any]:
    """The ETA document once the ambulance is there."""
    return estimate(0.0, None, at, window_s=window_s, floor_kmh=floor_kmh) | {
        "speed_kmh": 0.0,
        "speed_basis": "arrived",
    }
