"""End to end: a device publishes to Mosquitto; `aoc serve` stores, caches and fans out.

Everything here is real: Mosquitto, Redis, the `aoc serve` process, SQLite, the
local object store, a python-socketio dashboard and an MQTT subscriber.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any, cast

import aiomqtt
import httpx
import pytest

from storage.base import CRASHES, DEAD_LETTERS, SPEED_VIOLATIONS, TRACKINGS, Query
from storage.cache import StateCache
from storage.sqlite import SQLiteDocumentStore
from tests.e2e.conftest import Dashboard, Stack, eventually
from tests.images import TINY_JPEG, png

pytestmark = pytest.mark.e2e

BANGKOK = (13.7563, 100.5018)


def point(i: int, speed: float, *, t0: int, **extra: Any) -> bytes:
    lat, lon = BANGKOK
    body = {"lat": lat + i * 0.001, "lon": lon, "speed": speed, "heading": 0, "ts": t0 + i * 1000}
    return json.dumps({**body, **extra}).encode()


async def find(stack: Stack, collection: str, ambulance_id: str | None) -> list[dict[str, Any]]:
    async with SQLiteDocumentStore(stack.store_path) as store:
        page = await store.find(Query(collection, ambulance_id=ambulance_id, limit=1000))
        return page.items


async def test_tracking_reaches_every_consumer(
    stack: Stack, dashboard: Dashboard, http: httpx.AsyncClient, ambulance_id: str
) -> None:
    """Test that one point reaches the store, Redis, MQTT `state`, Socket.IO and the API."""
    await dashboard.join("tracking")
    t0 = int(time.time() * 1000)
    async with stack.mqtt() as device:
        await device.publish(f"aoc/{ambulance_id}/tracking", point(0, 45.5, t0=t0), qos=1)
    data = await dashboard.wait_for(lambda d: ambulance_id in d)
    # A dashboard that subscribes afterwards still gets the state: it is retained.
    # (Socket.IO is fanned out before MQTT, so the state may land a moment later:
    # a subscriber that came first would get it live, without the retain flag.)
    async def retained_state() -> aiomqtt.Message | None:
        async with stack.mqtt() as watcher:
            await watcher.subscribe(f"aoc/{ambulance_id}/state", qos=1)
            try:
                async with asyncio.timeout(2):
                    message = await anext(watcher.messages)
            except TimeoutError:
                return None
        return message if message.retain else None

    state_message: aiomqtt.Message = await eventually(retained_state)  # type: ignore[assignment]
    state = json.loads(state_message.payload)
    assert state["ambulance_id"] == ambulance_id
    assert state["state"] == "GREEN"
    assert state["location"] == {"lat": BANGKOK[0], "lon": BANGKOK[1]}
    assert json.loads(data) == {
        "ambulance_id": ambulance_id,
        "tracking_latitude": BANGKOK[0],
        "tracking_longitude": BANGKOK[1],
        "tracking_speed": 45.5,
        "tracking_heading": 0,
        "ts": t0,
    }
    stored = await find(stack, TRACKINGS, ambulance_id)
    assert [doc["speed"] for doc in stored] == [45.5]
    assert stored[0]["state"] == "GREEN"
    cache = StateCache(stack.redis_url)
    await cache.open()
    try:
        cached = await cache.get(ambulance_id)
    finally:
        await cache.close()
    assert cached is not None and cached["state"] == "GREEN"
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}")
    assert response.status_code == 200
    assert response.json()["state"] == "GREEN"


async def test_overspeed_episodes_distance_and_history(
    stack: Stack, http: httpx.AsyncClient, ambulance_id: str
) -> None:
    """Test that speeds crossing 80 and 120 km/h open and close episodes referenced by points."""
    t0 = int(time.time() * 1000) - 60_000
    speeds = [50, 90, 130, 125, 100, 60]
    async with stack.mqtt() as device:
        for i, speed in enumerate(speeds):
            await device.publish(f"aoc/{ambulance_id}/tracking", point(i, speed, t0=t0), qos=1)

    async def all_stored() -> list[dict[str, Any]] | None:
        docs = await find(stack, TRACKINGS, ambulance_id)
        return docs if len(docs) == len(speeds) else None

    docs = await eventually(all_stored)
    assert [d["state"] for d in docs] == ["GREEN", "ORANGE", "RED", "RED", "ORANGE", "GREEN"]
    assert docs[0]["speed_above_80"] is None
    assert docs[1]["speed_above_80"] is not None
    assert docs[1]["speed_above_80"] == docs[4]["speed_above_80"]
    assert docs[2]["speed_above_120"] == docs[3]["speed_above_120"] is not None
    assert docs[-1]["covered_distance"] == pytest.approx(5 * 111.2, rel=0.01)  # 0.001° of latitude
    episodes = await find(stack, SPEED_VIOLATIONS, ambulance_id)
    by_threshold = {e["threshold"]: e for e in episodes}
    assert by_threshold["speed_above_80"]["max_speed"] == 130
    assert by_threshold["speed_above_80"]["closed"] is True
    assert by_threshold["speed_above_120"]["max_speed"] == 130
    assert by_threshold["speed_above_120"]["closed"] is True
    track = (await http.get(f"/api/v1/ambulances/{ambulance_id}/track", params={"limit": 4})).json()
    assert len(track["items"]) == 4
    rest = await http.get(
        f"/api/v1/ambulances/{ambulance_id}/track",
        params={"limit": 4, "cursor": track["next_cursor"]},
    )
    assert len(rest.json()["items"]) == 2


async def test_late_and_duplicate_points(
    stack: Stack, http: httpx.AsyncClient, ambulance_id: str
) -> None:
    """Test that a late point is kept without moving the latest state; a repeat is stored once."""
    t0 = int(time.time() * 1000) - 60_000
    topic = f"aoc/{ambulance_id}/tracking"
    async with stack.mqtt() as device:
        await device.publish(topic, point(2, 30, t0=t0), qos=1)
        await device.publish(topic, point(1, 20, t0=t0), qos=1)  # late
        await device.publish(topic, point(2, 30, t0=t0), qos=1)  # QoS 1 redelivery
        await device.publish(topic, point(3, 40, t0=t0), qos=1)

    async def three() -> list[dict[str, Any]] | None:
        docs = await find(stack, TRACKINGS, ambulance_id)
        return docs if len(docs) >= 3 else None

    docs = await eventually(three)
    await asyncio.sleep(0.5)  # a fourth (duplicate) document would have arrived by now
    docs = await find(stack, TRACKINGS, ambulance_id)
    assert sorted(d["speed"] for d in docs) == [20, 30, 40]
    assert [d.get("late", False) for d in docs if d["speed"] == 20] == [True]
    latest = (await http.get(f"/api/v1/ambulances/{ambulance_id}")).json()
    assert latest["speed"] == 40


async def test_snapshot_is_stored_under_the_legacy_layout(
    stack: Stack, dashboard: Dashboard, http: httpx.AsyncClient, ambulance_id: str
) -> None:
    """Test that raw and JSON snapshots land in object storage and reach the `snap` room.

    The JSON one, with the form fields of a legacy upload, comes as the legacy
    shim sends it: on its own root, the only one a legacy body is taken from.
    """
    await dashboard.join("snap")
    multi = {
        "images": [
            {"name": "front.jpg", "data": base64.b64encode(TINY_JPEG).decode()},
            {"name": "rear.png", "data": base64.b64encode(png()).decode()},
        ],
        "legacy": {"ambulance_id": ambulance_id, "note": "rear door"},
    }
    async with stack.mqtt() as device, stack.mqtt() as shim:
        await device.publish(f"aoc/{ambulance_id}/snap", TINY_JPEG, qos=1)
        await shim.publish(f"legacy/{ambulance_id}/snap", json.dumps(multi).encode(), qos=1)

    async def two_snaps() -> list[dict[str, Any]] | None:
        snaps = [json.loads(d) for d in dashboard.received if ambulance_id in d]
        return snaps if len(snaps) == 2 else None

    # Snapshots are decoded in parallel (bridge.service's snapshot lane): the
    # two may reach the room in either order, so each is told by its images.
    snaps = cast(list[dict[str, Any]], await eventually(two_snaps))
    first, second = sorted(snaps, key=lambda snap: len(snap["imagesObj"]))
    assert first["body"] == {"ambulance_id": ambulance_id}
    key = first["imagesObj"]["image0"]
    assert key.startswith(f"ambulance_images/{ambulance_id}/")
    assert key.endswith(".jpg")
    assert (stack.data_dir / "objects" / key).read_bytes() == TINY_JPEG
    assert sorted(second["imagesObj"]) == ["image0", "image1"]
    assert second["imagesObj"]["image1"].endswith(".png")
    assert second["body"] == multi["legacy"]  # the shim's form fields, as sent
    objects = stack.data_dir / "objects"
    stored = [(objects / key).read_bytes() for key in second["imagesObj"].values()]
    assert sorted(stored) == sorted([TINY_JPEG, png()])
    listing = (await http.get(f"/api/v1/ambulances/{ambulance_id}/snapshots")).json()
    url = json.dumps(listing)
    assert second["imagesObj"]["image0"] in url
    image_url = next(iter(_urls(listing)))
    fetched = await http.get(image_url)
    assert fetched.status_code == 200
    assert fetched.content in (TINY_JPEG, png())


def _urls(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [u for k, v in value.items() for u in ([v] if k == "url" else _urls(v))]
    if isinstance(value, list):
        return [u for v in value for u in _urls(v)]
    return []


async def test_crash_alert_and_duplicate_suppression(
    stack: Stack, dashboard: Dashboard, ambulance_id: str
) -> None:
    """Test that a crash reaches its rooms and MQTT alert once, and a repeat is stored only."""
    await dashboard.join(f"CRASH_NOTIFY_{ambulance_id}")
    await dashboard.join("crash")
    t0 = int(time.time() * 1000)
    async with stack.mqtt() as watcher, stack.mqtt() as device:
        await watcher.subscribe(f"aoc/{ambulance_id}/alert", qos=1)
        crash = {"lat": 13.75, "lon": 100.5, "speed": 150, "heading": 90, "ts": t0}
        await device.publish(f"aoc/{ambulance_id}/crash", json.dumps(crash).encode(), qos=1)
        crash["ts"] = t0 + 5000
        await device.publish(f"aoc/{ambulance_id}/crash", json.dumps(crash).encode(), qos=1)
        async with asyncio.timeout(10):
            alert = json.loads((await anext(watcher.messages)).payload)
    assert alert["state"] == "RED"
    record = json.loads(await dashboard.wait_for(lambda d: '"location_detail"' in d))
    assert record["ambulance_id"] == ambulance_id
    assert record["location_detail"]["image"].startswith(
        "https://maps.googleapis.com/maps/api/staticmap"
    )

    async def both() -> list[dict[str, Any]] | None:
        docs = await find(stack, CRASHES, ambulance_id)
        return docs if len(docs) == 2 else None

    docs = await eventually(both)
    assert docs[1]["duplicate_of"] == docs[0]["_id"]  # type: ignore[index]
    await asyncio.sleep(0.5)
    records = [d for d in dashboard.received if '"location_detail"' in d]
    assert len(records) == 1


async def test_bad_messages_are_dead_lettered_and_good_ones_survive(
    stack: Stack, http: httpx.AsyncClient, ambulance_id: str
) -> None:
    """Test that malformed and hostile messages are dead-lettered; their neighbours are kept."""
    t0 = int(time.time() * 1000)
    topic = f"aoc/{ambulance_id}/tracking"
    async with stack.mqtt() as device:
        await device.publish(topic, b"{not json", qos=1)
        await device.publish(topic, json.dumps({"lat": 123, "lon": 0, "speed": 1}).encode(), qos=1)
        await device.publish(topic, point(0, 10, t0=t0), qos=1)
        await device.publish("aoc/bad..id!/tracking", point(0, 10, t0=t0), qos=1)
        await device.publish(f"aoc/{ambulance_id}/snap", b"GIF89a not an allowed image", qos=1)
        # A legacy body from a device: only the legacy shim's root may carry one.
        forged = {"ambulance_id": ambulance_id, "lat": 13.7, "lon": 100.5, "speed": 1, "x": "<b>"}
        await device.publish(
            topic, point(1, 1, t0=t0, lat=13.7, lon=100.5, heading=None, legacy=forged), qos=1
        )

    async def stored() -> list[dict[str, Any]] | None:
        return await find(stack, TRACKINGS, ambulance_id) or None

    assert len(await eventually(stored)) == 1  # type: ignore[arg-type]

    async def letters() -> list[dict[str, Any]] | None:
        docs = await find(stack, DEAD_LETTERS, None)
        mine = [d for d in docs if ambulance_id in d["topic"] or "bad..id" in d["topic"]]
        return mine if len(mine) >= 5 else None

    reasons = " | ".join(d["reason"] for d in await eventually(letters))  # type: ignore[union-attr]
    assert "JSON" in reasons
    assert "lat" in reasons
    assert "ambulance id" in reasons
    assert "JPEG or PNG" in reasons
    assert "legacy: legacy bodies come only from the legacy shim" in reasons
    assert len(await find(stack, TRACKINGS, ambulance_id)) == 1


async def test_a_large_snapshot_is_stored_intact(
    stack: Stack, dashboard: Dashboard, ambulance_id: str
) -> None:
    """Test that a snapshot over the worker-thread threshold (256 KiB) is stored byte for byte."""
    await dashboard.join("snap")
    large = png(width=400, height=400) + os.urandom(400_000)  # trailing bytes: still a PNG
    async with stack.mqtt() as device:
        await device.publish(f"aoc/{ambulance_id}/snap", large, qos=1)
    emitted = json.loads(await dashboard.wait_for(lambda d: ambulance_id in d))
    key = emitted["imagesObj"]["image0"]
    assert key.endswith(".png")
    assert (stack.data_dir / "objects" / key).read_bytes() == large
