"""Unit tests of the bridge's consume loop (``bridge.service``), one failure at a time.

A real ``Processor`` over a real SQLite store and local object store; the
store is wrapped to fail on demand (``FaultyStore``, fault injection), and
the MQTT connections are a fake (``FakeMqtt``) that records what was
acknowledged and published. Nothing here waits a fixed time: the tests wait
for conditions, with deadlines, and hold slow parts on gates they open.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from aoc import metrics
from aoc.metrics import KINDS
from bridge.fanout import Breaker, Channel
from bridge.geo import haversine_m
from bridge.ids import dead_letter_id, tracking_id
from bridge.messages import Plan, Position, Publish, Tracking
from bridge.processor import Processor
from bridge.ratelimit import DeviceLimiter
from bridge.service import Bridge
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from broker.client import Message
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    IMAGE_HISTORIES,
    PLACES,
    TRACKINGS,
    TRIPS,
    Document,
    Page,
    Query,
    StoreUnavailable,
    Write,
)
from storage.cache import StateCache
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.images import png

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
        # Never "connected": the bridge then sends each state with ``publish`` (the gate's).
        self.connected = False

    def feed(self, topic: str, payload: bytes, *, dup: bool = False) -> Message:
        self._mid += 1
        message = Message(topic, payload, qos=1, retain=False, mid=self._mid, dup=dup)
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
    While ``find_gate`` is set to an unset event, ``find`` reads its page, then
    waits for the gate before returning it: a slow reader, whose page is old
    by the time it gets it.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.outage = False
        self.poison: Callable[[Write], bool] = lambda write: False
        self.attempts = 0
        self.stored: set[str] = set()
        self.applies: list[list[Write]] = []
        self.find_gate: asyncio.Event | None = None
        self.finds_held = 0
        self.state_reads = 0  # finds of AMBULANCES (a cache rebuild's scan)

    async def apply(self, writes: Sequence[Write]) -> None:
        self.attempts += 1
        if self.outage:
            raise StoreUnavailable("fault injection: the store is down")
        if any(self.poison(write) for write in writes):
            raise sqlite3.IntegrityError("fault injection: a record the store refuses")
        await super().apply(writes)
        self.applies.append(list(writes))
        self.stored.update(write.doc["_id"] for write in writes)

    async def find(self, query: Query) -> Page:
        if query.collection == AMBULANCES:
            self.state_reads += 1
        page = await super().find(query)
        if self.find_gate is not None:
            self.finds_held += 1
            await self.find_gate.wait()
        return page


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
    return sum(haversine_m(position(a), position(b)) for a, b in itertools.pairwise(numbers))


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


async def test_a_failed_message_is_acknowledged_only_once_its_dead_letter_is_stored(
    tmp_path: Path,
) -> None:
    """Test that the record of a message that failed processing is not best effort.

    Junk's dead letters may be dropped (any client can send junk at will), but
    a message the broker accepted and a fault of ours refused has only its
    dead letter left: while the store refuses that too, the batch is held.
    """
    refuse_letters = True

    def poison(write: Write) -> bool:
        if write.collection == DEAD_LETTERS:
            return refuse_letters
        return write.doc.get("heading") == POISON_HEADING

    async with running(tmp_path, batch_size=2, batch_wait=0.5) as rig:
        rig.store.poison = poison
        rig.feed(0)
        culprit = rig.feed(1, heading=POISON_HEADING)
        await until(lambda: rig.store.attempts >= 6, "the dead letter retried")
        assert rig.mqtt.acked == []
        refuse_letters = False
        await until(lambda: len(rig.mqtt.acked) == 2, "the batch acknowledged")
        assert all(was_stored for _, was_stored in rig.acks)
        [letter] = await stored(rig.store, DEAD_LETTERS)
        assert letter["_id"] == dead_letter_id(culprit.topic, culprit.payload)
        assert letter["payload"] == culprit.payload.decode()


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
        # The first point moves, so it opens a trip (bridge.trips): an upsert
        # after the state and before the history record, as any episode's.
        assert with_points == [[AMBULANCES, TRIPS, TRACKINGS], [AMBULANCES, TRACKINGS]]
        state = await rig.store.get(AMBULANCES, AID)
        assert state is not None
        assert state["covered_distance"] == pytest.approx(distance(0, 2))
        [letter] = await stored(rig.store, DEAD_LETTERS)
        bug = "RuntimeError('fault injection: a processor bug')"
        assert letter["reason"] == f"processing error: {bug}"


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
        assert state["speed_count"] == 2
        assert state["covered_distance"] == pytest.approx(distance(0, 1))


class GatedEmitter:
    """A Socket.IO emitter (fake) whose emits wait for ``gate``, or fail with ``error``."""

    def __init__(self, *, error: Exception | None = None) -> None:
        self.gate = asyncio.Event()
        self.error = error
        self.waiting = 0
        self.calls = 0
        self.emitted: list[str] = []  # rooms, in order

    async def emit(self, event: str, data: str, *, room: str) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        self.emitted.append(room)


class GatedCache(StateCache):
    """A real Redis cache whose ``set_many`` waits for ``gate`` (fault injection)."""

    def __init__(self, url: str) -> None:
        self.prefix = f"unit-{uuid.uuid4().hex[:8]}"
        super().__init__(url, prefix=self.prefix)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def set_many(self, states: Mapping[str, Document]) -> bool:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().set_many(states)


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[GatedCache]:
    opened = GatedCache(redis_url)
    await opened.open()
    await opened.rebuild({})  # built, as a bridge left it: updates need no rebuild
    try:
        yield opened
    finally:
        await opened.close()


def dropped(channel: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "aoc_fanout_dropped_total", {"channel": channel, "reason": reason}
    )
    return value or 0.0


async def test_hanging_fan_out_never_delays_the_next_acknowledgement(
    tmp_path: Path, cache: GatedCache
) -> None:
    """Test that while Socket.IO, Redis and MQTT all hang, the next batch is still acknowledged."""
    emitter = GatedEmitter()
    options: dict[str, Any] = {"batch_size": 1, "fan_out_timeout": 60.0}
    async with running(tmp_path, cache=cache, emitter=emitter, **options) as rig:
        cache.gate.clear()
        rig.publisher.publish_gate = asyncio.Event()
        rig.feed(0)
        await until(
            lambda: (emitter.waiting, cache.waiting, rig.publisher.publishing) == (1, 1, 1),
            "every fan-out channel hanging",
        )
        rig.feed(1)
        await until(lambda: len(rig.mqtt.acked) == 2, "the next batch acknowledged")
        assert (emitter.waiting, cache.waiting, rig.publisher.publishing) == (1, 1, 1)

        emitter.gate.set()
        cache.gate.set()
        rig.publisher.publish_gate.set()
        await rig.bridge.drain_fan_out()
        assert emitter.emitted == [AID, "tracking"] * 2
        assert rig.publisher.published == [f"aoc/{AID}/state"] * 2
        state = await cache.get(AID)
        assert state is not None
        assert state["covered_distance"] == pytest.approx(distance(0, 1))


class FirstHangsEmitter(GatedEmitter):
    """An emitter whose first emission hangs for good; the others go through at once."""

    async def emit(self, event: str, data: str, *, room: str) -> None:
        self.calls += 1
        if self.calls == 1:
            await super().emit(event, data, room=room)
        self.emitted.append(room)


async def test_an_emission_out_of_time_fails_alone_and_the_rest_of_its_plan_is_sent(
    tmp_path: Path,
) -> None:
    """Test that each emission has its own timeout: one hanging costs it, not its plan's next."""
    emitter = FirstHangsEmitter()
    failures = metrics.REGISTRY.get_sample_value(
        "aoc_fanout_failures_total", {"channel": "socketio"}
    ) or 0.0
    options: dict[str, Any] = {"batch_size": 1, "fan_out_timeout": 0.2}
    async with running(tmp_path, emitter=emitter, **options) as rig:
        rig.feed(0)
        await until(lambda: emitter.emitted == ["tracking"], "the plan's next emission sent")
        rig.feed(1)
        await until(lambda: len(emitter.emitted) == 3, "the next plan sent")
    assert emitter.emitted == ["tracking", AID, "tracking"]
    assert metrics.REGISTRY.get_sample_value(
        "aoc_fanout_failures_total", {"channel": "socketio"}
    ) == failures + 1


async def test_a_full_fan_out_queue_drops_its_oldest_and_the_cache_heals(
    tmp_path: Path, cache: GatedCache
) -> None:
    """Test that drops are counted per channel, and a dropped cache update is healed.

    With room for one plan per channel, the second of three batches is
    dropped while the first hangs; the cache is then rebuilt from the store.
    """
    emitter = GatedEmitter()
    options: dict[str, Any] = {"batch_size": 1, "fan_out_timeout": 60.0, "fan_out_queue": 1}
    async with running(tmp_path, cache=cache, emitter=emitter, **options) as rig:
        cache.gate.clear()
        rig.publisher.publish_gate = asyncio.Event()
        before = {name: dropped(name, "queue_full") for name in ("cache", "socketio", "mqtt")}
        rig.feed(0)
        await until(lambda: (emitter.waiting, cache.waiting) == (1, 1), "fan-out hanging")
        for n in (1, 2):
            rig.feed(n)
            await until(lambda n=n: len(rig.mqtt.acked) == n + 1, f"point {n} acknowledged")
        after = {name: dropped(name, "queue_full") for name in ("cache", "socketio", "mqtt")}
        # One state, two emissions (the ambulance's room and `tracking`), one publish.
        assert {name: after[name] - before[name] for name in after} == {
            "cache": 1, "socketio": 2, "mqtt": 1
        }
        assert rig.bridge._cache_stale.is_set()

        emitter.gate.set()
        cache.gate.set()
        rig.publisher.publish_gate.set()
        await rig.bridge.drain_fan_out()
        assert emitter.emitted == [AID, "tracking"] * 2  # points 0 and 2
        await until(lambda: not rig.bridge._cache_stale.is_set(), "the cache rebuilt")
        state = await cache.get(AID)
        assert state is not None
        assert state["covered_distance"] == pytest.approx(distance(0, 1, 2))


async def test_a_failing_channel_is_skipped_once_its_breaker_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that Redis errors from Socket.IO never escape, and open the breaker once."""
    oom = ResponseError("OOM command not allowed when used memory > 'maxmemory'")
    emitter = GatedEmitter(error=oom)
    options: dict[str, Any] = {"batch_size": 1, "fan_out_failures": 2, "fan_out_cooldown": 3600.0}
    before = dropped("socketio", "breaker_open")
    with caplog.at_level(logging.INFO, logger="bridge.service"):
        async with running(tmp_path, emitter=emitter, **options) as rig:
            for n in range(3):
                rig.feed(n)
                await until(lambda n=n: len(rig.mqtt.acked) == n + 1, f"point {n} acknowledged")
                await rig.bridge.drain_fan_out()
            assert emitter.calls == 2  # then open: points 1 and 2 were skipped
            assert dropped("socketio", "breaker_open") - before == 4
            assert rig.publisher.published == [f"aoc/{AID}/state"] * 3  # other channels go on
    lines = [r.getMessage() for r in caplog.records if "fan-out to socketio" in r.getMessage()]
    assert len(lines) == 1 and "failed 2 times in a row" in lines[0]


async def test_a_crash_alert_is_tried_even_while_the_breaker_is_open(tmp_path: Path) -> None:
    """Test that an open breaker never skips a crash alert, whose success closes it."""
    emitter = GatedEmitter(error=ConnectionError("socket.io's Redis refused"))
    emitter.gate.set()
    options: dict[str, Any] = {"batch_size": 1, "fan_out_failures": 2, "fan_out_cooldown": 3600.0}
    async with running(tmp_path, emitter=emitter, **options) as rig:
        rig.feed(0)
        await until(lambda: len(rig.mqtt.acked) == 1, "point 0 acknowledged")
        await rig.bridge.drain_fan_out()
        assert emitter.calls == 2  # open now
        emitter.error = None  # the destination is back; the breaker does not know yet
        crash = {"lat": 13.75, "lon": 100.5, "speed": 40, "ts": T0_MS + 5}
        rig.mqtt.feed(f"aoc/{AID}/crash", json.dumps(crash).encode())
        rig.feed(6)
        await until(lambda: len(rig.mqtt.acked) == 3, "the crash and point 6 acknowledged")
        await rig.bridge.drain_fan_out()
    # The alert got through (with the crash's alarm), which closed the breaker: point 6 too.
    assert emitter.emitted == [f"CRASH_NOTIFY_{AID}", "crash", "alarms", AID, "tracking"]


async def test_only_a_redelivered_crash_already_stored_is_alerted_again(tmp_path: Path) -> None:
    """Test that the broker's redelivery (DUP) of a stored crash alerts again, a resend not.

    A bridge that died between storing a crash and its fan-out left it stored
    and never broadcast; the broker then sends it again with DUP set. The same
    crash sent again by its device is a repeat, and no alert.
    """
    emitter = GatedEmitter()
    emitter.gate.set()
    body = json.dumps({"lat": 13.75, "lon": 100.5, "speed": 40, "ts": T0_MS}).encode()
    async with running(tmp_path, emitter=emitter, batch_size=1) as rig:
        for n, dup in enumerate((False, False, True)):
            rig.mqtt.feed(f"aoc/{AID}/crash", body, dup=dup)
            await until(lambda n=n: len(rig.mqtt.acked) == n + 1, f"crash {n} acknowledged")
            await rig.bridge.drain_fan_out()
    alert = [f"CRASH_NOTIFY_{AID}", "crash", "alarms"]
    assert emitter.emitted == alert + alert  # the first, then the redelivery only
    assert rig.bridge.counts == {"crash": 1, "duplicate": 2}


async def test_stopping_sends_what_is_queued_then_ends(tmp_path: Path) -> None:
    """Test that on stop the queued fan-out is sent, and what cannot be is dropped and counted."""
    emitter = GatedEmitter()
    options: dict[str, Any] = {"batch_size": 1, "fan_out_timeout": 60.0, "fan_out_drain": 60.0}
    async with running(tmp_path, emitter=emitter, **options) as rig:
        rig.feed(0)
        await until(lambda: emitter.waiting == 1, "an emission hanging")
        rig.feed(1)
        await until(lambda: len(rig.mqtt.acked) == 2, "both points acknowledged")
        rig.bridge.stop()
        emitter.gate.set()
    assert emitter.emitted == [AID, "tracking"] * 2

    emitter = GatedEmitter()
    options["fan_out_drain"] = 0.05
    before = dropped("socketio", "shutdown")
    async with running(tmp_path / "2", emitter=emitter, **options) as rig:
        rig.feed(0)
        await until(lambda: emitter.waiting == 1, "an emission hanging")
        rig.feed(1)
        await until(lambda: len(rig.mqtt.acked) == 2, "both points acknowledged")
    # Out of time: the hanging plan and the queued one (two emissions each).
    assert emitter.emitted == []
    assert dropped("socketio", "shutdown") - before == 4


async def test_breaker_opens_after_failures_in_a_row_and_tries_again_after_cooldown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test the breaker's states, and that it logs only when it opens and closes."""
    now = [0.0]
    breaker = Breaker("unit", threshold=3, cooldown=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="bridge.fanout"):
        for _ in range(2):
            assert breaker.allow()
            breaker.failure(OSError("refused"))
        breaker.success()  # a success breaks the streak
        for _ in range(3):
            assert breaker.allow()
            breaker.failure(OSError("refused"))
        assert breaker.is_open
        assert not breaker.allow(5)
        now[0] = 10.0
        assert breaker.allow()  # one try after the cool-down
        assert not breaker.allow()
        breaker.failure(OSError("refused"))  # failed: another cool-down, no new log
        now[0] = 15.0
        assert not breaker.allow()
        now[0] = 20.0
        assert breaker.allow()
        breaker.success()
        assert not breaker.is_open and breaker.allow()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("fan-out to unit failed 3 times in a row")
    assert lines[1] == "fan-out to unit works again; 7 sends were skipped meanwhile"


async def test_a_batch_handled_while_the_cache_is_rebuilt_reaches_the_cache(
    tmp_path: Path, cache: GatedCache, redis_url: str
) -> None:
    """Test that a state fanned out while the healer reads the store is not lost.

    The rebuild's read has already passed the ambulance when its next point
    is stored; the update is skipped while the cache is stale, and the
    rebuild used to write the older state over it, until the next message.
    """
    async with running(tmp_path, cache=cache, batch_size=1) as rig:
        rig.feed(0)
        await until(lambda: len(rig.mqtt.acked) == 1, "point 0 acknowledged")
        await rig.bridge.drain_fan_out()
        # Redis comes back empty; the next update notices and asks for a rebuild,
        # whose read of the store is held once done.
        redis = Redis.from_url(redis_url)
        await redis.delete(*[key async for key in redis.scan_iter(f"{cache.prefix}:*")])
        await redis.connection_pool.disconnect()
        rig.store.find_gate = asyncio.Event()
        rig.feed(0, aid="U2")
        await until(lambda: rig.store.finds_held == 1, "the rebuild reading the store")

        rig.feed(1)
        await until(lambda: len(rig.mqtt.acked) == 3, "point 1 acknowledged")
        await rig.bridge.drain_fan_out()
        rig.store.find_gate.set()
        await until(lambda: not rig.bridge._cache_stale.is_set(), "the cache rebuilt")
        state = await cache.get(AID)
        assert state is not None
        assert state["speed_count"] == 2
        assert state["covered_distance"] == pytest.approx(distance(0, 1))
        assert await cache.get("U2") is not None


async def test_a_full_fan_out_queue_never_drops_a_crash_alert(
    tmp_path: Path, cache: GatedCache
) -> None:
    """Test that a crash alert waiting in a full queue is kept, and the oldest tracking dropped.

    With room for one plan per channel, a crash then two points follow a
    hanging point: each point used to push out the plan before it, the
    crash's included, and its alert never reached the dashboards.
    """
    emitter = GatedEmitter()
    options: dict[str, Any] = {"batch_size": 1, "fan_out_timeout": 60.0, "fan_out_queue": 1}
    async with running(tmp_path, cache=cache, emitter=emitter, **options) as rig:
        rig.publisher.publish_gate = asyncio.Event()
        before = dropped("socketio", "queue_full")
        rig.feed(0)
        await until(lambda: emitter.waiting == 1, "fan-out hanging")
        rig.mqtt.feed(f"aoc/{AID}/crash", point(1))
        rig.feed(2)
        rig.feed(3)
        await until(lambda: len(rig.mqtt.acked) == 4, "every message acknowledged")
        emitter.gate.set()
        rig.publisher.publish_gate.set()
        await rig.bridge.drain_fan_out()
        # Point 2 was dropped for point 3; the crash's alerts were not.
        crash = [f"CRASH_NOTIFY_{AID}", "crash", "alarms"]
        assert emitter.emitted == [AID, "tracking", *crash, AID, "tracking"]
        assert dropped("socketio", "queue_full") - before == 2
        assert f"aoc/{AID}/alert" in rig.publisher.published


def gated_channel(
    sent: list[str], gates: dict[str, asyncio.Event], *, drain: float
) -> Channel:
    """An MQTT-like channel whose sends of a topic wait for its gate, if it has one."""

    async def send(plan: Plan) -> None:
        for publish in plan.publishes:
            if publish.topic in gates:
                await gates[publish.topic].wait()
            sent.append(publish.topic)

    breaker = Breaker("mqtt", threshold=5, cooldown=15.0)
    return Channel(
        "mqtt", send, sends=lambda plan: len(plan.publishes), depth=5, timeout=60.0,
        breaker=breaker, drain_timeout=drain,
    )


def publishing(*topics: str) -> Plan:
    """A plan of publications; an alert's payload names its crash record after its topic.

    As the bridge publishes it: the record's public ``id`` (``bridge.public``).
    """
    plan = Plan()
    for name in topics:
        plan.publishes.append(Publish(name, json.dumps({"id": f"crash-{name}"}).encode()))
    return plan


async def test_crash_alerts_are_sent_before_older_tracking_and_first_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that an alert overtakes the plans queued before it, while states keep their order.

    On stop, queued alerts are sent first within the drain bound; those that
    cannot be are logged at ERROR with their crash record ids.
    """
    sent: list[str] = []
    gates = {"aoc/A/state": asyncio.Event()}
    channel = gated_channel(sent, gates, drain=60.0)
    task = asyncio.create_task(channel.run())
    channel.put(publishing("aoc/A/state"))  # taken, and held at its gate
    await until(lambda: channel._current is not None, "the first plan being sent")
    channel.put(publishing("aoc/B/state"))
    # A batch with a state and an alert: the state waits its turn, the alert does not.
    channel.put(publishing("aoc/C/state", "aoc/C/alert"))
    channel.put(publishing("aoc/D/alert"))
    gates["aoc/A/state"].set()
    await channel.drain()
    assert sent == [
        "aoc/A/state", "aoc/C/alert", "aoc/D/alert", "aoc/B/state", "aoc/C/state"
    ]
    channel.close()
    await asyncio.wait_for(task, 10)

    # Stopping: the state in hand finishes, the alert goes next, the other state
    # hangs until the drain's time is up.
    sent = []
    gates = {"aoc/A/state": asyncio.Event(), "aoc/B/state": asyncio.Event()}
    channel = gated_channel(sent, gates, drain=0.2)
    task = asyncio.create_task(channel.run())
    channel.put(publishing("aoc/A/state"))
    await until(lambda: channel._current is not None, "the first plan being sent")
    channel.put(publishing("aoc/B/state"))
    channel.put(publishing("aoc/C/alert"))
    channel.close()
    gates["aoc/A/state"].set()
    await asyncio.wait_for(task, 10)
    assert sent == ["aoc/A/state", "aoc/C/alert"]

    # Out of time with alerts unsent: each named at ERROR, counted as dropped.
    sent = []
    gates = {"aoc/A/state": asyncio.Event()}
    channel = gated_channel(sent, gates, drain=0.05)
    task = asyncio.create_task(channel.run())
    channel.put(publishing("aoc/A/state"))
    await until(lambda: channel._current is not None, "the first plan being sent")
    channel.put(publishing("aoc/C/alert", "aoc/D/alert"))
    before = dropped("mqtt", "shutdown")
    with caplog.at_level(logging.ERROR, logger="bridge.fanout"):
        channel.close()
        await asyncio.wait_for(task, 10)
    assert sent == []
    assert dropped("mqtt", "shutdown") - before == 3
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "2 crash alerts not sent to mqtt" in line
    assert "crash-aoc/C/alert, crash-aoc/D/alert" in line


async def wipe(redis_url: str, prefix: str) -> None:
    """Empty the cache's keys, as a Redis restarted without its data."""
    redis = Redis.from_url(redis_url)
    await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}:*")])
    await redis.connection_pool.disconnect()


async def test_a_rebuilt_cache_holds_what_updates_cache_not_the_outbox(
    tmp_path: Path, cache: GatedCache, redis_url: str
) -> None:
    """Test that a rebuild caches each state as the normal update does.

    The stored document also carries its batch's other writes (the outbox):
    the rebuild used to copy them into Redis, several times the state's size.
    """
    async with running(tmp_path, cache=cache, batch_size=1) as rig:
        for n in range(2):
            rig.feed(n)
            await until(lambda n=n: len(rig.mqtt.acked) == n + 1, f"point {n} acknowledged")
        await rig.bridge.drain_fan_out()
        updated = await cache.get(AID)
        assert updated is not None
        stored_state = await rig.store.get(AMBULANCES, AID)
        assert stored_state is not None and stored_state["outbox"]  # what must not be cached

        await wipe(redis_url, cache.prefix)
        rig.feed(0, aid="U2")  # its update finds Redis empty: a rebuild
        await until(lambda: len(rig.mqtt.acked) == 3, "U2 acknowledged")
        await rig.bridge.drain_fan_out()
        await until(lambda: not rig.bridge._cache_stale.is_set(), "the cache rebuilt")
        assert await cache.get("U2") is not None
        assert await cache.get(AID) == updated


class Records(logging.Handler):
    """The (level, message) of each record logged to it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.levelno, record.getMessage()))


async def test_an_empty_cache_at_first_use_is_built_quietly_a_lost_one_is_a_warning(
    tmp_path: Path, redis_url: str
) -> None:
    """Test the two reasons for a rebuild: a fresh Redis (INFO) and one that lost the cache.

    A first `make run` used to warn "Redis lost the cache" at its first point.
    The bridge logs to a logger of this test's own: the suite's other tests
    configure the shared ones.
    """
    records = Records()
    logger = logging.getLogger(f"test.cache.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(records)
    fresh = GatedCache(redis_url)  # never built: a first start
    await fresh.open()
    try:
        async with running(tmp_path, cache=fresh, batch_size=1, logger=logger) as rig:
            rig.feed(0)
            await until(lambda: len(rig.mqtt.acked) == 1, "point 0 acknowledged")
            # The cache channel finds the cache empty after the ack, on its own task.
            await rig.bridge.drain_fan_out()
            await until(lambda: not rig.bridge._cache_stale.is_set(), "the cache built")
            first, records.seen = records.seen, []
            await wipe(redis_url, fresh.prefix)
            rig.feed(1)
            await until(lambda: len(rig.mqtt.acked) == 2, "point 1 acknowledged")
            await rig.bridge.drain_fan_out()
            await until(lambda: not rig.bridge._cache_stale.is_set(), "the cache rebuilt")
            lost = records.seen
    finally:
        await fresh.close()
    rebuild = "latest-state cache is stale, rebuilding it from the store: "
    assert (logging.INFO, rebuild + "it is empty (first use)") in first
    assert not [message for level, message in first if level >= logging.WARNING]
    assert (logging.WARNING, rebuild + "Redis lost the cache") in lost


class CountingCache(StateCache):
    """A real Redis cache counting the heal's attempts: pings and rebuilds."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.attempts = 0

    async def ping(self) -> None:
        self.attempts += 1
        await super().ping()

    async def rebuild(self, states: Mapping[str, Document]) -> None:
        self.attempts += 1
        await super().rebuild(states)


async def test_the_cache_heal_reads_the_store_only_once_redis_answers(tmp_path: Path) -> None:
    """Test that while Redis is down the heal retries without scanning the store.

    It used to read every state document on each retry, only to find Redis
    still down when writing them.
    """
    server = services.redis(tmp_path / "redis").start()
    cache = CountingCache(f"redis://127.0.0.1:{server.port}/0")
    try:
        await cache.open()
        await cache.rebuild({})
        async with running(tmp_path, cache=cache, batch_size=1) as rig:
            rig.feed(0)
            await until(lambda: len(rig.mqtt.acked) == 1, "point 0 acknowledged")
            await rig.bridge.drain_fan_out()
            server.stop()
            reads, attempts = rig.store.state_reads, cache.attempts
            rig.feed(1)  # its update fails: the cache is stale
            await until(lambda: len(rig.mqtt.acked) == 2, "point 1 acknowledged")
            await until(lambda: cache.attempts >= attempts + 3, "three tries to heal")
            assert rig.store.state_reads == reads

            server.start()  # empty
            await until(lambda: not rig.bridge._cache_stale.is_set(), "the cache rebuilt")
            assert rig.store.state_reads > reads
            state = await cache.get(AID)
            assert state is not None
            assert state["covered_distance"] == pytest.approx(distance(0, 1))
    finally:
        await cache.close()
        server.stop()

async def test_a_flooding_ambulance_loses_its_excess_and_no_one_else_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that the rate limit cuts one ambulance's flood, in batches shared with others.

    FLOOD sends a snapshot and 30 points at once, over a frozen clock (fake:
    no token comes back), with two crashes and a status in the middle; CALM
    sends 10 points in between, all within the same burst. FLOOD keeps its
    burst (the snapshot and its first 9 points); the rest of its points and a
    second snapshot become dead letters naming the limit; each crash and the
    status are stored, and every message is acknowledged.
    """
    limiter = DeviceLimiter(rate=1.0, burst=10, clock=lambda: 0.0)
    before = {kind: metrics.MESSAGES_RATE_LIMITED.labels(kind)._value.get() for kind in KINDS}
    crash = {"lat": 13.75, "lon": 100.5, "speed": 40}
    image = base64.b64encode(png()).decode()
    snaps = [
        json.dumps({"images": [{"name": "a.png", "data": image}], "ts": T0_MS + n}).encode()
        for n in range(2)
    ]
    with caplog.at_level(logging.WARNING, logger="bridge.ratelimit"):
        async with running(tmp_path, device_limit=limiter) as rig:
            sent = [rig.mqtt.feed("aoc/FLOOD/snap", snaps[0])]
            for n in range(30):
                sent.append(rig.feed(n, aid="FLOOD"))
                if n % 3 == 0:
                    sent.append(rig.feed(n, aid="CALM"))
                if n in (10, 20):
                    # Minutes apart: the second is a new alert, not a repeat.
                    body = json.dumps(crash | {"ts": T0_MS + n * 12_000}).encode()
                    sent.append(rig.mqtt.feed("aoc/FLOOD/crash", body))
                if n == 15:
                    sent.append(rig.mqtt.feed("aoc/FLOOD/status", b"online"))
            sent.append(rig.mqtt.feed("aoc/FLOOD/snap", snaps[1]))
            await until(lambda: len(rig.mqtt.acked) == len(sent), "every message acknowledged")
            await rig.bridge.drain_fan_out()
            points = await stored(rig.store, TRACKINGS)
            dead = await stored(rig.store, DEAD_LETTERS)
            crashes = await stored(rig.store, CRASHES)
            images = await stored(rig.store, IMAGE_HISTORIES)
            states = {doc["_id"]: doc for doc in await stored(rig.store, AMBULANCES)}
            alerts = [topic for topic in rig.publisher.published if topic.endswith("/alert")]
    assert sorted(m.mid for m in rig.mqtt.acked) == sorted(m.mid for m in sent)
    flood = [m for m in sent if m.topic == "aoc/FLOOD/tracking"]
    kept = {p["_id"] for p in points if p["ambulance_id"] == "FLOOD"}
    assert len(kept) == 9 and kept <= set().union(*map(record_ids, flood[:9])), kept
    assert sum(p["ambulance_id"] == "CALM" for p in points) == 10
    assert len(images) == 1
    # Each crash's record, and its alarm (opened, then updated by the second).
    assert len(crashes) == 2 and alerts == ["aoc/FLOOD/alert"] * 4
    assert states["FLOOD"]["online"] is True
    reason = "rate: ambulance FLOOD over 1 msg/s (burst 10)"
    assert sorted(d["topic"] for d in dead if d["reason"] == reason) == (
        ["aoc/FLOOD/snap"] + ["aoc/FLOOD/tracking"] * 21
    )
    assert len(dead) == 22
    after = {kind: metrics.MESSAGES_RATE_LIMITED.labels(kind)._value.get() for kind in KINDS}
    assert {kind: after[kind] - before[kind] for kind in KINDS} == {
        "tracking": 21,
        "snap": 1,
        "crash": 0,
        "status": 0,
    }
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.ratelimit"]
    assert len(lines) == 1 and "ambulances dead-lettered (FLOOD last)" in lines[0], lines


async def test_no_message_is_planned_before_the_places_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that the bridge waits for its first read of the places before planning.

    Planned against no places, an ambulance inside one would leave it and enter
    it again once they are read, and one parked at a station would be offline.
    """
    places_readable = asyncio.Event()
    find = FaultyStore.find

    async def slow_places(self: FaultyStore, query: Query) -> Page:
        if query.collection == PLACES and not places_readable.is_set():
            raise StoreUnavailable("fault injection: the places cannot be read yet")
        return await find(self, query)

    monkeypatch.setattr(FaultyStore, "find", slow_places)
    async with running(tmp_path, places_every=0.05) as rig:
        rig.feed(1)
        await asyncio.sleep(0.5)  # time enough to plan it, were places not awaited
        assert rig.mqtt.acked == []
        places_readable.set()
        await until(lambda: len(rig.mqtt.acked) == 1, "the point acknowledged once places are read")
