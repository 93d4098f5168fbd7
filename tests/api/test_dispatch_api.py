"""The dispatch API on a real SQLite store and a real Mosquitto.

Where a command must be applied, a stand-in bridge (``dispatch_standin``) plays
the bridge's part by writing the store; the real bridge's end-to-end test is
elsewhere. Tests named ``..._with_stand_in_bridge`` use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import ApiDeps
from api.tokens import create_token
from broker.client import MqttClient
from storage.base import ALARMS, AMBULANCES, AUDIT, EVENTS, PLACES, Query, Write
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.api.conftest import client_for
from tests.api.dispatch_standin import StandInBridge, stand_in_bridge

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
async def dispatcher(store: SQLiteDocumentStore) -> str:
    return await create_token(store, "desk-1", None, actor="tests", dispatch=True)


@pytest.fixture
async def bridge(
    store: SQLiteDocumentStore, mosquitto: services.Service
) -> AsyncIterator[StandInBridge]:
    async with stand_in_bridge(store, mosquitto.port) as running:
        yield running


@pytest.fixture
async def desk(deps: ApiDeps, dispatcher: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(deps, dispatcher) as client:
        yield client


async def seed_ambulance(store: SQLiteDocumentStore, aid: str) -> None:
    await store.apply([Write(AMBULANCES, "upsert", {
        "_id": aid, "ambulance_id": aid, "last_seen": T0,
        "location": {"lat": 13.75, "lon": 100.5}, "online": True,
    })])


async def seed_place(store: SQLiteDocumentStore, place_id: str, *, removed: bool = False) -> None:
    await store.apply([Write(PLACES, "upsert", {
        "_id": place_id, "name": "Siriraj Hospital", "kind": "hospital",
        "geometry": {"type": "Point", "coordinates": [100.4856, 13.7593]}, "radius_m": 150.0,
        "updated_at": T0, "removed_at": T0 if removed else None, "ambulance_id": None,
    })])


def alarm_doc(aid: str, n: int, *, status: str = "open", kind: str = "crash") -> dict[str, Any]:
    opened = T0 + timedelta(minutes=n)
    return {
        "_id": f"{aid}.{kind}.{int(opened.timestamp() * 1000)}", "ambulance_id": aid,
        "kind": kind, "subject": None, "status": status, "active": status != "resolved",
        "opened_at": opened, "updated_at": opened, "count": 1,
        "location": {"lat": 13.7, "lon": 100.5}, "address": None, "details": {"speed": 61.0},
        "acknowledged_at": None, "acknowledged_by": None, "resolved_at": None,
        "resolved_by": None, "note": None,
        "transitions": [{"action": "opened", "at": opened, "by": None, "note": None,
                         "command_id": None}],
    }


async def audit_records(store: SQLiteDocumentStore) -> list[dict[str, Any]]:
    records = (await store.find(Query(AUDIT, limit=100))).items
    return [r for r in records if r["action"].startswith(("dispatch.", "alarm."))]


# --- permission ------------------------------------------------------------------------------


async def test_read_only_and_foreign_tokens_may_not_dispatch(
    deps: ApiDeps, store: SQLiteDocumentStore, bridge: StandInBridge, ambulance_id: str
) -> None:
    """Test 403 for a read-only token and for a dispatch token limited to other ambulances."""
    await seed_ambulance(store, ambulance_id)
    alarm = alarm_doc(ambulance_id, 1)
    await store.apply([Write(ALARMS, "insert", alarm)])
    reader = await create_token(store, "reader", None, actor="tests")
    foreign = await create_token(store, "other-desk", ["AMB-OTHER"], actor="tests", dispatch=True)
    point = {"lat": 13.7, "lon": 100.5}
    for token, why in ((reader, "read-only"), (foreign, "may not dispatch")):
        async with client_for(deps, token) as client:
            answers = [
                await client.put(f"/api/v1/ambulances/{ambulance_id}/destination", json=point),
                await client.delete(f"/api/v1/ambulances/{ambulance_id}/destination"),
                await client.post(f"/api/v1/alarms/{alarm['_id']}/ack"),
                await client.post(f"/api/v1/alarms/{alarm['_id']}/resolve", json={"note": "x"}),
            ]
        for answer in answers:
            assert answer.status_code == 403, answer.text
            assert why in answer.json()["detail"]
    await asyncio.sleep(0.3)  # what a publish would have taken to arrive
    assert bridge.received == []
    assert await audit_records(store) == []


async def test_limited_dispatch_token_dispatches_its_own_with_stand_in_bridge(
    deps: ApiDeps, store: SQLiteDocumentStore, bridge: StandInBridge, ambulance_id: str
) -> None:
    """Test that a dispatch token limited to an ambulance may send it somewhere."""
    await seed_ambulance(store, ambulance_id)
    bridge.serves.add(ambulance_id)
    own = await create_token(store, "crew-desk", [ambulance_id], actor="tests", dispatch=True)
    async with client_for(deps, own) as client:
        answer = await client.put(
            f"/api/v1/ambulances/{ambulance_id}/destination", json={"lat": 13.7, "lon": 100.5}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["destination"]["type"] == "point"


# --- destinations ----------------------------------------------------------------------------


async def test_destination_by_place_with_stand_in_bridge(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, bridge: StandInBridge,
    ambulance_id: str,
) -> None:
    """Test a place destination: the command published, the state's destination answered."""
    await seed_ambulance(store, ambulance_id)
    await seed_place(store, "siriraj")
    bridge.serves.add(ambulance_id)
    answer = await desk.put(
        f"/api/v1/ambulances/{ambulance_id}/destination", json={"place_id": "siriraj"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ambulance_id"] == ambulance_id
    assert body["destination"]["place_id"] == "siriraj"
    assert body["destination"]["location"] == {"lat": 13.7593, "lon": 100.4856}
    assert body["destination"]["set_by"] == "desk-1"
    assert body["destination"]["set_at"].startswith("20")  # ISO text
    assert body["eta"]["distance_m"] == 1234.6  # rounded on the way out
    assert body["eta"]["speed_kmh"] == 40.0
    [sent] = bridge.received
    assert sent.topic == f"dispatch/{ambulance_id}/destination"
    assert sent.retain is False
    command = sent.payload
    assert re.fullmatch(r"[0-9a-f]{32}", command["command_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", command["at"])
    assert command["by"] == "desk-1"
    # The place by its id: a command stays small however detailed the place is.
    assert command["destination"] == {"type": "place", "place_id": "siriraj"}
    assert body["destination"]["command_id"] == command["command_id"]
    state = (await desk.get(f"/api/v1/ambulances/{ambulance_id}")).json()
    assert (state["destination"], state["eta"]) == (body["destination"], body["eta"])
    [record] = await audit_records(store)
    assert (record["actor"], record["action"], record["target"]) == (
        "desk-1", "dispatch.destination", ambulance_id
    )
    assert record["details"] == {
        "command_id": command["command_id"], "ambulance_id": ambulance_id,
        "destination": {"type": "place", "place_id": "siriraj"},
    }


async def test_destination_by_point_then_cleared_with_stand_in_bridge(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, bridge: StandInBridge,
    ambulance_id: str,
) -> None:
    """Test a point destination, then the three ways to clear it (null, {destination: null},
    DELETE)."""
    await seed_ambulance(store, ambulance_id)
    bridge.serves.add(ambulance_id)
    url = f"/api/v1/ambulances/{ambulance_id}/destination"
    point = {"lat": 13.8, "lon": 100.6, "radius_m": 200, "name": "Accident, Rama IV"}
    answer = await desk.put(url, json=point)
    assert answer.status_code == 200, answer.text
    assert answer.json()["destination"]["name"] == "Accident, Rama IV"
    assert bridge.received[0].payload["destination"] == {"type": "point", **point}
    cleared = [
        await desk.put(url, content=b"null", headers={"Content-Type": "application/json"}),
        await desk.put(url, json={"destination": None}),
        await desk.delete(url),
    ]
    for answer in cleared:
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"ambulance_id": ambulance_id, "destination": None, "eta": None}
    assert [r.payload["destination"] for r in bridge.received] == [
        {"type": "point", **point}, None, None, None
    ]
    ids = {r.payload["command_id"] for r in bridge.received}
    assert len(ids) == 4  # a fresh command id each time
    records = await audit_records(store)
    assert [r["details"]["destination"] for r in records] == [
        {"type": "point", **point}, None, None, None
    ]


async def test_unknown_or_removed_place_and_unknown_ambulance_are_404(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, bridge: StandInBridge,
    ambulance_id: str,
) -> None:
    """Test 404 for a place never stored, one removed (tombstone), and an ambulance never seen."""
    await seed_ambulance(store, ambulance_id)
    await seed_place(store, "old-depot", removed=True)
    url = f"/api/v1/ambulances/{ambulance_id}/destination"
    for place in ("nowhere", "old-depot"):
        answer = await desk.put(url, json={"place_id": place})
        assert answer.status_code == 404, answer.text
        assert place in answer.json()["detail"]
    answer = await desk.put("/api/v1/ambulances/NEVER-SEEN/destination", json={"lat": 1, "lon": 2})
    assert answer.status_code == 404
    await asyncio.sleep(0.3)
    assert bridge.received == []


@pytest.mark.parametrize("body", [
    {"lat": 91, "lon": 100},
    {"lat": 13, "lon": -181},
    {"lat": 13, "lon": 100, "radius_m": 0.5},
    {"lat": 13, "lon": 100, "radius_m": 50_001},
    {"lat": 13, "lon": 100, "name": ""},
    {"lat": 13},
    {"lat": "north", "lon": 100},
    {"place_id": ""},
    {"place_id": "x", "lat": 13, "lon": 100},
    {"destination": "x"},
    {"color": "red"},
    [],
])
async def test_bad_destination_bodies_are_422(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str, body: Any
) -> None:
    """Test that out-of-range, incomplete, mixed or unknown bodies are refused."""
    await seed_ambulance(store, ambulance_id)
    answer = await desk.put(f"/api/v1/ambulances/{ambulance_id}/destination", json=body)
    assert answer.status_code == 422, answer.text


async def test_no_body_is_422(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that a PUT without a body does not clear the destination (null must be sent)."""
    await seed_ambulance(store, ambulance_id)
    answer = await desk.put(f"/api/v1/ambulances/{ambulance_id}/destination")
    assert answer.status_code == 422, answer.text


async def test_pending_when_no_bridge_applies_it(
    deps: ApiDeps, dispatcher: str, store: SQLiteDocumentStore, bridge: StandInBridge,
    ambulance_id: str,
) -> None:
    """Test 202 pending with the command id when nothing applies the command in time."""
    await seed_ambulance(store, ambulance_id)  # not served by the stand-in: nothing applies it
    quick = dataclasses.replace(
        deps, settings=deps.settings.model_copy(update={"dispatch_wait_seconds": 0.2})
    )
    async with client_for(quick, dispatcher) as client:
        answer = await client.put(
            f"/api/v1/ambulances/{ambulance_id}/destination", json={"lat": 1.0, "lon": 2.0}
        )
    assert answer.status_code == 202, answer.text
    await bridge.until_received(1)
    assert answer.json() == {
        "status": "pending", "command_id": bridge.received[0].payload["command_id"]
    }


async def test_no_broker_is_503(
    deps: ApiDeps, dispatcher: str, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test 503 when this process has no MQTT publisher, and that nothing is audited."""
    await seed_ambulance(store, ambulance_id)
    async with client_for(dataclasses.replace(deps, publisher=None), dispatcher) as client:
        answer = await client.delete(f"/api/v1/ambulances/{ambulance_id}/destination")
    assert answer.status_code == 503
    assert await audit_records(store) == []


async def test_a_broker_that_went_away_is_503(
    deps: ApiDeps, dispatcher: str, store: SQLiteDocumentStore, tmp_path: Path,
    ambulance_id: str,
) -> None:
    """Test 503 (retry) when the broker does not acknowledge: a private one, stopped."""
    await seed_ambulance(store, ambulance_id)
    with services.mosquitto(tmp_path / "gone") as broker:
        client = MqttClient(
            host="127.0.0.1", port=broker.port, client_id=f"gone-{uuid.uuid4().hex[:8]}",
            clean_session=True, manual_ack=False,
        )
        async with client:
            broker.stop()
            gone = dataclasses.replace(deps, publisher=client, publish_timeout=0.5)
            async with client_for(gone, dispatcher) as http:
                answer = await http.put(
                    f"/api/v1/ambulances/{ambulance_id}/destination", json={"lat": 1, "lon": 2}
                )
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "5"
    assert await audit_records(store) == []


# --- alarms ----------------------------------------------------------------------------------


async def test_the_answer_waits_for_the_alarm_written_after_the_state_with_stand_in_bridge(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, bridge: StandInBridge,
    ambulance_id: str,
) -> None:
    """Test the answer to an ack when the alarm document lands after the state (MongoDB)."""
    await seed_ambulance(store, ambulance_id)
    bridge.serves.add(ambulance_id)
    bridge.alarm_lag = 0.5
    alarm = alarm_doc(ambulance_id, 1)
    await store.apply([Write(ALARMS, "insert", alarm)])
    acked = await desk.post(f"/api/v1/alarms/{alarm['_id']}/ack", json={"note": "on it"})
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged"


async def test_acknowledge_then_resolve_with_stand_in_bridge(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, bridge: StandInBridge,
    ambulance_id: str,
) -> None:
    """Test ack then resolve: the commands published, the stored alarm answered, audited."""
    await seed_ambulance(store, ambulance_id)
    bridge.serves.add(ambulance_id)
    alarm = alarm_doc(ambulance_id, 1)
    await store.apply([Write(ALARMS, "insert", alarm)])
    acked = await desk.post(f"/api/v1/alarms/{alarm['_id']}/ack", json={"note": "on it"})
    assert acked.status_code == 200, acked.text
    assert acked.json()["id"] == alarm["_id"]
    assert "_id" not in acked.json()
    assert (acked.json()["status"], acked.json()["acknowledged_by"]) == ("acknowledged", "desk-1")
    again = await desk.post(f"/api/v1/alarms/{alarm['_id']}/ack")
    assert again.status_code == 409
    assert "only an alarm that is open" in again.json()["detail"]
    resolved = await desk.post(
        f"/api/v1/alarms/{alarm['_id']}/resolve", json={"note": "patient delivered"}
    )
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["active"]) == ("resolved", False)
    assert [t["action"] for t in resolved.json()["transitions"]] == [
        "opened", "acknowledged", "resolved"
    ]
    assert [(r.topic, r.payload["action"], r.payload["note"]) for r in bridge.received] == [
        (f"dispatch/{ambulance_id}/alarm", "acknowledge", "on it"),
        (f"dispatch/{ambulance_id}/alarm", "resolve", "patient delivered"),
    ]
    assert all(r.payload["alarm_id"] == alarm["_id"] for r in bridge.received)
    records = await audit_records(store)
    assert [(r["actor"], r["action"], r["target"], r["details"]["note"]) for r in records] == [
        ("desk-1", "alarm.acknowledge", alarm["_id"], "on it"),
        ("desk-1", "alarm.resolve", alarm["_id"], "patient delivered"),
    ]
    after = await desk.post(f"/api/v1/alarms/{alarm['_id']}/resolve", json={"note": "again"})
    assert after.status_code == 409


async def test_refused_by_the_bridge_is_409_with_stand_in_bridge(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, bridge: StandInBridge,
    ambulance_id: str,
) -> None:
    """Test that the bridge's refusal (the alarm moved meanwhile) is a 409 with its reason."""
    await seed_ambulance(store, ambulance_id)
    bridge.serves.add(ambulance_id)
    alarm = alarm_doc(ambulance_id, 1)
    await store.apply([Write(ALARMS, "insert", alarm)])
    bridge.refuse.add(alarm["_id"])
    answer = await desk.post(f"/api/v1/alarms/{alarm['_id']}/ack")
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == f"alarm {alarm['_id']} is already resolved"


async def test_resolve_needs_a_note_and_unknown_alarm_is_404(
    desk: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test 422 for a resolve without a note (or an empty or too long one), 404 for no alarm."""
    alarm = alarm_doc(ambulance_id, 1)
    await store.apply([Write(ALARMS, "insert", alarm)])
    url = f"/api/v1/alarms/{alarm['_id']}/resolve"
    for body in (None, {}, {"note": ""}, {"note": "x" * 1001}):
        answer = await desk.post(url, json=body)
        assert answer.status_code == 422, (body, answer.text)
    assert (await desk.post("/api/v1/alarms/no.such.alarm/ack")).status_code == 404
    assert (await desk.get("/api/v1/alarms/no.such.alarm")).status_code == 404
    got = await desk.get(f"/api/v1/alarms/{alarm['_id']}")
    assert got.status_code == 200
    assert got.json()["details"] == {"speed": 61.0}


async def test_alarm_listing_pages_and_filters(
    deps: ApiDeps, http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test newest-first paging and the status, active, kind and ambulance filters."""
    other = f"{ambulance_id}-b"
    docs = [
        alarm_doc(ambulance_id, 1, status="resolved"),
        alarm_doc(ambulance_id, 2, status="acknowledged", kind="overspeed"),
        alarm_doc(ambulance_id, 3),
        alarm_doc(other, 4, kind="offline"),
        alarm_doc(ambulance_id, 5),
    ]
    await store.apply([Write(ALARMS, "insert", d) for d in docs])

    async def ids(**params: Any) -> list[str]:
        out, cursor = [], None
        while True:
            answer = await http.get(
                "/api/v1/alarms", params={**params, "limit": 2, **({"cursor": cursor} if cursor
                                                                     else {})}
            )
            assert answer.status_code == 200, answer.text
            out += [item["id"] for item in answer.json()["items"]]
            cursor = answer.json()["next_cursor"]
            if cursor is None:
                return out

    every = [d["_id"] for d in reversed(docs)]
    assert await ids() == every
    assert await ids(status="open") == [docs[4]["_id"], docs[3]["_id"], docs[2]["_id"]]
    assert await ids(status="active") == [d for d in every if d != docs[0]["_id"]]
    assert await ids(status="resolved") == [docs[0]["_id"]]
    assert await ids(kind="overspeed") == [docs[1]["_id"]]
    assert await ids(ambulance_id=other) == [docs[3]["_id"]]
    assert (await http.get("/api/v1/alarms", params={"status": "closed"})).status_code == 422
    kiosk = await create_token(store, "kiosk", [other], actor="tests")
    async with client_for(deps, kiosk) as client:
        assert (await client.get("/api/v1/alarms")).status_code == 403
        mine = await client.get("/api/v1/alarms", params={"ambulance_id": other})
        assert [i["id"] for i in mine.json()["items"]] == [docs[3]["_id"]]
        theirs = await client.get("/api/v1/alarms", params={"ambulance_id": ambulance_id})
        assert theirs.status_code == 403
        assert (await client.get(f"/api/v1/alarms/{docs[2]['_id']}")).status_code == 403


# --- events ----------------------------------------------------------------------------------


def event_doc(aid: str, n: int, kind: str, place: str) -> dict[str, Any]:
    return {
        "_id": f"{aid}.{kind}.{n}.{uuid.uuid4().hex[:6]}", "ambulance_id": aid, "type": kind,
        "place_id": place, "place_name": place.title(), "place_kind": "hospital",
        "at": T0 + timedelta(minutes=n), "location": {"lat": 13.7, "lon": 100.5},
    }


async def test_event_listing_pages_and_filters(
    deps: ApiDeps, http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test events newest first (or oldest), by type, place, ambulance and time range."""
    other = f"{ambulance_id}-b"
    docs = [
        event_doc(ambulance_id, 1, "enter", "siriraj"),
        event_doc(ambulance_id, 2, "arrival", "siriraj"),
        event_doc(ambulance_id, 3, "exit", "siriraj"),
        event_doc(other, 4, "enter", "depot"),
    ]
    await store.apply([Write(EVENTS, "insert", d) for d in docs])

    async def ids(**params: Any) -> list[str]:
        answer = await http.get("/api/v1/events", params=params)
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()["items"]]

    every = [d["_id"] for d in docs]
    assert await ids() == every[::-1]
    assert await ids(order="oldest") == every
    assert await ids(type="enter") == [every[3], every[0]]
    assert await ids(place_id="siriraj", ambulance_id=ambulance_id) == every[2::-1]
    since, until = (T0 + timedelta(minutes=2)).isoformat(), (T0 + timedelta(minutes=4)).isoformat()
    assert await ids(since=since, until=until) == [every[2], every[1]]
    first = await http.get("/api/v1/events", params={"limit": 3})
    rest = await http.get("/api/v1/events", params={"limit": 3,
                                                     "cursor": first.json()["next_cursor"]})
    assert [i["id"] for i in first.json()["items"] + rest.json()["items"]] == every[::-1]
    assert first.json()["items"][0]["place_name"] == "Depot"
    kiosk = await create_token(store, "kiosk", [other], actor="tests")
    async with client_for(deps, kiosk) as client:
        assert (await client.get("/api/v1/events")).status_code == 403
        assert (await client.get("/api/v1/events", params={"ambulance_id": other})).json()[
            "items"][0]["id"] == every[3]
