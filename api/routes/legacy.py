"""The legacy HTTP endpoints of port 5000, kept so old devices work unchanged.

The shim stores nothing: it turns each request into the device message of the
MQTT contract, checks it with the bridge's own validator (so the two can never
disagree), publishes it at QoS 1 and answers only once the broker has it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from api.access import require_legacy
from api.deps import Deps, Publisher, PublisherDep
from api.legacy_input import Upload, field_error, read_body, read_uploads
from api.pages import HOME_HTML
from bridge import contract
from bridge.contract import Kind, ambulance_id_problem
from bridge.ids import epoch_ms
from bridge.jsjson import dumps
from bridge.messages import Crash, Rejected, Snap, Tracking
from bridge.snapshots import sniff
from bridge.validate import LEGACY_ALIASES, Limits, parse
from broker.client import MqttError

log = logging.getLogger(__name__)

router = APIRouter(tags=["legacy"])

ERROR_CODES = b'{"500":"Error on server."}'
# Legacy body names -> the contract's plain names: the bridge's own table.
LEGACY_NAMES = LEGACY_ALIASES
OPTIONAL_NAMES = ("seq", "accuracy", "altitude", "dest_lat", "dest_lon")
SUCCESS = {"success": True}
UPLOAD_RETRY_AFTER_S = 5
# Bytes of each uploaded image the validator sees (a multiple of 3: whole base64).
_CHECKED_IMAGE_BYTES = 3 * 1024
_LEGACY_BODY = {
    "required": True,
    "content": {
        media: {"schema": {"type": "object", "example": {
            "ambulance_id": "332", "tracking_latitude": 13.7563, "tracking_longitude": 100.5018,
            "tracking_speed": 45.5, "tracking_heading": 180,
        }}}
        for media in ("application/json", "application/x-www-form-urlencoded")
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Empty or unparseable body"},
    403: {"description": "Legacy mode is off, or the client is not in AOC_LEGACY_NETWORKS"},
    413: {"description": "Body or file too large, or too many files"},
    415: {"description": "Unsupported content type, or a file that is not JPEG/PNG"},
    422: {"description": "A field is missing or invalid (named by its legacy name)"},
    408: {"description": "The body did not arrive within AOC_HTTP_BODY_TIMEOUT seconds"},
    503: {"description": "The MQTT broker did not acknowledge, or (uploads) too many uploads "
          "are in progress: retry after Retry-After seconds"},
}
# Checked before the body is read: outside legacy mode no legacy request costs anything.
_LEGACY_ONLY = [Depends(require_legacy)]


def _mqtt_hint(kind: Kind) -> str:
    """The OpenAPI note of a legacy endpoint: the MQTT topic that replaces it."""
    where = contract.topic("<ambulance_id>", kind)
    return f"Deprecated: devices should publish over MQTT to `{where}` instead."


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def home() -> HTMLResponse:
    """The legacy status page."""
    return HTMLResponse(HOME_HTML)


@router.get("/error_codes")
async def error_codes() -> Response:
    """The legacy error code table, byte for byte."""
    return Response(ERROR_CODES, media_type="application/json")


def _ambulance_id(value: object) -> str:
    # Legacy clients may send the id as a JSON number.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if value is None:
        raise field_error("ambulance_id", "field required")
    problem = ambulance_id_problem(value)
    if problem is not None:
        raise field_error("ambulance_id", problem)
    assert isinstance(value, str)  # ambulance_id_problem refuses anything else
    return value


def _number(body: dict[str, Any], name: str) -> float:
    value = body[name]
    try:
        # Python's float() also takes "1_000", which the bridge's validator refuses.
        if isinstance(value, bool) or not isinstance(value, int | float | str) or (
            isinstance(value, str) and "_" in value
        ):
            raise ValueError
        number = float(value)
    except (ValueError, OverflowError):
        raise field_error(name, "must be a number") from None
    if not math.isfinite(number):
        raise field_error(name, "must be a finite number")
    return number


def _device_message(body: dict[str, Any], *, crash: bool, received_ms: int) -> dict[str, Any]:
    """The contract's message for a legacy tracking or crash body."""
    message: dict[str, Any] = {"ambulance_id": _ambulance_id(body.get("ambulance_id"))}
    for legacy, plain in LEGACY_NAMES.items():
        source = legacy if legacy in body else plain
        if source in body:
            message[plain] = body[source]
            if crash and plain == "speed":  # the legacy crash endpoint sends m/s
                message[plain] = round(_number(body, source) * 3.6, 6)
    for name in OPTIONAL_NAMES:
        if name in body:
            message[name] = body[name]
    # Receipt time: a redelivery of this message is then recognised as the same point.
    message["ts"] = received_ms
    if not crash and "seq" not in message:
        # The point's id is (ambulance, ts, seq). Two posts from one ambulance in
        # the same millisecond (or on two shim processes) must stay two points,
        # so a legacy post without a sequence number gets a random one.
        message["seq"] = secrets.randbits(62)
    message["legacy"] = body
    return message


def _encode(message: dict[str, Any]) -> bytes:
    # As JSON.stringify writes it, not json.dumps: a lone surrogate ("\ud800", which
    # JSON.parse accepts) stays escaped instead of failing to encode (a 500), and an
    # overflowing number (1e400, Infinity to JSON.parse) becomes null instead of an
    # invalid Infinity that refused the whole body.
    return dumps(message).encode("utf-8")


def _legacy_field(reason: str, body: dict[str, Any]) -> str | None:
    """The body field a ``Rejected`` reason (``"<field>: why"``) names, as the client named it."""
    field = reason.split(":", 1)[0].strip() if ":" in reason else ""
    if field in ("", "payload", "topic"):
        return None
    field = field.removeprefix("legacy.")
    if field.startswith("images"):  # the shim built the images from the uploaded files
        return "files" + field.removeprefix("images").split(".", 1)[0]
    legacy = {plain: legacy for legacy, plain in LEGACY_NAMES.items()}.get(field)
    # The contract's plain name only if the client used it; the legacy name otherwise.
    return field if legacy is None or field in body else legacy


def _check(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    deps: Deps,
    body: dict[str, Any],
    expected: type[Tracking] | type[Crash] | type[Snap],
) -> None:
    parsed = parse(topic, payload, received_at, Limits.from_settings(deps.settings))
    if isinstance(parsed, Rejected):
        name = _legacy_field(parsed.reason, body)
        if name is None:
            raise HTTPException(422, detail=parsed.reason)
        raise field_error(name, parsed.reason)
    if not isinstance(parsed, expected):  # the topic decides the kind: cannot happen
        raise HTTPException(422, detail=f"unexpected message kind {type(parsed).__name__}")


async def _publish(publisher: Publisher, topic: str, payload: bytes, *, within: float) -> None:
    try:
        # The outer bound holds even for a publisher that ignores its timeout.
        async with asyncio.timeout(within + 1):
            await publisher.publish(topic, payload, qos=1, timeout=within)
    except (MqttError, OSError, TimeoutError) as exc:
        log.warning("legacy shim could not publish to %s: %s", topic, exc)
        raise HTTPException(
            503, detail=f"the MQTT broker did not acknowledge: {exc}", headers={"Retry-After": "5"}
        ) from exc


def _now() -> tuple[datetime, int]:
    now = datetime.now(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return now, epoch_ms(now)


async def _relay(request: Request, deps: Deps, publisher: Publisher, *, crash: bool) -> None:
    body = await read_body(request)
    received_at, received_ms = _now()
    message = _device_message(body, crash=crash, received_ms=received_ms)
    topic = contract.legacy_topic(message["ambulance_id"], Kind.CRASH if crash else Kind.TRACKING)
    payload = _encode(message)
    _check(
        topic, payload, received_at=received_at, deps=deps, body=body,
        expected=Crash if crash else Tracking,
    )
    await _publish(publisher, topic, payload, within=deps.publish_timeout)


@router.post(
    "/api/tracking/postAmbulanceTracking",
    deprecated=True,
    dependencies=_LEGACY_ONLY,
    description=_mqtt_hint(Kind.TRACKING),
    openapi_extra={"requestBody": _LEGACY_BODY},
    responses=_ERRORS,
)
async def post_tracking(request: Request, deps: Deps, publisher: PublisherDep) -> dict[str, bool]:
    """A GPS point from a legacy device (speed in km/h)."""
    await _relay(request, deps, publisher, crash=False)
    return SUCCESS


@router.post(
    "/api/crash/postAmbulanceCrashNotify",
    deprecated=True,
    dependencies=_LEGACY_ONLY,
    description=_mqtt_hint(Kind.CRASH) + " Legacy `tracking_speed` is m/s here.",
    openapi_extra={"requestBody": _LEGACY_BODY},
    responses=_ERRORS,
)
async def post_crash(request: Request, deps: Deps, publisher: PublisherDep) -> dict[str, bool]:
    """A crash alert from a legacy device (speed in m/s, converted to km/h)."""
    await _relay(request, deps, publisher, crash=True)
    return SUCCESS


@router.post(
    "/api/snapshot/postAmbulanceImageUpload",
    deprecated=True,
    dependencies=_LEGACY_ONLY,
    description=_mqtt_hint(Kind.SNAP) + " Multipart: `ambulance_id` and files in `files`.",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": {
            "ambulance_id": {"type": "string"},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        }, "required": ["ambulance_id", "files"]},
    }}}},
    responses=_ERRORS,
)
async def post_snapshot(request: Request, deps: Deps, publisher: PublisherDep) -> dict[str, bool]:
    """Camera images from a legacy device."""
    settings = deps.settings
    slots = deps.upload_slots
    taken = False

    def take_slot() -> None:
        # Taken once the body is in (spooled to disk), not before: two slow
        # uploaders must not keep every other device's snapshot at 503. A
        # slot bounds what uploads hold in memory while they are encoded.
        nonlocal taken
        if not slots.try_take():
            raise HTTPException(
                503,
                detail=f"too many uploads in progress (at most {slots.size}); retry later",
                headers={"Retry-After": str(UPLOAD_RETRY_AFTER_S), "Connection": "close"},
            )
        taken = True

    try:
        fields, uploads = await read_uploads(
            request,
            max_files=settings.max_upload_files,
            max_file_bytes=settings.max_image_bytes,
            before_reading=take_slot,
        )
        received_at, received_ms = _now()
        ambulance_id = _ambulance_id(fields.get("ambulance_id"))
        if not uploads:
            raise field_error("files", "at least one image is required in field 'files'")
        topic = contract.legacy_topic(ambulance_id, Kind.SNAP)
        # Tens of megabytes to base64, JSON-encode and parse back: on a worker
        # thread, so the event loop (shared with the bridge and Socket.IO in
        # `aoc serve`) keeps serving meanwhile.
        payload = await asyncio.to_thread(
            _snap_payload, topic, fields, uploads,
            received_at=received_at, received_ms=received_ms, deps=deps,
        )
        await _publish(publisher, topic, payload, within=deps.publish_timeout)
    finally:
        if taken:
            slots.release()
    return SUCCESS


def _snap_payload(
    topic: str,
    fields: dict[str, str],
    uploads: list[Upload],
    *,
    received_at: datetime,
    received_ms: int,
    deps: Deps,
) -> bytes:
    """The checked MQTT payload of a legacy upload (CPU-bound: run off the event loop).

    The bridge's validator checks the message as published except that each
    image is cut to its first bytes. Parsing tens of megabytes of JSON back is
    one C call that holds the GIL, so on a worker thread too it stalls the
    event loop (by about 0.4 s for 10 x 5 MB); what the cut hides is known
    here already: each file is within the size limit (``read_uploads``), its
    base64 is ours, and the whole message is measured against the validator's
    own bound.
    """
    images, cut = [], []
    for index, upload in enumerate(uploads):
        if sniff(upload.data) is None:
            raise field_error(f"files[{index}]", "not a JPEG or PNG image", status=415)
        name = upload.filename or f"image{index}"
        images.append({"name": name, "data": base64.b64encode(upload.data).decode("ascii")})
        head = upload.data[:_CHECKED_IMAGE_BYTES]
        cut.append({"name": name, "data": base64.b64encode(head).decode("ascii")})
    rest = {"ts": received_ms, "legacy": fields}
    payload = _encode({"images": images, **rest})
    limit = Limits.from_settings(deps.settings).max_snap_json_bytes
    if len(payload) > limit:
        raise HTTPException(
            413, detail=f"the upload is {len(payload)} bytes as an MQTT message, over the "
            f"limit of {limit} bytes (files and form fields together)",
        )
    _check(topic, _encode({"images": cut, **rest}), received_at=received_at, deps=deps,
           body=fields, expected=Snap)
    return payload
