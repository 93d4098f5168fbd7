"""The store holds the truth: ``bridge.state`` and several processors on one ambulance.

Every test runs on SQLite and on MongoDB (mongomock): the two differ in what a
failed ``apply`` leaves behind, and the state's version and outbox must make
both end exactly where one uninterrupted processor ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from bridge import service
from bridge.contract import ALARMS_ROOM, DISPATCH_ROOMS
from bridge.geo import haversine_m
from bridge.messages import Emit, Parsed, Plan, Position
from bridge.processor import Processor
from bridge.service import Bridge, _Item
from bridge.speed import SpeedRules
from bridge.state import AmbulanceState, CrashAnchor
from bridge.validate import Limits, parse
from broker.client import Message, MqttClient
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
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
        proc.applied(plan)  # planning the next batch from memory, as a bridge does
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
        # Dispatch (bridge.dispatch).
        "heard_at", "silence_handled", "places", "recent_speed", "destination",
        "destination_geometry", "eta", "alarms", "commands",
        # The open trip or stop (bridge.trips).
        "motion",
    }


class Gate:
    """Fault injection over a real store: its first ``apply`` waits for ``go`` first.

    ``entered`` is set when that apply is called (its batch is planned by then);
    ``conflicts`` counts the ``Conflict`` raised through it. Past ``ENDLESS`` of
    them it raises ``AssertionError``: a caller planning again without end.
    """

    ENDLESS = 50

    def __init__(
        self,
        inner: DocumentStore,
        *,
        go: asyncio.Event | None = None,
        entered: asyncio.Event | None = None,
    ) -> None:
        self._inner = inner
        self._go = go
        self.entered = entered or asyncio.Event()
        self.conflicts = 0

    async def apply(self, writes: Sequence[Write]) -> None:
        self.entered.set()
        if self._go is not None:
            go, self._go = self._go, None
            await go.wait()
        try:
            await self._inner.apply(writes)
        except Conflict as exc:
            self.conflicts += 1
            if self.conflicts > self.ENDLESS:
                endless = f"{self.conflicts} conflicts: planning again without end"
                raise AssertionError(endless) from exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def bridge(proc: Processor, store: DocumentStore | Gate) -> Bridge:
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
    # Alarms are sent as they now stand: once each, their latest form.
    assert legacy(replay.emits) == legacy(plan.emits)
    assert latest_alarms(replay) == latest_alarms(plan)
    # The same messages, but the state carries the replay's own store version: a later one.
    first, first_versions = published(plan)
    again, again_versions = published(replay)
    assert again == first and first_versions
    assert all(a > b for a, b in zip(again_versions, first_versions, strict=True))
    assert replay.counts == plan.counts
    for batch in batches[dies_at + 1 :]:
        await store.apply((await restarted.plan(batch)).writes)
    assert await everything(store) == reference


def legacy(emits: list[Emit]) -> list[Emit]:
    """The emissions to the legacy rooms (not the dispatch rooms: alarms, events)."""
    return [emit for emit in emits if emit.room not in DISPATCH_ROOMS]


def latest_alarms(plan: Plan) -> dict[str, Any]:
    """Each alarm's last message in ``plan``, by alarm id: in the room and on MQTT."""
    latest: dict[str, Any] = {}
    sent = [json.loads(e.data) for e in plan.emits if e.room == ALARMS_ROOM]
    sent += [json.loads(p.payload) for p in plan.publishes]
    for message in sent:
        if message.get("type") == "alarm":
            latest[message["alarm"]["id"]] = message["alarm"]
    return latest


def published(plan: Plan) -> tuple[list[tuple[str, Any, bool, int]], list[int]]:
    """The plan's publications (not alarms) without their states' versions, and those versions."""
    messages, versions = [], []
    for p in sorted(plan.publishes, key=lambda p: p.topic):
        body = json.loads(p.payload)
        if body.get("type") == "alarm":
            continue
        if p.topic.endswith("/state"):
            versions.append(body.pop("version"))
        messages.append((p.topic, body, p.retain, p.qos))
    return messages, versions


def other_point(i: int, aid: str = "Y") -> Parsed:
    """Point ``i`` of another ambulance, at 50 km/h."""
    body = {"lat": LAT + i * 0.001, "lon": LON, "speed": 50, "ts": T0_MS + i * 1000}
    return parse(f"aoc/{aid}/tracking", json.dumps(body).encode(), RECEIVED, LIMITS)


def planned(plan: Plan, collection: str) -> list[Document]:
    """The documents ``plan`` writes to ``collection``, by id."""
    docs = [w.doc for w in plan.writes if w.collection == collection]
    return sorted(docs, key=lambda d: d["_id"])


async def test_a_conflict_on_one_ambulance_leaves_the_others_outbox_to_replay(
    store: DocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a batch planned again after a Conflict on Y still replays X's outbox.

    X's state landed with its outbox, the rest of its batch did not; the batch
    comes back to a bridge whose copy of Y the store has moved past. The
    conflict on Y undoes X's replay (all of it on SQLite): the second plan must
    replay it again, not take X's points for late ones.
    """
    xs = [point(i) for i in range(4)]  # 50, 90, 130, 125: two episodes open
    cut = await processor(store, objects).plan(xs)
    await store.apply(cut.writes[:1])  # X's state, then that bridge dies
    behind, ahead = processor(store, objects), processor(store, objects)
    await bridge(behind, store)._plan_and_apply([other_point(0)])
    await bridge(ahead, store)._plan_and_apply([other_point(1)])

    counted = Gate(store)
    plan = await bridge(behind, counted)._plan_and_apply([*xs, other_point(2)])
    assert counted.conflicts == 1
    assert plan.counts == {"tracking": 5}
    trackings = [d for d in await stored(store, TRACKINGS) if d["ambulance_id"] == AID]
    assert [d["late"] for d in trackings] == [False] * 4
    assert trackings == planned(cut, TRACKINGS)
    episodes = sorted(await stored(store, SPEED_VIOLATIONS), key=lambda d: d["_id"])
    assert episodes == planned(cut, SPEED_VIOLATIONS) and len(episodes) == 2
    state = await store.get(AMBULANCES, AID)
    assert state is not None and state["speed_count"] == 4
    y = await store.get(AMBULANCES, "Y")
    assert y is not None and (y["speed_count"], y["covered_distance"]) == (
        3, pytest.approx(2 * STEP_M),
    )


class Racing:
    """Fault injection over a real store: the first read of episodes first lets ``race`` run.

    As another bridge would, between this bridge's loading a state and writing.
    """

    def __init__(self, inner: DocumentStore, race: Callable[[], Awaitable[None]]) -> None:
        self._inner = inner
        self._race: Callable[[], Awaitable[None]] | None = race

    async def get_many(self, collection: str, ids: Sequence[str]) -> dict[str, Document]:
        if collection == SPEED_VIOLATIONS and self._race is not None:
            race, self._race = self._race, None
            await race()
        return await self._inner.get_many(collection, ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_stale_outbox_is_not_replayed_over_a_newer_batch(
    store: DocumentStore, objects: LocalObjectStore
) -> None:
    """Test that replaying an outbox the store has moved past conflicts, and is planned again.

    Bridge A's batch lands in two steps (its state, then the rest). Bridge B
    loads the state in between, with its outbox of open episodes; before B
    writes, A stores the rest and a newer batch that closes both episodes.
    B's replay of the open ones must not land over the closed ones.
    """
    a = processor(store, objects)
    opening = await a.plan([point(i) for i in range(3)])  # 50, 90, 130: two open
    await store.apply(opening.writes[:1])  # A's commit point; the rest in flight
    closing: list[Plan] = []

    async def a_goes_on() -> None:
        await store.apply(opening.writes[1:])
        plan = await a.plan([point(i) for i in range(3, 6)])  # 125, 100, 70: both close
        await store.apply(plan.writes)
        closing.append(plan)

    racing = Gate(cast(DocumentStore, Racing(store, a_goes_on)))
    late = {"lat": LAT, "lon": LON, "speed": 40, "ts": T0_MS - 5000}
    b = processor(cast(DocumentStore, racing), objects)
    plan = await bridge(b, racing)._plan_and_apply(
        [parse(f"aoc/{AID}/tracking", json.dumps(late).encode(), RECEIVED, LIMITS)]
    )
    assert plan.counts == {"late": 1}
    assert racing.conflicts == 1
    episodes = sorted(await stored(store, SPEED_VIOLATIONS), key=lambda d: d["_id"])
    assert [e["closed"] for e in episodes] == [True, True]
    assert episodes == planned(closing[0], SPEED_VIOLATIONS)
    state = await store.get(AMBULANCES, AID)
    # Six in-order points and the late one, counted too.
    assert state is not None and state["open_episodes"] == {} and state["speed_count"] == 7


@pytest.mark.parametrize(
    ("damaged", "healed"), [("3", 4), (2.5, 3), (True, 2), ({"v": 3}, 1), ([3], 1)]
)
async def test_a_damaged_version_is_healed_by_the_next_write(
    store: DocumentStore, objects: LocalObjectStore, damaged: Any, healed: int
) -> None:
    """Test that a state whose version is not an int is written over at once, not re-planned."""
    doc = {"_id": AID, "ambulance_id": AID, "speed_count": 2, "speed_sum": 100.0,
           "version": damaged}
    await store.apply([Write(AMBULANCES, "upsert", doc)])
    counted = Gate(store)
    plan = await bridge(processor(store, objects), counted)._plan_and_apply([point(0)])
    assert (plan.counts, counted.conflicts) == ({"tracking": 1}, 0)
    state = await store.get(AMBULANCES, AID)
    assert state is not None
    assert (state["version"], type(state["version"])) == (healed, int)
    assert (state["speed_count"], state["speed_sum"]) == (3, 150.0)


class AlwaysConflicts:
    """Fault injection over a real store: every apply writing a state raises ``Conflict``."""

    def __init__(self, inner: DocumentStore) -> None:
        self._inner = inner
        self.conflicts = 0

    async def apply(self, writes: Sequence[Write]) -> None:
        states = [w.doc["_id"] for w in writes if w.collection == AMBULANCES]
        if states:
            self.conflicts += 1
            if self.conflicts > Gate.ENDLESS:
                raise AssertionError(f"{self.conflicts} conflicts: planning again without end")
            raise Conflict(states)
        await self._inner.apply(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_state_that_always_conflicts_is_given_up_after_the_cap(
    store: DocumentStore, objects: LocalObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that the cap on re-plans ends in the one-by-one fallback, each give-up one ERROR."""
    cap = service.MAX_CONFLICTS
    message = Message(f"aoc/{AID}/tracking", b'{"lat": 13.7, "lon": 100.5, "speed": 5}',
                      qos=1, retain=False, mid=1, dup=False)
    item = _Item(message, client=cast(MqttClient, None), received_at=RECEIVED)
    parsed = [parse(message.topic, message.payload, RECEIVED, LIMITS)]
    failing = AlwaysConflicts(store)
    with caplog.at_level(logging.DEBUG, logger="bridge.service"):
        plan = await bridge(processor(store, objects), cast(DocumentStore, failing))._store_batch(
            [item], parsed
        )
    # The batch, then its one message alone: each given up after the cap.
    assert failing.conflicts == 2 * cap
    assert plan.counts == {"dead_letter": 1}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    given_up = f"{cap} version conflicts in a row, the last on {AID}"
    assert [str(r.exc_info[1]) if r.exc_info else None for r in errors] == [given_up] * 2
    [letter] = await stored(store, DEAD_LETTERS)
    assert letter["reason"] == f"processing error: RuntimeError({given_up!r})"
    assert await store.get(AMBULANCES, AID) is None


class Reads:
    """A real store counting the ``get_many`` reads it serves, by collection."""

    def __init__(self, inner: DocumentStore) -> None:
        self._inner = inner
        self.reads: list[str] = []

    async def get_many(self, collection: str, ids: Sequence[str]) -> dict[str, Document]:
        self.reads.append(collection)
        return await self._inner.get_many(collection, ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_crash_stored_but_never_fanned_out_is_broadcast_on_redelivery(
    store: DocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a redelivered broadcast crash is broadcast again, counted as a duplicate.

    The bridge died after storing the batch, before its fan-out: the broker
    redelivers it (it was never acknowledged: MQTT DUP), and consumers dedupe
    on the record's ``_id``. A repeat (stored with ``duplicate_of``) is no
    alert again, nor is the same crash sent again by its device.
    """
    first, repeat = crash(1000), crash(5000)
    stored_plan = await processor(store, objects).plan([first, repeat])
    await store.apply(stored_plan.writes)  # then the bridge dies
    assert stored_plan.counts == {"crash": 1, "crash_repeat": 1}

    counting = Reads(store)
    restarted = processor(cast(DocumentStore, counting), objects)
    # The device sending the same crash again (no MQTT DUP) is a repeat, no alert.
    resent = await restarted.plan([first])
    assert resent.counts == {"duplicate": 1}
    assert resent.emits == [] and resent.publishes == []
    assert CRASHES not in counting.reads
    redelivered = [replace(item, redelivered=True) for item in (first, repeat, first)]
    again = await restarted.plan(redelivered)
    assert again.counts == {"duplicate": 3}
    assert again.emits == stored_plan.emits
    assert again.publishes == stored_plan.publishes
    # The crash record and its alarm, once: a redelivery within the batch is not sent again.
    assert [p.topic for p in again.publishes] == [f"aoc/{AID}/alert"] * 2
    assert again.writes == [] and again.states == {}
    assert counting.reads.count(CRASHES) == 1
    counting.reads.clear()
    await restarted.plan([point(0)])  # no crash duplicate: no crash read
    assert CRASHES not in counting.reads


async def test_dead_letters_of_a_batch_planned_again_are_logged_once(
    store: DocumentStore, objects: LocalObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a Conflict's re-plan does not log the batch's dead letters a second time."""
    behind, ahead = processor(store, objects), processor(store, objects)
    await bridge(behind, store)._plan_and_apply([point(0)])
    await bridge(ahead, store)._plan_and_apply([point(1)])
    junk = parse(f"aoc/{AID}/tracking", b"{nope", RECEIVED, LIMITS)
    counted = Gate(store)
    with caplog.at_level(logging.WARNING, logger="bridge.processor"):
        plan = await bridge(behind, counted)._plan_and_apply([junk, point(2)])
    assert counted.conflicts == 1
    assert plan.counts == {"dead_letter": 1, "tracking": 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.processor"]
    assert lines == [f"dead letter from aoc/{AID}/tracking: {junk.reason}"]  # type: ignore[union-attr]


@pytest.mark.parametrize("shared", [False, True])
async def test_a_member_of_a_share_group_plans_from_the_store_not_from_memory(
    store: DocumentStore, objects: LocalObjectStore, shared: bool
) -> None:
    """Test ``Processor(shared=True)``: after another bridge moved the ambulance, no conflict.

    A processor keeps the states of its last batches in memory. In a share
    group the other members move the same ambulances, so that state is stale
    and the next batch planned from it conflicts (and is planned again);
    a member plans from the store instead.
    """
    member = Processor(
        store=store, objects=objects, rules=SpeedRules(), crash_dedup_s=60.0, maps_key=None,
        dead_letter_payload_bytes=64, shared=shared,
    )
    other = processor(store, objects)
    for proc, batch in ((member, [point(0)]), (other, [point(1)])):
        plan = await proc.plan(batch)
        await store.apply(plan.writes)
        proc.applied(plan)
    plan = await member.plan([point(2)])
    if not shared:
        with pytest.raises(Conflict):
            await store.apply(plan.writes)
        return
    await store.apply(plan.writes)
    member.applied(plan)
    state = await store.get(AMBULANCES, AID)
    assert state is not None and state["speed_count"] == 3
