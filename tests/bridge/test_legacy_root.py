"""The legacy shim's topic root at a running bridge, on a real Mosquitto.

A legacy body reaches legacy Socket.IO rooms as it was sent, so only the shim
may send one, on ``legacy/<id>/...`` (a root only its broker account may
write). Dashboards are a fake Socket.IO server that records what it is asked
to emit (``FakeSocketIO``); storage is the real SQLite and local object store.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from bridge.service import MAIN_SUBSCRIPTIONS, SNAP_SUBSCRIPTIONS, Bridge
from broker.client import MqttClient
from storage.base import DEAD_LETTERS, IMAGE_HISTORIES, TRACKINGS, Query
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.bridge.test_service import T0_MS, count, point, running_bridge, until, until_counted
from tests.images import png

LEGACY_ON_DEVICE_TOPIC = (
    "legacy: legacy bodies come only from the legacy shim, on legacy/<id>/<kind>;"
    " a device publishes its message without one"
)


class FakeSocketIO:
    """Records the emissions a Socket.IO server would send (a fake server)."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, str]] = []  # (room, data)

    async def emit(self, event: str, data: str, *, room: str) -> None:
        assert event == "data"
        self.emitted.append((room, data))


def legacy_point(aid: str, n: int) -> tuple[bytes, str]:
    """The shim's message for point ``n`` of ``aid``, and its legacy body as the device sent it.

    The body agrees with the message (what the validator checks), and adds a
    field of its own that legacy rooms show as it is.
    """
    legacy = (
        f'{{"ambulance_id":"{aid}","tracking_latitude":"13.75","tracking_longitude":"100.5",'
        f'"tracking_speed":"40","note":"<b>ไทย</b> {n}"}}'
    )
    message = f'{{"lat":13.75,"lon":100.5,"speed":40,"ts":{T0_MS + n},"legacy":{legacy}}}'
    return message.encode(), legacy


async def stored_ts(store: SQLiteDocumentStore, aid: str) -> list[int]:
    """The device times (ms after T0) of the points stored for ``aid``."""
    items = (await store.find(Query(TRACKINGS, ambulance_id=aid, limit=100))).items
    return sorted(int(doc["count_datetime"].timestamp() * 1000) - T0_MS for doc in items)


@pytest.fixture
def device(mosquitto: services.Service) -> MqttClient:
    """A publisher on the test broker (anonymous: the ACLs are tested in tests/broker)."""
    return MqttClient(
        host="127.0.0.1",
        port=mosquitto.port,
        client_id=f"dev-{uuid.uuid4().hex[:8]}",
        clean_session=True,
        manual_ack=False,
    )


def handled(bridge: Bridge) -> int:
    return sum(n for kind, n in bridge.counts.items() if kind != "image")


async def test_a_legacy_body_on_a_device_topic_is_dead_lettered_between_good_points(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test that a device's legacy body is a dead letter, and the points around it are processed.

    Before, any device could publish a legacy body that agreed with its
    position and make every legacy dashboard show a field of its choosing.
    """
    aid = f"F{uuid.uuid4().hex[:8]}"
    forged, legacy = legacy_point(aid, 1)
    rooms = FakeSocketIO()
    async with running_bridge(mosquitto, tmp_path, emitter=rooms) as (bridge, store, _), device:
        await device.publish(f"aoc/{aid}/tracking", point(0))
        await device.publish(f"aoc/{aid}/tracking", forged)
        await device.publish(f"aoc/{aid}/tracking", point(2))
        await until(lambda: handled(bridge) == 3, "three messages handled")
        await bridge.drain_fan_out()
        assert bridge.counts == {"tracking": 2, "dead_letter": 1}
        assert await stored_ts(store, aid) == [0, 2]
        [letter] = (await store.find(Query(DEAD_LETTERS, limit=10))).items
    assert (letter["topic"], letter["reason"]) == (f"aoc/{aid}/tracking", LEGACY_ON_DEVICE_TOPIC)
    assert letter["ambulance_id"] == aid
    assert [room for room, _ in rooms.emitted] == [aid, "tracking"] * 2
    assert not any("ไทย" in data or data == legacy for _, data in rooms.emitted)


async def test_the_same_body_from_the_shim_root_is_processed_and_re_emitted_as_sent(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test that legacy/<id>/tracking with a legacy body is stored and re-emitted byte for byte."""
    aid = f"S{uuid.uuid4().hex[:8]}"
    message, legacy = legacy_point(aid, 1)
    rooms = FakeSocketIO()
    async with running_bridge(mosquitto, tmp_path, emitter=rooms) as (bridge, store, _), device:
        await device.publish(f"aoc/{aid}/tracking", point(0))
        await device.publish(f"legacy/{aid}/tracking", message)
        await device.publish(f"legacy/{aid}/tracking", point(2))  # no legacy body: as a device's
        await until(lambda: handled(bridge) == 3, "three messages handled")
        await bridge.drain_fan_out()
        assert bridge.counts == {"tracking": 3}
        assert await stored_ts(store, aid) == [0, 1, 2]
        assert await count(store, DEAD_LETTERS) == 0
    assert rooms.emitted[2:4] == [(aid, legacy), ("tracking", legacy)]
    shaped = [json.loads(data) for _, data in rooms.emitted[4:]]
    assert [body["ambulance_id"] for body in shaped] == [aid, aid]
    assert [body["ts"] for body in shaped] == [T0_MS + 2] * 2


async def test_a_shim_snapshot_takes_the_snapshot_lane_and_is_stored(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test that legacy/<id>/snap is uploaded off the main lane, stored, its form fields sent."""
    aid = f"P{uuid.uuid4().hex[:8]}"
    fields = {"ambulance_id": aid, "note": "front"}
    image = base64.b64encode(png(rgb=(9, 8, 7))).decode()
    shot = {"images": [{"name": "a.png", "data": image}], "ts": T0_MS, "legacy": fields}
    rooms = FakeSocketIO()
    async with (
        running_bridge(mosquitto, tmp_path, emitter=rooms) as (bridge, store, objects),
        device,
    ):
        await device.publish(f"legacy/{aid}/snap", json.dumps(shot).encode())
        await until(lambda: objects.waiting == 1, "the shim's snapshot upload under way")
        # Points sent after it are stored while it waits: it is on the snapshot lane.
        await device.publish(f"legacy/{aid}/tracking", point(1))
        await until_counted(store, TRACKINGS, 1)
        assert await count(store, IMAGE_HISTORIES) == 0
        objects.gate.set()
        await until_counted(store, IMAGE_HISTORIES, 1)
        await until(lambda: handled(bridge) == 2, "both messages handled")
        await bridge.drain_fan_out()
        [history] = (await store.find(Query(IMAGE_HISTORIES, limit=10))).items
    assert history["ambulance_id"] == aid
    assert await objects.get(history["images"]["image0"]) == png(rgb=(9, 8, 7))
    [snap_room] = [json.loads(data) for room, data in rooms.emitted if room == "snap"]
    assert snap_room["body"] == fields


async def test_a_resumed_session_of_an_older_bridge_gains_the_shim_root_and_keeps_its_queue(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test the upgrade: a session subscribed to aoc/... only, resumed by this bridge.

    What the broker queued for it while no bridge ran is delivered and stored,
    and the shim's topics are subscribed on the resumed session (the client
    subscribes at every connection, session present or not).
    """
    aid = f"U{uuid.uuid4().hex[:8]}"
    session = f"bridge-{uuid.uuid4().hex[:8]}"
    older = [(f, qos) for f, qos in MAIN_SUBSCRIPTIONS + SNAP_SUBSCRIPTIONS if f.startswith("aoc/")]
    assert len(older) == 4  # the older version's four filters
    old_bridge = MqttClient(
        host="127.0.0.1", port=mosquitto.port, client_id=session, clean_session=False,
        subscriptions=older,
    )
    async with old_bridge:
        pass  # a clean disconnect: the session and its aoc/... subscriptions stay
    try:
        async with device:
            await device.publish(f"aoc/{aid}/tracking", point(0))  # queued for the session
            async with running_bridge(mosquitto, tmp_path, session=session) as (bridge, store, _):
                await until_counted(store, TRACKINGS, 1)
                await device.publish(f"legacy/{aid}/tracking", legacy_point(aid, 1)[0])
                await until_counted(store, TRACKINGS, 2)
                assert bridge.counts == {"tracking": 2}
                assert await stored_ts(store, aid) == [0, 1]
    finally:
        # Drop the persistent session: the broker is shared by the session's tests.
        async with MqttClient(
            host="127.0.0.1", port=mosquitto.port, client_id=session, clean_session=True
        ):
            pass
