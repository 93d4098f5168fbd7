"""Tests of the dispatch rules (bridge.dispatch) through the processor, on a real SQLite store.

Inputs are built with ``bridge.validate.parse`` from MQTT topics and payloads,
the path real device messages and the API's commands take.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.dispatch import Dispatch, DispatchRules
from bridge.messages import Check, Parsed, Plan, Rejected
from bridge.places import PlaceIndex, place_doc, places_from_geojson
from bridge.processor import Processor
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from storage.base import ALARMS, AMBULANCES, EVENTS, PLACES, Document, Query, Write
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests.images import TINY_JPEG

TINY_JPEG_B64 = base64.b64encode(TINY_JPEG).decode()

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
AID = "amb-7"
# A square hospital in Chiang Mai, about 220 m a side, and a station (a circle of 80 m).
H_LAT, H_LON = 18.7897, 98.9737
HALF = 0.001  # degrees: ~111 m of latitude, ~105 m of longitude here
M_PER_DEG_LAT = 111_195.0
HOSPITAL = {
    "type": "Feature",
    "id": "maharaj",
    "properties": {"name": "Maharaj Hospital", "kind": "hospital"},
    "geometry": {
        "type": "Polygon",
        "coordinates": [[
            [H_LON - HALF, H_LAT - HALF], [H_LON + HALF, H_LAT - HALF],
            [H_LON + HALF, H_LAT + HALF], [H_LON - HALF, H_LAT + HALF],
            [H_LON - HALF, H_LAT - HALF],
        ]],
    },
}
S_LAT, S_LON = 18.80, 98.95
STATION = {
    "type": "Feature",
    "id": "station-1",
    "properties": {"name": "Station 1", "kind": "station", "radius_m": 80},
    "geometry": {"type": "Point", "coordinates": [S_LON, S_LAT]},
}
SOUTH_EDGE = H_LAT - HALF


def processor(
    store: SQLiteDocumentStore, objects: LocalObjectStore, **rules: Any
) -> Processor:
    places = PlaceIndex(places_from_geojson({"type": "FeatureCollection",
                                             "features": [HOSPITAL, STATION]}))
    dispatch = Dispatch(DispatchRules(**rules), places)
    return Processor(
        store=store, objects=objects, rules=SpeedRules(), crash_dedup_s=60.0, maps_key=None,
        dead_letter_payload_bytes=64, dispatch=dispatch,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def point(second: float, lat: float, lon: float = H_LON, speed: float = 40.0) -> Parsed:
    body = {"lat": lat, "lon": lon, "speed": speed, "ts": int(at(second).timestamp() * 1000)}
    return parse(f"aoc/{AID}/tracking", json.dumps(body).encode(), at(second), LIMITS)


def crash(second: float, lat: float = H_LAT, lon: float = H_LON) -> Parsed:
    body = {"lat": lat, "lon": lon, "speed": 0, "ts": int(at(second).timestamp() * 1000)}
    return parse(f"aoc/{AID}/crash", json.dumps(body).encode(), at(second), LIMITS)


def command(kind: str, second: float, number: int, **fields: Any) -> Parsed:
    body = {"command_id": f"cmd-{number:08d}", "at": at(second).isoformat(), "by": "desk-1"}
    payload = json.dumps(body | fields).encode()
    return parse(f"dispatch/{AID}/{kind}", payload, at(second), LIMITS)


async def run(proc: Processor, store: SQLiteDocumentStore, items: list[Parsed]) -> Plan:
    plan = await proc.plan(items)
    await store.apply(plan.writes)
    proc.applied(plan)
    return plan


async def stored(store: SQLiteDocumentStore, collection: str) -> list[Document]:
    return (await store.find(Query(collection, limit=1000))).items


async def state(store: SQLiteDocumentStore) -> Document:
    doc = await store.get(AMBULANCES, AID)
    assert doc is not None
    return doc


def room(plan: Plan, name: str) -> list[Any]:
    return [json.loads(emit.data) for emit in plan.emits if emit.room == name]


def alerts(plan: Plan) -> list[Any]:
    return [json.loads(p.payload) for p in plan.publishes if p.topic == f"aoc/{AID}/alert"]


async def test_a_jittering_edge_makes_one_enter_and_a_real_exit_one_exit(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test the hysteresis: points 10 m either side of the edge, then 100 m out."""
    proc = processor(store, objects, margin_m=30.0)
    metre = 1 / M_PER_DEG_LAT
    approach = [point(s, SOUTH_EDGE - (300 - 50 * s) * metre) for s in range(6)]
    jitter = [
        point(6 + s, SOUTH_EDGE + (10 if s % 2 == 0 else -10) * metre) for s in range(10)
    ]
    plans = [await run(proc, store, [item]) for item in [*approach, *jitter]]
    events = await stored(store, EVENTS)
    assert [(e["type"], e["place_id"]) for e in events] == [("enter", "maharaj")]
    assert events[0]["at"] == at(6)
    assert events[0]["place_name"] == "Maharaj Hospital"
    emitted = [e for plan in plans for e in plan.emits if e.room == "events"]
    assert len(emitted) == 1
    assert (await state(store))["places"] == ["maharaj"]

    leave = await run(proc, store, [point(20, SOUTH_EDGE - 100 * metre)])
    events = await stored(store, EVENTS)
    assert [e["type"] for e in events] == ["enter", "exit"]
    assert room(leave, "events")[0]["event"]["type"] == "exit"
    assert (await state(store))["places"] == []


async def test_an_eta_shrinks_on_the_way_and_the_arrival_is_one_event(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test a destination point: distance and ETA go down with each point, then arrival."""
    proc = processor(store, objects, eta_window_s=60.0, eta_floor_kmh=10.0)
    target_lat = H_LAT + 0.02  # ~2.2 km north of the start
    await run(proc, store, [point(0, H_LAT, speed=60)])
    plan = await run(proc, store, [command(
        "destination", 1, 1,
        destination={"type": "point", "lat": target_lat, "lon": H_LON, "radius_m": 60,
                     "name": "Crash site"},
    )])
    doc = await state(store)
    assert doc["commands"] == [{"id": "cmd-00000001", "ok": True, "reason": None}]
    assert doc["destination"]["name"] == "Crash site"
    first = doc["eta"]
    assert math.isclose(first["distance_m"], 0.02 * M_PER_DEG_LAT, rel_tol=0.01)
    assert first["speed_basis"] == "recent" and first["speed_kmh"] == 60.0
    published = json.loads(next(p.payload for p in plan.publishes if p.topic.endswith("/state")))
    assert published["destination"]["name"] == "Crash site"
    assert published["eta"]["distance_m"] == first["distance_m"]

    remaining = [first["distance_m"]]
    seconds = [first["seconds"]]
    for step in range(1, 11):
        lat = H_LAT + step * 0.002
        await run(proc, store, [point(1 + 12 * step, lat, speed=60)])
        doc = await state(store)
        if doc["destination"]["arrived_at"] is not None:
            break
        remaining.append(doc["eta"]["distance_m"])
        seconds.append(doc["eta"]["seconds"])
    assert remaining == sorted(remaining, reverse=True) and len(remaining) >= 8
    assert seconds == sorted(seconds, reverse=True)
    assert doc["destination"]["arrived_at"] is not None
    assert doc["eta"]["distance_m"] == 0.0 and doc["eta"]["speed_basis"] == "arrived"
    # A point past the arrival is not a second arrival.
    await run(proc, store, [point(200, target_lat + 0.0001, speed=0)])
    events = await stored(store, EVENTS)
    arrivals = [(e["place_name"], e["at"]) for e in events if e["type"] == "arrival"]
    assert arrivals == [("Crash site", doc["destination"]["arrived_at"])]


async def test_a_stopped_ambulance_gets_the_floor_speed(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a stopped vehicle's ETA uses the documented floor, and says so."""
    proc = processor(store, objects, eta_floor_kmh=10.0)
    await run(proc, store, [point(0, H_LAT - 0.01, speed=0)])
    await run(proc, store, [command(
        "destination", 1, 1, destination={"type": "place", "place_id": "maharaj"},
    )])
    eta = (await state(store))["eta"]
    assert eta["speed_basis"] == "floor" and eta["speed_kmh"] == 10.0
    expected = (0.01 - HALF) * M_PER_DEG_LAT
    assert math.isclose(eta["distance_m"], expected, rel_tol=0.01)
    assert math.isclose(eta["seconds"], expected / (10 / 3.6), rel_tol=0.01)


async def test_arrival_at_a_destination_place_is_entering_it(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test a place destination: the arrival comes with the point inside the polygon."""
    proc = processor(store, objects)
    await run(proc, store, [point(0, SOUTH_EDGE - 0.003)])
    await run(proc, store, [command(
        "destination", 1, 1, destination={"type": "place", "place_id": "maharaj"},
    )])
    assert (await state(store))["destination"]["place_id"] == "maharaj"
    await run(proc, store, [point(30, SOUTH_EDGE - 0.0002)])
    assert (await state(store))["destination"]["arrived_at"] is None
    plan = await run(proc, store, [point(60, SOUTH_EDGE + 0.0002)])
    types = [e["event"]["type"] for e in room(plan, "events")]
    assert types == ["enter", "arrival"]
    assert (await state(store))["destination"]["arrived_at"] == at(60)
    # Cleared the same way it was set.
    await run(proc, store, [command("destination", 70, 2, destination=None)])
    doc = await state(store)
    assert doc["destination"] is None and doc["eta"] is None


async def test_a_crash_alarm_repeats_into_itself_and_moves_through_its_lifecycle(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test crash -> open alarm; a second crash updates it; ack, resolve; then a new one."""
    proc = processor(store, objects)
    first = await run(proc, store, [crash(0)])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["kind"] == "crash" and alarm["status"] == "open" and alarm["active"]
    assert alarm["address"] == "at Maharaj Hospital"
    assert room(first, "alarms")[0]["event"] == "opened"
    messages = alerts(first)
    assert [m["type"] for m in messages] == ["crash", "alarm"]
    assert messages[1]["alarm"]["id"] == alarm["_id"]

    # Past the crash dedup window: a new crash, but the same open alarm.
    await run(proc, store, [crash(120)])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["count"] == 2 and alarm["updated_at"] == at(120)

    acked = await run(proc, store, [command(
        "alarm", 130, 1, alarm_id=alarm["_id"], action="acknowledge", note="on it",
    )])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["status"] == "acknowledged" and alarm["acknowledged_by"] == "desk-1"
    assert room(acked, "alarms")[0]["event"] == "acknowledged"
    assert [m["alarm"]["status"] for m in alerts(acked)] == ["acknowledged"]

    await run(proc, store, [command(
        "alarm", 131, 2, alarm_id=alarm["_id"], action="acknowledge", note=None,
    )])
    refused = f"alarm {alarm['_id']} is acknowledged already"
    assert (await state(store))["commands"][-1] == {
        "id": "cmd-00000002", "ok": False, "reason": refused,
    }
    await run(proc, store, [command(
        "alarm", 140, 3, alarm_id=alarm["_id"], action="resolve", note="patient handed over",
    )])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["status"] == "resolved" and not alarm["active"]
    assert alarm["resolved_by"] == "desk-1" and alarm["note"] == "patient handed over"
    assert [t["action"] for t in alarm["transitions"]] == ["opened", "acknowledged", "resolved"]
    assert (await state(store))["alarms"] == {}

    await run(proc, store, [crash(300)])
    alarms = await stored(store, ALARMS)
    assert [(a["status"], a["count"]) for a in alarms] == [("resolved", 2), ("open", 1)]


async def test_a_redelivered_command_is_taken_once(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that the same command id twice leaves one entry and one transition."""
    proc = processor(store, objects)
    await run(proc, store, [crash(0)])
    (alarm,) = await stored(store, ALARMS)
    ack = command("alarm", 10, 1, alarm_id=alarm["_id"], action="acknowledge", note=None)
    await run(proc, store, [ack])
    again = await run(proc, store, [ack])
    assert again.counts == {"duplicate": 1}
    assert [c["id"] for c in (await state(store))["commands"]] == ["cmd-00000001"]


async def test_overspeed_raises_one_alarm_and_records_the_episode_end(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that an episode above the red limit opens an alarm that carries its end."""
    proc = processor(store, objects)
    speeds = [100, 130, 140, 125, 90]
    for s, speed in enumerate(speeds):
        await run(proc, store, [point(s, H_LAT + s * 0.001, speed=speed)])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["kind"] == "overspeed" and alarm["subject"] == "speed_above_120"
    assert alarm["address"] == "at Maharaj Hospital"  # where it began: on its edge
    assert alarm["details"]["started_at"] == at(1)
    assert alarm["details"]["ended_at"] == at(4)
    assert alarm["details"]["max_speed"] == 140
    assert [t["action"] for t in alarm["transitions"]] == ["opened", "ended"]


async def test_a_silent_ambulance_raises_one_offline_alarm_unless_parked_at_a_station(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test the offline rule through Check items, as the bridge's sweep queues them."""
    proc = processor(store, objects, offline_after_s=300.0)
    await run(proc, store, [point(0, H_LAT - 0.01)])
    early = await run(proc, store, [Check(AID, at(200))])
    assert early.counts == {"check": 1} and await stored(store, ALARMS) == []
    late = await run(proc, store, [Check(AID, at(400))])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["kind"] == "offline" and alarm["details"]["silent_since"] == at(0)
    assert room(late, "alarms")[0]["event"] == "opened"
    again = await run(proc, store, [Check(AID, at(800))])
    assert again.emits == [] and len(await stored(store, ALARMS)) == 1
    back = await run(proc, store, [point(900, H_LAT - 0.01)])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["details"]["back_at"] == at(900) and alarm["status"] == "open"
    assert room(back, "alarms")[0]["event"] == "updated"

    # Parked at the station: silence is sleep, not an alarm.
    await run(proc, store, [point(1000, S_LAT, S_LON, speed=0)])
    assert (await state(store))["places"] == ["station-1"]
    await run(proc, store, [Check(AID, at(2000))])
    assert len(await stored(store, ALARMS)) == 1
    assert (await state(store))["silence_handled"] is True


@pytest.mark.parametrize(
    ("kind", "fields", "reason"),
    [
        ("destination", {}, "destination: required"),
        ("destination", {"destination": {"type": "point", "lat": 91, "lon": 0}}, "lat:"),
        ("destination", {"destination": {"type": "place", "place_id": "a/b"}}, "place_id:"),
        ("alarm", {"alarm_id": "x", "action": "delete"}, "action:"),
        ("alarm", {"alarm_id": "a/b", "action": "resolve"}, "alarm_id:"),
    ],
)
def test_bad_commands_are_dead_letters_with_their_reason(
    kind: str, fields: dict[str, Any], reason: str
) -> None:
    """Test that a malformed command is refused with a reason naming the field."""
    item = command(kind, 0, 1, **fields)
    assert isinstance(item, Rejected) and reason in item.reason


def test_a_retained_command_is_refused() -> None:
    """Test that a retained dispatch message is never taken (it would replay at each connect)."""
    body = {"command_id": "cmd-00000001", "at": T0.isoformat(), "by": "x", "destination": None}
    item = parse(f"dispatch/{AID}/destination", json.dumps(body).encode(), T0, LIMITS,
                 retained=True)
    assert isinstance(item, Rejected) and item.reason.startswith("retain:")


async def test_a_place_another_bridge_knows_and_this_one_not_yet_is_never_entered_twice(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test a bridge without the places (not read yet) keeping the ambulance inside them."""
    knows, late = processor(store, objects), processor(store, objects)
    late.dispatch.places = PlaceIndex(())  # it has not read the places yet
    await run(knows, store, [point(0, H_LAT)])
    await run(late, store, [point(5, H_LAT)])
    assert (await state(store))["places"] == ["maharaj"]
    await run(processor(store, objects), store, [point(10, H_LAT)])
    events = await stored(store, EVENTS)
    assert [e["type"] for e in events] == ["enter"]
    # A place known to be removed is left silently: no exit, no longer inside.
    gone = processor(store, objects)
    gone.dispatch.places = PlaceIndex(())
    gone.dispatch.removed.add("maharaj")
    await run(gone, store, [point(15, H_LAT)])
    assert (await state(store))["places"] == []
    assert [e["type"] for e in await stored(store, EVENTS)] == ["enter"]


async def test_a_detailed_place_is_a_destination_by_id_its_geometry_kept_small(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test a 3,000-vertex hospital: the command names it, the state keeps <= 500 vertices."""
    ring = [
        [H_LON + HALF * math.cos(2 * math.pi * i / 3000),
         H_LAT + HALF * math.sin(2 * math.pi * i / 3000)]
        for i in range(3000)
    ]
    detailed = HOSPITAL | {"id": "detailed", "geometry": {
        "type": "Polygon", "coordinates": [[*ring, ring[0]]],
    }}
    await store.apply([Write(PLACES, "upsert", place_doc(places_from_geojson(detailed)[0]))])
    proc = processor(store, objects)  # its index lacks "detailed": read from the store
    await run(proc, store, [point(0, H_LAT - 0.01)])
    item = command("destination", 1, 1, destination={"type": "place", "place_id": "detailed"})
    await run(proc, store, [item])
    doc = await state(store)
    assert doc["destination"]["place_id"] == "detailed"
    coordinates = doc["destination_geometry"]["geometry"]["coordinates"][0]
    assert len(coordinates) <= 500
    plan = await run(processor(store, objects), store, [point(60, H_LAT)])
    assert [e["event"]["type"] for e in room(plan, "events")][-1] == "arrival"


async def test_refused_commands_are_recorded_for_the_api_waiting_on_them(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test an unknown place and a malformed command: each is a refusal with its reason."""
    proc = processor(store, objects)
    await run(proc, store, [point(0, H_LAT)])
    await run(proc, store, [command(
        "destination", 1, 1, destination={"type": "place", "place_id": "nowhere"},
    )])
    bad = command("destination", 2, 2, destination={"type": "point", "lat": 95, "lon": 0})
    assert isinstance(bad, Rejected)
    plan = await run(proc, store, [bad])
    assert plan.counts == {"dead_letter": 1}
    doc = await state(store)
    assert doc["commands"] == [
        {"id": "cmd-00000001", "ok": False, "reason": "no place 'nowhere'"},
        {"id": "cmd-00000002", "ok": False, "reason": bad.reason},
    ]
    assert doc["destination"] is None


async def test_a_replayed_retained_status_is_not_the_ambulance_coming_back(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that the broker's replay of a retained "online" leaves the offline alarm as it is."""
    proc = processor(store, objects, offline_after_s=300.0)
    await run(proc, store, [point(0, H_LAT - 0.01)])
    await run(proc, store, [Check(AID, at(400))])
    replayed = parse(f"aoc/{AID}/status", b"online", at(500), LIMITS, retained=True)
    await run(proc, store, [replayed])
    (alarm,) = await stored(store, ALARMS)
    assert [t["action"] for t in alarm["transitions"]] == ["opened"]
    # A snapshot is news of the ambulance: it ends the silence.
    body = {"images": [{"name": "a.jpg", "data": TINY_JPEG_B64}]}
    snap = parse(f"aoc/{AID}/snap", json.dumps(body).encode(), at(600), LIMITS)
    await run(proc, store, [snap])
    (alarm,) = await stored(store, ALARMS)
    assert alarm["details"]["back_at"] == at(600)
