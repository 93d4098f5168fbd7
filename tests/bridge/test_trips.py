"""Tests of the trips and stops rule (bridge.trips) through the processor, on a real SQLite store.

A simulated day on a fixed route with fixed stops, 1 Hz points built with
``bridge.validate.parse`` (the path real device messages take), planned in
batches of varied sizes. Expected distances are computed here, independently,
with the haversine formula over the same points.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.dispatch import Dispatch
from bridge.messages import Parsed, Plan
from bridge.places import PlaceIndex, places_from_geojson
from bridge.processor import Processor
from bridge.speed import SpeedRules
from bridge.trips import TripRules, Trips
from bridge.validate import Limits, parse
from storage.base import AMBULANCES, STOPS, TRIPS, Conflict, Document, DocumentStore, Query
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests.images import TINY_JPEG

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
AID = "amb-9"
M_PER_DEG_LAT = 111_195.0  # near enough: positions only need to be fixed, not round
S_LAT, S_LON = 18.70, 98.95
CRUISE = 60.0  # km/h
FAST = 130.0  # above the red limit (120)
FAST_FROM, FAST_TO = 800, 860  # seconds of the day at FAST (the point at FAST_TO is not)
CRASH_AT, SNAP_AT = 900, 1500
SLOWDOWN_FROM, SLOWDOWN_TO = 2700, 2760  # a minute at 2 km/h: shorter than a stop


def _circle(place_id: str, name: str, kind: str, centre: tuple[float, float], radius: float) -> Any:
    lat, lon = centre
    return {
        "type": "Feature",
        "id": place_id,
        "properties": {"name": name, "kind": kind, "radius_m": radius},
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }


# The way back: as far as the way north (60 s of it at FAST), at one speed but for
# the slow-down, so that it ends at the station.
NORTH_M = (540 * CRUISE + 60 * FAST) / 3.6
BACK = (NORTH_M - 60 * 2.0 / 3.6) / 540 * 3.6


def _speed(second: int) -> float:
    """The day: parked 10 min, north 10 min, 20 min at the hospital, back 10 min, parked."""
    if second < 600 or 1200 <= second < 2400 or second >= 3000:
        return 0.0
    if FAST_FROM <= second < FAST_TO:
        return FAST
    if SLOWDOWN_FROM <= second < SLOWDOWN_TO:
        return 2.0
    return CRUISE if second < 1200 else BACK


def _route() -> list[tuple[int, float, float, float]]:
    """(second, lat, lon, speed) at 1 Hz: each point moved by the previous point's speed.

    Parked points jitter by about a metre (GPS noise): distance that a stop's
    slow stretch covers must not count in the trip it ends.
    """
    points = []
    north = 0.0  # metres from the station
    heading = 1.0
    for second in range(3600):
        if second == 2400:
            heading = -1.0
        if second:
            north += heading * _speed(second - 1) / 3.6
        jitter = 0.0 if _speed(second) else (1.0 if second % 2 else -1.0)
        lat = S_LAT + (north + jitter) / M_PER_DEG_LAT
        points.append((second, lat, S_LON, _speed(second)))
    return points


ROUTE = _route()
H_LAT = ROUTE[1200][1]  # the hospital is where the drive north ends
STATION = _circle("station-1", "Station 1", "station", (S_LAT, S_LON), 80)
HOSPITAL = _circle("maharaj", "Maharaj Hospital", "hospital", (H_LAT, S_LON), 150)


def haversine(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle metres, written out here so the test does not reuse the code it checks."""
    radius = 6_371_008.8
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * radius * math.asin(math.sqrt(h))


def route_distance(first: int, last: int) -> float:
    """Metres along the route's points from second ``first`` to second ``last``."""
    legs = zip(ROUTE[first:last], ROUTE[first + 1 : last + 1], strict=True)
    return sum(haversine(a[1:3], b[1:3]) for a, b in legs)


def at(second: float) -> datetime:
    return T0 + timedelta(seconds=second)


def point(second: int, speed: float | None = None) -> Parsed:
    """The route's point at ``second`` (at another ``speed`` if given)."""
    _, lat, lon, route_speed = ROUTE[second]
    speed = route_speed if speed is None else speed
    body = {"lat": lat, "lon": lon, "speed": speed, "ts": T0_MS + second * 1000}
    return parse(f"aoc/{AID}/tracking", json.dumps(body).encode(), at(second), LIMITS)


def crash(second: int) -> Parsed:
    _, lat, lon, speed = ROUTE[second]
    body = {"lat": lat, "lon": lon, "speed": speed, "ts": T0_MS + second * 1000 + 500}
    return parse(f"aoc/{AID}/crash", json.dumps(body).encode(), at(second), LIMITS)


def snap(second: int) -> Parsed:
    images = [{"name": "front.jpg", "data": base64.b64encode(TINY_JPEG).decode()}]
    body = {"images": images, "ts": T0_MS + second * 1000 + 500}
    return parse(f"aoc/{AID}/snap", json.dumps(body).encode(), at(second), LIMITS)


def day() -> list[Parsed]:
    """The day's messages in order: points, a crash on the way north, a snap at the hospital."""
    items: list[Parsed] = []
    for second in range(3600):
        items.append(point(second))
        if second == CRASH_AT:
            items.append(crash(second))
        if second == SNAP_AT:
            items.append(snap(second))
    return items


Batches = list[list[Parsed]]


def batches(items: list[Parsed], sizes: tuple[int, ...] = (1, 7, 50, 233, 500)) -> Batches:
    """``items`` cut in batches of the ``sizes``, in turn."""
    out: Batches = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(items):
            return out
        out.append(items[start : start + size])
        start += size
    raise AssertionError("unreachable")


def processor(
    store: DocumentStore, objects: LocalObjectStore, *, shared: bool = False
) -> Processor:
    places = PlaceIndex(places_from_geojson({"type": "FeatureCollection",
                                             "features": [STATION, HOSPITAL]}))
    return Processor(
        store=store, objects=objects, rules=SpeedRules(), crash_dedup_s=60.0, maps_key=None,
        dead_letter_payload_bytes=64, shared=shared, dispatch=Dispatch(places=places),
        trips=Trips(TripRules(stop_kmh=5.0, stop_min_s=300.0)),
    )


async def run(proc: Processor, store: DocumentStore, items: list[Parsed]) -> Plan:
    """Plan and apply, planning again on a conflict as the bridge does (bridge.service)."""
    for _ in range(10):
        plan = await proc.plan(items)
        try:
            await store.apply(plan.writes)
        except Conflict:
            continue
        proc.applied(plan)
        return plan
    raise AssertionError("conflicts without end")


async def stored(store: DocumentStore, collection: str) -> list[Document]:
    docs = (await store.find(Query(collection, limit=1000))).items
    return sorted(docs, key=lambda doc: doc["started_at"])


def upserts(plans: list[Plan], collection: str) -> list[Document]:
    return [w.doc for plan in plans for w in plan.writes if w.collection == collection]


async def test_a_simulated_day_reproduces_known_trips_and_stops_exactly(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test counts, times, durations, distances, speeds, overspeed, places, crashes, snaps."""
    proc = processor(store, objects)
    for batch in batches(day()):
        await run(proc, store, batch)

    trips, stops = await stored(store, TRIPS), await stored(store, STOPS)
    assert [(t["started_at"], t["ended_at"]) for t in trips] == [
        (at(600), at(1200)), (at(2400), at(3000)),
    ]
    # The minute at 2 km/h on the way back is shorter than a stop: part of the trip.
    assert [(s["started_at"], s["ended_at"]) for s in stops] == [
        (at(0), at(600)), (at(1200), at(2400)), (at(3000), None),
    ]
    north, back = trips
    assert north["_id"] == f"{AID}.trip.{T0_MS + 600_000}"
    assert north["distance_m"] == pytest.approx(route_distance(600, 1200), abs=0.1)
    assert back["distance_m"] == pytest.approx(route_distance(2400, 3000), abs=0.1)
    # About 10 km each way (60 s of it at 130 km/h): the fixtures are what they claim.
    assert 10_000 < north["distance_m"] < 12_000
    for trip in trips:
        assert (trip["duration_s"], trip["points"], trip["open"]) == (600.0, 601, False)
        assert trip["avg_speed"] == pytest.approx(trip["distance_m"] / 600 * 3.6)
    assert (north["max_speed"], back["max_speed"]) == (FAST, BACK)
    assert (north["overspeed_s"], north["overspeed_episodes"]) == (60.0, 1)
    assert (back["overspeed_s"], back["overspeed_episodes"]) == (0.0, 0)
    assert north["start_location"] == {"lat": ROUTE[600][1], "lon": S_LON}
    assert north["end_location"] == {"lat": ROUTE[1200][1], "lon": S_LON}
    assert (north["start_place"], north["end_place"]) == ("at Station 1", "at Maharaj Hospital")
    assert (back["start_place"], back["end_place"]) == ("at Maharaj Hospital", "at Station 1")
    assert [(t["crashes"], t["snapshots"]) for t in trips] == [(1, 0), (0, 0)]

    parked, hospital, again = stops
    assert (parked["duration_s"], hospital["duration_s"]) == (600.0, 1200.0)
    assert [s["place_id"] for s in stops] == ["station-1", "maharaj", "station-1"]
    assert hospital["place"] == "at Maharaj Hospital"
    assert hospital["location"] == {"lat": ROUTE[1200][1], "lon": S_LON}
    assert [(s["crashes"], s["snapshots"]) for s in stops] == [(0, 0), (0, 1), (0, 0)]
    assert [s["open"] for s in stops] == [False, False, True]
    # The open stop as of its last checkpoint: the first point of its 10th minute (3540 s).
    assert again["duration_s"] == 540.0
    motion = (await store.get(AMBULANCES, AID) or {})["motion"]
    assert motion["trip"] is None and motion["stop"]["_id"] == again["_id"]


async def test_a_short_slow_down_is_not_a_stop(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test a slow stretch one point short of the minimum: the trip goes on, whole."""
    proc = processor(store, objects)
    # Driving, then 299 s below the speed (300 points: 0..299 s after it slowed), then on.
    items = [point(s) for s in range(600, 700)] + [point(s, 1.0) for s in range(700, 1000)]
    await run(proc, store, [*items, point(1000)])
    [trip] = await stored(store, TRIPS)
    assert await stored(store, STOPS) == []
    assert trip["open"] is True
    assert trip["started_at"] == at(600)
    # One more point below the speed, at 300 s: now it is a stop, from where it slowed.
    proc2 = processor(store, objects)
    await run(proc2, store, [point(s, 1.0) for s in range(1001, 1302)])
    [stop] = await stored(store, STOPS)
    assert stop["started_at"] == at(1001)


async def test_a_redelivered_batch_changes_no_trip_or_stop(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that points planned again (same or another processor) write nothing new."""
    proc = processor(store, objects)
    items = day()[:1500]
    for batch in batches(items):
        await run(proc, store, batch)
    before = (await stored(store, TRIPS), await stored(store, STOPS))
    for again in (proc, processor(store, objects)):
        plan = await run(again, store, items[1100:1400])
        assert upserts([plan], TRIPS) == upserts([plan], STOPS) == []
    assert (await stored(store, TRIPS), await stored(store, STOPS)) == before


async def test_an_open_trip_is_written_once_a_minute_not_once_a_point(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test the checkpoint over 10 minutes of 1 Hz points, one batch each."""
    proc = processor(store, objects)
    plans = [await run(proc, store, [point(s)]) for s in range(600, 1200)]
    written = upserts(plans, TRIPS)
    # When it opens (600 s), then the first point of each new minute (660 ... 1140 s).
    assert len(written) == 10
    assert [doc["duration_s"] for doc in written] == [60.0 * n for n in range(10)]
    assert all(doc["open"] and doc["ended_at"] is None for doc in written)
    # Each a snapshot of its time, not the state's document moving on.
    assert [doc["points"] for doc in written] == [1 + 60 * n for n in range(10)]
    assert written[-1]["distance_m"] == pytest.approx(route_distance(600, 1140), abs=0.1)
    assert written[-1]["end_location"] == {"lat": ROUTE[1140][1], "lon": S_LON}


async def test_two_processors_sharing_the_store_give_the_trips_of_one(
    tmp_path: Path, store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test shared mode: batches alternate between two bridges, some planned by both at once."""
    first, second = processor(store, objects, shared=True), processor(store, objects, shared=True)
    for number, batch in enumerate(batches(day(), (40, 300, 9, 120))):
        if number % 5 == 4:
            # Both plan the same batch from the same version: one conflicts and plans again.
            plans = [await first.plan(batch), await second.plan(batch)]
            await store.apply(plans[0].writes)
            first.applied(plans[0])
            with pytest.raises(Conflict):
                await store.apply(plans[1].writes)
            await run(second, store, batch)
        else:
            await run(first if number % 2 else second, store, batch)

    async with SQLiteDocumentStore(tmp_path / "alone.sqlite3") as alone:
        one = processor(alone, objects)
        for batch in batches(day()):
            await run(one, alone, batch)
        expected = (await stored(alone, TRIPS), await stored(alone, STOPS))
    assert (await stored(store, TRIPS), await stored(store, STOPS)) == expected
    assert (len(expected[0]), len(expected[1])) == (2, 3)


def late_point(second: float, east_m: float) -> Parsed:
    """A point at ``second`` (between two of the route's), ``east_m`` off the line."""
    lat = ROUTE[int(second)][1]
    lon = S_LON + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
    body = {"lat": lat, "lon": lon, "speed": CRUISE, "ts": T0_MS + int(second * 1000)}
    return parse(f"aoc/{AID}/tracking", json.dumps(body).encode(), at(second), LIMITS)


async def test_a_late_point_while_slowing_down_takes_nothing_off_its_trip(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test a late point (a detour on the way north) arriving before the stop is confirmed.

    It moves ``covered_distance`` (bridge.late), not the trip: the trip keeps the
    distance it had when the slow stretch started.
    """
    proc = processor(store, objects)
    await run(proc, store, [point(s) for s in range(600, 1251)])
    await run(proc, store, [late_point(900.5, 500.0)])
    await run(proc, store, [point(s) for s in range(1251, 1560)])
    [trip] = await stored(store, TRIPS)
    assert (trip["started_at"], trip["ended_at"]) == (at(600), at(1200))
    assert trip["distance_m"] == pytest.approx(route_distance(600, 1200), abs=0.1)


async def test_a_trip_that_opens_above_the_red_limit_counts_its_episode(
    store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test a trip whose first point opens an overspeed episode (after a silent stop)."""
    proc = processor(store, objects)
    await run(proc, store, [point(s) for s in range(400)])
    fast = [point(s, FAST) for s in range(600, 660)]
    await run(proc, store, [*fast, *(point(s, CRUISE) for s in range(660, 700))])
    [trip] = await stored(store, TRIPS)
    assert trip["started_at"] == at(600)
    assert (trip["overspeed_s"], trip["overspeed_episodes"]) == (60.0, 1)
