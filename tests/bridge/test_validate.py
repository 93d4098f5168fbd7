"""Tests for bridge.validate: every rule of the MQTT contract, and that parse never raises."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoc.config import Settings
from bridge.contract import topic_ambulance_id, valid_ambulance_id
from bridge.ids import epoch_ms, snap_id
from bridge.messages import Crash, Parsed, Position, Rejected, Snap, Status, Tracking
from bridge.validate import Limits, parse, parse_timestamp
from tests.images import TINY_JPEG, png

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
LIMITS = Limits(max_image_bytes=4096, max_upload_files=3)
PNG = png()


def _parse(topic: str, payload: bytes | dict[str, Any] | list[Any]) -> Parsed:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse(topic, raw, NOW, LIMITS)


def _track(body: dict[str, Any], topic: str = "aoc/332/tracking") -> Tracking:
    result = _parse(topic, body)
    assert isinstance(result, Tracking), result
    return result


def _reason(topic: str, payload: bytes | dict[str, Any] | list[Any]) -> str:
    result = _parse(topic, payload)
    assert isinstance(result, Rejected), result
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    assert result.payload == raw
    assert result.topic == topic
    assert result.received_at == NOW
    return result.reason


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BASE = {"lat": 13.7563, "lon": 100.5018, "speed": 45.5}
# The legacy shim's topic: the only root whose messages may carry a `legacy` body.
SHIM_TRACKING = "legacy/332/tracking"
LEGACY_ON_DEVICE_TOPIC = (
    "legacy: legacy bodies come only from the legacy shim, on legacy/<id>/<kind>;"
    " a device publishes its message without one"
)


# --- tracking -------------------------------------------------------------------------


def test_plain_tracking_fields_and_legacy_shaped_body() -> None:
    """Test a full plain-name tracking message and the legacy-shaped body built from it."""
    ts = int(NOW.timestamp() * 1000) - 5000
    body = {
        "ambulance_id": "332",
        "lat": 13.7563,
        "lon": "100.5018",
        "speed": 45,
        "heading": 180,
        "ts": ts,
        "seq": 7,
        "accuracy": 4.5,
        "altitude": -12,
        "dest_lat": 13.8,
        "dest_lon": 100.6,
        "battery": 81,
        "legacy": None,
    }
    item = _track(body)
    assert item.ambulance_id == "332"
    assert item.position == Position(13.7563, 100.5018)
    assert item.speed_kmh == 45.0
    assert item.heading == 180.0
    assert item.ts == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts)
    assert item.received_at == NOW
    assert (item.seq, item.accuracy, item.altitude) == (7, 4.5, -12.0)
    assert item.destination == Position(13.8, 100.6)
    # Legacy names first (old dashboards read them), then the contract's optional
    # fields, all as validated; a field the contract does not know ("battery") never
    # reaches a room.
    assert list(item.body.items()) == [
        ("ambulance_id", "332"),
        ("tracking_latitude", 13.7563),
        ("tracking_longitude", 100.5018),
        ("tracking_speed", 45.0),
        ("tracking_heading", 180.0),
        ("ts", ts),
        ("seq", 7),
        ("accuracy", 4.5),
        ("altitude", -12.0),
        ("dest_lat", 13.8),
        ("dest_lon", 100.6),
    ]


def test_minimal_tracking_defaults() -> None:
    """Test that only lat/lon/speed are required and ts defaults to the receipt time."""
    item = _track(dict(BASE))
    assert item.ts == NOW
    assert item.heading is None
    assert (item.seq, item.accuracy, item.altitude, item.destination) == (None, None, None, None)
    assert item.body == {
        "ambulance_id": "332",
        "tracking_latitude": 13.7563,
        "tracking_longitude": 100.5018,
        "tracking_speed": 45.5,
        "tracking_heading": None,
        "ts": epoch_ms(NOW),
    }


def test_legacy_names_are_aliases_and_rooms_get_the_validated_values() -> None:
    """Test the legacy field names and string numbers over MQTT: rooms get numbers, no extras."""
    body = {
        "tracking_latitude": "13.7563",
        "tracking_longitude": 100.5018,
        "tracking_speed": "45.5",
        "tracking_heading": 180,
        "extra": {"nested": [1, 2]},
    }
    item = _track(body)
    assert item.position == Position(13.7563, 100.5018)
    assert (item.speed_kmh, item.heading) == (45.5, 180.0)
    # A body made only of legacy names still reaches rooms with its ambulance id.
    assert item.body == {
        "ambulance_id": "332",
        "tracking_latitude": 13.7563,
        "tracking_longitude": 100.5018,
        "tracking_speed": 45.5,
        "tracking_heading": 180.0,
        "ts": epoch_ms(NOW),
    }


def test_legacy_object_is_the_emitted_body() -> None:
    """Test that the shim's `legacy` object is what legacy rooms get, as sent."""
    legacy = {
        "tracking_speed": "45.5",
        "ambulance_id": "332",
        "tracking_latitude": "13.7563",
        "lon": 100.5018,
        "note": "<b>kept as the old server kept it</b>",
    }
    item = _track({**BASE, "ts": "2024-05-01T11:59:00Z", "legacy": legacy}, SHIM_TRACKING)
    assert item.body == legacy
    assert list(item.body) == list(legacy)
    assert item.ts == datetime(2024, 5, 1, 11, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    ("legacy", "reason"),
    [
        # The forgery seen: stored at 0,0 and 0 km/h, shown at 13.75,100.5 and 300 km/h.
        (
            {"ambulance_id": "332", "tracking_latitude": 13.75, "tracking_longitude": 100.5,
             "tracking_speed": 300},
            "legacy.tracking_latitude: 13.75 disagrees with lat 0.0",
        ),
        (
            {"ambulance_id": "332", "tracking_latitude": 0, "tracking_longitude": 0,
             "tracking_speed": 300},
            "legacy.tracking_speed: 300 disagrees with speed 0.0",
        ),
        (
            {"tracking_latitude": 0, "tracking_longitude": 0, "tracking_speed": 0},
            "legacy.ambulance_id: required",
        ),
        (
            {"ambulance_id": "332", "tracking_longitude": 0, "tracking_speed": 0},
            "legacy.tracking_latitude: required, the message carries lat",
        ),
        (
            {"ambulance_id": "332", "lat": 0, "tracking_longitude": 0, "tracking_speed": 0,
             "tracking_heading": 90},
            "legacy.tracking_heading: 90 disagrees with heading None",
        ),
        (
            {"ambulance_id": "332", "lat": 0, "tracking_latitude": "1", "lon": 0, "speed": 0},
            "legacy.tracking_latitude: '1' disagrees with lat 0.0",
        ),
        (
            {"ambulance_id": "332", "lat": "x", "lon": 0, "speed": 0},
            "legacy.lat: must be a number, got 'x'",
        ),
    ],
)
def test_a_legacy_body_must_say_what_was_validated(legacy: dict[str, Any], reason: str) -> None:
    """Test that a `legacy` body disagreeing with the stored values, or nameless, is refused."""
    body = {"lat": 0, "lon": 0, "speed": 0, "legacy": legacy}
    assert _reason(SHIM_TRACKING, body) == reason
    assert _reason("legacy/332/crash", {**body, "legacy": {**legacy}}) is not None


def test_a_room_gets_the_stored_values_whatever_the_body_adds() -> None:
    """Test the forged MQTT point: no legacy body, extra HTML: rooms get what was stored."""
    body = {"lat": 0, "lon": 0, "speed": 0, "note": "<img src=x onerror=alert(1)>"}
    item = _track(body)
    assert item.body == {
        "ambulance_id": "332",
        "tracking_latitude": 0.0,
        "tracking_longitude": 0.0,
        "tracking_speed": 0.0,
        "tracking_heading": None,
        "ts": epoch_ms(NOW),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("45.5", 45.5), (" 45.5 ", 45.5), ("45", 45.0), ("+4.5e1", 45.0), (".5", 0.5), ("5.", 5.0)],
)
def test_string_numbers(text: str, expected: float) -> None:
    """Test the numeric strings that are accepted (as JavaScript's Number() would)."""
    assert _track({**BASE, "speed": text}).speed_kmh == expected


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "1_0", "0x10", "nan", "NaN", "Infinity", "1e", "45,5"]
)
def test_bad_string_numbers(text: str) -> None:
    """Test that strings that are not plain decimal numbers are rejected, naming the field."""
    assert _reason("aoc/332/tracking", {**BASE, "speed": text}).startswith(
        "speed: must be a number"
    )


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("lat", 123, "lat: must be between -90 and 90, got 123.0"),
        ("lat", -90.0001, "lat: must be between -90 and 90, got -90.0001"),
        ("lon", 180.5, "lon: must be between -180 and 180, got 180.5"),
        ("lon", "-181", "lon: must be between -180 and 180, got -181.0"),
        ("speed", -1, "speed: must be between 0 and 500, got -1.0"),
        ("speed", 500.1, "speed: must be between 0 and 500, got 500.1"),
        ("heading", 360.5, "heading: must be between 0 and 360, got 360.5"),
        ("heading", -1, "heading: must be between 0 and 360, got -1.0"),
        ("accuracy", -0.5, "accuracy: must be at least 0, got -0.5"),
        ("dest_lat", 91, "dest_lat: must be between -90 and 90, got 91.0"),
        ("tracking_latitude", 95, "tracking_latitude: must be between -90 and 90, got 95.0"),
    ],
)
def test_out_of_range_fields(field: str, value: object, reason: str) -> None:
    """Test each range rule, with the reason naming the field as the device sent it."""
    body = {**BASE, field: value}
    if field == "tracking_latitude":
        del body["lat"]
    if field == "dest_lat":
        body["dest_lon"] = 100.0
    assert _reason("aoc/332/tracking", body) == reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lat", 90),
        ("lat", -90),
        ("lon", 180),
        ("lon", -180),
        ("speed", 0),
        ("speed", 500),
        ("heading", 0),
        ("heading", 360),
        ("accuracy", 0),
    ],
)
def test_range_boundaries_are_inclusive(field: str, value: float) -> None:
    """Test that the range ends themselves are accepted."""
    _track({**BASE, field: value})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"lat": NaN, "lon": 1, "speed": 1}', "payload: not valid JSON (NaN is not allowed)"),
        (
            b'{"lat": 1, "lon": Infinity, "speed": 1}',
            "payload: not valid JSON (Infinity is not allowed)",
        ),
        (
            b'{"lat": 1, "lon": 1, "speed": -Infinity}',
            "payload: not valid JSON (-Infinity is not allowed)",
        ),
        (b'{"lat": 1e999, "lon": 1, "speed": 1}', "lat: must be a finite number, got inf"),
        (b'{"lat": 1, "lon": 1, "speed": true}', "speed: must be a number, got True"),
        (b'{"lat": false, "lon": 1, "speed": 1}', "lat: must be a number, got False"),
        (b'{"lat": [1], "lon": 1, "speed": 1}', "lat: must be a number, got [1]"),
        (b'{"lat": {}, "lon": 1, "speed": 1}', "lat: must be a number, got {}"),
        (
            b'{"lat": 1' + b"0" * 400 + b', "lon": 1, "speed": 1}',
            "lat: must be a finite number, got 1" + "0" * 36 + "...",
        ),
    ],
)
def test_nan_infinity_booleans_and_non_numbers_are_rejected(raw: bytes, reason: str) -> None:
    """Test that NaN, Infinity, huge numbers, booleans and containers are never numbers."""
    assert _reason("aoc/332/tracking", raw) == reason


@pytest.mark.parametrize("field", ["lat", "lon", "speed"])
def test_required_fields(field: str) -> None:
    """Test that lat, lon and speed are required (null counts as missing)."""
    body = {name: value for name, value in BASE.items() if name != field}
    legacy_name = {"lat": "tracking_latitude", "lon": "tracking_longitude"}.get(
        field, "tracking_speed"
    )
    reason = f"{field}: required (or its legacy name {legacy_name})"
    assert _reason("aoc/332/tracking", body) == reason
    assert _reason("aoc/332/tracking", {**body, field: None}) == reason


def test_plain_and_legacy_name_must_agree() -> None:
    """Test that a body giving both names for one field must give the same value."""
    _track({**BASE, "tracking_latitude": "13.7563"})
    reason = _reason("aoc/332/tracking", {**BASE, "tracking_latitude": 14})
    assert reason == "lat: conflicts with tracking_latitude"


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (3, 3), ("12", 12), (4.0, 4), (2**63 - 1, 2**63 - 1)]
)
def test_seq_accepted(value: object, expected: int) -> None:
    """Test the accepted sequence numbers."""
    assert _track({**BASE, "seq": value}).seq == expected


@pytest.mark.parametrize("value", [-1, 1.5, "x", True, 2**64, "1e400", "²", "٣", "-1", "1.0"])
def test_seq_rejected(value: object) -> None:
    """Test that seq must be a non-negative 64-bit integer."""
    assert _reason("aoc/332/tracking", {**BASE, "seq": value}).startswith("seq: must be")


def test_destination_needs_both_coordinates() -> None:
    """Test that a half-given destination is rejected and that crash ignores it."""
    reason = _reason("aoc/332/tracking", {**BASE, "dest_lat": 13.8})
    assert reason == "dest_lon: required when the other destination coordinate is given"
    crash = _parse("aoc/332/crash", {**BASE, "dest_lat": 13.8})
    assert isinstance(crash, Crash)


@pytest.mark.parametrize("value", ["332", 332])
def test_body_ambulance_id_matching_topic(value: object) -> None:
    """Test that a body id equal to the topic's (string or legacy number) is accepted."""
    _track({**BASE, "ambulance_id": value})


@pytest.mark.parametrize("value", ["333", "", None, 333, True, ["332"], "332 "])
def test_body_ambulance_id_mismatch(value: object) -> None:
    """Test that a body id different from the topic's is rejected."""
    reason = _reason("aoc/332/tracking", {**BASE, "ambulance_id": value})
    assert reason.startswith("ambulance_id: ")
    assert reason.endswith("does not match the topic's id '332'")


def test_legacy_object_id_mismatch_and_type() -> None:
    """Test that `legacy` must be an object whose id (if any) matches the topic."""
    reason = _reason(SHIM_TRACKING, {**BASE, "legacy": {"ambulance_id": "999"}})
    assert reason == "legacy.ambulance_id: '999' does not match the topic's id '332'"
    reason = _reason(SHIM_TRACKING, {**BASE, "legacy": "ambulance_id=332"})
    assert reason == "legacy: must be a JSON object, got a string"


# --- the legacy shim's root ----------------------------------------------------------

# A legacy body that agrees with its message, as the shim builds it, per kind.
_SHIM_LEGACY = {"ambulance_id": "332", "tracking_latitude": "13.7563",
                "tracking_longitude": "100.5018", "tracking_speed": "45.5", "note": "<b>x</b>"}
_SHIM_MESSAGES = {
    "tracking": {**BASE, "legacy": _SHIM_LEGACY},
    "crash": {**BASE, "speed": 163.8, "legacy": _SHIM_LEGACY},  # m/s in the legacy body
    "snap": {"images": [{"data": _b64(PNG)}], "legacy": {"ambulance_id": "332", "n": "1"}},
}


@pytest.mark.parametrize("kind", list(_SHIM_MESSAGES))
def test_a_legacy_body_is_taken_from_the_shim_root_only(kind: str) -> None:
    """Test that the one body legacy rooms get as sent is refused on a device topic.

    A device could otherwise make dashboards show text of its own choosing
    under any legacy field: the broker lets only the shim's account write
    legacy/..., and a subscriber cannot see who published, only where.
    """
    body = _SHIM_MESSAGES[kind]
    shim = _parse(f"legacy/332/{kind}", body)
    assert not isinstance(shim, Rejected), shim
    assert shim.body == body["legacy"]
    assert _reason(f"aoc/332/{kind}", body) == LEGACY_ON_DEVICE_TOPIC
    # Whatever the body is: refused before it is even looked at.
    for legacy in ("ambulance_id=332", [], {}, 0, False):
        assert _reason(f"aoc/332/{kind}", {**body, "legacy": legacy}) == LEGACY_ON_DEVICE_TOPIC
    # A null one is no legacy body: the device's message as if it had none.
    plain = {name: value for name, value in body.items() if name != "legacy"}
    assert _parse(f"aoc/332/{kind}", {**body, "legacy": None}) == _parse(f"aoc/332/{kind}", plain)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("tracking", {**BASE, "ts": "2024-05-01T11:59:00Z", "seq": 7, "dest_lat": 1,
                      "dest_lon": 2}),
        ("tracking", {"tracking_latitude": "13.7", "tracking_longitude": 100, "tracking_speed": 1}),
        ("crash", {**BASE, "heading": 90}),
        ("snap", {"images": [{"data": _b64(PNG)}], "ts": "2024-05-01T11:59:30Z"}),
        ("snap", PNG),
        ("tracking", {**BASE, "lat": 91}),
        ("tracking", {**BASE, "ambulance_id": "333"}),
        ("crash", b"{not json"),
        ("snap", b"GIF89a"),
    ],
)
def test_the_shim_root_is_validated_as_the_device_topic_of_its_id(
    kind: str, body: bytes | dict[str, Any]
) -> None:
    """Test that legacy/<id>/<kind> is validated as aoc/<id>/<kind>: same result or reason."""
    device, shim = _parse(f"aoc/332/{kind}", body), _parse(f"legacy/332/{kind}", body)
    if isinstance(device, Rejected):
        assert isinstance(shim, Rejected)
        assert (shim.reason, shim.payload) == (device.reason, device.payload)
        assert shim.topic == f"legacy/332/{kind}"
    else:
        assert shim == device


@pytest.mark.parametrize("kind", list(_SHIM_MESSAGES))
def test_a_retained_shim_message_is_refused_as_a_device_one(kind: str) -> None:
    """Test that a retained message on the shim's root is an old replay too, never data."""
    raw = json.dumps(_SHIM_MESSAGES[kind]).encode()
    refused = parse(f"legacy/332/{kind}", raw, NOW, LIMITS, retained=True)
    assert isinstance(refused, Rejected)
    assert refused.reason.startswith(f"retain: a retained {kind} message is an old message")


def test_the_shim_root_has_no_status() -> None:
    """Test that legacy/<id>/status is refused (legacy devices have no Last Will), by kind."""
    assert _reason("legacy/332/status", b"online") == (
        "topic: unknown message kind 'status' (expected tracking, snap, crash)"
    )
    assert _reason("legacy/332", b"online") == (
        "topic: expected legacy/<ambulance_id>/<kind>, got 'legacy/332'"
    )


# --- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1714564800000, datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("1714564800000", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (1714564800000.5, datetime(2024, 5, 1, 12, 0, 0, 500, tzinfo=UTC)),
        ("2024-05-01T11:00:00Z", datetime(2024, 5, 1, 11, 0, tzinfo=UTC)),
        ("2024-05-01T11:00:00.250Z", datetime(2024, 5, 1, 11, 0, 0, 250000, tzinfo=UTC)),
        ("2024-05-01T18:00:00+07:00", datetime(2024, 5, 1, 11, 0, tzinfo=UTC)),
        ("2024-05-01T06:30:00-04:30", datetime(2024, 5, 1, 11, 0, tzinfo=UTC)),
        ("2024-05-01T11:00:00", datetime(2024, 5, 1, 11, 0, tzinfo=UTC)),  # no offset: UTC
        ("2024-05-01 11:00:00Z", datetime(2024, 5, 1, 11, 0, tzinfo=UTC)),
        ("2000-01-01T00:00:00Z", datetime(2000, 1, 1, tzinfo=UTC)),
    ],
)
def test_ts_formats(value: object, expected: datetime) -> None:
    """Test epoch milliseconds (number or string) and ISO 8601 with Z, offsets or none."""
    item = _track({**BASE, "ts": value})
    assert item.ts == expected
    assert item.ts.utcoffset() == timedelta(0)
    assert parse_timestamp(value) == expected


def test_ts_missing_or_null_is_receipt_time() -> None:
    """Test that a missing or null ts means the server receipt time."""
    assert _track(dict(BASE)).ts == NOW
    assert _track({**BASE, "ts": None}).ts == NOW


def test_ts_ahead_of_receipt_within_the_bound_is_kept() -> None:
    """Test that a device clock up to max_clock_ahead ahead is taken as it is."""
    ahead = NOW + LIMITS.max_clock_ahead
    item = _track({**BASE, "ts": ahead.isoformat()})
    assert (item.ts, item.device_ts, item.id_ts) == (ahead, None, ahead)


@pytest.mark.parametrize(
    "ahead",
    [timedelta(seconds=5, milliseconds=1), timedelta(minutes=9, seconds=50), timedelta(days=400)],
)
@pytest.mark.parametrize("kind", ["tracking", "crash"])
def test_ts_beyond_the_bound_is_clamped_to_the_receipt_time(kind: str, ahead: timedelta) -> None:
    """Test that a point from a clock running ahead is taken at its receipt time.

    The device's own time is kept (its id is built from it, so a redelivery is
    still the same point), but it can no longer pin the latest state ahead of
    every real point after it.
    """
    device_ts = NOW + ahead
    item = _parse(f"aoc/332/{kind}", {**BASE, "ts": epoch_ms(device_ts)})
    assert isinstance(item, Tracking | Crash)
    assert item.ts == NOW
    assert item.device_ts == device_ts.replace(microsecond=device_ts.microsecond // 1000 * 1000)
    assert item.id_ts == item.device_ts
    assert item.body["ts"] == epoch_ms(NOW)


def test_the_clock_bound_is_a_setting() -> None:
    """Test that AOC_MAX_CLOCK_AHEAD_SECONDS sets the bound."""
    limits = Limits.from_settings(Settings(max_clock_ahead_seconds=60))
    assert limits.max_clock_ahead == timedelta(seconds=60)
    raw = json.dumps({**BASE, "ts": epoch_ms(NOW + timedelta(seconds=30))}).encode()
    item = parse("aoc/332/tracking", raw, NOW, limits)
    assert isinstance(item, Tracking)
    assert item.device_ts is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1999-12-31T23:59:59Z", "ts: must not be before 2000-01-01, got '1999-12-31T23:59:59Z'"),
        (946684799999, "ts: must not be before 2000-01-01, got 946684799999"),
        (-1, "ts: must not be before 2000-01-01, got -1"),
        (1e300, "ts: must not be after the year 9998, got 1e+300"),
        (10**30, "ts: must not be after the year 9998, got 1" + "0" * 30),
        (True, "ts: must be epoch milliseconds or an ISO 8601 string, got True"),
        ([1], "ts: must be epoch milliseconds or an ISO 8601 string, got [1]"),
        ("yesterday", "ts: must be epoch milliseconds or an ISO 8601 string, got 'yesterday'"),
        (
            "2024-13-01T00:00:00Z",
            "ts: must be epoch milliseconds or an ISO 8601 string, got '2024-13-01T00:00:00Z'",
        ),
        ("9" * 100, "ts: must be epoch milliseconds or an ISO 8601 string, got a long string"),
        (
            "0001-01-01T00:00:00+01:00",
            "ts: must not be before 2000-01-01 or far ahead, got '0001-01-01T00:00:00+01:00'",
        ),
        (
            "9999-12-31T23:59:59-01:00",
            "ts: must not be before 2000-01-01 or far ahead, got '9999-12-31T23:59:59-01:00'",
        ),
        ("9999-12-31T23:59:59", "ts: must not be after the year 9998, got '9999-12-31T23:59:59'"),
    ],
)
def test_bad_ts(value: object, reason: str) -> None:
    """Test that out-of-range or malformed times are rejected with the reason."""
    assert _reason("aoc/332/tracking", {**BASE, "ts": value}) == reason


def test_naive_receipt_time_is_utc() -> None:
    """Test that a naive receipt time is taken as UTC for the clock bound."""
    raw = json.dumps({**BASE, "ts": "2024-05-01T12:00:04Z"}).encode()
    item = parse("aoc/332/tracking", raw, datetime(2024, 5, 1, 12, 0), LIMITS)
    assert isinstance(item, Tracking)
    assert item.ts == datetime(2024, 5, 1, 12, 0, 4, tzinfo=UTC)


# --- payloads and topics --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[1, 2]", "payload: must be a JSON object, got an array"),
        (b"null", "payload: must be a JSON object, got null"),
        (b'"text"', "payload: must be a JSON object, got a string"),
        (b"42", "payload: must be a JSON object, got a number"),
        (b"true", "payload: must be a JSON object, got a boolean"),
        (b"", "payload: empty (expected a JSON object)"),
        (b"not json", "payload: not valid JSON (Expecting value at line 1 column 1)"),
        (
            b'{"lat": 1,}',
            "payload: not valid JSON (Expecting property name enclosed in double "
            "quotes at line 1 column 11)",
        ),
        (b'{"lat": "\xff\xfe"}', "payload: not valid UTF-8 (byte 9)"),
        (TINY_JPEG, "payload: not valid UTF-8 (byte 0)"),
        (
            b"{" * 5000,
            "payload: not valid JSON (Expecting property name enclosed in double "
            "quotes at line 1 column 2)",
        ),
        (b"[" * 60000, "payload: nested deeper than 32 levels"),
        (
            json.dumps({**BASE, "x": json.loads("[" * 40 + "]" * 40)}).encode(),
            "payload: nested deeper than 32 levels",
        ),
        (
            b'{"n": 1' + b"0" * 5000 + b"}",
            "payload: not valid JSON (an integer with too many digits)",
        ),
    ],
)
def test_bad_payloads(raw: bytes, reason: str) -> None:
    """Test non-object JSON, invalid JSON/UTF-8 and hostile nesting."""
    assert _reason("aoc/332/tracking", raw) == reason


def test_huge_payload_is_refused_before_parsing() -> None:
    """Test that a payload over the record limit is rejected on its size."""
    raw = json.dumps({**BASE, "pad": "x" * LIMITS.max_record_bytes}).encode()
    assert _reason("aoc/332/tracking", raw) == (
        f"payload: {len(raw)} bytes, over the limit of {LIMITS.max_record_bytes} bytes"
    )


def test_payload_of_other_buffer_types() -> None:
    """Test that a bytearray payload is parsed like bytes."""
    raw = bytearray(json.dumps(BASE).encode())
    result = parse("aoc/332/tracking", raw, NOW, LIMITS)  # type: ignore[arg-type]  # on purpose
    assert isinstance(result, Tracking)


@pytest.mark.parametrize(
    "aid",
    [
        "..",
        ".",
        "332 ",
        " 332",
        "a" * 65,
        "รถ1",
        "",
        "a+b",
        "a#b",
        "a.b",
        "332\n",
        "x\x00y",
        "ａｂｃ",
    ],
)
def test_hostile_ambulance_ids(aid: str) -> None:
    """Test that ids outside [A-Za-z0-9_-]{1,64} are rejected whatever the kind."""
    for kind in ("tracking", "crash", "snap", "status"):
        reason = _reason(f"aoc/{aid}/{kind}", dict(BASE))
        assert reason == "topic: ambulance id must match [A-Za-z0-9_-]{1,64}"
    assert not valid_ambulance_id(aid)
    assert topic_ambulance_id(f"aoc/{aid}/tracking") is None


@pytest.mark.parametrize(
    ("aid", "why"),
    [
        ("tracking", "it is the name of the shared room 'tracking'"),
        ("snap", "it is the name of the shared room 'snap'"),
        ("crash", "it is the name of the shared room 'crash'"),
        ("Crash", "it is the name of the shared room 'crash'"),
        ("TRACKING", "it is the name of the shared room 'tracking'"),
        ("CRASH_NOTIFY_332", "CRASH_NOTIFY_<id> rooms carry crash records"),
        ("crash_notify_", "CRASH_NOTIFY_<id> rooms carry crash records"),
    ],
)
def test_room_names_are_no_ambulance_ids(aid: str, why: str) -> None:
    """Test that an id naming a shared room is refused on every device topic, saying why."""
    for kind in ("tracking", "crash", "snap", "status"):
        reason = _reason(f"aoc/{aid}/{kind}", dict(BASE))
        assert reason == f"topic: ambulance id {aid!r} is reserved: {why}"
    assert not valid_ambulance_id(aid)
    assert topic_ambulance_id(f"aoc/{aid}/tracking") is None


@pytest.mark.parametrize("kind", ["tracking", "crash", "snap"])
def test_retained_device_messages_are_refused(kind: str) -> None:
    """Test that a retained tracking, crash or snap is never taken as device data."""
    payload = TINY_JPEG if kind == "snap" else json.dumps(BASE).encode()
    result = parse(f"aoc/332/{kind}", payload, NOW, LIMITS, retained=True)
    assert isinstance(result, Rejected)
    assert result.reason.startswith(f"retain: a retained {kind} message is an old message")
    assert isinstance(parse(f"aoc/332/{kind}", payload, NOW, LIMITS), Tracking | Crash | Snap)


def test_a_retained_status_is_taken() -> None:
    """Test that status, the Last Will, is the one retained message the bridge takes."""
    result = parse("aoc/332/status", b"offline", NOW, LIMITS, retained=True)
    # Marked as replayed: it says how the device left, not that it was just heard.
    assert result == Status("332", online=False, received_at=NOW, retained=True)


@pytest.mark.parametrize("aid", ["a" * 64, "A-z_09", "0", "-", "332"])
def test_good_ambulance_ids(aid: str) -> None:
    """Test the edges of the id pattern that are accepted."""
    assert valid_ambulance_id(aid)
    assert _track(dict(BASE), topic=f"aoc/{aid}/tracking").ambulance_id == aid
    assert topic_ambulance_id(f"aoc/{aid}/anything/else") == aid


@pytest.mark.parametrize("value", [332, None, b"332", ["332"]])
def test_valid_ambulance_id_needs_a_string(value: object) -> None:
    """Test that only strings can be ambulance ids."""
    assert not valid_ambulance_id(value)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        (
            "aoc/332/tracking/extra",
            "topic: expected aoc/<ambulance_id>/<kind>, got 'aoc/332/tracking/extra'",
        ),
        ("aoc/332", "topic: expected aoc/<ambulance_id>/<kind>, got 'aoc/332'"),
        (
            "other/332/tracking",
            "topic: expected aoc/<ambulance_id>/<kind>, got 'other/332/tracking'",
        ),
        ("/aoc/332/tracking", "topic: expected aoc/<ambulance_id>/<kind>, got '/aoc/332/tracking'"),
        (
            "aoc/332/location",
            "topic: unknown message kind 'location' (expected tracking, snap, crash, status)",
        ),
        (
            "aoc/332/state",
            "topic: unknown message kind 'state' (expected tracking, snap, crash, status)",
        ),
        ("aoc/332/", "topic: unknown message kind '' (expected tracking, snap, crash, status)"),
        (
            "aoc/332/Tracking",
            "topic: unknown message kind 'Tracking' (expected tracking, snap, crash, status)",
        ),
    ],
)
def test_bad_topics(topic: str, reason: str) -> None:
    """Test topics with extra or missing levels, another prefix, or an unknown kind."""
    assert _reason(topic, dict(BASE)) == reason


def test_topic_ambulance_id_for_dead_letters() -> None:
    """Test the id attributed to a dead letter: only a valid one."""
    assert topic_ambulance_id("aoc/332/tracking") == "332"
    assert topic_ambulance_id("aoc/332") == "332"
    assert topic_ambulance_id("aoc") is None
    assert topic_ambulance_id("x/332/tracking") is None


# --- crash ----------------------------------------------------------------------------


def test_plain_crash_body_says_km_h() -> None:
    """Test a plain crash: km/h speed, legacy-shaped body with speed_unit."""
    item = _parse("aoc/332/crash", {**BASE, "heading": 90, "ts": 1714564700000, "g": 4.2})
    assert isinstance(item, Crash)
    assert (item.speed_kmh, item.heading) == (45.5, 90.0)
    assert item.ts == datetime(2024, 5, 1, 11, 58, 20, tzinfo=UTC)
    assert list(item.body.items()) == [
        ("ambulance_id", "332"),
        ("tracking_latitude", 13.7563),
        ("tracking_longitude", 100.5018),
        ("tracking_speed", 45.5),
        ("tracking_heading", 90.0),
        ("ts", 1714564700000),
        ("speed_unit", "km/h"),
    ]


def test_legacy_shim_crash_keeps_m_s_body() -> None:
    """Test that the shim's crash keeps the legacy m/s body, with no speed_unit added."""
    legacy = {
        "ambulance_id": "332",
        "tracking_latitude": 13.7563,
        "tracking_longitude": 100.5018,
        "tracking_speed": 41.6,
        "tracking_heading": 90,
    }
    item = _parse(
        "legacy/332/crash",
        {"lat": 13.7563, "lon": 100.5018, "speed": 149.76, "heading": 90, "legacy": legacy},
    )
    assert isinstance(item, Crash)
    assert item.speed_kmh == 149.76
    assert item.body == legacy


def test_crash_with_legacy_names_is_shaped_plus_unit() -> None:
    """Test a device crash using legacy names: the validated values, plus speed_unit."""
    body = {"tracking_latitude": 1, "tracking_longitude": "2", "tracking_speed": 3}
    item = _parse("aoc/332/crash", body)
    assert isinstance(item, Crash)
    assert item.body == {
        "ambulance_id": "332",
        "tracking_latitude": 1.0,
        "tracking_longitude": 2.0,
        "tracking_speed": 3.0,
        "tracking_heading": None,
        "ts": epoch_ms(NOW),
        "speed_unit": "km/h",
    }


def test_a_legacy_crash_body_must_agree_in_m_s() -> None:
    """Test that the shim's m/s legacy crash body is checked against the km/h speed."""
    legacy = {"ambulance_id": "332", "tracking_latitude": 1, "tracking_longitude": 2}
    good = {"lat": 1, "lon": 2, "speed": 149.76, "legacy": {**legacy, "tracking_speed": 41.6}}
    assert isinstance(_parse("legacy/332/crash", good), Crash)
    bad = {**good, "legacy": {**legacy, "tracking_speed": 149.76}}
    assert _reason("legacy/332/crash", bad) == (
        "legacy.tracking_speed: 149.76 disagrees with speed 149.76"
    )


def test_crash_range_rules() -> None:
    """Test that crash messages follow the same field rules."""
    assert _reason("aoc/332/crash", {**BASE, "speed": 501}) == (
        "speed: must be between 0 and 500, got 501.0"
    )


# --- snapshots ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ext", "content_type"), [(TINY_JPEG, "jpg", "image/jpeg"), (PNG, "png", "image/png")]
)
def test_raw_image_snap(data: bytes, ext: str, content_type: str) -> None:
    """Test a snap whose payload is one raw JPEG or PNG."""
    item = _parse("aoc/332/snap", data)
    assert isinstance(item, Snap)
    assert len(item.images) == 1
    image = item.images[0]
    assert (image.data, image.ext, image.content_type, image.name) == (
        data,
        ext,
        content_type,
        None,
    )
    assert item.ts == item.received_at == NOW
    assert item.body == {"ambulance_id": "332"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "payload: empty (expected a JPEG or PNG image, or a JSON object)"),
        (b"GIF89a....", "payload: not a JPEG or PNG image, nor a JSON object"),
        (b"\xff\xd8", "payload: not a JPEG or PNG image, nor a JSON object"),  # truncated magic
        (b"\x89PNG\r\n\x1a", "payload: not a JPEG or PNG image, nor a JSON object"),
        (b"[]", "payload: not a JPEG or PNG image, nor a JSON object"),
        (b"\x00" * 100, "payload: not a JPEG or PNG image, nor a JSON object"),
    ],
)
def test_bad_raw_snaps(raw: bytes, reason: str) -> None:
    """Test garbage snaps: the type comes from magic bytes only."""
    assert _reason("aoc/332/snap", raw) == reason


def test_oversized_raw_snap() -> None:
    """Test that a raw image over max_image_bytes is rejected."""
    data = TINY_JPEG + b"\x00" * LIMITS.max_image_bytes
    assert _reason("aoc/332/snap", data) == (
        f"payload: image is {len(data)} bytes, over the limit of {LIMITS.max_image_bytes} bytes"
    )
    exact = TINY_JPEG + b"\x00" * (LIMITS.max_image_bytes - len(TINY_JPEG))
    assert isinstance(_parse("aoc/332/snap", exact), Snap)


def test_json_snap_with_names_ts_and_legacy_fields() -> None:
    """Test a JSON snap: images by magic bytes (not names), ts, and the legacy form fields."""
    legacy = {"ambulance_id": "332", "note": "front cam"}
    body = {
        "images": [
            {"name": "front.png", "data": _b64(TINY_JPEG)},  # the name lies: it is a JPEG
            {"name": "rear.jpg", "data": _b64(PNG)},
            {"data": _b64(TINY_JPEG)},
        ],
        "ts": "2024-05-01T11:59:30Z",
        "legacy": legacy,
    }
    item = _parse("legacy/332/snap", body)
    assert isinstance(item, Snap)
    assert [(i.ext, i.content_type, i.name) for i in item.images] == [
        ("jpg", "image/jpeg", "front.png"),
        ("png", "image/png", "rear.jpg"),
        ("jpg", "image/jpeg", None),
    ]
    assert [i.data for i in item.images] == [TINY_JPEG, PNG, TINY_JPEG]
    assert item.ts == datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC)
    assert item.received_at == NOW
    assert item.body == legacy


def test_json_snap_without_legacy_or_ts() -> None:
    """Test the defaults of a JSON snap: receipt time and {"ambulance_id": id}."""
    item = _parse("aoc/332/snap", {"images": [{"data": _b64(PNG)}], "ambulance_id": "332"})
    assert isinstance(item, Snap)
    assert item.ts == item.received_at == NOW
    assert item.body == {"ambulance_id": "332"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "images: required (a list of {name, data} objects)"),
        ({"images": None}, "images: required (a list of {name, data} objects)"),
        ({"images": []}, "images: must not be empty"),
        ({"images": "abc"}, "images: must be a list, got a string"),
        ({"images": [{"data": _b64(PNG)}] * 4}, "images: at most 3 images, got 4"),
        ({"images": ["abc"]}, "images[0]: must be an object with name and data, got a string"),
        ({"images": [{"name": "a.jpg"}]}, "images[0].data: must be a base64 string, got null"),
        ({"images": [{"data": 12}]}, "images[0].data: must be a base64 string, got a number"),
        (
            {"images": [{"data": "!!notbase64!!"}]},
            "images[0].data: not valid base64 (Only base64 data is allowed)",
        ),
        (
            {"images": [{"data": _b64(PNG)[:-2]}]},
            "images[0].data: not valid base64 (Incorrect padding)",
        ),
        (
            {"images": [{"data": _b64(PNG), "name": 5}]},
            "images[0].name: must be a string of at most 255 characters",
        ),
        (
            {"images": [{"data": _b64(PNG), "name": "n" * 256}]},
            "images[0].name: must be a string of at most 255 characters",
        ),
        (
            {"images": [{"data": _b64(PNG)}, {"data": _b64(b"GIF89a" + bytes(50))}]},
            "images[1]: not a JPEG or PNG image",
        ),
        (
            {"images": [{"data": _b64(PNG)}, {"data": _b64(b"\x00" + TINY_JPEG)}]},
            "images[1]: not a JPEG or PNG image",
        ),
        ({"images": [{"data": ""}]}, "images[0]: not a JPEG or PNG image"),
        (
            {"images": [{"data": _b64(PNG)}], "ambulance_id": "9"},
            "ambulance_id: '9' does not match the topic's id '332'",
        ),
        (
            {"images": [{"data": _b64(PNG)}], "legacy": {"ambulance_id": "332"}},
            LEGACY_ON_DEVICE_TOPIC,
        ),
        (
            {"images": [{"data": _b64(PNG)}], "ts": "soon"},
            "ts: must be epoch milliseconds or an ISO 8601 string, got 'soon'",
        ),
    ],
)
def test_bad_json_snaps(body: dict[str, Any], reason: str) -> None:
    """Test every way a JSON snap can be wrong, with the reason naming the place."""
    assert _reason("aoc/332/snap", body) == reason


@pytest.mark.parametrize(
    ("legacy", "reason"),
    [
        ({"ambulance_id": "9"}, "legacy.ambulance_id: '9' does not match the topic's id '332'"),
        ({"note": "x"}, "legacy.ambulance_id: required"),
        ([], "legacy: must be a JSON object, got an array"),
    ],
)
def test_bad_legacy_snap_bodies(legacy: object, reason: str) -> None:
    """Test that the shim's snapshot form fields must be an object naming this ambulance."""
    assert _reason("legacy/332/snap", {"images": [{"data": _b64(PNG)}], "legacy": legacy}) == reason


def test_json_snap_image_size_limits() -> None:
    """Test the per-image limit on decoded bytes and on base64 text before decoding."""
    big = PNG + b"\x00" * (LIMITS.max_image_bytes - len(PNG) + 1)
    reason = _reason("aoc/332/snap", {"images": [{"data": _b64(PNG)}, {"data": _b64(big)}]})
    assert reason == (
        f"images[1]: image is {len(big)} bytes, over the limit of {LIMITS.max_image_bytes} bytes"
    )
    huge_text = "A" * (LIMITS.max_image_bytes * 2)
    reason = _reason("aoc/332/snap", {"images": [{"data": huge_text}]})
    assert reason == f"images[0]: image is over the limit of {LIMITS.max_image_bytes} bytes"


def test_json_snap_total_size_limit() -> None:
    """Test that a JSON snap larger than every image at its limit could be is refused."""
    raw = b'{"images": [], "pad": "' + b"x" * LIMITS.max_snap_json_bytes + b'"}'
    assert _reason("aoc/332/snap", raw).startswith("payload: ")
    assert "over the limit" in _reason("aoc/332/snap", raw)


def test_snap_ts_in_the_receipt_millisecond_still_counts_as_given() -> None:
    """Test that a device ts equal (to the ms) to the receipt time keeps the id distinct.

    ``snap_id`` tells "no ts" from "ts given" by ts != received_at, so parse
    nudges received_at by 1 ms in that rare case; the id must then include the ts.
    """
    body = {"images": [{"data": _b64(PNG)}], "ts": epoch_ms(NOW)}
    item = _parse("aoc/332/snap", body)
    assert isinstance(item, Snap)
    assert epoch_ms(item.ts) == epoch_ms(NOW)
    assert item.received_at == NOW + timedelta(milliseconds=1)
    later = parse("aoc/332/snap", json.dumps(body).encode(), NOW + timedelta(seconds=5), LIMITS)
    assert isinstance(later, Snap)
    assert snap_id(item) == snap_id(later)  # a redelivery maps to the same id
    no_ts = _parse("aoc/332/snap", {"images": [{"data": _b64(PNG)}]})
    assert isinstance(no_ts, Snap)
    assert snap_id(no_ts) != snap_id(item)


# --- status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "online"),
    [
        (b"online", True),
        (b"offline", False),
        (b" online\n", True),
        (b"OFFLINE", False),
        (b'{"status": "online"}', True),
        (b'{"status": "offline", "ambulance_id": "332"}', False),
    ],
)
def test_status(raw: bytes, online: bool) -> None:
    """Test the plain and JSON status payloads."""
    item = _parse("aoc/332/status", raw)
    assert item == Status("332", online, NOW)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", 'payload: status must be "online" or "offline" (or {"status": ...}), got b\'\''),
        (b"on", 'payload: status must be "online" or "offline" (or {"status": ...}), got b\'on\''),
        (
            b'"online"',
            'payload: status must be "online" or "offline" (or {"status": ...}), got b\'"online"\'',
        ),
        (
            b"\xff\xfeonline",
            'payload: status must be "online" or "offline" (or {"status": ...}), '
            "got b'\\xff\\xfeonline'",
        ),
        (b'{"status": "maybe"}', 'status: must be "online" or "offline", got \'maybe\''),
        (b'{"status": true}', 'status: must be "online" or "offline", got True'),
        (b'{"online": true}', 'status: must be "online" or "offline", got None'),
        (
            b'{"status": "online", "ambulance_id": "1"}',
            "ambulance_id: '1' does not match the topic's id '332'",
        ),
        (b'{"status": ', "payload: not valid JSON (Expecting value at line 1 column 12)"),
    ],
)
def test_bad_status(raw: bytes, reason: str) -> None:
    """Test garbage status payloads."""
    assert _reason("aoc/332/status", raw) == reason


def test_huge_status_is_refused() -> None:
    """Test that a status payload is bounded too."""
    raw = b"online" + b" " * LIMITS.max_record_bytes
    assert _reason("aoc/332/status", raw).endswith(f"got {len(raw)} bytes")


# --- limits, robustness and speed -----------------------------------------------------


def test_limits_from_settings() -> None:
    """Test that Limits takes its values from Settings."""
    limits = Limits.from_settings(Settings(max_image_bytes=1234, max_upload_files=2))
    assert (limits.max_image_bytes, limits.max_upload_files) == (1234, 2)
    assert limits.max_snap_json_bytes > 2 * 1234 * 4 // 3


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    [
        "lat",
        "lon",
        "speed",
        "heading",
        "ts",
        "seq",
        "accuracy",
        "altitude",
        "dest_lat",
        "dest_lon",
        "ambulance_id",
        "legacy",
        "images",
        "status",
        "tracking_latitude",
        "tracking_longitude",
        "tracking_speed",
        "tracking_heading",
        "name",
        "data",
    ]
)
_topics = st.sampled_from(
    ["aoc/332/tracking", "aoc/332/crash", "aoc/332/snap", "aoc/332/status"]
) | st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(topic=_topics, payload=st.binary(max_size=200))
def test_fuzz_random_bytes_never_raise(topic: str, payload: bytes) -> None:
    """Test that arbitrary bytes on any topic give a typed message or a Rejected."""
    result = parse(topic, payload, NOW, LIMITS)
    assert isinstance(result, Tracking | Crash | Snap | Status | Rejected)
    if isinstance(result, Rejected):
        assert result.reason
        assert result.payload == payload


@settings(max_examples=400, deadline=None)
@given(
    topic=st.sampled_from(["aoc/332/tracking", "aoc/332/crash", "aoc/332/snap", "aoc/332/status"]),
    body=st.dictionaries(_field_names, _json_values, max_size=8),
)
def test_fuzz_contract_fields_never_raise(topic: str, body: dict[str, Any]) -> None:
    """Test that objects with the contract's field names but any values never raise."""
    raw = json.dumps(body).encode()
    result = parse(topic, raw, NOW, LIMITS)
    assert isinstance(result, Tracking | Crash | Snap | Status | Rejected)
    if isinstance(result, Tracking | Crash):
        assert -90 <= result.position.lat <= 90
        assert -180 <= result.position.lon <= 180
        assert 0 <= result.speed_kmh <= 500


_iso_with_offsets = st.tuples(st.datetimes(), st.integers(-(24 * 60 - 1), 24 * 60 - 1)).map(
    lambda pair: pair[0].replace(tzinfo=timezone(timedelta(minutes=pair[1]))).isoformat()
)


@settings(max_examples=400, deadline=None)
@given(
    value=st.text(max_size=40)
    | st.integers()
    | st.floats()
    | _json_values
    | _iso_with_offsets
    | st.datetimes().map(datetime.isoformat)
)
def test_fuzz_parse_timestamp_raises_only_value_error(value: object) -> None:
    """Test that parse_timestamp gives an aware UTC time in range or a ValueError."""
    try:
        ts = parse_timestamp(value)
    except ValueError as exc:
        assert str(exc)
    else:
        assert ts.utcoffset() == timedelta(0)
        assert datetime(2000, 1, 1, tzinfo=UTC) <= ts < datetime(9999, 1, 1, tzinfo=UTC)


def test_huge_int_outside_json_is_shown_safely() -> None:
    """Test that the shim passing a huge Python int gets a ValueError, not a crash."""
    with pytest.raises(ValueError, match="must not be after the year 9998"):
        parse_timestamp(10**5000)


def test_offset_received_at_is_accepted() -> None:
    """Test that received_at in another zone still bounds ts correctly."""
    received = NOW.astimezone(timezone(timedelta(hours=7)))
    item = parse(
        "aoc/332/tracking", json.dumps({**BASE, "ts": epoch_ms(NOW)}).encode(), received, LIMITS
    )
    assert isinstance(item, Tracking)
