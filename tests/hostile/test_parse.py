"""Hostile MQTT payloads through ``bridge.validate.parse``: a valid message or a clear reason.

Whatever arrives, ``parse`` must not raise, must not fall into its catch-all
("internal error": that is a bug turned into a dead letter), and must return
either a ``Rejected`` whose reason names a problem, or a message whose every
field is within the contract's range.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from bridge.contract import LEGACY_KINDS, is_legacy_topic, valid_ambulance_id
from bridge.jsjson import dumps
from bridge.messages import Crash, Parsed, Rejected, Snap, Status, Tracking
from bridge.snapshots import sniff
from bridge.validate import parse
from tests.hostile.strategies import (
    GOOD_ID,
    KINDS,
    LIMITS,
    RECEIVED,
    bounded,
    encode,
    hostile_topics,
    invalid_ids,
    payloads_for,
    raw_payloads,
)
from tests.images import TINY_JPEG

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def assert_clear(parsed: Parsed, topic: str) -> None:
    """``parsed`` is a clear refusal, or a message within the contract."""
    if isinstance(parsed, Rejected):
        assert parsed.topic == topic
        assert parsed.reason.strip(), "a refusal must say why"
        assert not parsed.reason.startswith("internal error"), parsed.reason
        return
    assert valid_ambulance_id(parsed.ambulance_id)
    root = "legacy" if is_legacy_topic(topic) else "aoc"
    assert topic == f"{root}/{parsed.ambulance_id}/{_kind(parsed)}"
    if isinstance(parsed, Tracking | Crash):
        assert -90 <= parsed.position.lat <= 90
        assert -180 <= parsed.position.lon <= 180
        assert 0 <= parsed.speed_kmh <= 500
        assert parsed.heading is None or 0 <= parsed.heading <= 360
        assert EARLIEST <= parsed.ts <= RECEIVED + LIMITS.max_clock_ahead
        numbers = [parsed.position.lat, parsed.position.lon, parsed.speed_kmh, parsed.heading]
        if isinstance(parsed, Tracking):
            assert parsed.seq is None or 0 <= parsed.seq < 2**63
            numbers += [parsed.accuracy, parsed.altitude]
            if parsed.destination is not None:
                numbers += [parsed.destination.lat, parsed.destination.lon]
                assert -90 <= parsed.destination.lat <= 90
                assert -180 <= parsed.destination.lon <= 180
        assert all(math.isfinite(n) for n in numbers if n is not None)
    if isinstance(parsed, Snap):
        assert len(parsed.images) in range(1, LIMITS.max_upload_files + 1)
        for image in parsed.images:
            assert len(image.data) <= LIMITS.max_image_bytes
            assert sniff(image.data) == (image.ext, image.content_type)
            assert image.name is None or (isinstance(image.name, str) and len(image.name) <= 255)
    if isinstance(parsed, Status):
        assert isinstance(parsed.online, bool)
    if not isinstance(parsed, Status):
        # What legacy rooms receive must encode (a lone surrogate, an odd number...).
        json.loads(dumps(parsed.body))


def _kind(parsed: Parsed) -> str:
    return {Tracking: "tracking", Crash: "crash", Snap: "snap", Status: "status"}[type(parsed)]


@bounded(60)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_hostile_payloads_of_every_kind_are_valid_or_clearly_refused(
    kind: str, data: st.DataObject
) -> None:
    payload = data.draw(payloads_for(kind))
    # The legacy shim's root too: legacy bodies are checked there only.
    roots = ["aoc", "legacy"] if kind in LEGACY_KINDS else ["aoc"]
    topic = f"{data.draw(st.sampled_from(roots))}/{GOOD_ID}/{kind}"
    parsed = parse(topic, payload, RECEIVED, LIMITS)
    assert_clear(parsed, topic)
    if not is_legacy_topic(topic) and not isinstance(parsed, Rejected):
        assert _legacy_body(payload) is None, "a legacy body taken from a device topic"


def _legacy_body(payload: bytes) -> object:
    """The payload's ``legacy`` field, if it is a JSON object with one."""
    try:
        body = json.loads(payload)
    except ValueError:  # raw image bytes, or not JSON at all
        return None
    return body.get("legacy") if isinstance(body, dict) else None


@bounded(40)
@given(kind=st.sampled_from(KINDS), data=st.data(), retained=st.booleans())
def test_hostile_topics_are_refused_with_a_reason(
    kind: str, data: st.DataObject, retained: bool
) -> None:
    topic = data.draw(hostile_topics(kind))
    payload = data.draw(payloads_for(kind))
    parsed = parse(topic, payload, RECEIVED, LIMITS, retained=retained)
    assert_clear(parsed, topic)
    if retained and kind != "status":
        assert isinstance(parsed, Rejected)


@bounded(30)
@given(kind=st.sampled_from(KINDS), aid=invalid_ids())
@example(kind="snap", aid="..")
@example(kind="tracking", aid="CRASH_NOTIFY_332")
@example(kind="crash", aid="a\x00b")
def test_an_invalid_ambulance_id_in_the_topic_is_refused(kind: str, aid: str) -> None:
    # Even with a payload that would be good under a valid id.
    good = {"lat": 13.75, "lon": 100.5, "speed": 40}
    payload = TINY_JPEG if kind == "snap" else b"online" if kind == "status" else encode(good)
    topic = f"aoc/{aid}/{kind}"
    parsed = parse(topic, payload, RECEIVED, LIMITS)
    assert isinstance(parsed, Rejected)
    assert parsed.reason.startswith("topic:"), parsed.reason


@bounded(30)
@given(kind=st.sampled_from(KINDS), payload=raw_payloads())
def test_raw_bytes_never_escape_parse(kind: str, payload: bytes) -> None:
    topic = f"aoc/{GOOD_ID}/{kind}"
    assert_clear(parse(topic, payload, RECEIVED, LIMITS), topic)


@bounded(30)
@given(
    lat=st.floats(allow_nan=True, allow_infinity=True),
    lon=st.floats(allow_nan=True, allow_infinity=True),
    speed=st.floats(allow_nan=True, allow_infinity=True),
)
def test_out_of_range_numbers_are_refused(lat: float, lon: float, speed: float) -> None:
    topic = f"aoc/{GOOD_ID}/tracking"
    parsed = parse(topic, encode({"lat": lat, "lon": lon, "speed": speed}), RECEIVED, LIMITS)
    assert_clear(parsed, topic)
    in_range = (
        all(math.isfinite(v) for v in (lat, lon, speed))
        and -90 <= lat <= 90 and -180 <= lon <= 180 and 0 <= speed <= 500
    )
    assert isinstance(parsed, Tracking) == in_range


def test_a_good_message_parses_after_any_hostile_one() -> None:
    # parse keeps no state: the good message is unaffected by what came before.
    topic = f"aoc/{GOOD_ID}/tracking"
    for payload in (b"[" * 100_000, b"\xff", encode({"lat": float("nan")})):
        assert isinstance(parse(topic, payload, RECEIVED, LIMITS), Rejected)
        good = encode({"lat": 1.5, "lon": 2.5, "speed": 3, "ts": "2026-05-01T07:59:00Z"})
        parsed = parse(topic, good, RECEIVED, LIMITS)
        assert isinstance(parsed, Tracking)
        assert parsed.ts == RECEIVED - timedelta(minutes=1)
