"""The store holds the truth: ``bridge.state`` and several processors on one ambulance.

Every test runs on SQLite and on MongoDB (mongomock): the two differ in what a
failed ``apply`` leaves behind, and the state's version and outbox must make
both end exactly where one uninterrupted processor ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from bridge.geo import haversine_m
from bridge.messages import Parsed, Plan, Position
from bridge.processor import Processor
from bridge.service import Bridge
from bridge.speed import SpeedRules
from bridge.state import AmbulanceState, CrashAnchor
from bridge.validate import Limits, parse
from broker.client import MqttClient
from storage.base import (
    AMBULANCES,
    CRASHES,
    SPEED_VIOLATIONS,
    TRACKINGS,
    Conflict,
    Document,
    DocumentStore,
    Query,
    StoreUnavailable,
    Write,
)
from storage.localfs import LocalObjectStore
from storage.mongo import MongoDocumentStore
from storage.sqlite import SQLiteDocumentStore
from tests.storage.conftest import mongomock_client  # noqa: F401  (a fixture)

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
RECEIVED = T0 + timedelta(hours=1)
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
AID = "332"
LAT, LON = 13.7563, 100.5018
STEP_M = haversine_m(Position(LAT, LON), Position(LAT + 0.001, LON))

# Speeds of the stream's points: across 80 and 120 and back, twice, so that
# episodes open in one batch and close in another.
SPEEDS = [50, 90, 130, 125, 100, 70, 60, 85, 95, 140, 110, 75, 50, 130, 60]


@pytest.fixture(params=["sqlite", "mongomock"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocumentStore]:
    """One store per test: a fresh SQLite file, or a fresh mongomock database."""
    opened: DocumentStore
    if request.param == "sqlite":
        opened = SQLiteDocumentStore(tmp_path / "aoc.sqlite3")
    else:
        client = request.getfixturevalue("mongomock_client")
        opened = MongoDocumentStore(lambda: client, database=f"aoc_{tmp_path.name}")
    async with opened:
        yield opened


@pytest.fixture
async def objects(tmp_path: Path) -> AsyncIterator[LocalObjectStore]:
    async with LocalObjectStore(tmp_path / "objects") as opened:
        yield opened  # type: ignore[misc]


def processor(store: DocumentStore, objects: LocalObjectStore) -> Processor:
    return Processor(
        store=store,
        objects=objects,
        rules=SpeedRules(),
        crash_dedup_s=60.0,
        maps_key=None,
        dead_letter_payload_bytes=64,
    )


def point(i: int) -> Parsed:
    """Point ``i``: one second and 0.001° of latitude (~111 m) after point ``i - 1``."""
    body = {"lat": LAT + i * 0.001, "lon": LON, "speed": SPEEDS[i], "ts": T0_MS + i * 1000}
    return parse(f"aoc/{AID}/tracking", json.dumps(body).encode(), RECEIVED, LIMITS)


def crash(ms: int) -> Parsed:
    body = {"lat": LAT, "lon": LON, "speed": 40, "ts": T0_MS + ms}
    return parse(f"aoc/{AID}/crash", json.dumps(body).encode(), RECEIVED, LIMITS)


def stream() -> list[list[Parsed]]:
    """Batches of three or four messages; the second crash repeats the first (within 60 s)."""
    items = [point(i) for i in range(len(SPEEDS))]
    items.insert(4, crash(2500))
    items.insert(9, crash(6500))
    items.append(crash(90_000))
    return [items[n : n + 3] for n in range(0, len(items), 3)]


async def stored(store: DocumentStore, collection: str) -> list[Document]:
    return (await store.find(Query(collection, limit=1000))).items


async def everything(store: DocumentStore) -> dict[str, Any]:
    """What a run leaves: the state, episodes and history records, whole.

    But the state's version: a replayed outbox is written under a version of its own.
    """
    state = await store.get(AMBULANCES, AID)
    return {
        "state": state and {k: v for k, v in state.items() if k != "version"},
        "episodes": await stored(store, SPEED_VIOLATIONS),
        "trackings": await stored(store, TRACKINGS),
        "crashes": await stored(store, CRASHES),
    }


async def one_processor(store: DocumentStore, objects: LocalObjectStore) -> dict[str, Any]:
    """The reference: one processor, the stream in order, nothing failing."""
    proc = processor(store, objects)
    for batch in stream():
        plan = await proc.plan(batch)
        await store.apply(plan.writes)
    return await everything(store)


def check_reference(run: dict[str, Any]) -> None:
    """What one processor leaves, spelled out: the runs compared with it are not vacuous."""
    state = run["state"]
    assert state["covered_distance"] == pytest.approx((len(SPEEDS) - 1) * STEP_M)
    assert (state["speed_count"], state["speed_sum"]) == (len(SPEEDS), sum(SPEEDS))
    assert state["avg_speed"] == pytest.approx(sum(SPEEDS) / len(SPEEDS))
    assert state["location"] == {"lat": pytest.approx(LAT + 0.014), "lon": LON}
    assert state["last_seen"] == T0 + timedelta(seconds=14)
    assert [c["id"] for c in state["crashes"]] == [
        f"crash:{AID}:{T0_MS + 2500}", f"crash:{AID}:{T0_MS + 90_000}",
    ]
    bounds = [
        (e["threshold"], e["started_at"], e["ended_at"], e["points"], e["max_speed"])
        for e in run["episodes"]
    ]
    at = [T0 + timedelta(seconds=s) for s in range(len(SPEEDS))]
    assert sorted(bounds, key=lambda b: (b[1], b[0])) == [
        ("speed_above_80", at[1], at[5], 4, 130),
        ("speed_above_120", at[2], at[4], 2, 130),
        ("speed_above_80", at[7], at[11], 4, 140),
        ("speed_above_120", at[9], at[10], 1, 140),
        ("speed_above_120", at[13], at[14], 1, 130),
        ("speed_above_80", at[13], at[14], 1, 130),
    ]
    assert state["open_episodes"] == {}
    assert [d["late"] for d in run["trackings"]] == [False] * len(SPEEDS)
    first_crash = f"crash:{AID}:{T0_MS + 2500}"
    assert [d["duplicate_of"] for d in run["crashes"]] == [None, first_crash, None]


def test_state_round_trips_and_upgrades_older_documents() -> None:
    """Test to_doc/from_doc, and a document without version or crash windows."""
    state = AmbulanceState(AID, location=Position(1.0, 2.0), speed_count=3, version=7)
    state.remember_crash(T0, "crash:a")
    state.outbox = (Write(TRACKINGS, "insert", {"_id": "t", "ambulance_id": AID}),)
    doc = state.to_doc()
    assert doc["location"] == {"lat": 1.0, "lon": 2.0}
    assert doc["crashes"] == [{"at": T0, "id": "crash:a"}]
    assert doc["outbox"] == [
        {"collection": TRACKINGS, "kind": "insert", "doc": {"_id": "t", "ambulance_id": AID}}
    ]
    assert AmbulanceState.from_doc(AID, doc) == state
    assert "outbox" not in state.to_doc(outbox=False)

    older = {"_id": AID, "ambulance_id": AID, "speed": 40.0, "last_crash_at": T0,
             "last_crash_id": "crash:old"}
    upgraded = AmbulanceState.from_doc(AID, older)
    assert (upgraded.version, upgraded.speed, upgraded.covered_distance) == (0, 40.0, 0.0)
    assert upgraded.crashes == [CrashAnchor(T0, "crash:old")]
    assert upgraded.outbox == ()
    # The stored shape is the legacy one: every field the readers know, plus ours.
    assert set(AmbulanceState.from_doc(AID, None).to_doc()) == {
        "_id", "ambulance_id", "location", "speed", "heading", "state", "last_seen",
        "last_point_id", "received_at", "online", "covered_distance", "avg_speed",
        "speed_sum", "speed_count", "estimated_time", "destination_location",
        "source_location", "open_episodes", "crashes", "images_id", "images_at",
        "images_replaced_id", "version", "outbox",
    }


class Gate:
    """Fault injection over a real store: its first ``apply`` waits for ``go`` first.

    ``entered`` is set when that apply is called (its batch is planned by then);
    ``conflicts`` counts the ``Conflict`` raised through it.
    """

    def __init__(
        self, inner: DocumentStore, *, go: asyncio.Event, entered: asyncio.Event | None = None
    ) -> None:
        self._inner = inner
        self._go: asyncio.Event | None = go
        self.entered = entered or asyncio.Event()
        self.conflicts = 0

    async def apply(self, writes: Sequence[Write]) -> None:
        self.entered.set()
        if self._go is not None:
            go, self._go = self._go, None
            await go.wait()
        try:
            await self._inner.apply(writes)
        except Conflict:
            self.conflicts += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def bridge(proc: Processor, store: Gate) -> Bridge:
    """A bridge for its store-and-plan step only: it never touches MQTT here."""
    no_mqtt = cast(MqttClient, None)
    return Bridge(
        mqtt=no_mqtt, publisher=no_mqtt, processor=proc,
        store=cast(DocumentStore, store), limits=LIMITS,
    )


async def test_two_bridges_on_one_ambulance_end_as_one(
    store: DocumentStore, objects: LocalObjectStore, tmp_path: Path
) -> None:
    """Test that two bridges planning interleaved batches conflict, re-plan, and end as one."""
    async with SQLiteDocumentStore(tmp_path / "reference.sqlite3") as alone:
        reference = await one_processor(alone, objects)
    check_reference(reference)

    first, second = processor(store, objects), processor(store, objects)
    batches = stream()
    conflicts = 0
    for n in range(0, len(batches), 2):
        # Both plan from the same stored version; the first applies, then the
        # second, which conflicts and plans its batch again from the store.
        second_planned, first_done = asyncio.Event(), asyncio.Event()
        first_store = Gate(store, go=second_planned)
        second_store = Gate(store, go=first_done, entered=second_planned)

        async def take(b: Bridge, batch: list[Parsed], done: asyncio.Event | None) -> Plan:
            plan = await b._store_batch([], batch)
            if done is not None:
                done.set()
            return plan

        jobs = [take(bridge(first, first_store), batches[n], first_done)]
        if n + 1 < len(batches):
            jobs.append(take(bridge(second, second_store), batches[n + 1], None))
        else:
            second_planned.set()
        await asyncio.gather(*jobs)
        conflicts += first_store.conflicts + second_store.conflicts
    # Every round but the first also starts with the first bridge behind.
    rounds = (len(batches) + 1) // 2
    assert conflicts >= rounds
    assert await everything(store) == reference


class DiesAfterTheState:
    """Fault injection over a real store: the first ``apply`` stores the writes up to
    the last state write, then fails, as a bridge killed in between would."""

    def __init__(self, inner: DocumentStore) -> None:
        self._inner = inner
        self.died = False

    async def apply(self, writes: Sequence[Write]) -> None:
        if self.died:
            await self._inner.apply(writes)
            return
        self.died = True
        last = max(n for n, w in enumerate(writes) if w.collection == AMBULANCES)
        await self._inner.apply(writes[: last + 1])
        raise StoreUnavailable("fault injected: the bridge died after the state write")


@pytest.mark.parametrize("dies_at", [1, 3, 5])
async def test_a_crash_after_the_state_write_loses_nothing(
    store: DocumentStore, objects: LocalObjectStore, tmp_path: Path, dies_at: int
) -> None:
    """Test that a batch redelivered to a new bridge after a partial write ends as if whole."""
    async with SQLiteDocumentStore(tmp_path / "reference.sqlite3") as alone:
        reference = await one_processor(alone, objects)
    batches = stream()
    proc = processor(store, objects)
    for batch in batches[:dies_at]:
        plan = await proc.plan(batch)
        await store.apply(plan.writes)
    dying = DiesAfterTheState(store)
    plan = await proc.plan(batches[dies_at])
    with pytest.raises(StoreUnavailable):
        await dying.apply(plan.writes)

    restarted = processor(store, objects)  # the broker redelivers the batch to it
    replay = await restarted.plan(batches[dies_at])
    await store.apply(replay.writes)
    # Its messages were never fanned out: now they are, as the first plan would have.
    assert replay.emits == plan.emits
    assert sorted(replay.publishes, key=lambda p: p.topic) == sorted(
        plan.publishes, key=lambda p: p.topic
    )
    assert replay.counts == plan.counts
    for batch in batches[dies_at + 1 :]:
        await store.apply((await restarted.plan(batch)).writes)
    assert await everything(store) == reference
