"""The bridge's lanes against a real Mosquitto, SQLite store and local object store.

Object storage is slowed on purpose (``GatedObjects``, a fault injector over a
real ``LocalObjectStore``): its puts wait for a gate the test opens. That is
how a large snapshot's upload looks to the bridge, without any timing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bridge.processor import Processor
from bridge.service import SUBSCRIPTIONS, Bridge, ByteBudget, Emitter
from bridge.speed import SpeedRules
from bridge.validate import Limits
from broker.client import MqttClient
from storage.base import CRASHES, DEAD_LETTERS, IMAGE_HISTORIES, TRACKINGS, Query, Write
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.images import png

T0_MS = 1_714_550_400_000  # 2024-05-01T08:00:00Z
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)


class GatedObjects(LocalObjectStore):
    """A real local store whose puts wait until ``gate`` is set (fault injection)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.waiting = 0  # puts waiting at the gate now
        self.refusals = 0  # puts to refuse with an error that is no outage

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError("AccessDenied: the bucket policy refused the put")
        return await super().put_new(key, data, content_type)


class GatedStore(SQLiteDocumentStore):
    """A real SQLite store whose writes wait until ``gate`` is set (fault injection)."""

    gate: asyncio.Event | None = None

    async def apply(self, writes: Sequence[Write]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await super().apply(writes)


async def until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


def snap(aid: str, n: int) -> bytes:
    image = base64.b64encode(png(rgb=(n, 1, 2))).decode()
    return json.dumps({"images": [{"name": "a.png", "data": image}], "ts": T0_MS + n}).encode()


def point(n: int) -> bytes:
    return json.dumps({"lat": 13.75, "lon": 100.5, "speed": 40, "ts": T0_MS + n}).encode()


@asynccontextmanager
async def running_bridge(
    mosquitto: services.Service,
    tmp_path: Path,
    *,
    queue_bytes: int = 1 << 24,
    emitter: Emitter | None = None,
    session: str | None = None,
    **options: int,
) -> AsyncIterator[tuple[Bridge, GatedStore, GatedObjects]]:
    """A bridge on all of ``SUBSCRIPTIONS``; ``session``: the client id of a persistent session."""
    objects = GatedObjects(tmp_path / "objects")
    async with (
        GatedStore(tmp_path / "aoc.sqlite3") as store,
        MqttClient(
            host="127.0.0.1",
            port=mosquitto.port,
            client_id=session or f"bridge-{uuid.uuid4().hex[:8]}",
            clean_session=session is None,
            subscriptions=SUBSCRIPTIONS,
            queue_bytes=queue_bytes,
        ) as mqtt,
        MqttClient(
            host="127.0.0.1",
            port=mosquitto.port,
            client_id=f"out-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            manual_ack=False,
        ) as publisher,
    ):
        await objects.open()
        processor = Processor(
            store=store,
            objects=objects,
            rules=SpeedRules(),
            crash_dedup_s=60.0,
            maps_key=None,
            dead_letter_payload_bytes=64,
        )
        bridge = Bridge(
            mqtt=mqtt,
            publisher=publisher,
            processor=processor,
            store=store,  # type: ignore[arg-type]
            limits=LIMITS,
            emitter=emitter,
            batch_wait=0.01,
            **options,
        )
        task = asyncio.create_task(bridge.run(), name="test-bridge")
        try:
            yield bridge, store, objects  # type: ignore[misc]
        finally:
            objects.gate.set()
            if store.gate is not None:
                store.gate.set()
            bridge.stop()
            await task


async def count(store: SQLiteDocumentStore, collection: str) -> int:
    return len((await store.find(Query(collection, limit=1000))).items)


@pytest.fixture
def device(mosquitto: services.Service) -> MqttClient:
    return MqttClient(
        host="127.0.0.1",
        port=mosquitto.port,
        client_id=f"dev-{uuid.uuid4().hex[:8]}",
        clean_session=True,
        manual_ack=False,
    )


async def test_tracking_and_crashes_are_not_held_behind_a_slow_snapshot(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test that points and a crash sent after snapshots are stored while their uploads wait."""
    aid = f"L{uuid.uuid4().hex[:8]}"
    async with running_bridge(mosquitto, tmp_path) as (_, store, objects), device:
        for n in range(3):
            await device.publish(f"aoc/{aid}/snap", snap(aid, n))
        await until(lambda: objects.waiting == 2, "two snapshot uploads under way")
        for n in range(5):
            await device.publish(f"aoc/{aid}/tracking", point(n))
        await device.publish(f"aoc/{aid}/crash", point(100))
        # Stored (and so acknowledged) while every snapshot still waits.
        await until_counted(store, TRACKINGS, 5)
        await until_counted(store, CRASHES, 1)
        assert await count(store, IMAGE_HISTORIES) == 0
        objects.gate.set()
        await until_counted(store, IMAGE_HISTORIES, 3)


async def until_counted(
    store: SQLiteDocumentStore, collection: str, wanted: int, seconds: float = 20.0
) -> None:
    """Wait until ``collection`` holds ``wanted`` documents."""
    deadline = time.monotonic() + seconds
    while (got := await count(store, collection)) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"{collection}: {got} stored, never {wanted}")
        await asyncio.sleep(0.05)


async def test_snapshot_lane_bounds_concurrency_and_bytes(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test that at most snap_workers snapshots are decoded at once, and held bytes stay bounded."""
    aid = f"B{uuid.uuid4().hex[:8]}"
    size = len(snap(aid, 0))
    options = {"snap_workers": 2, "snap_buffer_bytes": 3 * size + size // 2}
    async with running_bridge(mosquitto, tmp_path, **options) as (bridge, store, objects), device:
        for n in range(6):
            await device.publish(f"aoc/{aid}/snap", snap(aid, n))
        # Two uploads under way, a third taken and waiting for a worker, and
        # the rest left with the broker: the budget holds three payloads.
        await until(
            lambda: objects.waiting == 2 and bridge._snaps.qsize() == 1,
            "two snapshots in the workers, one waiting",
        )
        assert 3 * size * 0.9 < bridge._snap_budget.used <= options["snap_buffer_bytes"]
        objects.gate.set()
        await until_counted(store, IMAGE_HISTORIES, 6)
        assert bridge._snap_budget.used == 0


async def test_oversized_tracking_payloads_are_held_within_a_byte_bound(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test that while the store is slow, unacknowledged payload bytes stay bounded."""
    aid = f"O{uuid.uuid4().hex[:8]}"
    size, count = 100_000, 12  # each over the 64 KiB bound of a tracking payload
    options = {"batch_max_bytes": 150_000, "queue_bytes": size}
    async with running_bridge(mosquitto, tmp_path, **options) as (bridge, store, _), device:
        store.gate = asyncio.Event()
        for n in range(count):
            await device.publish(f"aoc/{aid}/tracking", b"%08d" % n + bytes(size - 8))
        # Four batches' worth in the main lane, one client queue, one packet past it.
        bound = 4 * 150_000 + size + size
        mqtt = bridge._mqtt
        await until(lambda: bridge._main_budget.used >= 4 * 150_000 - size, "the lane full")
        held = sum(len(m.payload) for m in mqtt._unacked.values())
        assert held <= bound < count * size
        store.gate.set()
        await until_counted(store, DEAD_LETTERS, count)
        [letter, *_] = (await store.find(Query(DEAD_LETTERS, limit=1))).items
        assert letter["reason"] == f"payload: {size} bytes, over the limit of 65536 bytes"


async def test_byte_budget_waits_for_room_and_lets_one_oversized_through() -> None:
    """Test that take waits while the bound would be passed, and a lone oversized one passes."""
    budget = ByteBudget(100)
    await budget.take(60)
    waiter = asyncio.create_task(budget.take(60))
    await asyncio.sleep(0)
    assert not waiter.done()
    budget.give(60)
    await waiter
    budget.give(60)
    await budget.take(500)  # alone: it passes
    assert budget.used == 500


async def test_a_snapshot_the_object_store_refuses_waits_and_is_never_lost(
    mosquitto: services.Service, tmp_path: Path, device: MqttClient
) -> None:
    """Test that an unexpected object-store error holds a snapshot instead of dead-lettering it.

    A dead letter is acknowledged and keeps 4 KiB of the payload: a refused put
    (a policy, a client too old for conditional puts) lost every snapshot.
    """
    aid = f"R{uuid.uuid4().hex[:8]}"
    async with running_bridge(mosquitto, tmp_path) as (_, store, objects), device:
        objects.refusals = 3
        objects.gate.set()
        await device.publish(f"aoc/{aid}/snap", snap(aid, 0))
        await until_counted(store, IMAGE_HISTORIES, 1)
        assert objects.refusals == 0
        assert await count(store, DEAD_LETTERS) == 0
