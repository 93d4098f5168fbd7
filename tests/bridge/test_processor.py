"""Tests for bridge.processor against the real SQLite and local object stores.

Inputs are built with ``bridge.validate.parse``, the path real messages take.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.contract import DISPATCH_ROOMS
from bridge.crash import static_map_url
from bridge.geo import haversine_m
from bridge.ids import epoch_ms
from bridge.messages import Crash, Emit, Outcome, Parsed, Plan, Position, Publish, Snap
from bridge.processor import Processor
from bridge.snapshots import KeysExhausted, image_key, store_images
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    IMAGE_HISTORIES,
    IMAGES,
    SPEED_VIOLATIONS,
    TRACKINGS,
    TRIPS,
    Document,
    Query,
    StoreUnavailable,
    Write,
)
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests.images import TINY_JPEG, png

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
RECEIVED = T0 + timedelta(hours=1)
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
AID = "332"
LAT, LON = 13.7563, 100.5018


def processor(
    store: SQLiteDocumentStore, objects: LocalObjectStore, **options: Any
) -> Processor:
    settings: dict[str, Any] = {
        "rules": SpeedRules(),
        "crash_dedup_s": 60.0,
        "maps_key": None,
        "dead_letter_payload_bytes": 64,
    } | options
    return Processor(store=store, objects=objects, **settings)


def message(
    kind: str, body: dict[str, Any] | bytes, aid: str = AID, *, shim: bool = False
) -> Parsed:
    """A message on the device topic, or with ``shim`` on the legacy shim's (legacy bodies)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    topic = f"legacy/{aid}/{kind}" if shim else f"aoc/{aid}/{kind}"
    return parse(topic, payload, RECEIVED, LIMITS)


def point(i: int, speed: float, **extra: Any) -> Parsed:
    """Point ``i``: one second and 0.001° of latitude (~111 m) after point ``i - 1``."""
    body = {"lat": LAT + i * 0.001, "lon": LON, "speed": speed, "heading": 90}
    body["ts"] = T0_MS + i * 1000
    return message("tracking", body | extra)


async def run(proc: Processor, store: SQLiteDocumentStore, items: list[Parsed]) -> Plan:
    """Plan a batch and apply its writes, as the bridge does before acknowledging."""
    plan = await proc.plan(items)
    await store.apply(plan.writes)
    proc.applied(plan)
    return plan


async def stored(store: SQLiteDocumentStore, collection: str) -> list[Document]:
    return (await store.find(Query(collection, limit=1000))).items


def crash_alerts(plan: Plan) -> list[Publish]:
    """The crash records among ``aoc/<id>/alert`` publications (not the crash's alarm)."""
    return [
        p for p in plan.publishes
        if p.topic == f"aoc/{AID}/alert" and json.loads(p.payload)["type"] == "crash"
    ]


def legacy_emits(plan: Plan) -> list[Emit]:
    """The emissions to legacy rooms (not to the dispatch rooms: alarms, events)."""
    return [emit for emit in plan.emits if emit.room not in DISPATCH_ROOMS]


def rooms(plan: Plan) -> list[tuple[str, Any]]:
    return [(emit.room, json.loads(emit.data)) for emit in plan.emits]


async def test_episodes_cross_80_and_120_and_back(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that crossing 80 and 120 opens episodes, points reference them, and they close."""
    proc = processor(store, objects)
    speeds = [50, 90, 130, 125, 100, 80, 70]
    first = await run(proc, store, [point(i, s) for i, s in enumerate(speeds[:4])])
    assert first.counts == {"tracking": 4}

    open_eps = {e["threshold"]: e for e in await stored(store, SPEED_VIOLATIONS)}
    orange_id = f"{AID}:speed_above_80:{T0_MS + 1000}"
    red_id = f"{AID}:speed_above_120:{T0_MS + 2000}"
    assert open_eps["speed_above_80"]["_id"] == orange_id
    assert open_eps["speed_above_80"]["closed"] is False
    assert open_eps["speed_above_80"]["ended_at"] is None
    assert open_eps["speed_above_120"]["_id"] == red_id
    assert open_eps["speed_above_120"]["points"] == 2

    await run(proc, store, [point(i, s) for i, s in enumerate(speeds) if i >= 4])
    docs = await stored(store, TRACKINGS)
    assert [d["state"] for d in docs] == [
        "GREEN", "ORANGE", "RED", "RED", "ORANGE", "GREEN", "GREEN",
    ]
    assert [d["speed_above_80"] for d in docs] == [None, *[orange_id] * 4, None, None]
    assert [d["speed_above_120"] for d in docs] == [None, None, red_id, red_id, None, None, None]

    episodes = {e["threshold"]: e for e in await stored(store, SPEED_VIOLATIONS)}
    orange, red = episodes["speed_above_80"], episodes["speed_above_120"]
    assert orange == {
        "_id": orange_id,
        "ambulance_id": AID,
        "threshold": "speed_above_80",
        "limit_kmh": 80,
        "started_at": T0 + timedelta(seconds=1),
        "ended_at": T0 + timedelta(seconds=5),  # the first point at exactly 80
        "start_location": {"lat": LAT + 0.001, "lon": LON},
        "end_location": {"lat": LAT + 0.005, "lon": LON},
        "max_speed": 130,
        "max_location": {"lat": LAT + 0.002, "lon": LON},
        "points": 4,
        "closed": True,
    }
    assert red["closed"] is True
    assert red["ended_at"] == T0 + timedelta(seconds=4)
    assert red["end_location"] == {"lat": LAT + 0.004, "lon": LON}
    assert (red["max_speed"], red["points"]) == (130, 2)
    state = await store.get(AMBULANCES, AID)
    assert state is not None and state["open_episodes"] == {}


async def test_distance_average_and_eta(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test covered distance, mean speed and ETA in the documents, the cache state and MQTT."""
    proc = processor(store, objects)
    dest = {"dest_lat": LAT + 0.1, "dest_lon": LON}
    plan = await run(proc, store, [point(0, 30), point(1, 60, **dest), point(2, 90)])
    step = haversine_m(Position(LAT, LON), Position(LAT + 0.001, LON))
    here = Position(LAT + 0.002, LON)
    expected_eta = round(haversine_m(here, Position(LAT + 0.1, LON)) / (60 / 3.6), 1)

    docs = await stored(store, TRACKINGS)
    assert [d["covered_distance"] for d in docs] == pytest.approx([0, step, 2 * step])
    assert [d["avg_speed"] for d in docs] == pytest.approx([30, 45, 60])
    assert docs[0]["estimated_time"] is None  # no destination known yet
    assert docs[2]["estimated_time"] == pytest.approx(expected_eta)
    assert docs[0]["source_location"] == docs[2]["source_location"] == {"lat": LAT, "lon": LON}
    assert docs[2]["destination_location"] == {"lat": LAT + 0.1, "lon": LON}
    assert docs[0]["count_datetime"] == T0
    assert docs[0]["received_at"] == RECEIVED
    assert docs[0]["late"] is False

    latest = plan.states[AID]
    assert latest["covered_distance"] == pytest.approx(2 * step)
    assert (latest["speed_sum"], latest["speed_count"]) == (180, 3)
    assert latest["last_seen"] == T0 + timedelta(seconds=2)
    assert latest["online"] is True
    assert latest["version"] == 1
    stored_state = await store.get(AMBULANCES, AID)
    assert stored_state is not None
    # The stored document is the cached one plus the outbox of its batch.
    outbox = stored_state.pop("outbox")
    assert stored_state == latest
    # The first point moves, so it opens a trip (bridge.trips): its upsert is
    # in the outbox too, after the episode's (the processor's _UPSERT_ORDER).
    assert [(w["collection"], w["doc"]["_id"]) for w in outbox] == [
        (SPEED_VIOLATIONS, f"{AID}:speed_above_80:{T0_MS + 2000}"),
        (TRIPS, f"{AID}.trip.{T0_MS}"),
        *((TRACKINGS, d["_id"]) for d in docs),
    ]
    assert [w["doc"] for w in outbox[2:]] == docs

    [state] = [p for p in plan.publishes if p.topic == f"aoc/{AID}/state"]
    assert state.retain and state.qos == 1
    assert json.loads(state.payload) == {
        "ambulance_id": AID,
        "location": {"lat": LAT + 0.002, "lon": LON},
        "speed": 90,
        "heading": 90,
        "state": "ORANGE",
        "last_seen": "2024-05-01T08:00:02.000Z",
        "online": True,
        "covered_distance": round(2 * step, 1),  # 0.1 m on the way out
        "avg_speed": 60,
        "estimated_time": pytest.approx(expected_eta),
        # Dispatch (tests/bridge/test_dispatch_rules.py): no places, no destination.
        "places": [],
        "destination": None,
        "eta": None,
        "version": 1,  # the store's: consumers keep the highest
    }


async def test_late_point_is_counted_but_never_moves_the_latest_state(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a point older than the latest is stored late, counted, and leaves the latest."""
    proc = processor(store, objects)
    await run(proc, store, [point(2, 30), point(3, 40)])
    before = await store.get(AMBULANCES, AID)
    assert before is not None
    plan = await run(proc, store, [point(1, 100)])
    assert plan.counts == {"late": 1}
    after = await store.get(AMBULANCES, AID)
    assert after is not None
    # The latest state stays the newest point's.
    for name in ("location", "speed", "heading", "state", "last_seen", "last_point_id"):
        assert after[name] == before[name], name
    # Its speed is counted, and it is the path's new first point: one more step.
    assert (after["speed_count"], after["speed_sum"]) == (3, 170)
    assert after["avg_speed"] == pytest.approx(170 / 3)
    assert after["covered_distance"] == pytest.approx(before["covered_distance"] * 2)
    assert after["source_location"] == {"lat": LAT + 0.001, "lon": LON}
    assert plan.states[AID]["covered_distance"] == after["covered_distance"]
    assert [p.topic for p in plan.publishes] == [f"aoc/{AID}/state"]
    assert await stored(store, SPEED_VIOLATIONS) == []  # 100 km/h, but late: no episode
    late = [d for d in await stored(store, TRACKINGS) if d["late"]]
    assert len(late) == 1
    assert (late[0]["speed"], late[0]["state"], late[0]["speed_above_80"]) == (100, "ORANGE", None)
    # The legacy rooms still get it: the old server emitted every body.
    assert [room for room, _ in rooms(plan)] == [AID, "tracking"]


async def test_duplicates_within_and_across_batches(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a repeated id is counted once as duplicate and produces no writes or fan-out."""
    proc = processor(store, objects)
    plan = await run(proc, store, [point(0, 30), point(0, 30), point(1, 40, seq=7)])
    assert plan.counts == {"duplicate": 1, "tracking": 2}
    assert [w.doc["_id"] for w in plan.writes if w.collection == TRACKINGS] == [
        f"{AID}:{T0_MS}",
        f"{AID}:{T0_MS + 1000}:7",
    ]
    assert len(plan.emits) == 4

    again = await run(proc, store, [point(1, 40, seq=7), point(0, 30)])
    assert again.counts == {"duplicate": 2}
    assert (again.writes, again.emits, again.publishes, again.states) == ([], [], [], {})
    assert plan.outcomes == [Outcome.TRACKING, Outcome.DUPLICATE, Outcome.TRACKING]
    assert again.outcomes == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    # Counted once in the state: two points, one step.
    state = await store.get(AMBULANCES, AID)
    assert state is not None
    assert (state["speed_count"], state["speed_sum"], state["version"]) == (2, 70, 1)
    step = haversine_m(Position(LAT, LON), Position(LAT + 0.001, LON))
    assert state["covered_distance"] == pytest.approx(step)


async def test_restart_continues_distance_and_open_episodes(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a new Processor on the same store continues distance, average and episodes."""
    await run(processor(store, objects), store, [point(0, 50), point(1, 100), point(2, 110)])
    restarted = processor(store, objects)
    await run(restarted, store, [point(3, 90), point(4, 60)])
    docs = await stored(store, TRACKINGS)
    step = haversine_m(Position(LAT, LON), Position(LAT + 0.001, LON))
    assert docs[-1]["covered_distance"] == pytest.approx(4 * step)
    assert docs[-1]["avg_speed"] == pytest.approx(82)
    [episode] = await stored(store, SPEED_VIOLATIONS)
    assert episode["_id"] == f"{AID}:speed_above_80:{T0_MS + 1000}"
    assert (episode["points"], episode["max_speed"], episode["closed"]) == (3, 110, True)
    assert docs[3]["speed_above_80"] == episode["_id"]


async def test_redelivery_after_a_partial_write_is_not_counted_twice(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test the write order: the state lands, nothing else does, the batch comes back."""
    await run(processor(store, objects), store, [point(0, 30)])
    batch = [point(1, 90), point(2, 100)]
    plan = await processor(store, objects).plan(batch)
    kinds = [(w.kind, w.collection, w.expect) for w in plan.writes]
    assert kinds == [
        ("upsert", AMBULANCES, 1),
        ("upsert", SPEED_VIOLATIONS, None),
        ("insert", TRACKINGS, None),
        ("insert", TRACKINGS, None),
    ]
    await store.apply(plan.writes[:1])  # the commit point, then the process dies

    replay = await run(processor(store, objects), store, batch)
    # The points are neither counted again nor stored as late: their records
    # come from the state's outbox, as planned the first time.
    assert replay.counts == {"tracking": 2}
    assert await stored(store, TRACKINGS) == [
        *(await stored(store, TRACKINGS))[:1],
        *(w.doc for w in plan.writes[2:]),
    ]
    [episode] = await stored(store, SPEED_VIOLATIONS)
    assert (episode["started_at"], episode["points"], episode["max_speed"]) == (
        T0 + timedelta(seconds=1), 2, 100,
    )
    # Their state was stored but never fanned out: the replay publishes and emits it.
    assert replay.states[AID]["speed"] == 100
    assert [p.topic for p in replay.publishes] == [f"aoc/{AID}/state"]
    assert [room for room, _ in rooms(replay)] == [AID, "tracking"] * 2
    state = await store.get(AMBULANCES, AID)
    assert state is not None
    step = haversine_m(Position(LAT, LON), Position(LAT + 0.001, LON))
    assert state["covered_distance"] == pytest.approx(2 * step)
    # The replay was written under a new version of the state (a conditional write).
    assert (state["speed_count"], state["version"]) == (3, 3)
    # Once everything is stored, the same batch is a duplicate.
    assert (await run(processor(store, objects), store, batch)).counts == {"duplicate": 2}


async def test_crash_record_dedup_window_and_fan_out(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test crash records, the dedup window, and the exact CRASH_NOTIFY / crash / alert output."""
    proc = processor(store, objects, maps_key="k-123")
    crash = {"lat": LAT, "lon": LON, "speed": 150, "heading": 90}
    plan = await run(
        proc,
        store,
        [
            message("crash", crash | {"ts": T0_MS}),
            message("crash", crash | {"ts": T0_MS + 5000}),
            message("crash", crash | {"ts": T0_MS + 60_000, "speed": 80}),
        ],
    )
    assert plan.counts == {"crash": 2, "crash_repeat": 1}
    docs = await stored(store, CRASHES)
    first_id = f"crash:{AID}:{T0_MS}"
    assert [d["_id"] for d in docs] == [
        first_id, f"crash:{AID}:{T0_MS + 5000}", f"crash:{AID}:{T0_MS + 60000}",
    ]
    assert [d["duplicate_of"] for d in docs] == [None, first_id, None]
    assert [d["state"] for d in docs] == ["RED", "RED", "GREEN"]
    image = static_map_url(LAT, LON, key="k-123")
    assert docs[0] == {
        "_id": first_id,
        "ambulance_id": AID,
        "location": {"lat": LAT, "lon": LON},
        "speed": 150,
        "heading": 90,
        "count_datetime": T0,
        "state": "RED",
        "location_detail": {"address": None, "image": image},
        "received_at": RECEIVED,
        "delay_s": 3600.0,
        "duplicate_of": None,
    }
    assert "key=k-123" in image

    notify = [e.data for e in plan.emits if e.room == f"CRASH_NOTIFY_{AID}"]
    assert notify[0] == (
        f'{{"_id":"{first_id}","ambulance_id":"332","location":{{"lat":13.7563,"lon":100.5018}},'
        '"speed":150,"heading":90,"count_datetime":"2024-05-01T08:00:00.000Z","state":"RED",'
        f'"location_detail":{{"address":null,"image":"{image}"}},'
        '"received_at":"2024-05-01T09:00:00.000Z","delay_s":3600,"duplicate_of":null}'
    )
    assert len(notify) == 2
    crash_room = [e.data for e in plan.emits if e.room == "crash"]
    assert crash_room[0] == (
        '{"ambulance_id":"332","tracking_latitude":13.7563,"tracking_longitude":100.5018,'
        f'"tracking_speed":150,"tracking_heading":90,"ts":{T0_MS},"speed_unit":"km/h"}}'
    )
    alerts = crash_alerts(plan)
    assert [a.retain for a in alerts] == [False, False]
    # The MQTT alert names the id as the read API does; the room keeps the stored record.
    alert = json.loads(alerts[0].payload)
    assert alert["id"] == first_id and "_id" not in alert
    # Its type tells it from the alarms the topic also carries.
    assert {k: v for k, v in alert.items() if k != "id"} == {"type": "crash"} | {
        k: v for k, v in json.loads(notify[0]).items() if k != "_id"
    }
    assert plan.states == {}  # a crash does not move the latest position

    # The window survives a restart: it is anchored in the stored state.
    repeat = message("crash", crash | {"ts": T0_MS + 70_000})
    later = await run(processor(store, objects), store, [repeat])
    assert later.counts == {"crash_repeat": 1}
    assert later.emits == [] and later.publishes == []


async def test_crash_redelivered_after_a_partial_write_is_still_broadcast(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a crash whose state landed but whose record did not is broadcast on replay."""
    crash = message("crash", {"lat": LAT, "lon": LON, "speed": 50, "ts": T0_MS})
    plan = await processor(store, objects).plan([crash])
    await store.apply([w for w in plan.writes if w.kind == "upsert"])  # then the process dies
    replay = await run(processor(store, objects), store, [crash])
    assert replay.counts == {"crash": 1}
    [record] = await stored(store, CRASHES)
    assert record["duplicate_of"] is None
    assert [e.room for e in replay.emits] == [f"CRASH_NOTIFY_{AID}", "crash"]
    assert [p.topic for p in replay.publishes] == [f"aoc/{AID}/alert"]


async def test_legacy_bodies_are_re_emitted_as_sent(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test the legacy rooms get the shim's `legacy` body as sent, else the validated values."""
    proc = processor(store, objects)
    legacy = {"ambulance_id": AID, "tracking_latitude": "13.7563", "tracking_longitude": "100.5018",
              "tracking_speed": "11.5", "tracking_heading": "180"}
    shim_crash = {"lat": LAT, "lon": LON, "speed": 41.4, "heading": 180, "ts": T0_MS,
                  "legacy": legacy}
    legacy_named = {"tracking_latitude": LAT, "tracking_longitude": LON, "tracking_speed": "45.5",
                    "ts": T0_MS + 1000, "note": "ไทย"}
    shim_point = {"ambulance_id": 332, "lat": LAT, "lon": LON, "speed": 20}
    plan = await run(
        proc,
        store,
        [message("crash", shim_crash, shim=True), message("tracking", legacy_named),
         message("tracking", {"lat": LAT, "lon": LON, "speed": 20.0, "ts": T0_MS + 2000,
                              "legacy": shim_point}, shim=True)],
    )
    emitted = [(e.room, e.data) for e in legacy_emits(plan) if e.room != f"CRASH_NOTIFY_{AID}"]
    shaped = (
        '{"ambulance_id":"332","tracking_latitude":13.7563,"tracking_longitude":100.5018,'
        f'"tracking_speed":45.5,"tracking_heading":null,"ts":{T0_MS + 1000}}}'
    )
    assert emitted == [
        ("crash", '{"ambulance_id":"332","tracking_latitude":"13.7563","tracking_longitude":'
                  '"100.5018","tracking_speed":"11.5","tracking_heading":"180"}'),
        (AID, shaped),
        ("tracking", shaped),
        (AID, '{"ambulance_id":332,"lat":13.7563,"lon":100.5018,"speed":20}'),
        ("tracking", '{"ambulance_id":332,"lat":13.7563,"lon":100.5018,"speed":20}'),
    ]


async def test_plain_tracking_body_is_legacy_shaped(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a plain-named body reaches legacy rooms with the legacy names first."""
    plan = await run(processor(store, objects), store, [point(0, 45.5, seq=3, accuracy=4.0)])
    expected = (
        '{"ambulance_id":"332","tracking_latitude":13.7563,"tracking_longitude":100.5018,'
        f'"tracking_speed":45.5,"tracking_heading":90,"ts":{T0_MS},"seq":3,"accuracy":4}}'
    )
    assert [(e.room, e.data, e.event) for e in plan.emits] == [
        (AID, expected, "data"),
        ("tracking", expected, "data"),
    ]
    [doc] = await stored(store, TRACKINGS)
    assert (doc["seq"], doc["accuracy"], doc["altitude"]) == (3, 4, None)


async def test_snaps_store_objects_then_current_and_history(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test image keys and bytes, the current IMAGES doc, history records and the snap room."""
    proc = processor(store, objects)
    first = await run(proc, store, [message("snap", TINY_JPEG)])  # raw bytes: receipt time
    [history] = await stored(store, IMAGE_HISTORIES)
    key0 = history["images"]["image0"]
    assert key0.startswith(f"ambulance_images/{AID}/2024/05/01/09_00/00_00_")
    assert key0.endswith(".jpg")
    assert await objects.get(key0) == TINY_JPEG
    assert rooms(first) == [
        ("snap", {"body": {"ambulance_id": AID}, "imagesObj": {"image0": key0}}),
    ]
    assert first.counts == {"snap": 1, "image": 1}
    current = await store.get(IMAGES, AID)
    assert current == {
        "_id": AID,
        "ambulance_id": AID,
        "images": {"image0": key0},
        "createdAt": RECEIVED,
        "ambulance_image_histories_id": None,
    }

    encoded = [
        {"name": "front.jpg", "data": base64.b64encode(TINY_JPEG).decode()},
        {"name": "rear.png", "data": base64.b64encode(png()).decode()},
    ]
    multi = {
        "images": encoded,
        "ts": int((RECEIVED + timedelta(seconds=5)).timestamp() * 1000),
        "legacy": {"ambulance_id": AID, "note": "x"},
    }
    second = await run(proc, store, [message("snap", multi, shim=True)])
    histories = await stored(store, IMAGE_HISTORIES)
    assert len(histories) == 2
    newer = next(h for h in histories if h["_id"] != history["_id"])
    keys = newer["images"]
    assert sorted(keys) == ["image0", "image1"]
    assert keys["image1"].endswith(".png") and await objects.get(keys["image1"]) == png()
    assert second.emits[0].data == json.dumps(
        {"body": {"ambulance_id": AID, "note": "x"}, "imagesObj": keys}, separators=(",", ":")
    )
    current = await store.get(IMAGES, AID)
    assert current is not None
    assert current["images"] == keys
    assert current["ambulance_image_histories_id"] == history["_id"]

    # An older snap is history only: the current images stay the newer ones.
    old = {"images": encoded[1:], "ts": T0_MS}
    third = await run(proc, store, [message("snap", old)])
    assert [w.collection for w in third.writes] == [IMAGE_HISTORIES]
    assert await store.get(IMAGES, AID) == current
    # A redelivered snap maps to the same id and keys: a duplicate.
    again = await run(proc, store, [message("snap", multi, shim=True)])
    assert again.counts == {"duplicate": 1}


async def test_object_store_outage_leaves_state_unchanged(
    store: SQLiteDocumentStore, objects: LocalObjectStore, tmp_path: Path
) -> None:
    """Test that a failing put aborts the plan and the same batch plans cleanly afterwards."""
    proc = processor(store, objects)
    await run(proc, store, [point(0, 30)])
    blocker = tmp_path / "objects" / "ambulance_images"
    blocker.write_bytes(b"not a directory")  # every put now fails with an OSError
    batch = [point(1, 90), message("snap", TINY_JPEG)]
    with pytest.raises(StoreUnavailable):
        await proc.plan(batch)
    blocker.unlink()
    plan = await run(proc, store, batch)
    assert plan.counts == {"tracking": 1, "snap": 1, "image": 1}
    step = haversine_m(Position(LAT, LON), Position(LAT + 0.001, LON))
    assert plan.states[AID]["covered_distance"] == pytest.approx(step)
    assert plan.states[AID]["open_episodes"]["speed_above_80"]["points"] == 1


async def test_status_updates_online_and_publishes_state(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that status flips `online` (written only on change) and publishes the state."""
    proc = processor(store, objects)
    plan = await run(proc, store, [message("status", b"online")])
    assert plan.counts == {"status": 1}
    assert plan.states[AID]["online"] is True
    [publish] = plan.publishes
    assert (publish.topic, publish.retain, json.loads(publish.payload)["online"]) == (
        f"aoc/{AID}/state", True, True,
    )
    assert (await store.get(AMBULANCES, AID) or {})["online"] is True

    same = await run(proc, store, [message("status", b'{"status": "online"}')])
    assert same.writes == []
    assert [p.payload for p in same.publishes] == [publish.payload]

    off = await run(proc, store, [message("status", b"offline")])
    assert off.states[AID]["online"] is False
    assert json.loads(off.publishes[0].payload)["online"] is False
    assert (await store.get(AMBULANCES, AID) or {})["online"] is False


async def test_dead_letters_truncate_and_log_once(
    store: SQLiteDocumentStore, objects: LocalObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Test dead-letter records: reason, topic id, truncation, base64 for binary, one WARNING."""
    proc = processor(store, objects, dead_letter_payload_bytes=16)
    long_text = ("{not json " + "é" * 40).encode()
    binary = b"\xff\xfe\x00 this is not an image at all"
    with caplog.at_level(logging.WARNING, logger="bridge.processor"):
        plan = await run(
            proc,
            store,
            [
                message("tracking", long_text),
                message("snap", binary),
                parse("aoc/bad..id!/tracking", b"{}", RECEIVED, LIMITS),
                message("tracking", long_text),  # the same message again
            ],
        )
    assert plan.counts == {"duplicate": 1, "dead_letter": 3}
    assert plan.emits == [] and plan.publishes == [] and plan.states == {}
    letters = {d["topic"]: d for d in await stored(store, DEAD_LETTERS)}
    text = letters[f"aoc/{AID}/tracking"]
    assert text["ambulance_id"] == AID
    assert text["payload"] == "{not json é" + "é" * 2  # 16 bytes, cut on a character
    assert (text["payload_base64"], text["truncated"]) == (False, True)
    assert text["payload_size"] == len(long_text)
    assert text["received_at"] == RECEIVED
    assert "JSON" in text["reason"]
    snap = letters[f"aoc/{AID}/snap"]
    assert snap["payload_base64"] is True
    assert base64.b64decode(snap["payload"]) == binary[:16]
    assert (snap["truncated"], snap["payload_size"]) == (True, len(binary))
    assert letters["aoc/bad..id!/tracking"]["ambulance_id"] is None
    warnings = [r for r in caplog.records if r.name == "bridge.processor"]
    assert len(warnings) == 3
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert text["reason"] in warnings[0].getMessage()


async def test_cache_is_bounded_and_evicted_ambulances_reload(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test the LRU bound: evicted ambulances come back from the store intact."""
    proc = processor(store, objects, cache_size=2)
    for aid in ("a1", "a2", "a3"):
        body = {"lat": 1, "lon": 1, "speed": 10, "ts": T0_MS}
        await run(proc, store, [message("tracking", body, aid)])
    assert proc.cached == 2
    moved = {"lat": 1.001, "lon": 1, "speed": 30, "ts": T0_MS + 1}
    plan = await run(proc, store, [message("tracking", moved, "a1")])
    state = plan.states["a1"]
    assert state["covered_distance"] == pytest.approx(
        haversine_m(Position(1, 1), Position(1.001, 1))
    )
    assert state["avg_speed"] == 20
    assert proc.cached == 2


class CountingStore(SQLiteDocumentStore):
    """The real SQLite store, counting the reads of ambulance states it serves."""

    reads: list[int]

    async def get(self, collection: str, doc_id: str) -> Document | None:
        if collection == AMBULANCES:
            self.reads.append(1)
        return await super().get(collection, doc_id)

    async def get_many(self, collection: str, ids: Sequence[str]) -> dict[str, Document]:
        if collection == AMBULANCES:
            self.reads.append(len(ids))
        return await super().get_many(collection, ids)


async def test_unknown_ambulances_are_loaded_in_one_read_per_batch(
    tmp_path: Path, objects: LocalObjectStore
) -> None:
    """Test that a batch's ambulances not in memory are read in one store call, known ones not."""
    store = CountingStore(tmp_path / "counted.sqlite3")
    store.reads = []
    async with store:
        first = {"lat": 1, "lon": 1, "speed": 10, "ts": T0_MS}
        await run(processor(store, objects), store, [
            message("tracking", first, f"a{n}") for n in range(3)
        ])
        restarted = processor(store, objects)  # stored states, none in memory
        store.reads.clear()
        moved = {"lat": 1.001, "lon": 1, "speed": 30, "ts": T0_MS + 1000}
        batch = [message("tracking", moved, f"a{n}") for n in range(3)]
        batch += [message("tracking", first, f"b{n}") for n in range(50)]
        plan = await run(restarted, store, batch)
        assert store.reads == [53]
        assert plan.states["a0"]["covered_distance"] == pytest.approx(
            haversine_m(Position(1, 1), Position(1.001, 1))
        )
        assert plan.states["b0"]["covered_distance"] == 0
        store.reads.clear()
        later = {"lat": 1.002, "lon": 1, "speed": 30, "ts": T0_MS + 2000}
        await run(restarted, store, [message("tracking", later, f"b{n}") for n in range(50)])
        assert store.reads == []  # all in memory now


async def test_images_of_one_snap_never_share_a_key(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that two images whose 4 digits collide in the same second still get two keys."""
    taken = RECEIVED + timedelta(seconds=7)
    first = png(rgb=(0, 0, 0))
    wanted = image_key(AID, taken, first, index=0)
    # Search for a second image whose derived key collides with the first one's.
    second = next(
        candidate
        for n in range(1, 200_000)
        if image_key(AID, taken, candidate := png(rgb=(n % 256, n // 256 % 256, 1)), index=1)
        == wanted
    )
    snap = {
        "images": [
            {"name": "a.png", "data": base64.b64encode(first).decode()},
            {"name": "b.png", "data": base64.b64encode(second).decode()},
        ],
        "ts": int(taken.timestamp() * 1000),
    }
    await run(processor(store, objects), store, [message("snap", snap)])
    [history] = await stored(store, IMAGE_HISTORIES)
    keys = history["images"]
    assert keys["image0"] != keys["image1"]
    assert await objects.get(keys["image0"]) == first
    assert await objects.get(keys["image1"]) == second


async def test_a_second_point_of_the_same_instant_moves_the_state(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a same-ts point with another seq advances the state; its redelivery does not."""
    proc = processor(store, objects)
    await run(proc, store, [point(0, 50, seq=1)])
    plan = await run(proc, store, [point(1, 130, seq=2), point(1, 135, seq=3)])
    assert plan.counts == {"tracking": 2}
    state = await store.get(AMBULANCES, AID)
    assert state is not None and state["speed"] == 135 and state["state"] == "RED"
    # The same point again, after a restart (a fresh processor), is a redelivery.
    replay = await processor(store, objects).plan([point(1, 135, seq=3)])
    assert replay.counts == {"duplicate": 1}
    assert replay.writes == []


def message_at(received_at: datetime, kind: str, body: dict[str, Any]) -> Parsed:
    return parse(f"aoc/{AID}/{kind}", json.dumps(body).encode(), received_at, LIMITS)


async def test_a_point_from_a_clock_ahead_does_not_freeze_the_latest_state(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a point stamped 9 min 50 s ahead leaves the real points after it current."""
    proc = processor(store, objects)
    ahead = T0 + timedelta(minutes=9, seconds=50)
    body = {"lat": 1.0, "lon": 1.0, "speed": 10}
    await run(proc, store, [message_at(T0, "tracking", body | {"ts": epoch_ms(ahead)})])
    for i in range(1, 6):
        now = T0 + timedelta(seconds=i)
        plan = await run(proc, store, [message_at(now, "tracking", body | {"ts": epoch_ms(now)})])
        assert plan.counts == {"tracking": 1}
        assert plan.states[AID]["last_seen"] == now
        state_topic = json.loads(plan.publishes[0].payload)  # the retained aoc/<id>/state
        assert state_topic["last_seen"] == f"{now:%Y-%m-%dT%H:%M:%S}.000Z"
    docs = await stored(store, TRACKINGS)
    assert [d["late"] for d in docs] == [False] * 6
    assert docs[0]["count_datetime"] == T0
    assert docs[0]["device_ts"] == ahead
    assert docs[0]["_id"] == f"{AID}:{epoch_ms(ahead)}"
    assert "device_ts" not in docs[1]

    # A redelivery of the clamped point, received later, is still the same point.
    replay = message_at(T0 + timedelta(seconds=9), "tracking", body | {"ts": epoch_ms(ahead)})
    assert (await run(proc, store, [replay])).counts == {"duplicate": 1}


async def test_a_crash_from_a_clock_ahead_anchors_no_window_in_the_future(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that after a crash stamped ahead, real crashes within the window are repeats."""
    proc = processor(store, objects, crash_dedup_s=5.0)
    crash = {"lat": LAT, "lon": LON, "speed": 50}
    ahead = T0 + timedelta(minutes=9)
    first = await run(proc, store, [message_at(T0, "crash", crash | {"ts": epoch_ms(ahead)})])
    assert first.counts == {"crash": 1}
    for i in range(1, 11):
        now = T0 + timedelta(milliseconds=400 * i)
        plan = await run(proc, store, [message_at(now, "crash", crash | {"ts": epoch_ms(now)})])
        assert plan.counts == {"crash_repeat": 1}
        assert plan.emits == [] and plan.publishes == []


async def test_a_delayed_crash_is_broadcast_once_marked_with_its_delay(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test crash dedup on both sides: a late crash is checked against the ones around it."""
    proc = processor(store, objects)
    crash = {"lat": LAT, "lon": LON, "speed": 50}
    now = T0 + timedelta(minutes=10)
    newer = message_at(now, "crash", crash | {"ts": epoch_ms(now)})
    assert (await run(proc, store, [newer])).counts == {"crash": 1}

    delayed_at = now - timedelta(seconds=120)
    delayed = message_at(now + timedelta(seconds=1), "crash", crash | {"ts": epoch_ms(delayed_at)})
    plan = await run(proc, store, [delayed])
    assert plan.counts == {"crash": 1}
    [record] = [json.loads(e.data) for e in plan.emits if e.room == f"CRASH_NOTIFY_{AID}"]
    assert record["delay_s"] == 121.0
    assert record["count_datetime"] == "2024-05-01T08:08:00.000Z"
    assert [p.topic for p in crash_alerts(plan)] == [f"aoc/{AID}/alert"]

    # Its redelivery (MQTT DUP) is broadcast again, the same record (never
    # acknowledged, so never surely fanned out), but not counted; sent again by
    # the device, it is no alert; nor is a crash near it.
    assert isinstance(delayed, Crash)
    again = await run(proc, store, [replace(delayed, redelivered=True)])
    assert again.counts == {"duplicate": 1}
    assert [json.loads(e.data) for e in again.emits if e.room == f"CRASH_NOTIFY_{AID}"] == [record]
    resent = await run(proc, store, [delayed])
    assert resent.counts == {"duplicate": 1} and resent.emits == []
    near = message_at(now, "crash", crash | {"ts": epoch_ms(delayed_at + timedelta(seconds=10))})
    repeat = await run(proc, store, [near])
    assert repeat.counts == {"crash_repeat": 1} and repeat.emits == []
    docs = {d["_id"]: d for d in await stored(store, CRASHES)}
    near_id = f"crash:{AID}:{epoch_ms(delayed_at + timedelta(seconds=10))}"
    assert docs[near_id]["duplicate_of"] == f"crash:{AID}:{epoch_ms(delayed_at)}"

    # The windows survive a restart: they are kept in the stored state.
    restarted = processor(store, objects)
    later = message_at(now, "crash", crash | {"ts": epoch_ms(delayed_at - timedelta(seconds=30))})
    assert (await run(restarted, store, [later])).counts == {"crash_repeat": 1}


@pytest.mark.parametrize("aid", ["crash", "snap", "tracking", "CRASH_NOTIFY_332"])
async def test_an_ambulance_id_naming_a_room_reaches_no_room(
    store: SQLiteDocumentStore, objects: LocalObjectStore, aid: str
) -> None:
    """Test that points on aoc/<room name>/tracking are dead letters, emitted nowhere."""
    body = {"lat": LAT, "lon": LON, "speed": 50, "legacy": {"tracking_speed": 50}}
    plan = await run(processor(store, objects), store, [message("tracking", body, aid=aid)])
    assert plan.counts == {"dead_letter": 1}
    assert plan.emits == [] and plan.publishes == [] and plan.states == {}
    [letter] = await stored(store, DEAD_LETTERS)
    assert "is reserved" in letter["reason"]
    assert letter["ambulance_id"] is None


def forced_digits(digest: bytes, draw: int) -> int:
    """Every image's first draw is 0042, its second 0043...: collisions on demand."""
    return 42 + draw


def same_second_snap(image: bytes, millisecond: int) -> Parsed:
    """A JSON snap of ``image`` taken in the same second as every other one."""
    taken = int((RECEIVED - timedelta(seconds=9)).timestamp() * 1000) + millisecond
    encoded = [{"name": "a.png", "data": base64.b64encode(image).decode()}]
    return message("snap", {"images": encoded, "ts": taken})


@pytest.mark.parametrize("lane", [False, True], ids=["plan", "upload-then-plan"])
async def test_a_forced_key_collision_never_overwrites_an_image(
    store: SQLiteDocumentStore, objects: LocalObjectStore, lane: bool
) -> None:
    """Test that two snaps drawing the same key keep both images, and a redelivery its key."""
    proc = processor(store, objects, key_digits=forced_digits)
    first, second = png(rgb=(1, 2, 3)), png(rgb=(4, 5, 6))
    snaps = [same_second_snap(first, 100), same_second_snap(second, 200)]

    async def one(item: Parsed) -> Plan:
        if lane:
            assert isinstance(item, Snap)
            item = await proc.upload(item)
        return await run(proc, store, [item])

    for item in snaps:
        await one(item)
    histories = {
        h["createdAt"].microsecond // 1000: h for h in await stored(store, IMAGE_HISTORIES)
    }
    key1, key2 = histories[100]["images"]["image0"], histories[200]["images"]["image0"]
    assert key1 != key2
    assert await objects.get(key1) == first
    assert await objects.get(key2) == second
    # A redelivery of the second, after a restart, walks the same draws to the same key.
    again = processor(store, objects, key_digits=forced_digits)
    assert isinstance(snaps[1], Snap)
    assert await store_images(objects, snaps[1], digits=again._key_digits) == (key2,)
    assert (await again.plan([snaps[1]])).counts == {"duplicate": 1}
    assert await objects.get(key1) == first


async def test_draws_are_exhausted_with_a_clear_error(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a digits function that can only collide ends in KeysExhausted, not a loop."""
    taken = _snap(same_second_snap(png(rgb=(7, 7, 7)), 1))
    await store_images(objects, taken, digits=forced_digits)
    stuck = _snap(same_second_snap(png(rgb=(8, 8, 8)), 2))
    with pytest.raises(KeysExhausted):
        await store_images(objects, stuck, digits=lambda digest, draw: 42)
    # With draws that move on, the second image finds the next free key.
    assert await store_images(objects, stuck, digits=forced_digits) == (
        image_key(AID, stuck.ts, stuck.images[0].data, index=1, digits=forced_digits),
    )


def _snap(item: Parsed) -> Snap:
    assert isinstance(item, Snap)
    return item


async def test_the_crash_window_of_an_older_version_survives_the_upgrade(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a state stored with last_crash_at/last_crash_id keeps its dedup window."""
    old_id = f"crash:{AID}:{T0_MS}"
    older = {"_id": AID, "ambulance_id": AID, "last_crash_at": T0, "last_crash_id": old_id}
    await store.apply([Write(AMBULANCES, "upsert", older)])
    crash = {"lat": LAT, "lon": LON, "speed": 50, "ts": T0_MS + 10_000}
    plan = await run(processor(store, objects), store, [message("crash", crash)])
    assert plan.counts == {"crash_repeat": 1}
    [record] = await stored(store, CRASHES)
    assert record["duplicate_of"] == old_id


async def test_mqtt_output_rounds_measures_the_rooms_keep_every_digit(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that state and alert carry 0.1 m and 0.1 km/h; the rooms and the store do not round."""
    ms = 10.41  # a legacy crash speed in m/s: times 3.6 is 37.476000000000006
    kmh = ms * 3.6
    assert str(kmh) != "37.5"
    batch = [
        message("tracking", {"lat": LAT, "lon": LON, "speed": 33.333333, "ts": T0_MS}),
        message(
            "tracking", {"lat": LAT + 0.0001234, "lon": LON, "speed": 20.06, "ts": T0_MS + 1000}
        ),
        message("crash", {"lat": LAT, "lon": LON, "speed": kmh, "ts": T0_MS + 2000}),
    ]
    plan = await run(processor(store, objects), store, batch)
    [state_pub] = [p for p in plan.publishes if p.topic == f"aoc/{AID}/state"]
    state = json.loads(state_pub.payload)
    step = haversine_m(Position(LAT, LON), Position(LAT + 0.0001234, LON))
    assert state["covered_distance"] == round(step, 1) != step
    assert state["speed"] == 20.1
    assert state["avg_speed"] == round((33.333333 + 20.06) / 2, 1)
    [alert_pub] = crash_alerts(plan)
    assert json.loads(alert_pub.payload)["speed"] == 37.5
    # The legacy CRASH_NOTIFY record and the store keep the value as computed.
    [notify] = [e.data for e in plan.emits if e.room == f"CRASH_NOTIFY_{AID}"]
    assert json.loads(notify)["speed"] == kmh
    [record] = await stored(store, CRASHES)
    assert record["speed"] == kmh
    stored_state = await store.get(AMBULANCES, AID)
    assert stored_state is not None and stored_state["covered_distance"] == pytest.approx(step)
