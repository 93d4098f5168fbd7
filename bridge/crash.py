"""Crash rules: the map picture of a crash site, and repeat suppression."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlencode

STATIC_MAPS_URL = "https://maps.googleapis.com/maps/api/staticmap"


def _coord(value: float) -> str:
    # Six decimals is ~0.1 m: enough for a map, and stable across float noise.
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def static_map_url(
    lat: float, lon: float, *, key: str | None, zoom: int = 16, size: str = "600x300"
) -> str:
    """A Google Static Maps URL centred on the spot with a red marker (no network call).

    The key is added only when one is configured; without it the URL is still a
    useful record of the place, and nothing secret is invented.
    """
    spot = f"{_coord(lat)},{_coord(lon)}"
    params: list[tuple[str, str]] = [
        ("center", spot),
        ("zoom", str(zoom)),
        ("size", size),
        ("markers", f"color:red|{spot}"),
    ]
    if key:
        params.append(("key", key))
    return f"{STATIC_MAPS_URL}?{urlencode(params)}"


def repeat_of(
    broadcast: Sequence[tuple[datetime, str]], ts: datetime, *, window_s: float
) -> str | None:
    """The id of the broadcast crash that a crash at ``ts`` repeats, or None.

    ``broadcast`` holds the (time, id) of the ambulance's recent broadcast
    crashes. A crash repeats the nearest of them strictly less than ``window_s``
    away, before or after: a delayed alert that arrives after a newer one is
    checked against the crashes around its own time, not only the newest. The
    windows are anchored on *broadcast* crashes, never on repeats, so a device
    that keeps alerting is still heard once per window instead of never again.
    """
    if window_s <= 0:
        return None
    nearest: tuple[float, str] | None = None
    for at, crash in broadcast:
        gap = abs((ts - at).total_seconds())
        if gap < window_s and (nearest is None or gap < nearest[0]):
            nearest = (gap, crash)
    return None if nearest is None else nearest[1]
