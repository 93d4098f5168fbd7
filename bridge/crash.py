"""Crash rules: the map picture of a crash site, and repeat suppression."""

from __future__ import annotations

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


def is_repeat(previous_at: datetime | None, ts: datetime, *, window_s: float) -> bool:
    """Whether a crash at ``ts`` repeats the last broadcast one at ``previous_at``.

    A repeat is strictly less than ``window_s`` away, before or after (a late
    redelivery of an earlier alert is a repeat too). The window is anchored on
    the last *broadcast* crash, not the last repeat, so a device that keeps
    alerting is still heard once per window instead of never again.
    """
    if previous_at is None or window_s <= 0:
        return False
    return abs((ts - previous_at).total_seconds()) < window_s
