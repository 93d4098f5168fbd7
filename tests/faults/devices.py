"""Simulated devices for the fault scenarios: real MQTT clients that count what was acknowledged.

A device publishes numbered points at QoS 1, one at a time, and records the
moment each PUBACK arrived. When the connection drops it reconnects and
publishes the unacknowledged point again (same ``ts`` and ``seq``, so the same
idempotent id), as a real device with a persistent session would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import httpx
import pytest

from bridge.geo import haversine_m
from bridge.messages import Position

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a fixed past: ids are reproducible
BASE_LAT, BASE_LON = 13.7563, 100.5018


def point_id(ambulance_id: str, i: int) -> str:
    """The store's id of point ``i`` (``bridge.ids.tracking_id`` with ts and seq)."""
    return f"{ambulance_id}:{T0_MS + i * 1000}:{i}"


def point(i: int) -> bytes:
    """Point ``i``: one second after point ``i - 1``, 10 m further north, speed encodes ``i``."""
    body = {
        "lat": BASE_LAT + i * 0.0001,
        "lon": BASE_LON,
        "speed": float(i % 150),
        "heading": 0,
        "ts": T0_MS + i * 1000,
        "seq": i,
    }
    return json.dumps(body).encode()


@dataclass
class Fleet:
    """What a set of devices sent and when the broker acknowledged each point."""

    port: int
    acked: dict[str, float] = field(default_factory=dict)  # point id -> monotonic PUBACK time
    attempts: int = 0  # publishes sent, resends included
    reconnects: int = 0

    async def device(
        self,
        ambulance_id: str,
        points: Iterable[int],
        *,
        pace: float = 0.0,
        persistent: bool = False,
    ) -> None:
        """Publish ``points`` in order; reconnect and resend on any connection failure."""
        todo = list(points)
        topic = f"aoc/{ambulance_id}/tracking"
        while todo:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=f"dev-{ambulance_id}",
                    clean_session=not persistent,
                    timeout=3,
                ) as client:
                    while todo:
                        self.attempts += 1
                        await client.publish(topic, point(todo[0]), qos=1, timeout=3)
                        self.acked[point_id(ambulance_id, todo[0])] = time.monotonic()
                        todo.pop(0)
                        if pace:
                            await asyncio.sleep(pace)
            except (aiomqtt.MqttError, OSError):
                self.reconnects += 1
                await asyncio.sleep(0.1)

    async def run(self, ambulance_ids: Iterable[str], count: int, **options: object) -> None:
        """``count`` points from each device, all devices at once."""
        async with asyncio.TaskGroup() as group:
            for aid in ambulance_ids:
                group.create_task(self.device(aid, range(count), **options))  # type: ignore[arg-type]


def check_aggregates(
    states: dict[str, Any], points: list[dict[str, Any]], *, late: bool = False
) -> int:
    """Check each ambulance's state against ALL its stored points; the number of points checked.

    The state must count each stored point exactly once, whatever was
    redelivered or arrived late: its distance is the path through the stored
    points in device-time order (then id, as the store orders them), its
    counters their number and sum, its latest the newest point. Ids alone
    cannot show a point counted twice or skipped (the store's primary key
    keeps them single anyway).

    The devices send in order and wait for each PUBACK, so with one bridge no
    point is ``late``. Several bridges on a shared subscription (``late=True``)
    take one ambulance's points in turns, and a point may reach the store after
    a newer one (a member slower, or killed and restarted with the point in
    flight): it is stored as ``late``, and counted all the same.
    """
    per_ambulance: dict[str, list[dict[str, Any]]] = {}
    for doc in points:
        per_ambulance.setdefault(doc["ambulance_id"], []).append(doc)
    for aid, docs in per_ambulance.items():
        docs.sort(key=lambda doc: (doc["count_datetime"], doc["_id"]))
        if not late:
            assert not [doc["_id"] for doc in docs if doc["late"]], f"{aid}: in-order points late"
        assert not docs[-1]["late"], f"{aid}: the newest point is late"
        path = [Position(doc["location"]["lat"], doc["location"]["lon"]) for doc in docs]
        distance = sum(haversine_m(a, b) for a, b in itertools.pairwise(path))
        state = states[aid]
        assert state["speed_count"] == len(docs), aid
        assert state["speed_sum"] == pytest.approx(sum(doc["speed"] for doc in docs)), aid
        assert state["covered_distance"] == pytest.approx(distance), aid
        assert state["last_seen"] == docs[-1]["count_datetime"], aid
        assert state["location"] == docs[-1]["location"], aid
    return len(points)


async def wait_until(
    check: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = ""
) -> float:
    """Poll ``check`` until truthy; returns the seconds it took, or fails after ``timeout``."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        await asyncio.sleep(interval)


async def until_async(
    check: Callable[[], Awaitable[object]], *, timeout: float, interval: float = 0.2, what: str = ""
) -> float:
    """``wait_until`` for an async ``check``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        await asyncio.sleep(interval)
    return time.monotonic() - start


@dataclass
class LegacyDevices:
    """Legacy devices POSTing tracking to the HTTP shim; a 200 means the broker has it."""

    base_url: str
    answered: dict[tuple[str, int], float] = field(default_factory=dict)  # (id, seq) -> time
    failed: int = 0

    async def device(
        self, ambulance_id: str, count: int, *, pace: float = 0.0, give_up: bool = False
    ) -> None:
        """POST ``count`` points (``seq`` 0..count-1); a failed one is skipped, or ends all."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as http:
            for i in range(count):
                body = {
                    "ambulance_id": ambulance_id,
                    "tracking_latitude": BASE_LAT + i * 0.0001,
                    "tracking_longitude": BASE_LON,
                    "tracking_speed": 40,
                    "tracking_heading": 0,
                    "seq": i,
                }
                try:
                    response = await http.post("/api/tracking/postAmbulanceTracking", json=body)
                except httpx.HTTPError:
                    self.failed += 1
                    if give_up:
                        return
                    await asyncio.sleep(0.2)
                    continue
                if response.status_code == 200:
                    self.answered[(ambulance_id, i)] = time.monotonic()
                else:
                    self.failed += 1
                if pace:
                    await asyncio.sleep(pace)
