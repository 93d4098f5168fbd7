"""The legacy HTTP shim against a real Mosquitto: what devices send, what subscribers get."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from api import ApiDeps
from broker.client import MqttClient
from storage.base import TRACKINGS, Query
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.api.conftest import MAX_IMAGE_BYTES, MAX_UPLOAD_FILES, Subscriber, client_for
from tests.images import TINY_JPEG, png

TRACKING = "/api/tracking/postAmbulanceTracking"
CRASH = "/api/crash/postAmbulanceCrashNotify"
SNAPSHOT = "/api/snapshot/postAmbulanceImageUpload"


def legacy_body(aid: str, **override: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ambulance_id": aid,
        "tracking_latitude": 13.7563,
        "tracking_longitude": 100.5018,
        "tracking_speed": 45.5,
        "tracking_heading": 180,
    }
    body.update(override)
    return {k: v for k, v in body.items() if v is not None}


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_field_error(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", field], detail
    assert detail[0]["type"] == "value_error"
    assert detail[0]["msg"]


async def test_home_page(http: httpx.AsyncClient) -> None:
    """Test that GET / is the legacy HTML status page."""
    response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "AOC-V.2 Tracking Server On" in response.text


async def test_error_codes_byte_for_byte(http: httpx.AsyncClient) -> None:
    """Test that GET /error_codes answers the legacy table with compact JSON."""
    response = await http.get("/error_codes")
    assert response.status_code == 200
    assert response.content == b'{"500":"Error on server."}'
    assert response.headers["content-type"] == "application/json"


async def test_tracking_json_is_published_after_puback(
    http: httpx.AsyncClient, subscriber: Subscriber, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that a JSON tracking body becomes the contract's message on legacy/<id>/tracking."""
    body = legacy_body(ambulance_id)
    before = now_ms()
    response = await http.post(TRACKING, json=body)
    after = now_ms()
    assert response.status_code == 200
    assert response.content == b'{"success":true}'
    topic, message = await subscriber.next()
    assert topic == f"legacy/{ambulance_id}/tracking"
    assert message["legacy"] == body
    assert message["lat"] == 13.7563
    assert message["lon"] == 100.5018
    assert message["speed"] == 45.5
    assert message["heading"] == 180
    assert message["ambulance_id"] == ambulance_id
    assert before <= message["ts"] <= after
    # The shim never writes to storage: that is the bridge's job.
    assert (await store.find(Query(TRACKINGS, ambulance_id=ambulance_id))).items == []


async def test_two_identical_posts_stay_two_points(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that identical legacy posts get distinct point ids even within one millisecond."""
    body = legacy_body(ambulance_id)
    for _ in range(2):
        assert (await http.post(TRACKING, json=body)).status_code == 200
    first, second = (await subscriber.next())[1], (await subscriber.next())[1]
    # A point's id is (ambulance, ts, seq): the same millisecond is possible, the
    # seq the shim assigns keeps the two ids apart.
    assert isinstance(first["seq"], int) and isinstance(second["seq"], int)
    assert first["seq"] != second["seq"]


async def test_tracking_urlencoded_keeps_strings_in_order(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that a urlencoded form is relayed with its values as strings, in the order sent."""
    form = [
        ("tracking_speed", "45.5"),
        ("ambulance_id", ambulance_id),
        ("tracking_latitude", "13.7563"),
        ("tracking_longitude", "100.5018"),
        ("tracking_heading", "90"),
    ]
    response = await http.post(TRACKING, data=dict(form))
    assert response.status_code == 200, response.text
    _, message = await subscriber.next()
    assert list(message["legacy"].items()) == form
    assert message["lat"] == "13.7563"
    assert message["speed"] == "45.5"


async def test_crash_converts_meters_per_second(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that the crash endpoint publishes km/h and keeps the legacy m/s body."""
    body = legacy_body(ambulance_id, tracking_speed=41.6, tracking_heading=90)
    response = await http.post(CRASH, json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    topic, message = await subscriber.next()
    assert topic == f"legacy/{ambulance_id}/crash"
    assert message["speed"] == pytest.approx(149.76)
    assert message["legacy"] == body
    assert message["legacy"]["tracking_speed"] == 41.6


async def test_crash_speed_as_form_string(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that a crash form's speed string is converted to km/h too."""
    form = {k: str(v) for k, v in legacy_body(ambulance_id, tracking_speed="10").items()}
    response = await http.post(CRASH, data=form)
    assert response.status_code == 200, response.text
    _, message = await subscriber.next()
    assert message["speed"] == 36.0
    assert message["legacy"]["tracking_speed"] == "10"


async def test_snapshot_upload_is_published_as_json(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that uploaded images are published base64 with names and the form fields."""
    image = png()
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("files", ("front.jpg", TINY_JPEG, "image/jpeg")),
        ("files", ("rear.png", image, "image/png")),
    ]
    data = {"ambulance_id": ambulance_id, "note": "ไทย"}
    before = now_ms()
    response = await http.post(SNAPSHOT, data=data, files=files)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    topic, message = await subscriber.next()
    assert topic == f"legacy/{ambulance_id}/snap"
    assert message["legacy"] == data
    assert before <= message["ts"] <= now_ms()
    assert [i["name"] for i in message["images"]] == ["front.jpg", "rear.png"]
    decoded = [base64.b64decode(i["data"]) for i in message["images"]]
    assert decoded == [TINY_JPEG, image]


# --- bad input: every case names its field and publishes nothing -------------------------

BAD_TRACKING = [
    ("missing id", {"ambulance_id": None}, "ambulance_id"),
    ("path traversal id", {"ambulance_id": "../etc"}, "ambulance_id"),
    ("wildcard id", {"ambulance_id": "a/#"}, "ambulance_id"),
    ("plus id", {"ambulance_id": "a+b"}, "ambulance_id"),
    ("too long id", {"ambulance_id": "a" * 65}, "ambulance_id"),
    ("boolean id", {"ambulance_id": True}, "ambulance_id"),
    ("non-numeric latitude", {"tracking_latitude": "north"}, "tracking_latitude"),
    ("latitude out of range", {"tracking_latitude": 91}, "tracking_latitude"),
    ("longitude out of range", {"tracking_longitude": -180.5}, "tracking_longitude"),
    ("boolean longitude", {"tracking_longitude": True}, "tracking_longitude"),
    ("missing latitude", {"tracking_latitude": None}, "tracking_latitude"),
    ("negative speed", {"tracking_speed": -1}, "tracking_speed"),
    ("speed too high", {"tracking_speed": 501}, "tracking_speed"),
    ("heading out of range", {"tracking_heading": 361}, "tracking_heading"),
    ("heading as list", {"tracking_heading": [1]}, "tracking_heading"),
]


@pytest.mark.parametrize(("override", "field"), [c[1:] for c in BAD_TRACKING],
                         ids=[c[0] for c in BAD_TRACKING])
async def test_bad_tracking_field(
    http: httpx.AsyncClient,
    subscriber: Subscriber,
    ambulance_id: str,
    override: dict[str, Any],
    field: str,
) -> None:
    """Test that a bad tracking field is a 422 naming the legacy field, and nothing is published."""
    response = await http.post(TRACKING, json=legacy_body(ambulance_id, **override))
    assert_field_error(response, 422, field)
    await subscriber.nothing()


async def test_bad_form_field_is_named(http: httpx.AsyncClient, ambulance_id: str) -> None:
    """Test that a urlencoded form with a non-numeric longitude names it."""
    form = {k: str(v) for k, v in legacy_body(ambulance_id, tracking_longitude="1,5").items()}
    response = await http.post(TRACKING, data=form)
    assert_field_error(response, 422, "tracking_longitude")


async def test_plain_names_are_reported_as_sent(http: httpx.AsyncClient, ambulance_id: str) -> None:
    """Test that a body using the contract's plain names gets errors under those names."""
    body = {"ambulance_id": ambulance_id, "lat": 95, "lon": 100, "speed": 1}
    response = await http.post(TRACKING, json=body)
    assert_field_error(response, 422, "lat")


@pytest.mark.parametrize(
    ("speed", "reason"),
    [("fast", "number"), (150, "between"), ("1_0", "number"), (10**400, "number"),
     ("Infinity", "finite"), (None, "required")],
    ids=["non-numeric", "540 km/h", "underscore", "huge-integer", "infinity", "missing"],
)
async def test_bad_crash_speed(
    http: httpx.AsyncClient, ambulance_id: str, speed: object, reason: str
) -> None:
    """Test that a crash speed that is not a number, or over 500 km/h once converted, is named."""
    response = await http.post(CRASH, json=legacy_body(ambulance_id, tracking_speed=speed))
    assert_field_error(response, 422, "tracking_speed")
    assert reason in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path", [TRACKING, CRASH])
@pytest.mark.parametrize(
    ("content", "content_type", "status", "reason"),
    [
        (b"", "application/json", 400, "empty"),
        (b"  \n", "application/x-www-form-urlencoded", 400, "empty"),
        (b"{not json", "application/json", 400, "invalid JSON"),
        (b'{"tracking_latitude": NaN}', "application/json", 400, "NaN"),
        (b"[1, 2]", "application/json", 400, "object"),
        (b"\xff\xfe", "application/json", 400, "invalid JSON"),
        (b"ambulance_id=332", "text/plain", 415, "application/json"),
        (b"ambulance_id=332", "", 415, "application/json"),
        (b"a" * 70_000, "application/json", 413, "larger"),
    ],
    ids=["empty", "blank-form", "bad-json", "nan", "array", "bad-utf8", "text-plain",
         "no-type", "too-large"],
)
async def test_bad_body(
    http: httpx.AsyncClient, *, path: str, content: bytes, content_type: str, status: int,
    reason: str,
) -> None:
    """Test that an unusable body gets a JSON error naming the reason, never a 500."""
    headers = {"content-type": content_type} if content_type else {}
    response = await http.post(path, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]


@pytest.mark.parametrize("aid", ["crash", "snap", "tracking", "Tracking", "CRASH_NOTIFY_332"])
async def test_an_ambulance_id_naming_a_room_is_refused(
    http: httpx.AsyncClient, subscriber: Subscriber, aid: str
) -> None:
    """Test that an id that is a shared room's name is a 422 saying so, on every endpoint."""
    for path in (TRACKING, CRASH):
        response = await http.post(path, json=legacy_body(aid))
        assert_field_error(response, 422, "ambulance_id")
        assert "is reserved" in response.json()["detail"][0]["msg"]
    response = await http.post(SNAPSHOT, **upload(aid, ("files", TINY_JPEG)))
    assert_field_error(response, 422, "ambulance_id")
    assert "is reserved" in response.json()["detail"][0]["msg"]
    await subscriber.nothing()


def upload(ambulance_id: str | None, *files: tuple[str, bytes], **fields: str) -> dict[str, Any]:
    data = dict(fields)
    if ambulance_id is not None:
        data["ambulance_id"] = ambulance_id
    return {"data": data, "files": [(name, (f"f{i}.jpg", blob)) for i, (name, blob) in
                                    enumerate(files)]}


@pytest.mark.parametrize(
    ("make", "status", "field"),
    [
        (lambda aid: upload(aid, ("files", b"GIF89a not allowed")), 415, "files[0]"),
        (lambda aid: upload(aid, ("files", TINY_JPEG), ("files", b"%PDF-1.4")), 415, "files[1]"),
        (lambda aid: upload(aid, ("files", b"")), 415, "files[0]"),
        (lambda aid: upload(aid, *[("files", TINY_JPEG)] * (MAX_UPLOAD_FILES + 1)), 413, "files"),
        (lambda aid: upload(aid, ("files", TINY_JPEG + b"\0" * MAX_IMAGE_BYTES)), 413, "files[0]"),
        (lambda aid: upload(aid, other="x"), 422, "files"),
        (lambda aid: upload(aid, ("photo", TINY_JPEG)), 422, "photo"),
        (lambda aid: upload(None, ("files", TINY_JPEG)), 422, "ambulance_id"),
        (lambda aid: upload("../etc", ("files", TINY_JPEG)), 422, "ambulance_id"),
    ],
    ids=["not-an-image", "second-not-an-image", "empty-file", "too-many-files", "too-large-file",
         "no-files", "wrong-field", "missing-id", "hostile-id"],
)
async def test_bad_snapshot_upload(
    http: httpx.AsyncClient, *, subscriber: Subscriber, ambulance_id: str, make: Any,
    status: int, field: str,
) -> None:
    """Test that each bad upload is refused with its status and the field named."""
    response = await http.post(SNAPSHOT, **make(ambulance_id))
    assert_field_error(response, status, field)
    await subscriber.nothing()


async def test_snapshot_needs_multipart(http: httpx.AsyncClient, ambulance_id: str) -> None:
    """Test that a JSON body to the upload endpoint is a 415."""
    response = await http.post(SNAPSHOT, json={"ambulance_id": ambulance_id})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


async def test_snapshot_body_bound_without_content_length(
    http: httpx.AsyncClient, ambulance_id: str
) -> None:
    """Test that a chunked upload is cut off once it passes the total bound (no Content-Length)."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="ambulance_id"\r\n\r\n'
        f'{ambulance_id}\r\n--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield head
        for _ in range(1000):  # 64 MB if nobody stops reading
            sent += 65536
            yield b"\xff" * 65536

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = await http.post(SNAPSHOT, content=body(), headers=headers)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert sent < 2_000_000


async def test_snapshot_declared_length_too_large(http: httpx.AsyncClient) -> None:
    """Test that an upload declaring a huge Content-Length is refused before it is read."""
    response = await http.post(
        SNAPSHOT,
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=x", "content-length": "999999999"},
    )
    assert response.status_code == 413


async def test_broken_multipart_is_400(http: httpx.AsyncClient) -> None:
    """Test that a multipart body without a boundary is a 400, not a 500."""
    response = await http.post(
        SNAPSHOT, content=b"garbage", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]


# --- the broker is down ------------------------------------------------------------------


async def test_broker_down_is_503(deps: ApiDeps, tmp_path: Path, ambulance_id: str) -> None:
    """Test that the shim answers 503 (so the device retries) when the broker cannot ack."""
    broker = services.mosquitto(tmp_path / "own-broker").start()
    try:
        client = MqttClient(
            host="127.0.0.1", port=broker.port, client_id=f"down-{uuid.uuid4().hex[:6]}",
            clean_session=True, manual_ack=False, reconnect_min=0.05, reconnect_max=0.2,
        )
        async with client:
            broker.stop()
            deps.publisher = client
            deps.publish_timeout = 0.5
            async with client_for(deps) as http:
                started = time.monotonic()
                tracking = await http.post(TRACKING, json=legacy_body(ambulance_id))
                crash = await http.post(CRASH, json=legacy_body(ambulance_id))
                snap = await http.post(SNAPSHOT, **upload(ambulance_id, ("files", TINY_JPEG)))
                elapsed = time.monotonic() - started
    finally:
        broker.stop()
    for response in (tracking, crash, snap):
        assert response.status_code == 503, response.text
        assert "broker" in response.json()["detail"]
        assert response.headers["retry-after"] == "5"
    assert elapsed < 5


async def test_no_publisher_is_503(deps: ApiDeps, ambulance_id: str) -> None:
    """Test that a process without an MQTT publisher answers 503, not 500."""
    deps.publisher = None
    async with client_for(deps) as http:
        response = await http.post(TRACKING, json=legacy_body(ambulance_id))
    assert response.status_code == 503
    assert "broker" in response.json()["detail"]


async def test_openapi_marks_legacy_endpoints_deprecated(http: httpx.AsyncClient) -> None:
    """Test that the three legacy endpoints are deprecated in OpenAPI and point to MQTT."""
    schema = (await http.get("/openapi.json")).json()
    for path, kind in ((TRACKING, "tracking"), (CRASH, "crash"), (SNAPSHOT, "snap")):
        operation = schema["paths"][path]["post"]
        assert operation["deprecated"] is True
        assert f"aoc/<ambulance_id>/{kind}" in operation["description"]
        assert "MQTT" in operation["description"]
    assert json.dumps(schema)  # the schema is plain JSON


async def test_numeric_ambulance_id_is_accepted(
    http: httpx.AsyncClient, mosquitto: services.Service
) -> None:
    """Test that a legacy client sending the id as a JSON number is relayed under that id."""
    number = int(uuid.uuid4().int % 10**9)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
        await watcher.subscribe(f"legacy/{number}/tracking", qos=1)
        response = await http.post(TRACKING, json=legacy_body(number))  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        async with asyncio.timeout(5):
            message = await anext(watcher.messages)
    assert isinstance(message.payload, bytes)
    payload = json.loads(message.payload)
    assert payload["ambulance_id"] == str(number)
    assert payload["legacy"]["ambulance_id"] == number


@pytest.mark.parametrize("depth", [30, 958])
async def test_deeply_nested_body_is_400(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str, depth: int
) -> None:
    """Test that a body nested past the bridge's bound is a 400 naming it, not a 500."""
    # Written as text: json.dumps itself recurses once per level.
    nested = '{"x": ' * depth + "{}" + "}" * depth
    body = json.dumps(legacy_body(ambulance_id))[:-1] + f', "extra": {nested}}}'
    response = await http.post(TRACKING, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["detail"]
    await subscriber.nothing()


async def test_nesting_within_the_bound_is_published(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that a body as deep as the bridge accepts (one level below its message) passes."""
    nested: Any = {}
    for _ in range(29):  # message -> legacy body -> extra -> 29 more levels: 32 in all
        nested = {"x": nested}
    response = await http.post(TRACKING, json=legacy_body(ambulance_id, extra=nested))
    assert response.status_code == 200, response.text
    topic, _ = await subscriber.next()
    assert topic == f"legacy/{ambulance_id}/tracking"


async def test_upload_over_the_message_bound_is_413(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that files and form fields too big together for one MQTT message are a 413."""
    fields = {f"note{i}": "x" * 60_000 for i in range(2)}
    response = await http.post(SNAPSHOT, **upload(ambulance_id, ("files", TINY_JPEG), **fields))
    assert response.status_code == 413, response.text
    assert "over the limit" in response.json()["detail"]
    await subscriber.nothing()


async def test_upload_names_are_checked_by_the_bridge_validator(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that what the validator checks of each image (its name) is still refused."""
    files = [("files", ("n" * 300 + ".jpg", TINY_JPEG, "image/jpeg"))]
    response = await http.post(SNAPSHOT, data={"ambulance_id": ambulance_id}, files=files)
    assert_field_error(response, 422, "files[0]")
    await subscriber.nothing()


async def test_uploaded_images_are_published_whole(
    http: httpx.AsyncClient, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that images longer than the part the shim validates are published whole."""
    image = TINY_JPEG + bytes(range(256)) * ((MAX_IMAGE_BYTES - len(TINY_JPEG)) // 256)
    assert 3 * 1024 < len(image) <= MAX_IMAGE_BYTES
    files = [("files", ("big.jpg", image, "image/jpeg"))]
    response = await http.post(SNAPSHOT, data={"ambulance_id": ambulance_id}, files=files)
    assert response.status_code == 200, response.text
    _, message = await subscriber.next()
    assert base64.b64decode(message["images"][0]["data"]) == image
