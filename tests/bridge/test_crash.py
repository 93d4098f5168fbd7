"""Tests for bridge.crash: static map URLs and repeat suppression."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from bridge.crash import repeat_of, static_map_url


def test_url_without_key_has_no_key_parameter() -> None:
    """Test the exact URL when no key is configured."""
    url = static_map_url(13.7563, 100.5018, key=None)
    assert url == (
        "https://maps.googleapis.com/maps/api/staticmap?center=13.7563%2C100.5018"
        "&zoom=16&size=600x300&markers=color%3Ared%7C13.7563%2C100.5018"
    )
    assert "key" not in parse_qs(urlsplit(url).query)
    assert static_map_url(1, 2, key="") == static_map_url(1, 2, key=None)


def test_url_with_key_is_encoded() -> None:
    """Test that a key with reserved characters is URL-encoded and round-trips."""
    url = static_map_url(-33.5, -70.25, key="ab+c/d&e=f", zoom=12, size="320x200")
    query = parse_qs(urlsplit(url).query)
    assert query == {
        "center": ["-33.5,-70.25"],
        "zoom": ["12"],
        "size": ["320x200"],
        "markers": ["color:red|-33.5,-70.25"],
        "key": ["ab+c/d&e=f"],
    }
    assert "ab%2Bc%2Fd%26e%3Df" in url
    assert " " not in url and "|" not in url


def test_coordinates_are_rounded_not_noisy() -> None:
    """Test that float noise and zeros print as short, stable coordinates."""
    query = parse_qs(urlsplit(static_map_url(0.1 + 0.2, -0.0, key=None)).query)
    assert query["center"] == ["0.3,0"]


def test_repeat_window() -> None:
    """Test the dedup rule: strictly inside the window (either side) repeats, at it does not."""
    t = datetime(2024, 5, 1, tzinfo=UTC)
    anchor = [(t, "a")]
    assert repeat_of([], t, window_s=60) is None
    assert repeat_of(anchor, t, window_s=60) == "a"
    assert repeat_of(anchor, t + timedelta(seconds=59.9), window_s=60) == "a"
    assert repeat_of(anchor, t + timedelta(seconds=60), window_s=60) is None
    assert repeat_of(anchor, t - timedelta(seconds=30), window_s=60) == "a"
    assert repeat_of(anchor, t, window_s=0) is None


def test_a_repeat_is_of_the_nearest_broadcast_crash_on_either_side() -> None:
    """Test that every broadcast crash anchors a window, not only the newest."""
    t = datetime(2024, 5, 1, tzinfo=UTC)
    broadcast = [(t - timedelta(seconds=120), "old"), (t, "new")]
    assert repeat_of(broadcast, t - timedelta(seconds=110), window_s=60) == "old"
    assert repeat_of(broadcast, t - timedelta(seconds=70), window_s=60) == "old"
    assert repeat_of(broadcast, t - timedelta(seconds=50), window_s=60) == "new"
    assert repeat_of(broadcast, t - timedelta(seconds=240), window_s=60) is None
