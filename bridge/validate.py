"""Device messages in, typed messages out: every rule of the MQTT contract.

``parse`` never raises: whatever a device (or an attacker) publishes becomes
either a typed message or a ``Rejected`` whose reason names the field, so the
bridge can dead-letter it and carry on. The legacy HTTP shim runs the same
code, so the shim and the bridge can never disagree about what is valid.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from bridge.commands import CommandError, parse_command
from bridge.contract import (
    DISPATCH_KINDS,
    DISPATCH_PREFIX,
    LEGACY_PREFIX,
    PREFIX,
    Kind,
    ambulance_id_problem,
    consumed_kinds,
    is_legacy_topic,
)
from bridge.ids import epoch_ms
from bridge.messages import Crash, Image, Parsed, Position, Rejected, Snap, Status, Tracking
from bridge.snapshots import sniff

__all__ = [
    "LEGACY_ALIASES",
    "Limits",
    "nesting_error",
    "parse",
    "parse_timestamp",
    "valid_topic_parts",
]

_log = logging.getLogger(__name__)

# Legacy name -> plain name (the legacy HTTP API's field names).
LEGACY_ALIASES = {
    "tracking_latitude": "lat",
    "tracking_longitude": "lon",
    "tracking_speed": "speed",
    "tracking_heading": "heading",
}

_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# Past this, a time is no clock error but garbage (and near datetime's range).
_LATEST_YEAR = 9998
_LATEST_MS = epoch_ms(datetime(_LATEST_YEAR + 1, 1, 1, tzinfo=UTC))
# Accepted spellings of a number in a string: what JavaScript's Number() takes,
# minus hex/Infinity, and without the underscores Python's float() would allow.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_NUMBER_TEXT = 64
_MAX_TS_TEXT = 64
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() would take "²" and "٣"
_MAX_SEQ = 2**63 - 1  # a signed 64-bit integer in every store
_MAX_NAME = 255
# Deeper JSON than this is refused: nobody needs it, and re-serialising it
# recursively must stay far from Python's recursion limit.
_MAX_DEPTH = 32
_ONE_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Limits:
    """Input size limits (from ``Settings``)."""

    max_image_bytes: int
    max_upload_files: int
    # A tracking/crash/status payload is a few hundred bytes; this is generous.
    max_record_bytes: int = 64 * 1024
    # How far ahead of its receipt a device's ts may be; beyond, ts is clamped.
    max_clock_ahead: timedelta = timedelta(seconds=5)

    @classmethod
    def from_settings(cls, settings: _LimitSettings) -> Limits:
        """The limits configured in ``settings`` (an ``aoc.config.Settings``)."""
        return cls(
            max_image_bytes=settings.max_image_bytes,
            max_upload_files=settings.max_upload_files,
            max_clock_ahead=timedelta(seconds=settings.max_clock_ahead_seconds),
        )

    @property
    def max_snap_json_bytes(self) -> int:
        """The largest JSON snap payload: every image at its limit, base64, plus room for fields."""
        per_image = 4 * -(-self.max_image_bytes // 3) + 1024
        return self.max_upload_files * per_image + self.max_record_bytes


class _LimitSettings(Protocol):
    max_image_bytes: int
    max_upload_files: int
    max_clock_ahead_seconds: float


class _Invalid(Exception):
    """A validation failure; its message is the ``Rejected`` reason."""


def valid_topic_parts(topic: str) -> tuple[str, Kind]:
    """``(ambulance_id, kind)`` of a device or legacy shim topic; ``ValueError`` naming the problem.

    ``legacy/<id>/<kind>`` (the legacy shim's root) gives the id and kind of
    the device message it carries.
    """
    parts = topic.split("/")
    root = parts[0] if parts[0] in (LEGACY_PREFIX, DISPATCH_PREFIX) else PREFIX
    kinds = consumed_kinds(parts[0])
    if len(parts) != 3 or kinds is None:
        raise ValueError(f"topic: expected {root}/<ambulance_id>/<kind>, got {_show(topic)}")
    _, ambulance_id, kind = parts
    problem = ambulance_id_problem(ambulance_id)
    if problem is not None:
        raise ValueError(f"topic: ambulance id {problem}")
    if kind not in kinds:
        raise ValueError(
            f"topic: unknown message kind {_show(kind)} (expected {', '.join(kinds)})"
        )
    return ambulance_id, Kind(kind)


def parse(
    topic: str, payload: bytes, received_at: datetime, limits: Limits, *, retained: bool = False
) -> Parsed:
    """One MQTT message as a typed message, or ``Rejected`` with a reason. Never raises.

    ``retained``: the broker delivered it as a retained message (the MQTT
    retain flag), i.e. an old message replayed on (re)subscription.
    """
    try:
        return _parse(topic, payload, received_at, limits, retained=retained)
    except _Invalid as exc:
        reason = str(exc)
    except RecursionError:
        reason = "payload: nested too deeply"
    except Exception as exc:  # never let one message stop the bridge: a bug is a dead letter
        _log.exception("unexpected error validating a message on %r", topic)
        reason = f"internal error: {type(exc).__name__}"
    return Rejected(topic, reason, _as_bytes(payload), received_at)


def parse_timestamp(value: object) -> datetime:
    """A device time (epoch ms number or string, or ISO 8601) as an aware UTC datetime.

    Raises ``ValueError`` with a reason when it is malformed, before 2000-01-01,
    or after the year 9998. ISO times without an offset are UTC. How far ahead
    of the receipt time a device clock may be is the caller's rule.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be epoch milliseconds or an ISO 8601 string, got {_show(value)}")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_TS_TEXT:
            raise ValueError("must be epoch milliseconds or an ISO 8601 string, got a long string")
        if _NUMBER.fullmatch(text):
            ts = _from_epoch_ms(float(text), value)
        else:
            try:
                ts = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"must be epoch milliseconds or an ISO 8601 string, got {_show(value)}"
                ) from None
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            elif not 2 <= ts.year <= _LATEST_YEAR:
                # Converting year 1 or 9999 to UTC could leave datetime's range.
                raise ValueError(f"must not be before 2000-01-01 or far ahead, got {_show(value)}")
            else:
                ts = ts.astimezone(UTC)
    else:
        ts = _from_epoch_ms(value, value)
    if ts < _EARLIEST:
        raise ValueError(f"must not be before 2000-01-01, got {_show(value)}")
    if ts.year > _LATEST_YEAR:
        raise ValueError(f"must not be after the year {_LATEST_YEAR}, got {_show(value)}")
    return ts


# --- internals -------------------------------------------------------------------------


def _parse(
    topic: str, payload: bytes, received_at: datetime, limits: Limits, *, retained: bool
) -> Parsed:
    try:
        ambulance_id, kind = valid_topic_parts(topic)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if kind in DISPATCH_KINDS:
        if retained:
            raise _Invalid(f"retain: a dispatch command is never retained, got a retained {kind}")
        body = _json_object(_as_bytes(payload), limits.max_record_bytes)
        try:
            return parse_command(kind, ambulance_id, body, received_at)
        except CommandError as exc:
            raise _Invalid(str(exc)) from None
    if retained and kind != Kind.STATUS:
        # The broker replays a retained message on every (re)subscription: taken
        # as device data, one old crash would alert again at each reconnect.
        raise _Invalid(
            f"retain: a retained {kind} message is an old message replayed by the broker;"
            " device data is never taken from one (only status may be retained)"
        )
    payload = _as_bytes(payload)
    shim = is_legacy_topic(topic)
    if kind in (Kind.TRACKING, Kind.CRASH):
        body = _json_object(payload, limits.max_record_bytes)
        return _record(kind, ambulance_id, body, received_at, limits, shim=shim)
    if kind == Kind.SNAP:
        return _snap(ambulance_id, payload, received_at, limits, shim=shim)
    return _status(ambulance_id, payload, received_at, limits, retained=retained)


def _record(
    kind: str, aid: str, body: dict[str, Any], received_at: datetime, limits: Limits, *, shim: bool
) -> Tracking | Crash:
    _check_body_id(body, aid, "ambulance_id")
    legacy = _legacy_body(body, shim=shim)
    lat = _required(body, "lat", -90.0, 90.0)
    lon = _required(body, "lon", -180.0, 180.0)
    speed = _required(body, "speed", 0.0, 500.0)
    heading = _field(body, "heading", 0.0, 360.0)
    ts, device_ts = _ts(body, received_at, limits)
    position = Position(lat, lon)
    values = {"lat": lat, "lon": lon, "speed": speed, "heading": heading}
    if kind == Kind.CRASH:
        if legacy is not None:
            # The legacy crash endpoint took m/s; the shim converted it to km/h.
            _check_legacy(legacy, aid, values, speed_factor=3.6)
            emitted = legacy
        else:
            emitted = _room_body(aid, values, ts, {}) | {"speed_unit": "km/h"}
        return Crash(aid, position, speed, heading, ts, received_at, device_ts, body=emitted)
    dest_lat = _field(body, "dest_lat", -90.0, 90.0)
    dest_lon = _field(body, "dest_lon", -180.0, 180.0)
    if (dest_lat is None) != (dest_lon is None):
        missing = "dest_lon" if dest_lon is None else "dest_lat"
        raise _Invalid(f"{missing}: required when the other destination coordinate is given")
    seq = _seq(body)
    accuracy = _field(body, "accuracy", 0.0, math.inf)
    altitude = _field(body, "altitude", -math.inf, math.inf)
    if legacy is not None:
        _check_legacy(legacy, aid, values, speed_factor=1.0)
        emitted = legacy
    else:
        optional = {
            "seq": seq,
            "accuracy": accuracy,
            "altitude": altitude,
            "dest_lat": dest_lat,
            "dest_lon": dest_lon,
        }
        emitted = _room_body(aid, values, ts, optional)
    return Tracking(
        aid,
        position,
        speed,
        heading,
        ts,
        received_at,
        device_ts,
        seq=seq,
        accuracy=accuracy,
        altitude=altitude,
        destination=None if dest_lat is None or dest_lon is None else Position(dest_lat, dest_lon),
        body=emitted,
    )


def _room_body(
    aid: str, values: dict[str, float | None], ts: datetime, optional: dict[str, Any]
) -> dict[str, Any]:
    """What legacy Socket.IO rooms receive of a device message: its validated values only.

    Legacy names first (old dashboards read them), then the contract's optional
    fields the device gave. Nothing else the device sent reaches a room: a room
    shows what was stored, never text a device made up.
    """
    shaped: dict[str, Any] = {"ambulance_id": aid}
    shaped.update((_ALIAS_OF[name], value) for name, value in values.items())
    shaped["ts"] = epoch_ms(ts)
    shaped.update((name, value) for name, value in optional.items() if value is not None)
    return shaped


def _check_legacy(
    legacy: dict[str, Any], aid: str, values: dict[str, float | None], *, speed_factor: float
) -> None:
    """Refuse a ``legacy`` body that says anything other than the validated message.

    The shim's ``legacy`` is the request body exactly as the old device sent it,
    and legacy rooms receive it as it is: so it must name this ambulance and
    carry the very position, speed and heading that are stored, under either
    name. ``speed_factor`` converts its speed to km/h (3.6 for the m/s of the
    legacy crash endpoint).
    """
    if "ambulance_id" not in legacy:
        raise _Invalid("legacy.ambulance_id: required")
    _check_body_id(legacy, aid, "legacy.ambulance_id")
    for plain, stored in values.items():
        legacy_name = _ALIAS_OF[plain]
        names = [name for name in (legacy_name, plain) if legacy.get(name) is not None]
        if not names and stored is not None:
            raise _Invalid(f"legacy.{legacy_name}: required, the message carries {plain}")
        for name in names:
            given = _number(f"legacy.{name}", legacy[name])
            if given is not None and plain == "speed":
                given *= speed_factor
            if given is None or stored is None or not math.isclose(
                given, stored, rel_tol=1e-9, abs_tol=1e-6
            ):
                raise _Invalid(f"legacy.{name}: {legacy[name]!r} disagrees with {plain} {stored!r}")


def _required(body: dict[str, Any], name: str, low: float, high: float) -> float:
    number = _field(body, name, low, high)
    if number is None:
        raise _Invalid(f"{name}: required (or its legacy name {_ALIAS_OF[name]})")
    return number


def _field(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    """A number field, by its plain name or its legacy alias, checked against a range (or None)."""
    given = name
    value = body.get(name)
    legacy_name = _ALIAS_OF.get(name)
    if legacy_name is not None and legacy_name in body:
        other = _number(legacy_name, body[legacy_name])
        if value is None:
            given, value = legacy_name, body[legacy_name]
        elif other is not None and other != _number(name, value):
            raise _Invalid(f"{name}: conflicts with {legacy_name}")
    number = _number(given, value)
    if number is None or low <= number <= high:
        return number
    if high == math.inf:
        raise _Invalid(f"{given}: must be at least {_bound(low)}, got {number!r}")
    raise _Invalid(f"{given}: must be between {_bound(low)} and {_bound(high)}, got {number!r}")


_ALIAS_OF = {plain: legacy for legacy, plain in LEGACY_ALIASES.items()}


def _bound(value: float) -> str:
    return f"{value:g}"


def _number(name: str, value: object) -> float | None:
    """A finite float from a JSON number or numeric string; None for absent/null."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid(f"{name}: must be a number, got {_show(value)}")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_NUMBER_TEXT or not _NUMBER.fullmatch(text):
            raise _Invalid(f"{name}: must be a number, got {_show(value)}")
        value = text
    elif not isinstance(value, int | float):
        raise _Invalid(f"{name}: must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _Invalid(f"{name}: must be a finite number, got {_show(value)}")
    return number


def _seq(body: dict[str, Any]) -> int | None:
    value = body.get("seq")
    if value is None:
        return None
    seq: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seq = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        seq = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        seq = int(value)
    if seq is None or not 0 <= seq <= _MAX_SEQ:
        raise _Invalid(f"seq: must be an integer from 0 to 2**63-1, got {_show(value)}")
    return seq


def _ts(
    body: dict[str, Any], received_at: datetime, limits: Limits
) -> tuple[datetime, datetime | None]:
    """``(ts, device_ts)``: the message's time, and the device's own when it was clamped.

    A device clock too far ahead would pin the ambulance's latest state on its
    point and make every real point after it "late"; such a point is taken at
    its receipt time instead (its id keeps the device's time, so a redelivery
    is still recognised).
    """
    value = body.get("ts")
    if value is None:
        return received_at, None
    try:
        ts = parse_timestamp(value)
    except ValueError as exc:
        raise _Invalid(f"ts: {exc}") from None
    if ts > _utc(received_at) + limits.max_clock_ahead:
        return received_at, ts
    return ts, None


def _check_body_id(body: dict[str, Any], aid: str, name: str) -> None:
    if "ambulance_id" not in body:
        return
    value = body["ambulance_id"]
    # Legacy clients may send the id as a JSON number (332).
    is_number = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**64
    text = str(value) if is_number else value
    if text != aid:
        raise _Invalid(f"{name}: {_show(value)} does not match the topic's id {aid!r}")


def _legacy_body(body: dict[str, Any], *, shim: bool) -> dict[str, Any] | None:
    """The message's ``legacy`` body (None when it has none), if its topic may carry one.

    Legacy rooms receive a legacy body as it is, so only the legacy shim may
    send one: on its own root, which the broker lets no other account write.
    On a device topic it is refused, whatever it is (a subscriber cannot tell
    who published a message, only where); a ``null`` one counts as none.
    """
    if body.get("legacy") is not None and not shim:
        raise _Invalid(
            f"legacy: legacy bodies come only from the legacy shim, on {LEGACY_PREFIX}/<id>/<kind>;"
            " a device publishes its message without one"
        )
    return _optional_object(body, "legacy")


def _optional_object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None or isinstance(value, dict):
        return value
    raise _Invalid(f"{name}: must be a JSON object, got {_json_type(value)}")


# --- snapshots -------------------------------------------------------------------------


def _snap(aid: str, payload: bytes, received_at: datetime, limits: Limits, *, shim: bool) -> Snap:
    if not payload:
        raise _Invalid("payload: empty (expected a JPEG or PNG image, or a JSON object)")
    kind = sniff(payload)
    if kind is not None:
        _check_image_size("payload", len(payload), limits)
        image = Image(payload, kind[0], kind[1])
        return Snap(aid, (image,), received_at, received_at, body={"ambulance_id": aid})
    if not _JSON_START.match(payload):
        raise _Invalid("payload: not a JPEG or PNG image, nor a JSON object")
    body = _json_object(payload, limits.max_snap_json_bytes)
    _check_body_id(body, aid, "ambulance_id")
    legacy = _legacy_body(body, shim=shim)
    if legacy is not None:
        # The `snap` room receives the legacy form fields as they are: they must
        # name this ambulance, or the room gets a snapshot of nobody.
        if "ambulance_id" not in legacy:
            raise _Invalid("legacy.ambulance_id: required")
        _check_body_id(legacy, aid, "legacy.ambulance_id")
    images = _images(body.get("images"), limits)
    ts, device_ts = _ts(body, received_at, limits)
    if body.get("ts") is not None and epoch_ms(ts) == epoch_ms(received_at):
        # bridge.ids.snap_id tells a device time from none by ts != received_at
        # (to the ms); a message received in the very ms it was taken is nudged.
        received_at = received_at + _ONE_MS
    return Snap(
        aid,
        images,
        ts,
        received_at,
        device_ts,
        body=legacy if legacy is not None else {"ambulance_id": aid},
    )


def _images(value: object, limits: Limits) -> tuple[Image, ...]:
    if value is None:
        raise _Invalid("images: required (a list of {name, data} objects)")
    if not isinstance(value, list):
        raise _Invalid(f"images: must be a list, got {_json_type(value)}")
    if not value:
        raise _Invalid("images: must not be empty")
    if len(value) > limits.max_upload_files:
        raise _Invalid(f"images: at most {limits.max_upload_files} images, got {len(value)}")
    # Base64 text longer than this cannot decode to an image within the limit.
    max_text = 4 * -(-limits.max_image_bytes // 3) + 4
    images = []
    for index, item in enumerate(value):
        where = f"images[{index}]"
        if not isinstance(item, dict):
            raise _Invalid(f"{where}: must be an object with name and data, got {_json_type(item)}")
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > _MAX_NAME):
            raise _Invalid(f"{where}.name: must be a string of at most {_MAX_NAME} characters")
        text = item.get("data")
        if not isinstance(text, str):
            raise _Invalid(f"{where}.data: must be a base64 string, got {_json_type(text)}")
        if len(text) > max_text:
            raise _Invalid(f"{where}: image is over the limit of {limits.max_image_bytes} bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Invalid(f"{where}.data: not valid base64 ({exc})") from None
        _check_image_size(where, len(data), limits)
        kind = sniff(data)
        if kind is None:
            raise _Invalid(f"{where}: not a JPEG or PNG image")
        images.append(Image(data, kind[0], kind[1], name=name))
    return tuple(images)


def _check_image_size(where: str, size: int, limits: Limits) -> None:
    if size > limits.max_image_bytes:
        raise _Invalid(
            f"{where}: image is {size} bytes, over the limit of {limits.max_image_bytes} bytes"
        )


# --- status ----------------------------------------------------------------------------

_STATUS = {"online": True, "offline": False}
_JSON_START = re.compile(rb"[ \t\r\n]*\{")


def _status(
    aid: str, payload: bytes, received_at: datetime, limits: Limits, *, retained: bool
) -> Status:
    expected = 'payload: status must be "online" or "offline" (or {"status": ...})'
    if len(payload) > limits.max_record_bytes:
        raise _Invalid(f"{expected}, got {len(payload)} bytes")
    text = payload.strip()
    if _JSON_START.match(text):
        body = _json_object(payload, limits.max_record_bytes)
        _check_body_id(body, aid, "ambulance_id")
        value = body.get("status")
        if not isinstance(value, str) or value.strip().lower() not in _STATUS:
            raise _Invalid(f'status: must be "online" or "offline", got {_show(value)}')
        return Status(aid, _STATUS[value.strip().lower()], received_at, retained=retained)
    online = _STATUS.get(text.decode("ascii", "replace").lower())
    if online is None:
        raise _Invalid(f"{expected}, got {_show(payload[:32])}")
    return Status(aid, online, received_at, retained=retained)


# --- JSON ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    # JSON has no NaN or Infinity; Python's parser would accept them.
    raise ValueError(f"{name} is not allowed")


# 19 digits in a row may be an integer orjson cannot hold exactly (past -2**63 or 2**64).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _fast_object(payload: bytes) -> dict[str, Any] | None:
    """The JSON object in ``payload`` as orjson reads it, when that is surely json's reading.

    orjson parses a tracking point several times faster than json, and refuses
    whatever json refuses (invalid UTF-8, NaN, a BOM, control characters), but
    it also refuses some inputs json takes (lone surrogate escapes, 1e999)
    and reads an integer past 64 bits as a float. None: let json decide, with
    its reasons (``_json_object``).
    """
    if _LONG_DIGITS.search(payload):
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return value if type(value) is dict else None


def _json_object(payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise _Invalid(f"payload: {len(payload)} bytes, over the limit of {max_bytes} bytes")
    if not payload:
        raise _Invalid("payload: empty (expected a JSON object)")
    fast = _fast_object(payload)
    if fast is not None:
        _check_depth(fast)
        return fast
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(f"payload: not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _Invalid(
            f"payload: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        detail = "an integer with too many digits" if "digits" in str(exc) else str(exc)
        raise _Invalid(f"payload: not valid JSON ({detail})") from None
    except RecursionError:
        raise _Invalid(f"payload: nested deeper than {_MAX_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise _Invalid(f"payload: must be a JSON object, got {_json_type(value)}")
    _check_depth(value)
    return value


def nesting_error(value: dict[str, Any], *, depth: int = 1) -> str | None:
    """Why ``value`` (at ``depth`` in a payload) nests too deep for a payload, or None.

    For callers that build a payload around client input (the HTTP shim): the
    same bound as ``parse``, checked before the input is re-serialised.
    """
    try:
        _check_depth(value, depth)
    except _Invalid as exc:
        return str(exc)
    return None


def _check_depth(value: dict[str, Any], depth: int = 1) -> None:
    """Refuse nesting deeper than ``_MAX_DEPTH`` (iteratively: no recursion on input)."""
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _Invalid(f"payload: nested deeper than {_MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


# --- small helpers ---------------------------------------------------------------------


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    return b""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _from_epoch_ms(value: float, shown: object) -> datetime:
    # Far outside 2000..9998: refused here, before float() or timedelta could overflow.
    if value < 0:
        raise ValueError(f"must not be before 2000-01-01, got {_show(shown)}")
    if value > _LATEST_MS:
        raise ValueError(f"must not be after the year {_LATEST_YEAR}, got {_show(shown)}")
    if not math.isfinite(value):  # NaN
        raise ValueError(f"must be a finite number, got {_show(shown)}")
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "a number"),
    (float, "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _show(value: object) -> str:
    """A short, safe rendering of a value for a reason string."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 40 else text[:37] + "..."
