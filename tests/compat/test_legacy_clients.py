"""Legacy devices and dashboards, unchanged, against the whole stack.

Devices post as the legacy ones did (JSON, urlencoded forms, string numbers,
multipart with several files); dashboards are the stock socket.io-client v4
and MQTT.js in Node. What they observe must be what the legacy server showed
them: exact `data` strings, room by room.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bridge.jsjson import dumps
from bridge.processor import alert_message
from bridge.public import public_record
from storage.base import CRASHES, IMAGE_HISTORIES, IMAGES, TRACKINGS
from tests.compat.conftest import (
    CRASH,
    MAPS_KEY,
    SNAPSHOT,
    TRACKING,
    WAIT,
    CompatStack,
    JsDashboard,
    NodeClient,
    eventually_stored,
    express_bodies,
    js_dashboard,
    js_mqtt,
    stored,
)
from tests.images import TINY_JPEG, png

pytestmark = pytest.mark.compat

HOME_TEXT = "AOC-V.2 Tracking Server On"
LAYOUT = re.compile(
    r"ambulance_images/(?P<id>[^/]+)/\d{4}/\d{2}/\d{2}/\d{2}_\d{2}/\d{2}_\d{2}_\d{4}\.(jpg|png)"
)


async def barrier(*boards: JsDashboard) -> None:
    """Make sure every ``data`` event already emitted to ``boards`` has arrived.

    Called once the server is known to have emitted something later (another
    client received it): a join reply is queued behind everything emitted before.
    """
    for board in boards:
        await board.join(f"sync-{uuid.uuid4().hex[:8]}")


async def post_json(http: httpx.AsyncClient, path: str, raw: str) -> httpx.Response:
    """POST a raw JSON text, byte for byte as a device would send it."""
    return await http.post(path, content=raw.encode(), headers={"content-type": "application/json"})


def assert_success(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}


# -- the HTTP shim ---------------------------------------------------------


async def test_home_page_on_both_ports_and_error_codes(stack: CompatStack) -> None:
    """Test that GET / says the legacy text on the HTTP and the Socket.IO port; /error_codes."""
    async with httpx.AsyncClient(timeout=15) as client:
        for base in (stack.http, stack.socketio_url):
            page = await client.get(f"{base}/")
            assert page.status_code == 200, base
            assert page.headers["content-type"].startswith("text/html"), base
            assert HOME_TEXT in page.text, base
        codes = await client.get(f"{stack.http}/error_codes")
    assert codes.status_code == 200
    assert codes.content == b'{"500":"Error on server."}'
    assert codes.json() == {"500": "Error on server."}


async def test_openapi_marks_the_three_legacy_endpoints_deprecated(
    http: httpx.AsyncClient,
) -> None:
    """Test that the OpenAPI document marks exactly the legacy POST endpoints deprecated."""
    paths = (await http.get("/openapi.json")).json()["paths"]
    deprecated = {
        path for path, ops in paths.items() for op in ops.values() if op.get("deprecated")
    }
    assert deprecated == {TRACKING, CRASH, SNAPSHOT}
    for path in (TRACKING, CRASH, SNAPSHOT):
        assert "MQTT" in paths[path]["post"]["description"]


# -- dashboards: the stock socket.io-client -----------------------------------


async def test_stock_client_connects_by_polling_then_upgrades(stack: CompatStack) -> None:
    """Test that socket.io-client's defaults work: HTTP long-polling, then the WebSocket upgrade."""
    async with js_dashboard(stack) as board:
        assert board.node.events[0] == {"event": "open", "transport": "polling"}
        await board.node.wait_for(lambda e: e["event"] == "upgrade")
        assert {"event": "upgrade", "transport": "websocket"} in board.node.events
        await board.join("tracking")  # still served after the upgrade


async def test_json_tracking_is_re_emitted_as_json_stringify_wrote_it(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that JSON bodies reach rooms <id> and `tracking` exactly as Express re-emitted them."""
    one, two = new_id(), new_id()
    raws = [
        # Spacing, 45.50 and 180.0: JSON.stringify normalises them ("45.5", "180").
        f'{{ "ambulance_id" : "{one}", "tracking_latitude": 13.7563, '
        f'"tracking_longitude": 100.5018, "tracking_speed": 45.50, "tracking_heading": 180.0 }}',
        f'{{"ambulance_id":"{two}","tracking_latitude":13.75,"tracking_longitude":100.5,'
        f'"tracking_speed":0,"tracking_heading":0}}',
        # String numbers, unknown fields of every kind, non-ASCII, an integer-like key
        # (JavaScript lists it first), -0, 1e21, 1e-7, an integer beyond 2**53, a number
        # that overflows (Infinity: null), a lone surrogate and an escaped pair (🚑).
        f'{{"ambulance_id":"{one}","tracking_latitude":"13.7564","tracking_longitude":"100.5019",'
        f'"tracking_speed":"90","tracking_heading":"90","driver":"สมชาย \\"A\\"",'
        f'"1":"x","extra":{{"b":1e2,"a":[1.0,-0.0,1e21,1e-7,123456789012345678901234567890]}},'
        f'"flag":true,"none":null,"big":1e400,"odd":"\\ud800|\\ud83d\\ude91"}}',
        f'{{"ambulance_id":"{two}","tracking_latitude":13.76,"tracking_longitude":100.51,'
        f'"tracking_speed":121,"tracking_heading":359.5}}',
    ]
    expected = await express_bodies([("json", raw) for raw in raws])
    async with js_dashboard(stack) as watcher, js_dashboard(stack) as fleet:
        await watcher.join(f'"{one}"', expect=one)  # dashboards send the id JSON-quoted
        await fleet.join(two)
        await fleet.join("tracking")
        for raw in raws:
            assert_success(await post_json(http, TRACKING, raw))
        # The last body reaches `fleet` twice (room <two>, then room `tracking`).
        await fleet.node.wait_for(lambda _: fleet.data.count(expected[3]) == 2)
        await barrier(watcher)
        assert watcher.payloads == [expected[0], expected[2]]
        everything = [d for d in fleet.payloads if one in d or two in d]
        assert everything == [
            expected[0], expected[1], expected[1], expected[2], expected[3], expected[3]
        ]
    assert '"tracking_speed":45.5,' in expected[0]  # the oracle is Node's, not ours
    docs = await eventually_stored(stack, TRACKINGS, one, 2)
    assert [(d["speed"], d["state"]) for d in docs] == [(45.5, "GREEN"), (90, "ORANGE")]


async def test_form_tracking_is_re_emitted_with_string_values(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that urlencoded bodies are re-emitted as Express parsed them: all strings, in order."""
    aid = new_id()
    form = {
        "ambulance_id": aid,
        "tracking_latitude": "13.7563",
        "tracking_longitude": "100.5018",
        "tracking_speed": "125.0",
        "tracking_heading": "180",
        "note": "a b+c&d=é",
    }
    raw = httpx.QueryParams(form).__str__()
    [expected] = await express_bodies([("form", raw)])
    assert expected == json.dumps(form, ensure_ascii=False, separators=(",", ":"))
    async with js_dashboard(stack) as board:
        await board.join(f"'{aid}'", expect=aid)
        response = await http.post(
            TRACKING,
            content=raw.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert_success(response)
        assert await board.wait_data(lambda d: aid in d) == expected
        await barrier(board)
        assert board.payloads == [expected]
    [doc] = await eventually_stored(stack, TRACKINGS, aid, 1)
    assert (doc["speed"], doc["state"], doc["heading"]) == (125.0, "RED", 180)
    assert doc["speed_above_80"] is not None and doc["speed_above_120"] is not None


async def test_join_reply_goes_only_to_the_joiner(stack: CompatStack) -> None:
    """Test that `room joined: <room>` reaches the joiner only (the legacy server told everyone)."""
    secret_room = f"watched-{uuid.uuid4().hex[:8]}"
    async with js_dashboard(stack) as joiner, js_dashboard(stack) as bystander:
        await joiner.join(secret_room)
        # The bystander's own reply is queued behind any broadcast of the first join.
        await bystander.join("tracking")
        assert joiner.data == [f"room joined: {secret_room}"]
        assert not any(secret_room in d for d in bystander.data)
        assert bystander.data[:1] == ["room joined: tracking"]


async def test_rooms_are_isolated_and_leaving_stops_delivery(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that room 333 hears nothing of 332, and a dashboard that left stops receiving."""
    a332, a333 = new_id(), new_id()

    def body(aid: str, speed: float) -> str:
        # Compact, as JSON.stringify writes it: then the re-emitted body is the same text.
        return dumps({
            "ambulance_id": aid, "tracking_latitude": 13.7563, "tracking_longitude": 100.5018,
            "tracking_speed": speed, "tracking_heading": 10,
        })

    async with (
        js_dashboard(stack) as stays,
        js_dashboard(stack) as leaves,
        js_dashboard(stack) as other,
    ):
        await stays.join(a332)
        await leaves.join(f'"{a332}"', expect=a332)
        await leaves.join(a333)
        await other.join(a333)
        first = body(a332, 10)
        assert_success(await post_json(http, TRACKING, first))
        await stays.wait_data(lambda d: d == first)
        await leaves.wait_data(lambda d: d == first)
        await leaves.leave(f'"{a332}"')  # quotes are stripped on leave too
        second, marker = body(a332, 20), body(a333, 30)
        assert_success(await post_json(http, TRACKING, second))
        assert_success(await post_json(http, TRACKING, marker))
        await stays.wait_data(lambda d: d == second)
        await leaves.wait_data(lambda d: d == marker)
        await other.wait_data(lambda d: d == marker)
        await barrier(stays, leaves, other)
        assert stays.payloads == [first, second]
        assert leaves.payloads == [first, marker]
        assert other.payloads == [marker]


async def test_multipart_snapshot_with_several_files(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that a multipart upload of several files is stored in the legacy layout and emitted."""
    aid = new_id()
    rear = png()
    async with js_dashboard(stack) as board:
        await board.join("snap")
        for batch in ([TINY_JPEG], [TINY_JPEG, rear]):
            files = [
                ("files", (f"cam{i}.{'jpg' if f == TINY_JPEG else 'png'}", f, "image/jpeg"))
                for i, f in enumerate(batch)
            ]
            response = await http.post(
                SNAPSHOT, data={"ambulance_id": aid, "camera": "front"}, files=files
            )
            assert_success(response)
            histories = await eventually_stored(stack, IMAGE_HISTORIES, aid, len(batch))
        first, second = sorted(histories, key=lambda d: d["createdAt"])
        for history in (first, second):
            expected = dumps(
                {"body": {"ambulance_id": aid, "camera": "front"}, "imagesObj": history["images"]}
            )
            assert await board.wait_data(expected.__eq__) == expected
    assert list(second["images"]) == ["image0", "image1"]
    for name, content in zip(second["images"], (TINY_JPEG, rear), strict=True):
        key = second["images"][name]
        match = LAYOUT.fullmatch(key)
        assert match is not None and match["id"] == aid, key
        assert (stack.data_dir / "objects" / key).read_bytes() == content
    [current] = await stored(stack, IMAGES, aid)
    assert current["images"] == second["images"]
    assert current["ambulance_image_histories_id"] == first["_id"]  # what it replaced


async def test_crash_reaches_crash_notify_and_crash_rooms(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that a crash posts 200 and emits the stored record and the m/s body to its rooms."""
    aid = new_id()
    raw = json.dumps({
        "ambulance_id": aid, "tracking_latitude": 13.7563, "tracking_longitude": 100.5018,
        "tracking_speed": 41.6, "tracking_heading": 90,
    })
    [expected_body] = await express_bodies([("json", raw)])
    async with js_dashboard(stack) as board, js_mqtt(stack.mqtt_ws_url) as alerts:
        await alerts.subscribe(f"aoc/{aid}/alert", f"legacy/{aid}/crash")
        await board.join(f"CRASH_NOTIFY_{aid}")
        await board.join("crash")
        assert_success(await post_json(http, CRASH, raw))
        body = await board.wait_data(lambda d: d == expected_body)
        record_text = await board.wait_data(lambda d: '"location_detail"' in d)
        alert = await alerts.node.wait_for(lambda e: e.get("topic") == f"aoc/{aid}/alert")
        relayed = await alerts.node.wait_for(lambda e: e.get("topic") == f"legacy/{aid}/crash")
    # What the shim published on its own root: km/h, with the m/s body alongside.
    message = json.loads(relayed["payload"])
    assert message["speed"] == pytest.approx(149.76)
    assert message["legacy"] == json.loads(raw)
    [record] = await eventually_stored(stack, CRASHES, aid, 1)
    assert record_text == dumps(record)  # the crash record, exactly as stored
    # The MQTT alert is the record's public view: `id`, km/h to 0.1 (149.76 -> 149.8), and
    # `type` to tell it from the alarms the topic also carries.
    assert alert["payload"] == dumps(alert_message(record))
    assert alert_message(record) == {"type": "crash"} | public_record(record)
    assert json.loads(alert["payload"])["speed"] == 149.8
    assert json.loads(body)["tracking_speed"] == 41.6  # the legacy body keeps m/s
    assert record["speed"] == pytest.approx(149.76)  # the record has km/h
    assert record["state"] == "RED"
    assert record["location"] == {"lat": 13.7563, "lon": 100.5018}
    assert record["heading"] == 90
    image = record["location_detail"]["image"]
    assert image.startswith("https://maps.googleapis.com/maps/api/staticmap?")
    assert f"key={MAPS_KEY}" in image  # the key comes from configuration
    assert record["location_detail"]["address"] is None


async def test_node_fetch_device_posts_json_form_and_multipart(
    stack: CompatStack, new_id: Callable[[], str]
) -> None:
    """Test that a device on Node's fetch is answered {"success":true} for every body kind."""
    aid = new_id()
    point = {"ambulance_id": aid, "tracking_latitude": 13.7, "tracking_longitude": 100.5,
             "tracking_heading": 0}
    requests: list[dict[str, Any]] = [
        {"path": TRACKING, "json": {**point, "tracking_speed": 30}},
        {"path": TRACKING, "form": {k: str(v) for k, v in {**point, "tracking_speed": 31}.items()}},
        {"path": CRASH, "form": {k: str(v) for k, v in {**point, "tracking_speed": 5}.items()}},
        {"path": SNAPSHOT, "fields": {"ambulance_id": aid}, "files": [
            {"name": "a.jpg", "type": "image/jpeg", "base64": base64.b64encode(TINY_JPEG).decode()},
            {"name": "b.png", "type": "image/png", "base64": base64.b64encode(png()).decode()},
        ]},
    ]
    device = await NodeClient.start("legacy_device.mjs", "--url", stack.http)
    try:
        for request in requests:  # one at a time, as a device sends them
            answered = len(device.events)
            await device.send(**request)
            await device.wait_for(lambda _: True, start=answered)
    finally:
        await device.close()
    assert device.events == [{"status": 200, "body": '{"success":true}'}] * len(requests)
    tracks = await eventually_stored(stack, TRACKINGS, aid, 2)
    assert sorted(d["speed"] for d in tracks) == [30, 31]
    [crash] = await eventually_stored(stack, CRASHES, aid, 1)
    assert crash["speed"] == 18  # 5 m/s
    [snap] = await eventually_stored(stack, IMAGE_HISTORIES, aid, 1)
    assert sorted(snap["images"]) == ["image0", "image1"]


# -- MQTT devices and legacy devices side by side ------------------------------


async def test_mqtt_and_legacy_devices_reach_the_same_rooms_and_records(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that MQTT devices (MQTT.js, aiomqtt) and legacy HTTP devices share rooms and records."""
    shared, legacy_only, mqtt_only = new_id(), new_id(), new_id()
    t0 = int(time.time() * 1000) - 10_000
    lat, lon = 13.7563, 100.5018
    mqtt_point = {"lat": lat, "lon": lon, "speed": 60, "heading": 45, "ts": t0, "seq": 1}
    legacy = {"ambulance_id": shared, "tracking_latitude": lat + 0.001,
              "tracking_longitude": lon, "tracking_speed": 70, "tracking_heading": 45}
    async with (
        js_dashboard(stack) as board,
        js_mqtt(stack.mqtt_tcp_url) as js_device,
        stack.mqtt() as py_device,
    ):
        for room in (shared, legacy_only, mqtt_only, "tracking"):
            await board.join(room)
        # The same ambulance: first over MQTT (MQTT.js), then a legacy HTTP post.
        await js_device.publish(f"aoc/{shared}/tracking", json.dumps(mqtt_point))
        from_mqtt = await board.wait_data(lambda d: shared in d)
        assert_success(await http.post(TRACKING, json=legacy))
        from_http = await board.wait_data(lambda d: shared in d and d != from_mqtt)
        # Different ambulances: one legacy-only, one MQTT-only (aiomqtt).
        assert_success(await http.post(TRACKING, json={**legacy, "ambulance_id": legacy_only}))
        await py_device.publish(
            f"aoc/{mqtt_only}/tracking", json.dumps({**mqtt_point, "speed": 130}), qos=1
        )
        from_py = await board.wait_data(lambda d: mqtt_only in d)
        await board.wait_data(lambda d: legacy_only in d)
        # Each point goes to two rooms, one emit after the other: wait for the
        # second copies too before the dashboard disconnects.
        await board.node.wait_for(
            lambda e: sum(mqtt_only in d for d in board.payloads) >= 2, timeout=WAIT
        )
    # An MQTT device's point reaches legacy rooms in the legacy shape.
    assert json.loads(from_mqtt) == {
        "ambulance_id": shared, "tracking_latitude": lat, "tracking_longitude": lon,
        "tracking_speed": 60, "tracking_heading": 45, "ts": t0, "seq": 1,
    }
    assert from_http == dumps(legacy)  # a legacy device's body, unchanged
    assert json.loads(from_py)["tracking_speed"] == 130
    for aid in (shared, legacy_only, mqtt_only):
        # Each point reaches room <id> and room `tracking`.
        copies = [d for d in board.payloads if aid in d]
        assert len(copies) == (4 if aid == shared else 2), copies
    docs = await eventually_stored(stack, TRACKINGS, shared, 2)
    assert (docs[0]["speed"], docs[0]["seq"]) == (60, 1)
    assert docs[1]["speed"] == 70
    assert isinstance(docs[1]["seq"], int)  # the shim numbers legacy points: they carry none
    assert docs[1]["covered_distance"] == pytest.approx(111.2, rel=0.01)
    for aid, speed, state in ((shared, 70, "GREEN"), (legacy_only, 70, "GREEN"),
                              (mqtt_only, 130, "RED")):
        latest = (await http.get(f"/api/v1/ambulances/{aid}")).json()
        assert (latest["speed"], latest["state"]) == (speed, state), latest


async def test_mqtt_websocket_dashboard_gets_state_and_alerts(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that MQTT.js over WebSocket on aoc/+/state and aoc/+/alert sees legacy devices."""
    aid = new_id()
    point = {"ambulance_id": aid, "tracking_latitude": 13.7563, "tracking_longitude": 100.5018,
             "tracking_speed": "95.5", "tracking_heading": "270"}
    async with js_mqtt(stack.mqtt_ws_url) as dashboard:
        await dashboard.subscribe("aoc/+/state", "aoc/+/alert")
        assert_success(await http.post(TRACKING, data=point))  # a urlencoded legacy device
        state_event = await dashboard.node.wait_for(
            lambda e: e.get("topic") == f"aoc/{aid}/state"
        )
        assert_success(await http.post(CRASH, json={**point, "tracking_speed": 10}))
        alert_event = await dashboard.node.wait_for(
            lambda e: e.get("topic") == f"aoc/{aid}/alert"
        )
    state = json.loads(state_event["payload"])
    assert state["ambulance_id"] == aid
    assert (state["speed"], state["heading"], state["state"]) == (95.5, 270, "ORANGE")
    assert state["location"] == {"lat": 13.7563, "lon": 100.5018}
    assert state["online"] is True
    alert = json.loads(alert_event["payload"])
    assert (alert["ambulance_id"], alert["speed"], alert["state"]) == (aid, 36, "GREEN")
    [record] = await eventually_stored(stack, CRASHES, aid, 1)
    assert alert_event["payload"] == dumps(alert_message(record))
