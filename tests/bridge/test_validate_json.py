"""bridge.validate reads JSON with orjson: what is valid, and every reason, must be json's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import validate
from bridge.messages import Parsed, Rejected, Tracking
from bridge.validate import Limits, parse

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
LIMITS = Limits(max_image_bytes=4096, max_upload_files=3)
TOPICS = ["aoc/332/tracking", "aoc/332/crash", "aoc/332/status", "legacy/332/tracking"]


def both(topic: str, payload: bytes) -> tuple[Parsed, Parsed]:
    """``parse`` as it is, and with json alone (orjson's fast path off)."""
    fast = parse(topic, payload, NOW, LIMITS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate, "_fast_object", lambda payload: None)
        reference = parse(topic, payload, NOW, LIMITS)
    return fast, reference


def same(topic: str, payload: bytes) -> Parsed:
    fast, reference = both(topic, payload)
    assert fast == reference
    # Equal floats may still differ in type (1 vs 1.0): compare the emitted bodies exactly.
    if isinstance(fast, Tracking) and isinstance(reference, Tracking):
        assert json.dumps(fast.body) == json.dumps(reference.body)
    return fast


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=10,
)
names = st.sampled_from(
    ["lat", "lon", "speed", "heading", "ts", "seq", "accuracy", "altitude", "dest_lat",
     "dest_lon", "ambulance_id", "legacy", "status", "tracking_latitude", "x"]
)
bodies = st.fixed_dictionaries(
    {"lat": st.just(13.75), "lon": st.just(100.5), "speed": st.just(40)}
).flatmap(lambda base: st.dictionaries(names, values, max_size=5).map(lambda extra: base | extra))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(TOPICS), bodies)
def test_any_body_parses_as_with_json(topic: str, body: dict[str, Any]) -> None:
    """Test that a body of any values (huge ints, NaN, nesting) gives json's result exactly."""
    same(topic, json.dumps(body).encode())


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(TOPICS), st.binary(max_size=80))
def test_any_bytes_parse_as_with_json(topic: str, payload: bytes) -> None:
    """Test that arbitrary bytes are accepted or refused as with json, with json's reason."""
    same(topic, payload)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(TOPICS),
    st.integers(min_value=0, max_value=60),
    st.binary(min_size=1, max_size=3),
)
def test_a_damaged_point_parses_as_with_json(topic: str, at: int, junk: bytes) -> None:
    """Test that a valid point with a few bytes changed gives json's result exactly."""
    good = b'{"lat":13.75,"lon":100.5,"speed":40,"heading":90,"ts":1714564800000,"seq":7}'
    at = min(at, len(good))
    same(topic, good[:at] + junk + good[at + len(junk):])


@pytest.mark.parametrize(
    "payload",
    [
        b'{"lat": 13.75, "lon": 100.5, "speed": 40, "seq": 123456789012345678901234567890}',
        b'{"lat": 13.75, "lon": 100.5, "speed": 40, "seq": 18446744073709551616}',
        b'{"lat": 13.75, "lon": 100.5, "speed": 40, "altitude": 100000000000000000000000}',
        b'{"lat": 13.75, "lon": 100.5, "speed": 40, "ambulance_id": 332}',
        b'{"lat": 13.75, "lon": 100.5, "speed": 40, "note": "\\ud800"}',
        b'{"lat": 1e999, "lon": 100.5, "speed": 40}',
        b'{"lat": NaN, "lon": 100.5, "speed": 40}',
        b'\xef\xbb\xbf{"lat": 13.75, "lon": 100.5, "speed": 40}',
        b'{"lat": 13.75, "lon": 100.5, "speed": 40, "speed": 41}',
        b'{"lat": 13.75, "lon": 100.5, "speed": "\x01"}',
        b'{"lat": 13.75, "lon": 100.5, "speed": 40, "x": "\xed\xa0\x80"}',
        b'[1, 2]',
        b'"text"',
        b'{"a":' * 40 + b"1" + b"}" * 40,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
    ],
    ids=lambda payload: payload[:40].decode("utf-8", "replace"),
)
def test_inputs_orjson_reads_differently_parse_as_with_json(payload: bytes) -> None:
    """Test that long integers, lone surrogates, 1e999, a BOM or deep nesting get json's answer."""
    for topic in TOPICS:
        same(topic, payload)


def test_a_payload_with_a_huge_integer_id_still_names_its_ambulance() -> None:
    """Test that an id too long for 64 bits, as a JSON number, is compared as json reads it."""
    aid = "1" * 30
    payload = b'{"lat": 13.75, "lon": 100.5, "speed": 40, "ambulance_id": ' + aid.encode() + b"}"
    parsed = same(f"aoc/{aid}/tracking", payload)
    assert not isinstance(parsed, Rejected), parsed
