"""Dispatch end to end: places, destinations and ETAs, arrivals, alarms, on real processes.

Two bridges share the stream (an `aoc serve` and an `aoc bridge` in one share
group, on one store), so every event and alarm below also shows that a second
bridge duplicates nothing. Devices publish over MQTT; the dispatcher uses the
HTTP API with a dispatch token; a Socket.IO client (python-socketio) and an
MQTT subscriber watch the alarms.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import gpxpy
import httpx
import pytest
import socketio

from tests import services
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.e2e

H_LAT, H_LON, HALF = 18.7897, 98.9737, 0.001  # a square hospital, ~220 m a side
M_PER_DEG = 111_195.0


def hospital(place_id: str) -> dict[str, Any]:
    ring = [
        [H_LON - HALF, H_LAT - HALF], [H_LON + HALF, H_LAT - HALF],
        [H_LON + HALF, H_LAT + HALF], [H_LON - HALF, H_LAT + HALF],
        [H_LON - HALF, H_LAT - HALF],
    ]
    return {
        "type": "Feature",
        "id": place_id,
        "properties": {"name": f"Hospital {place_id}", "kind": "hospital"},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


@dataclass
class Dispatch:
    """Two bridges on one store, and the dispatcher's and devices' ways in."""

    serve: services.AocService
    bridge: services.AocService
    mqtt_port: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def stack(
    mosquitto: services.Service,
    redis_server: services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dispatch]:
    workdir = tmp_path_factory.mktemp("dispatch")
    group = f"dispatch-{uuid.uuid4().hex[:6]}"
    env = {
        "AOC_DATA_DIR": str(workdir / "data"),
        "AOC_SHARE_GROUP": group,
        "AOC_PLACES_REFRESH_SECONDS": "0.3",
        "AOC_OFFLINE_AFTER_SECONDS": "10",
        "AOC_GEOFENCE_MARGIN_M": "30",
        "AOC_STOP_MIN_SECONDS": "60",  # a stop: a minute below 5 km/h
    }
    serve = services.aoc(
        "serve", workdir / "serve", mqtt_port=mosquitto.port, redis_port=redis_server.port,
        env=env | {"AOC_MQTT_CLIENT_ID": f"{group}-1"},
    )
    bridge = services.aoc(
        "bridge", workdir / "bridge", mqtt_port=mosquitto.port, redis_port=redis_server.port,
        env=env | {
            "AOC_MQTT_CLIENT_ID": f"{group}-2",
            "AOC_SPOOL_DIR": str(workdir / "bridge" / "spool"),  # its own, the store shared
        },
    )
    with serve, bridge:
        token = services.api_token(serve.env, dispatch=True)
        yield Dispatch(serve, bridge, mosquitto.port, token)
    print(serve.log_tail(40))
    print(bridge.log_tail(40))


@pytest.fixture
async def http(stack: Dispatch) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{stack.serve.port}"
    async with httpx.AsyncClient(base_url=base, timeout=15, headers=stack.headers) as client:
        yield client


@pytest.fixture
def aid() -> str:
    return f"D-{uuid.uuid4().hex[:8]}"


@dataclass
class Watcher:
    """A Socket.IO client in the alarms and events rooms, with the dispatch token."""

    client: socketio.AsyncClient
    received: list[dict[str, Any]] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)

    def of(self, aid: str, kind: str) -> list[dict[str, Any]]:
        return [
            m[kind] for m in self.received
            if m.get("type") == kind and m[kind]["ambulance_id"] == aid
        ]


@pytest.fixture
async def watcher(stack: Dispatch) -> AsyncIterator[Watcher]:
    client = socketio.AsyncClient(reconnection=False)
    watcher = Watcher(client)

    @client.on("data")
    async def on_data(data: str) -> None:
        if data.startswith("room joined: "):  # the answer to room_join, not JSON
            watcher.joined.append(data.removeprefix("room joined: "))
            return
        message = json.loads(data)
        if isinstance(message, dict):
            watcher.received.append(message)

    url = f"http://127.0.0.1:{stack.serve.env['AOC_SOCKETIO_PORT']}"
    await client.connect(url, auth={"token": stack.token}, transports=["websocket"])
    for room in ("alarms", "events"):
        await client.emit("room_join", room)
    await eventually(lambda: _joined(watcher))
    yield watcher
    await client.disconnect()


async def _joined(watcher: Watcher) -> bool:
    return sorted(watcher.joined) == ["alarms", "events"]


# Device times start ten minutes before the module: fixed, so a paced drive keeps the
# gaps it was given, and every point stays in the past.
START = time.time() - 600


def device_ms(offset_s: float) -> int:
    """A device time ``offset_s`` seconds after START."""
    return int((START + offset_s) * 1000)


async def drive(
    stack: Dispatch, aid: str, points: list[tuple[float, float, float]], *, paced: bool = True
) -> None:
    """Publish points (lat, speed km/h, seconds from start) one by one, each acknowledged.

    ``paced``: each stored before the next is sent, as a device at 1 Hz would have
    it. A burst is split between the two bridges, and a point one of them stores
    after a newer one is late: it moves no place, trip or ETA (README, The rules).
    """
    stored = len(await _stored_points(stack, aid))
    async with aiomqtt.Client("127.0.0.1", stack.mqtt_port) as device:
        for lat, speed, second in points:
            body = {"lat": lat, "lon": H_LON, "speed": speed, "ts": device_ms(second)}
            await device.publish(f"aoc/{aid}/tracking", json.dumps(body), qos=1)
            stored += 1
            if paced:
                await eventually(lambda n=stored: _has(stack, aid, n), timeout=15)


async def _has(stack: Dispatch, aid: str, count: int) -> bool:
    return len(await _stored_points(stack, aid)) >= count


async def _stored_points(stack: Dispatch, aid: str) -> list[Any]:
    url = f"http://127.0.0.1:{stack.serve.port}/api/v1/ambulances/{aid}/track"
    async with httpx.AsyncClient(timeout=10, headers=stack.headers) as http:
        answer = await http.get(url, params={"limit": 1000})
    return list(answer.json()["items"]) if answer.status_code == 200 else []


async def import_place(stack: Dispatch, http: httpx.AsyncClient, place_id: str) -> None:
    answer = await http.post("/api/v1/places", json=hospital(place_id))
    assert answer.status_code == 200, answer.text
    in_use = len((await http.get("/api/v1/places")).json()["features"])

    async def both_read_it() -> bool:
        # Each bridge logs the places it uses when they change (every 0.3 s here);
        # under load that can take a while, and points planned before it enter nothing.
        line = f"places: {in_use} in use"
        return all(line in part.log_path.read_text(errors="replace")
                   for part in (stack.serve, stack.bridge))

    await eventually(both_read_it, timeout=30)


async def events(http: httpx.AsyncClient, aid: str) -> list[dict[str, Any]]:
    answer = await http.get("/api/v1/events", params={"ambulance_id": aid, "order": "oldest"})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_driving_into_a_hospital_over_a_jittering_edge_is_one_enter(
    stack: Dispatch, http: httpx.AsyncClient, watcher: Watcher, aid: str
) -> None:
    """Test exactly one `enter`, stored once and emitted once, with two bridges sharing it."""
    place_id = f"h-{aid.lower()}"
    await import_place(stack, http, place_id)
    edge, metre = H_LAT - HALF, 1 / M_PER_DEG
    approach = [(edge - (200 - 40 * i) * metre, 30.0, i * 5.0) for i in range(5)]
    jitter = [(edge + (8 if i % 2 == 0 else -8) * metre, 5.0, 25 + i * 5.0) for i in range(12)]
    await drive(stack, aid, [*approach, *jitter])

    async def entered() -> list[dict[str, Any]]:
        found = await events(http, aid)
        return found if len(watcher.of(aid, "event")) >= 1 and found else []

    found = await eventually(entered, timeout=20)
    await asyncio.sleep(1.0)  # anything duplicated would have come by now
    found = await events(http, aid)
    assert [(e["type"], e["place_id"]) for e in found] == [("enter", place_id)]
    assert [e["type"] for e in watcher.of(aid, "event")] == ["enter"]
    state = (await http.get(f"/api/v1/ambulances/{aid}")).json()
    assert state["places"] == [place_id]


async def test_a_destination_set_through_the_api_shrinks_its_eta_then_arrives(
    stack: Dispatch, http: httpx.AsyncClient, watcher: Watcher, aid: str
) -> None:
    """Test PUT destination, an ETA that goes down point by point, then one arrival event."""
    place_id = f"h-{aid.lower()}"
    await import_place(stack, http, place_id)
    start = H_LAT - HALF - 0.01  # ~1.1 km south of the hospital
    await drive(stack, aid, [(start, 40.0, 0.0)])
    await eventually(lambda: _known(http, aid), timeout=15)

    answer = await http.put(f"/api/v1/ambulances/{aid}/destination", json={"place_id": place_id})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["destination"]["place_id"] == place_id
    distances = [body["eta"]["distance_m"]]
    assert abs(distances[0] - 0.01 * M_PER_DEG) < 0.02 * 0.01 * M_PER_DEG

    for step in range(1, 5):  # to ~220 m short of the edge
        lat = start + step * 0.002
        await drive(stack, aid, [(lat, 40.0, step * 18.0)])

        async def moved(step: int = step) -> float | None:
            state = (await http.get(f"/api/v1/ambulances/{aid}")).json()
            eta = state.get("eta")
            near = eta is not None and eta["distance_m"] < distances[-1]
            return eta["distance_m"] if near else None

        distances.append(await eventually(moved, timeout=15))  # type: ignore[arg-type]
    assert distances == sorted(distances, reverse=True)
    await drive(stack, aid, [(H_LAT, 10.0, 120.0)])

    async def arrived() -> list[dict[str, Any]]:
        return [e for e in await events(http, aid) if e["type"] == "arrival"]

    (arrival,) = await eventually(arrived, timeout=15)  # type: ignore[misc]
    assert arrival["place_id"] == place_id
    state = (await http.get(f"/api/v1/ambulances/{aid}")).json()
    assert state["destination"]["arrived_at"] is not None
    assert state["eta"]["distance_m"] == 0.0
    assert [e["type"] for e in watcher.of(aid, "event")].count("arrival") == 1


async def _known(http: httpx.AsyncClient, aid: str) -> bool:
    return (await http.get(f"/api/v1/ambulances/{aid}")).status_code == 200


async def test_a_silent_ambulance_raises_an_offline_alarm(
    stack: Dispatch, http: httpx.AsyncClient, watcher: Watcher, aid: str
) -> None:
    """Test that no message for AOC_OFFLINE_AFTER_SECONDS (10 s here) opens one offline alarm."""
    await drive(stack, aid, [(H_LAT - 0.05, 50.0, 0.0)])

    async def offline() -> list[dict[str, Any]]:
        answer = await http.get("/api/v1/alarms", params={"ambulance_id": aid, "status": "open"})
        return [a for a in answer.json()["items"] if a["kind"] == "offline"]

    (alarm,) = await eventually(offline, timeout=40)  # type: ignore[misc]
    assert alarm["details"]["back_at"] is None
    await asyncio.sleep(4.0)  # two more sweeps of each bridge: still one alarm
    assert len(await offline()) == 1
    assert [a["kind"] for a in watcher.of(aid, "alarm")] == ["offline"]


async def test_a_crash_alarm_is_acknowledged_and_resolved_through_the_api(
    stack: Dispatch, http: httpx.AsyncClient, watcher: Watcher, aid: str
) -> None:
    """Test one crash alarm; ack and resolve through the API reach Socket.IO and MQTT."""
    async with aiomqtt.Client("127.0.0.1", stack.mqtt_port) as dashboard:
        await dashboard.subscribe(f"aoc/{aid}/alert", qos=1)
        crash = {"lat": H_LAT, "lon": H_LON, "speed": 0, "ts": device_ms(0)}
        async with aiomqtt.Client("127.0.0.1", stack.mqtt_port) as device:
            await device.publish(f"aoc/{aid}/crash", json.dumps(crash), qos=1)

        async def opened() -> list[dict[str, Any]]:
            answer = await http.get("/api/v1/alarms", params={"ambulance_id": aid})
            return list(answer.json()["items"])

        (alarm,) = await eventually(opened, timeout=15)  # type: ignore[misc]
        assert alarm["kind"] == "crash" and alarm["status"] == "open"
        assert alarm["address"]  # the nearest town, found offline
        acked = await http.post(f"/api/v1/alarms/{alarm['id']}/ack", json={"note": "on it"})
        assert acked.status_code == 200, acked.text
        assert acked.json()["status"] == "acknowledged"
        resolved = await http.post(
            f"/api/v1/alarms/{alarm['id']}/resolve", json={"note": "patient handed over"}
        )
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["resolved_by"] == resolved.json()["acknowledged_by"]
        again = await http.post(f"/api/v1/alarms/{alarm['id']}/ack", json={})
        assert again.status_code == 409

        seen: list[str] = []
        async with asyncio.timeout(15):
            async for message in dashboard.messages:
                body = json.loads(message.payload)  # type: ignore[arg-type]
                seen.append(body["event"] if body["type"] == "alarm" else "crash record")
                if body["type"] == "alarm" and body["event"] == "resolved":
                    break
    assert seen == ["crash record", "opened", "acknowledged", "resolved"]
    statuses = [a["status"] for a in watcher.of(aid, "alarm")]
    assert statuses == ["open", "acknowledged", "resolved"]
    (stored,) = await opened()
    assert [t["action"] for t in stored["transitions"]] == ["opened", "acknowledged", "resolved"]


async def test_a_drive_and_a_stop_come_back_as_a_trip_a_stop_a_summary_and_a_gpx_track(
    stack: Dispatch, http: httpx.AsyncClient, aid: str
) -> None:
    """Test the history end to end: points in, then the reports and the export read back."""
    start = H_LAT - 0.05
    moving = [(start + i * 0.001, 50.0, i * 10.0) for i in range(10)]  # 90 s, ~1 km north
    parked = [(start + 0.009, 0.0, 100.0 + i * 20.0) for i in range(6)]  # 100 s still
    again = [(start + 0.009 + i * 0.001, 40.0, 220.0 + i * 10.0) for i in range(1, 4)]
    sent = [*moving, *parked, *again]
    await drive(stack, aid, sent)

    async def all_stored() -> bool:
        answer = await http.get(f"/api/v1/ambulances/{aid}/track", params={"limit": 100})
        return answer.status_code == 200 and len(answer.json()["items"]) == len(sent)

    # Each bridge takes its share; one that just started may still be warming up.
    await eventually(all_stored, timeout=20)
    # From START's day to the next: points near midnight may fall on either.
    first, last = (time.strftime("%Y-%m-%d", time.gmtime(START + d)) for d in (0, 86_400))
    window = {"ambulance_id": aid, "from": first, "to": last, "tz": "UTC"}

    async def closed_trip() -> list[dict[str, Any]]:
        answer = await http.get("/api/v1/reports/trips", params=window | {"order": "oldest"})
        assert answer.status_code == 200, answer.text
        return [t for t in answer.json()["items"] if t["ended_at"] is not None]

    (trip,) = await eventually(closed_trip, timeout=20)  # type: ignore[misc]
    # Two bridges share the stream: a point the second takes after a newer one is late,
    # and late points move no trip (README, History): its start may be a point later.
    leg = 0.001 * M_PER_DEG
    assert 7 * leg - 5 < trip["distance_m"] < 9 * leg + 5
    assert trip["max_speed"] == 50.0
    stops = (await http.get("/api/v1/reports/stops", params=window)).json()["items"]
    assert [s["ended_at"] is not None for s in stops] == [True]
    assert 100 <= stops[0]["duration_s"] <= 130
    summary = (await http.get("/api/v1/reports/summary", params=window)).json()
    (row,) = [r for r in summary["ambulances"] if r["ambulance_id"] == aid]
    assert row["trips"] == 2 and row["stops"] == 1
    gpx = await http.get(f"/api/v1/ambulances/{aid}/track.gpx")
    assert gpx.status_code == 200, gpx.text
    parsed = gpxpy.parse(gpx.text)
    points = [p for track in parsed.tracks for seg in track.segments for p in seg.points]
    assert len(points) == len(sent)
