"""Late points: the state is the same whatever order, batching or bridge the points came by.

Every store test runs on SQLite and on MongoDB (mongomock). The points zigzag,
so leaving a late point out of the path, or putting it in the wrong place,
changes the distance.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge import late
from bridge.geo import haversine_m
from bridge.late import Point, place
from bridge.messages import Parsed, Position
from bridge.processor import Processor
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from storage.base import (
    AMBULANCES,
    TRACKINGS,
    Conflict,
    Document,
    DocumentStore,
    Query,
    StoreUnavailable,
)
from storage.localfs import LocalObjectStore
from storage.mongo import MongoDocumentStore
from storage.sqlite import SQLiteDocumentStore
from tests.storage.conftest import mongomock_client  # noqa: F401  (a fixture)

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
RECEIVED = T0 + timedelta(hours=1)
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
AID = "L7"
LAT, LON = 13.7563, 100.5018
COUNT = 12
# Fields of the state that must not depend on the order the points came in.
EXACT = ("speed_count", "last_seen", "last_point_id", "location", "speed", "source_location")
CLOSE = ("covered_distance", "speed_sum", "avg_speed")


def position(i: int) -> Position:
    """Point ``i``'s position: north one step each time, east and west in turns."""
    return Position(LAT + i * 0.001, LON + (0.002 if i % 3 == 1 else 0.0))


def speed(i: int) -> float:
    return float(20 + (i * 37) % 90)


def point(i: int) -> Parsed:
    at = position(i)
    body = {"lat": at.lat, "lon": at.lon, "speed": speed(i), "ts": T0_MS + i * 1000}
    return parse(f"aoc/{AID}/tracking", json.dumps(body).encode(), RECEIVED, LIMITS)


def expected_distance() -> float:
    return sum(haversine_m(position(i), position(i + 1)) for i in range(COUNT - 1))


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


def processor(store: DocumentStore, objects: LocalObjectStore) -> Processor:
    return Processor(
        store=store,
        objects=objects,
        rules=SpeedRules(),
        crash_dedup_s=60.0,
        maps_key=None,
        dead_letter_payload_bytes=64,
    )


async def state_of(store: DocumentStore) -> Document:
    state = await store.get(AMBULANCES, AID)
    assert state is not None
    return state


def check(state: Document) -> None:
    """The state of all ``COUNT`` points, counted in device-time order."""
    assert state["speed_count"] == COUNT
    assert state["speed_sum"] == pytest.approx(sum(speed(i) for i in range(COUNT)))
    assert state["covered_distance"] == pytest.approx(expected_distance())
    assert state["last_seen"] == T0 + timedelta(seconds=COUNT - 1)
    last = position(COUNT - 1)
    assert state["location"] == {"lat": pytest.approx(last.lat), "lon": pytest.approx(last.lon)}
    assert state["source_location"] == {"lat": LAT, "lon": LON}


def same(state: Document, reference: Document) -> None:
    for name in EXACT:
        assert state[name] == reference[name], name
    for name in CLOSE:
        assert state[name] == pytest.approx(reference[name]), name


async def deliver(
    store: DocumentStore, objects: LocalObjectStore, batches: Sequence[list[int]]
) -> Document:
    """One processor plans and applies the batches of point numbers, in turn."""
    proc = processor(store, objects)
    for batch in batches:
        plan = await proc.plan([point(i) for i in batch])
        await store.apply(plan.writes)
        proc.applied(plan)
    return await state_of(store)


def cut(order: list[int], rng: random.Random) -> list[list[int]]:
    batches = []
    while order:
        size = rng.randint(1, 4)
        batches.append(order[:size])
        order = order[size:]
    return batches


def test_a_late_point_goes_between_its_neighbours() -> None:
    """Test the arithmetic: d(prev, p) + d(p, next) - d(prev, next), and the cases without one."""
    pts = [Point(T0 + timedelta(seconds=i), f"p{i}", position(i)) for i in range(5)]

    def d(a: int, b: int) -> float:
        return haversine_m(position(a), position(b))

    counted = [pts[0], pts[1], pts[3], pts[4]]
    placed = place(counted, [pts[2]])
    assert placed.distance_m == pytest.approx(d(1, 2) + d(2, 3) - d(1, 3))
    assert placed.first is None
    assert place(pts[1:], [pts[0]]).distance_m == pytest.approx(d(0, 1))
    assert place(pts[1:], [pts[0]]).first == pts[0]
    # Several at once, one of them among the counted ones' ids twice over.
    placed = place([pts[0], pts[4]], [pts[3], pts[1], pts[2], pts[1]])
    assert placed.distance_m == pytest.approx(d(0, 1) + d(1, 2) + d(2, 3) + d(3, 4) - d(0, 4))


async def test_in_order_is_the_reference(store: DocumentStore, objects: LocalObjectStore) -> None:
    """Test that the points in order, three a batch, count every point (the reference)."""
    order = list(range(COUNT))
    check(await deliver(store, objects, [order[n : n + 3] for n in range(0, COUNT, 3)]))


async def test_newest_first_one_a_batch(store: DocumentStore, objects: LocalObjectStore) -> None:
    """Test that points arriving newest first, one a batch, end as in order."""
    state = await deliver(store, objects, [[i] for i in reversed(range(COUNT))])
    check(state)
    late = [d for d in (await store.find(Query(TRACKINGS, limit=100))).items if d["late"]]
    assert len(late) == COUNT - 1


@pytest.mark.parametrize("near", [32, 2])
@pytest.mark.parametrize("seed", range(6))
async def test_any_order_and_batching_with_duplicates(
    store: DocumentStore,
    objects: LocalObjectStore,
    seed: int,
    near: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that a shuffled stream, cut anyhow, some points sent twice, ends as in order.

    ``near`` 2: the newest stored points rarely reach back far enough, so the
    range reads place most late points.
    """
    monkeypatch.setattr(late, "NEAR", near)
    monkeypatch.setattr(late, "PAGE", 3)
    rng = random.Random(seed)
    order = list(range(COUNT))
    rng.shuffle(order)
    order += rng.sample(range(COUNT), 4)  # redeliveries, in later batches or the same one
    rng.shuffle(order[COUNT // 2 :])
    check(await deliver(store, objects, cut(order, rng)))


async def test_the_newest_and_late_points_in_one_batch(
    store: DocumentStore, objects: LocalObjectStore
) -> None:
    """Test a batch mixing late points with in-order ones newer than the stored latest."""
    state = await deliver(store, objects, [[0, 3, 6], [9, 1, 10, 4, 5, 2, 11, 8, 7]])
    check(state)


@pytest.mark.parametrize("seed", range(4))
async def test_two_processors_taking_turns_with_conflicts(
    store: DocumentStore, objects: LocalObjectStore, seed: int
) -> None:
    """Test two bridges on one shuffled stream, often planning from the same version, as one.

    As ``bench share`` drives them: the second to apply conflicts and plans again.
    """
    rng = random.Random(seed)
    order = list(range(COUNT))
    rng.shuffle(order)
    batches = cut(order + rng.sample(range(COUNT), 2), rng)
    processors = [processor(store, objects), processor(store, objects)]
    conflicts = 0

    async def store_batch(proc: Processor, batch: list[int], plan: Any = None) -> None:
        nonlocal conflicts
        while True:
            plan = plan or await proc.plan([point(i) for i in batch])
            try:
                await store.apply(plan.writes)
            except Conflict:
                conflicts += 1
                plan = None
                continue
            proc.applied(plan)
            return

    n = 0
    while n < len(batches):
        first = rng.randrange(2)
        a, b = processors[first], processors[1 - first]
        if n + 1 < len(batches):
            plan_a = await a.plan([point(i) for i in batches[n]])
            plan_b = await b.plan([point(i) for i in batches[n + 1]])
            await store_batch(a, batches[n], plan_a)
            await store_batch(b, batches[n + 1], plan_b)
            n += 2
        else:
            await store_batch(a, batches[n])
            n += 1
    assert conflicts >= 1
    check(await state_of(store))


class CountedFinds:
    """A real store that counts its ``find`` calls (the neighbour reads)."""

    def __init__(self, inner: DocumentStore) -> None:
        self._inner = inner
        self.finds = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def find(self, query: Query) -> Any:
        self.finds += 1
        return await self._inner.find(query)


async def test_late_points_cost_one_neighbour_read_per_ambulance_per_batch(
    store: DocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a batch of many late points reads the store around them once, not per point."""
    counting = CountedFinds(store)
    proc = processor(store, objects)
    proc._store = counting  # type: ignore[assignment]
    for batch in ([0, 11], [5, 2, 9, 1, 7, 3, 10, 4, 8, 6]):
        plan = await proc.plan([point(i) for i in batch])
        await store.apply(plan.writes)
        proc.applied(plan)
    # The newest stored points reach back past them all: one read.
    assert counting.finds == 1
    check(await state_of(store))


class DiesAfterTheState:
    """A real store whose first ``apply`` stores the writes up to the last state write, then
    fails, as a bridge killed in between would (fault injection, as in test_state.py)."""

    def __init__(self, inner: DocumentStore) -> None:
        self._inner = inner
        self.died = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def apply(self, writes: Sequence[Any]) -> None:
        if self.died:
            await self._inner.apply(writes)
            return
        self.died = True
        last = max(n for n, w in enumerate(writes) if w.collection == AMBULANCES)
        await self._inner.apply(writes[: last + 1])
        raise OSError("fault injected: the bridge died after the state write")


async def test_late_points_next_to_a_point_only_in_the_outbox(
    store: DocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a late point's neighbour whose record is still in the state's outbox counts.

    A bridge stored a late point's state, then died before its record: the next
    bridge places the batch's late points around it all the same.
    """
    await deliver(store, objects, [[0, 11]])
    dying = DiesAfterTheState(store)
    proc = processor(dying, objects)  # type: ignore[arg-type]
    plan = await proc.plan([point(5)])
    with pytest.raises(OSError, match="fault injected"):
        await dying.apply(plan.writes)
    assert [d["_id"] for d in (await store.find(Query(TRACKINGS, limit=100))).items] == [
        f"{AID}:{T0_MS}",
        f"{AID}:{T0_MS + 11_000}",
    ]
    check(await deliver(store, objects, [[5, 4, 6], [1, 2, 3, 7, 8, 9, 10]]))


def instant(seq: int, at: Position) -> Parsed:
    """A point at the instant of point 1, numbered ``seq``, at ``at``."""
    body = {"lat": at.lat, "lon": at.lon, "speed": 30, "ts": T0_MS + 1000, "seq": seq}
    return parse(f"aoc/{AID}/tracking", json.dumps(body).encode(), RECEIVED, LIMITS)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (0, 2, 1, 3), (3, 2, 1, 0), (0, 3, 2, 1)])
async def test_points_of_one_instant_count_in_id_order(
    store: DocumentStore, objects: LocalObjectStore, order: tuple[int, ...]
) -> None:
    """Test that two points of one instant (two seqs) count in the store's order, either way in."""
    one, two = Position(LAT + 0.005, LON + 0.01), Position(LAT, LON + 0.03)
    items = [point(0), instant(1, one), instant(2, two), point(2)]
    proc = processor(store, objects)
    for n in order:
        plan = await proc.plan([items[n]])
        await store.apply(plan.writes)
        proc.applied(plan)
    path = [position(0), one, two, position(2)]
    state = await state_of(store)
    assert state["covered_distance"] == pytest.approx(
        sum(haversine_m(a, b) for a, b in itertools.pairwise(path))
    )
    assert state["last_seen"] == T0 + timedelta(seconds=2)
    assert state["speed_count"] == 4


class FindsDown(CountedFinds):
    """A real store whose reads by range fail, as during an outage (fault injection)."""

    async def find(self, query: Query) -> Any:
        raise StoreUnavailable("fault injected: the store is down")


async def test_an_outage_while_placing_late_points_fails_the_plan(
    store: DocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a failed neighbour read raises ``StoreUnavailable`` (planned again later)."""
    await deliver(store, objects, [[0, 11]])
    proc = processor(store, objects)
    proc._store = FindsDown(store)  # type: ignore[assignment]
    with pytest.raises(StoreUnavailable):
        await proc.plan([point(4), point(7)])
    check(await deliver(store, objects, [[4, 7], [1, 2, 3, 5, 6, 8, 9, 10]]))
