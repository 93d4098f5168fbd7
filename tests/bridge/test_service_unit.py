"""Unit tests of the bridge's consume loop (``bridge.service``), one failure at a time.

A real ``Processor`` over a real SQLite store and local object store; the
store is wrapped to fail on demand (``FaultyStore``, fault injection), and
the MQTT connections are a fake (``FakeMqtt``) that records what was
acknowledged and published. Nothing here waits a fixed time: the tests wait
for conditions, with deadlines, and hold slow parts on gates they open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.geo import haversine_m
from bridge.ids import dead_letter_id, tracking_id
from bridge.messages import Position, Tracking
from bridge.processor import Processor
from bridge.service import Bridge
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from broker.client import Message
from storage.base import AMBULANCES, DEAD_LETTERS, TRACKINGS, Query, StoreUnavailable, Write
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore

T0_MS = 1_714_550_400_000  # 2024-05-01T08:00:00Z
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
AID = "U1"
POISON_HEADING = 66.0  # the store refuses the records of a point with this heading
BUG_HEADING = 77.0  # the processor fails on a point with this heading


def position(n: int) -> Position:
    return Position(13.75 + n * 0.001, 100.5)


def point(n: int, *, heading: float = 10.0) -> bytes:
    where = position(n)
    body = {"lat": where.lat, "lon": where.lon, "speed": 40, "heading": heading, "ts": T0_MS + n}
    return json.dumps(body).encode()


def record_ids(message: Message) -> set[str]:
    """The ``_id`` the bridge may store ``message`` under: its point's or its dead letter's."""
    ids = {dead_letter_id(message.topic, message.payload)}
    item = parse(message.topic, message.payload, datetime.now(UTC), LIMITS)
    if isinstance(item, Tracking):
        ids.add(tracking_id(item.ambulance_id, item.id_ts, item.seq))
    return ids


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


class FakeMqtt:
    """Stands in for ``MqttClient`` (fake): the test feeds messages; acks and publishes are kept.

    ``on_ack`` sees each message as it is acknowledged. While ``publish_gate``
    is set to an unset event, publishes wait for it (a broker that stopped answering).
    """

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._mid = 0
        self.acked: list[Message] = []
        self.on_ack: Callable[[Message], None] | None = None
        self.published: list[str] = []
        self.publish_gate: asyncio.Event | None = None
        self.publishing = 0  # publishes waiting at the gate

    def feed(self, topic: str, payload: bytes) -> Message:
        self._mid += 1
        message = Message(topic, payload, qos=1, retain=False, mid=self._mid, dup=False)
        self._inbox.put_nowait(message)
        return message

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._inbox.get()

    def ack(self, message: Message) -> None:
        if self.on_ack is not None:
            self.on_ack(message)
        self.acked.append(message)

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if self.publish_gate is not None:
            self.publishing += 1
            try:
                await self.publish_gate.wait()
            finally:
                self.publishing -= 1
        self.published.append(topic)


class FaultyStore(SQLiteDocumentStore):
    """A real SQLite store that fails on demand (fault injection).

    ``outage``: every apply raises ``StoreUnavailable``. ``poison``: an apply
    holding a write it matches raises ``sqlite3.IntegrityError``, as a record
    the store refuses for good would. ``stored`` holds the ids of documents
    whose apply returned; ``applies`` the writes of each successful apply.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.outage = False
        self.poison: Callable[[Write], bool] = lambda write: False
        self.attempts = 0
        self.stored: set[str] = set()
        self.applies: list[list[Write]] = []

    async def apply(self, writes: Sequence[Write]) -> None:
        self.attempts += 1
        if self.outage:
            raise StoreUnavailable("fault injection: the store is down")
        if any(self.poison(write) for write in writes):
            raise sqlite3.IntegrityError("fault injection: a record the store refuses")
        await super().apply(writes)
        self.applies.append(list(writes))
        self.stored.update(write.doc["_id"] for write in writes)


class FaultyProcessor(Processor):
    """A real processor with a bug on points of ``BUG_HEADING`` (fault injection)."""

    def _tracking(self, item: Tracking, draft: Any) -> None:
        if item.heading == BUG_HEADING:
            raise RuntimeError("fault injection: a processor bug")
        super()._tracking(item, draft)


@dataclass
class Rig:
    """A bridge on fakes, its store and its record of acknowledgements."""

    bridge: Bridge
    store: FaultyStore
    mqtt: FakeMqtt
    publisher: FakeMqtt
    # Each acknowledged message with whether its record was stored when it was acked.
    acks: list[tuple[Message, bool]] = field(default_factory=list)

    def feed(self, n: int, *, heading: float = 10.0, aid: str = AID) -> Message:
        return self.mqtt.feed(f"aoc/{aid}/tracking", point(n, heading=heading))


@asynccontextmanager
async def running(
    tmp_path: Path, *, processor_type: type[Processor] = Processor, **options: Any
) -> AsyncIterator[Rig]:
    """A running bridge on fakes; it is stopped (and must end cleanly) on exit."""
    async with (
        FaultyStore(tmp_path / "aoc.sqlite3") as store,
        LocalObjectStore(tmp_path / "objects") as objects,
    ):
        processor = processor_type(
            store=store,
            objects=objects,
            rules=SpeedRules(),
            crash_dedup_s=60.0,
            maps_key=None,
            dead_letter_payload_bytes=4096,
        )
        mqtt, publisher = FakeMqtt(), FakeMqtt()
        bridge = Bridge(
            mqtt=mqtt,  # type: ignore[arg-type]
            publisher=publisher,  # type: ignore[arg-type]
            processor=processor,
            store=store,  # type: ignore[arg-type]
            limits=LIMITS,
            snap_workers=1,
            **({"batch_wait": 0.01} | options),
        )
        rig = Rig(bridge, store, mqtt, publisher)  # type: ignore[arg-type]
        mqtt.on_ack = lambda message: rig.acks.append(
            (message, bool(record_ids(message) & store.stored))
        )
        task = asyncio.create_task(bridge.run(), name="test-bridge")
        try:
            yield rig
        finally:
            bridge.stop()
            await asyncio.wait_for(task, 30)


async def stored(store: SQLiteDocumentStore, collection: str) -> list[dict[str, Any]]:
    return (await store.find(Query(collection, limit=1000))).items


def distance(*numbers: int) -> float:
    """The distance covered along the points ``numbers``, in metres."""
    return sum(
        haversine_m(position(a), position(b)) for a, b in zip(numbers, numbers[1:], strict=False)
    )


async def test_a_poison_message_is_dead_lettered_and_its_batch_stored_in_order(
    tmp_path: Path,
) -> None:
    """Test that a record the store refuses dead-letters its message, not the bridge.

    The good points around it are stored and acknowledged, in order, and the
    state is computed as if the poison point never came: it did advance the
    processor's memory, which must be forgotten.
    """
    async with running(tmp_path, batch_size=4, batch_wait=0.5) as rig:
        rig.store.poison = lambda write: write.doc.get("heading") == POISON_HEADING
        sent = [rig.feed(0), rig.feed(1, heading=POISON_HEADING), rig.feed(2), rig.feed(3)]
        await until(lambda: len(rig.mqtt.acked) == 4, "the batch acknowledged")
        assert [message.mid for message in rig.mqtt.acked] == [m.mid for m in sent]
        assert all(was_stored for _, was_stored in rig.acks)
        state = await rig.store.get(AMBULANCES, AID)
        assert state is not None
        assert state["speed_count"] == 3
        assert state["covered_distance"] == pytest.approx(distance(0, 2, 3))
        points = sorted(doc["count_datetime"] for doc in await stored(rig.store, TRACKINGS))
        assert [int(ts.timestamp() * 1000) - T0_MS for ts in points] == [0, 2, 3]
        [letter] = await stored(rig.store, DEAD_LETTERS)
        assert letter["reason"].startswith("processing error: IntegrityError(")
        assert rig.bridge.counts == {"tracking": 3, "dead_letter": 1}

        # The bridge goes on: the next point continues from the stored state.
        rig.feed(4)
        await until(lambda: len(rig.mqtt.acked) == 5, "the next point acknowledged")
        state = await rig.store.get(AMBULANCES, AID)
        assert state is not None
        assert state["covered_distance"] == pytest.approx(distance(0, 2, 3, 4))


async def test_a_message_the_processor_fails_on_is_dead_lettered_each_other_stored_alone(
    tmp_path: Path,
) -> None:
    """Test that after a planning error each message is planned and applied on its own.

    Merging the single plans into one would store every state before every
    history record, an order the store's crash window does not allow for.
    """
    options: dict[str, Any] = {"batch_size": 3, "batch_wait": 0.5}
    async with running(tmp_path, processor_type=FaultyProcessor, **options) as rig:
        rig.feed(0)
        rig.feed(1, heading=BUG_HEADING, aid="U2")
        rig.feed(2)
        await until(lambda: len(rig.mqtt.acked) == 3, "the batch acknowledged")
        assert all(was_stored for _, was_stored in rig.acks)
        with_points = [
            [w.collection for w in writes]
            for writes in rig.store.applies
            if any(w.collection == TRACKINGS for w in writes)
        ]
        assert with_points == [[AMBULANCES, TRACKINGS], [AMBULANCES, TRACKINGS]]
        state = await rig.store.get(AMBULANCES, AID)
        assert state is not None
        assert state["covered_distance"] == pytest.approx(distance(0, 2))
        [letter] = await stored(rig.store, DEAD_LETTERS)
        assert letter["reason"] == "processing error: RuntimeError('fault injection: a processor bug')"


async def test_an_outage_holds_the_batch_unacknowledged_and_retries(tmp_path: Path) -> None:
    """Test that nothing is acknowledged while the store is down, and all of it once it is back."""
    async with running(tmp_path, batch_size=2, batch_wait=0.5) as rig:
        rig.store.outage = True
        rig.feed(0)
        rig.feed(1)
        await until(lambda: rig.store.attempts >= 3, "the write retried")
        assert rig.mqtt.acked == []
        rig.store.outage = False
        await until(lambda: len(rig.mqtt.acked) == 2, "the batch acknowledged")
        assert all(was_stored for _, was_stored in rig.acks)
        state = await rig.store.get(AMBULANCES, AID)
        assert state is not None
        assert (state["speed_count"], state["covered_distance"]) == (2, pytest.approx(distance(0, 1)))
