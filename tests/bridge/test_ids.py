"""Tests for bridge.ids: the idempotency ids of the MQTT contract."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

from bridge.ids import crash_id, dead_letter_id, epoch_ms, snap_id, snap_id_of, tracking_id
from bridge.messages import Image, Snap
from tests.images import TINY_JPEG, png

TS = datetime(2024, 5, 1, 12, 0, 0, 123999, tzinfo=UTC)
TS_MS = 1714564800123


def test_epoch_ms_rounds_down_and_handles_zones() -> None:
    """Test epoch milliseconds of aware, offset and naive (UTC) datetimes."""
    assert epoch_ms(TS) == TS_MS
    assert epoch_ms(TS.astimezone(timezone(timedelta(hours=7)))) == TS_MS
    assert epoch_ms(TS.replace(tzinfo=None)) == TS_MS
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0


def test_tracking_and_crash_ids() -> None:
    """Test the exact tracking and crash id formats."""
    assert tracking_id("332", TS) == f"332:{TS_MS}"
    assert tracking_id("332", TS, 0) == f"332:{TS_MS}:0"
    assert tracking_id("332", TS, 17) == f"332:{TS_MS}:17"
    assert crash_id("332", TS) == f"crash:332:{TS_MS}"


def _snap(ts: datetime, received_at: datetime, *images: bytes) -> Snap:
    parts = tuple(Image(data, "png", "image/png") for data in images)
    return Snap("332", parts, ts, received_at, body={"ambulance_id": "332"})


def test_snap_id_without_device_time_depends_on_images_only() -> None:
    """Test that a snap without ts (ts == received_at) has an id from its bytes only."""
    a, b = png(), TINY_JPEG
    first = _snap(TS, TS, a, b)
    redelivered = _snap(TS + timedelta(seconds=30), TS + timedelta(seconds=30), a, b)
    assert snap_id(first) == snap_id(redelivered)
    digest = hashlib.sha256(hashlib.sha256(a).digest() + hashlib.sha256(b).digest())
    assert snap_id(first) == "snap:332:" + digest.hexdigest()[:32]
    assert snap_id(first) != snap_id(_snap(TS, TS, b, a))  # order matters


def test_snap_id_with_device_time_includes_it() -> None:
    """Test that a device ts is part of the id and the receipt time is not."""
    a = png()
    given = _snap(TS, TS + timedelta(seconds=1), a)
    assert snap_id(given) == snap_id(_snap(TS, TS + timedelta(seconds=9), a))
    assert snap_id(given) != snap_id(_snap(TS + timedelta(seconds=1), TS + timedelta(seconds=2), a))
    assert snap_id(given) == snap_id_of("332", [a], TS)
    assert snap_id(given) != snap_id_of("332", [a], None)
    assert snap_id_of("332", [a], None).startswith("snap:332:")
    assert len(snap_id_of("332", [a], None)) == len("snap:332:") + 32


def test_dead_letter_id() -> None:
    """Test the dead-letter id: sha256 over topic, NUL, payload; survives any topic text."""
    expected = "dl:" + hashlib.sha256(b"aoc/332/tracking\x00{bad").hexdigest()[:32]
    assert dead_letter_id("aoc/332/tracking", b"{bad") == expected
    assert dead_letter_id("aoc/332/tracking", b"{bad") != dead_letter_id("aoc/332/crash", b"{bad")
    # The NUL separates topic from payload: moving a byte across the boundary changes the id.
    assert dead_letter_id("a", b"bc") != dead_letter_id("ab", b"c")
    assert dead_letter_id("aoc/\ud800/x", b"\xff").startswith("dl:")
