"""End to end: a retained device message is never replayed into the data.

The broker hands a retained message to every new subscription, and the bridge
subscribes again on each (re)connection. Taken as device data, one retained
crash without ``ts`` became a new crash record and a new alert at every
reconnect, and a retained point moved the ambulance back to a stale position.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from storage.base import AMBULANCES, CRASHES, DEAD_LETTERS, IMAGE_HISTORIES, TRACKINGS
from tests import services
from tests.e2e.conftest import Stack, eventually
from tests.e2e.test_pipeline import find
from tests.images import TINY_JPEG

pytestmark = pytest.mark.e2e

AID = "RETAIN-1"


@pytest.fixture
def own_stack(
    mosquitto: services.Service, redis_server: services.Service, tmp_path: Path
) -> Iterator[Stack]:
    """An `aoc serve` of this test's own: the test restarts it."""
    service = services.aoc(
        "serve", tmp_path, mqtt_port=mosquitto.port, redis_port=redis_server.port
    )
    with service:
        yield Stack(service, mosquitto.port, "", tmp_path / "data")
    print(service.log_tail(40))


@pytest.fixture
async def cleared(own_stack: Stack) -> AsyncIterator[None]:
    """Clear the retained messages afterwards: the broker is shared by the whole session."""
    yield
    async with own_stack.mqtt() as device:
        for kind in ("crash", "tracking", "snap"):
            await device.publish(f"aoc/{AID}/{kind}", b"", qos=1, retain=True)


async def test_a_retained_crash_or_point_is_not_replayed_on_reconnect(
    own_stack: Stack, cleared: None
) -> None:
    """Test that after a bridge restart, retained crash/tracking/snap are dead letters, not data."""
    stack = own_stack
    async with stack.mqtt() as device, stack.mqtt() as watcher:
        await watcher.subscribe(f"aoc/{AID}/alert", qos=1)
        crash = {"lat": 13.75, "lon": 100.5, "speed": 150}  # no ts: the receipt time
        await device.publish(f"aoc/{AID}/crash", json.dumps(crash).encode(), qos=1, retain=True)
        stale = {"lat": 1.0, "lon": 1.0, "speed": 10}
        await device.publish(f"aoc/{AID}/tracking", json.dumps(stale).encode(), qos=1, retain=True)
        await device.publish(f"aoc/{AID}/snap", TINY_JPEG, qos=1, retain=True)
        async with asyncio.timeout(10):  # the live crash: its record, and its alarm
            live = [json.loads((await anext(watcher.messages)).payload) for _ in range(2)]
        assert sorted(message["type"] for message in live) == ["alarm", "crash"]
        fresh = {"lat": 13.76, "lon": 100.51, "speed": 30, "ts": int(time.time() * 1000)}
        await device.publish(f"aoc/{AID}/tracking", json.dumps(fresh).encode(), qos=1)

        async def stored_all() -> bool:
            snaps = await find(stack, IMAGE_HISTORIES, AID)
            return len(await find(stack, TRACKINGS, AID)) == 2 and len(snaps) == 1

        # Generous: the first snapshot waits for a decoder process to start (slow under load).
        await eventually(stored_all, timeout=30.0)

        async def replays_refused() -> bool:
            # This process's own count: its replays were taken (as dead letters, or dupes).
            async with httpx.AsyncClient(base_url=stack.http, timeout=5) as http:
                text = (await http.get("/metrics")).text
            counts = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("aoc_messages_received_total{")
            ]
            return sum(counts) >= 3

        for _ in range(2):
            stack.service.restart()  # each start subscribes again: the broker replays
            await eventually(replays_refused)
        # An alert of a replay would follow its acknowledgement within milliseconds.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await anext(watcher.messages)

    async def all_dead_lettered() -> list[dict[str, object]] | None:
        letters = [d for d in await find(stack, DEAD_LETTERS, None) if d["ambulance_id"] == AID]
        return letters if len(letters) == 3 else None

    letters: list[dict[str, object]] = await eventually(all_dead_lettered)  # type: ignore[assignment]
    kinds = ("crash", "tracking", "snap")
    assert {d["topic"] for d in letters} == {f"aoc/{AID}/{kind}" for kind in kinds}
    assert all(str(d["reason"]).startswith("retain: ") for d in letters)
    assert len(await find(stack, CRASHES, AID)) == 1
    assert len(await find(stack, TRACKINGS, AID)) == 2
    assert len(await find(stack, IMAGE_HISTORIES, AID)) == 1
    [state] = [d for d in await find(stack, AMBULANCES, None) if d["_id"] == AID]
    assert state["location"] == {"lat": 13.76, "lon": 100.51}
