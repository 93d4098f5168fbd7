"""End to end: the live stream of `aoc serve` (and, in ``test_scale_out``, of
`aoc bridge` + `aoc realtime`).

Real processes, a real device over MQTT and a python-socketio dashboard
subscribed to the live stream (``api.live``). Which interval a point falls in
is up to the clock, so the tests check what must hold whatever the timing:
each ambulance's latest point arrives, in the public state shape, once per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
import socketio

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def live_board(url: str, ambulances: object) -> AsyncIterator[list[dict[str, Any]]]:
    """A client subscribed to the live stream; yields the ``live_states`` events it gets."""
    client = socketio.AsyncClient(reconnection=False)
    events: list[dict[str, Any]] = []
    client.on("live_states", handler=events.append)
    await client.connect(url, transports=["websocket"], wait_timeout=10)
    try:
        answer = await client.call("live_subscribe", {"ambulances": ambulances}, timeout=10)
        assert "error" not in answer, answer
        yield events
    finally:
        await client.disconnect()


async def publish_and_watch(mqtt_port: int, socketio_url: str) -> list[Any]:
    """Two points of one ambulance and one of another; the events until both are latest."""
    first, second = (f"LIVE-{uuid.uuid4().hex[:8]}" for _ in range(2))
    t0 = int(time.time() * 1000)
    points = [(first, 0, 30), (second, 0, 95), (first, 1000, 130)]
    async with live_board(socketio_url, [first, second]) as events:
        async with aiomqtt.Client("127.0.0.1", mqtt_port) as device:
            for aid, dt, speed in points:
                body = {"lat": 13.75, "lon": 100.5, "speed": speed, "heading": 0, "ts": t0 + dt}
                await device.publish(f"aoc/{aid}/tracking", json.dumps(body), qos=1)
        latest: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(20):
            while latest.get(first, {}).get("speed") != 130 or second not in latest:
                await asyncio.sleep(0.05)
                for event in events:
                    latest.update({s["ambulance_id"]: s for s in event["states"]})
    return [first, second, latest, events]


def check(result: list[Any]) -> None:
    first, second, latest, events = result
    assert latest[first]["state"] == "RED" and latest[second]["state"] == "ORANGE"
    assert set(latest[first]) == {
        "ambulance_id", "location", "speed", "heading", "state", "last_seen", "online",
        "covered_distance", "avg_speed", "estimated_time", "version",
        "places", "destination", "eta",  # dispatch (README, Dispatch)
    }
    for event in events:  # each ambulance at most once per interval
        names = [s["ambulance_id"] for s in event["states"]]
        assert len(names) == len(set(names)) and event["at"].endswith("Z")


async def test_a_live_subscriber_of_aoc_serve_gets_each_latest_state(stack: Stack) -> None:
    """Test the live stream of `aoc serve`: the bridge feeds its own process's stream."""
    check(await publish_and_watch(stack.mqtt_port, stack.socketio_url))
