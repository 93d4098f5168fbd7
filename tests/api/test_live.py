"""The live stream (``api.live``) under a real uvicorn, with python-socketio and npm clients.

The bridge's side is played by what it really sends (``bridge.live.feed`` of
MQTT ``state``/``alert`` publications), handed to the stream as ``aoc serve``
does, through the server's manager, or through Redis as ``aoc bridge`` does.
Intervals are driven by calling ``flush`` (never by waiting): each test knows
exactly which interval each state fell in. "Nothing else arrived" is proved
by a later event on the same connection (Socket.IO keeps a connection's order).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import socketio

from aoc.config import Settings
from api import LiveRedisManager, LiveStream, SocketGate, create_sio
from api.tokens import create_token
from bridge import contract
from bridge.live import feed
from bridge.messages import Publish
from storage.sqlite import SQLiteDocumentStore
from tests.api.test_realtime import close_redis, realtime
from tests.api.test_realtime_auth import strict
from tests.compat.conftest import NodeClient

LIVE_EVENTS = ("live_states", "live_alert", "live_error", "data", "room_error")


def state(aid: str, second: int, speed: float = 40.0) -> dict[str, Any]:
    """A public state as the bridge publishes it on ``aoc/<id>/state``."""
    return {
        "ambulance_id": aid,
        "location": {"lat": 13.75, "lon": 100.5 + second / 1000},
        "speed": speed,
        "heading": 90,
        "state": "GREEN",
        "last_seen": f"2026-01-01T00:00:{second:02d}.000Z",
        "online": True,
        "covered_distance": 12.5,
        "avg_speed": 40.0,
        "estimated_time": None,
    }


def alert(aid: str) -> dict[str, Any]:
    return {"id": f"crash:{aid}:1", "ambulance_id": aid, "speed": 90.0, "state": "ORANGE"}


def publishes(*states: dict[str, Any], alerts: tuple[dict[str, Any], ...] = ()) -> list[Publish]:
    out = [
        Publish(f"aoc/{s['ambulance_id']}/state", json.dumps(s).encode(), retain=True)
        for s in states
    ]
    out += [Publish(f"aoc/{a['ambulance_id']}/alert", json.dumps(a).encode()) for a in alerts]
    return out


async def send_feed(emitter: Any, batch: list[Publish]) -> None:
    """Hand one batch's feed to ``emitter`` (a stream, a server or a Redis manager)."""
    for emit in feed(batch):
        await emitter.emit(emit.event, emit.data, room=emit.room)


@dataclasses.dataclass
class Board:
    """A python-socketio client recording the live stream's events, in order."""

    sio: socketio.AsyncClient
    events: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def wait_for(self, match: Callable[[str, Any], bool], within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                for name, data in self.events:
                    if match(name, data):
                        return data
                self.arrived.clear()
                await self.arrived.wait()

    def named(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def subscribe(self, ambulances: object) -> Any:
        return await self.sio.call(
            contract.LIVE_SUBSCRIBE_EVENT, {"ambulances": ambulances}, timeout=5
        )


@contextlib.asynccontextmanager
async def board(url: str, token: str | None = None) -> AsyncIterator[Board]:
    client = socketio.AsyncClient(reconnection=False)
    recorder = Board(client)
    for event in LIVE_EVENTS:

        async def record(data: Any = None, event: str = event) -> None:
            recorder.events.append((event, data))
            recorder.arrived.set()

        client.on(event, handler=record)
    auth = {"token": token} if token else None
    await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
    try:
        yield recorder
    finally:
        await client.disconnect()


def ids(event: dict[str, Any]) -> list[str]:
    return [s["ambulance_id"] for s in event["states"]]


async def test_the_fleet_gets_one_event_with_the_latest_state_of_each_updated_ambulance(
    gate: SocketGate,
) -> None:
    """Test one live_states per interval: every ambulance updated, once, at its latest state."""
    stream = LiveStream(interval=0.1)
    sio = create_sio(gate, live=stream)
    async with realtime(sio) as url, board(url) as fleet:
        answer = await fleet.subscribe("*")
        assert answer == {"ambulances": "*", "interval_ms": 100}
        # Two batches in one interval: as `aoc serve` hands them, and through the server.
        await send_feed(stream, publishes(state("A", 1), state("B", 1)))
        await send_feed(sio, publishes(state("A", 3, speed=55.5)))
        # A state older than the one kept (another bridge's, late) is not kept.
        await send_feed(stream, publishes(state("A", 2)))
        assert await stream.flush() == 1
        first = await fleet.wait_for(lambda name, _: name == "live_states")
        assert first["states"] == [state("A", 3, speed=55.5), state("B", 1)]
        assert first["at"].endswith("Z") and first["at"][:4] >= "2026"
        # An interval without updates sends nothing; the next one only its own.
        assert await stream.flush() == 0
        await send_feed(stream, publishes(state("C", 4)))
        await stream.flush()
        await fleet.wait_for(lambda name, data: name == "live_states" and ids(data) == ["C"])
    assert [ids(e) for e in fleet.named("live_states")] == [["A", "B"], ["C"]]


async def test_the_store_version_orders_the_states_of_an_ambulance(gate: SocketGate) -> None:
    """Test that a state of a lower version is dropped, even with the same or a later last_seen.

    Two bridges publish versions 6 and 5 of one ambulance, in that order, with
    one last_seen (a status change), then version 7 with an earlier one (late points).
    """
    stream = LiveStream(interval=0.1)
    sio = create_sio(gate, live=stream)
    async with realtime(sio) as url, board(url) as fleet:
        await fleet.subscribe("*")
        await send_feed(stream, publishes({**state("A", 3), "version": 6, "online": False}))
        await send_feed(stream, publishes({**state("A", 3), "version": 5}))
        await send_feed(stream, publishes({**state("B", 3), "version": 2}))
        await send_feed(stream, publishes({**state("B", 1), "version": 3}))
        assert await stream.flush() == 1
        got = await fleet.wait_for(lambda name, _: name == "live_states")
    assert got["states"] == [
        {**state("A", 3), "version": 6, "online": False},
        {**state("B", 1), "version": 3},
    ]


async def test_a_selection_gets_its_ambulances_and_alerts_at_once(gate: SocketGate) -> None:
    """Test a chosen set: only its states, and its crash alert before any interval ends."""
    stream = LiveStream(interval=0.1)
    sio = create_sio(gate, live=stream)
    async with realtime(sio) as url, board(url) as chosen, board(url) as fleet:
        assert await chosen.subscribe(["A", "C"]) == {"ambulances": ["A", "C"], "interval_ms": 100}
        await fleet.subscribe("*")
        await send_feed(stream, publishes(state("A", 1), state("B", 1), alerts=(alert("B"),)))
        await send_feed(stream, publishes(alerts=(alert("A"),)))
        # No flush yet: the alerts are not coalesced.
        assert await chosen.wait_for(lambda name, _: name == "live_alert") == alert("A")
        await fleet.wait_for(lambda name, data: name == "live_alert" and data == alert("A"))
        await stream.flush()
        event = await chosen.wait_for(lambda name, _: name == "live_states")
        assert event["states"] == [state("A", 1)]
        await fleet.wait_for(lambda name, _: name == "live_states")
        # Unsubscribed, then subscribed to B: the next interval brings B's states only.
        await chosen.sio.emit(contract.LIVE_UNSUBSCRIBE_EVENT)
        await chosen.subscribe(["B"])
        await send_feed(stream, publishes(state("A", 2), state("B", 2)))
        await stream.flush()
        await chosen.wait_for(lambda name, data: name == "live_states" and ids(data) == ["B"])
    assert chosen.named("live_alert") == [alert("A")]
    assert [ids(e) for e in chosen.named("live_states")] == [["A"], ["B"]]
    assert fleet.named("live_alert") == [alert("B"), alert("A")]


async def test_a_limited_token_never_gets_other_ambulances(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test a token limited to A: no fleet, no B, no live room by name; A's states and alerts."""
    limited = await create_token(store, "live-kiosk", ["A"], actor="tests")
    everything = await create_token(store, "live-desk", None, actor="tests")
    stream = LiveStream(interval=0.1)
    sio = create_sio(SocketGate(strict(settings), store), live=stream)
    async with realtime(sio, settings) as url, board(url, limited) as kiosk, \
            board(url, everything) as desk:
        refused = await kiosk.subscribe("*")
        assert refused == {"error": "this token is limited to some ambulances: "
                                    "subscribe to them by id"}
        assert await kiosk.subscribe(["A", "B"]) == {
            "error": "this token may not read ambulance(s) B"
        }
        await kiosk.sio.emit("room_join", contract.LIVE_FLEET)
        await kiosk.wait_for(lambda name, _: name == "room_error")
        assert await kiosk.subscribe(["A"]) == {"ambulances": ["A"], "interval_ms": 100}
        assert (await desk.subscribe("*"))["ambulances"] == "*"
        await send_feed(
            stream, publishes(state("B", 1), state("A", 1), alerts=(alert("B"), alert("A")))
        )
        await stream.flush()
        await desk.wait_for(lambda name, data: name == "live_states" and ids(data) == ["B", "A"])
        # A last interval of A alone: once it is in, everything before it is too.
        await send_feed(stream, publishes(state("A", 2)))
        await stream.flush()
        await kiosk.wait_for(lambda name, data: name == "live_states" and data["states"] == [
            state("A", 2)
        ])
    assert [name for name, _ in kiosk.events] == [
        "live_error", "live_error", "room_error", "live_alert", "live_states", "live_states"
    ]
    assert "B" not in json.dumps([data for name, data in kiosk.events if name.startswith("live_")
                                  and name != "live_error"])
    assert desk.named("live_alert") == [alert("B"), alert("A")]


async def test_bad_subscriptions_get_a_reason(gate: SocketGate) -> None:
    """Test that a malformed subscription is refused with a reason naming what is wrong."""
    sio = create_sio(gate)
    async with realtime(sio) as url, board(url) as client:
        answers = [await client.subscribe(bad) for bad in ([], ["ok", "no/slash"], ["tracking"])]
        no_dict = await client.sio.call(contract.LIVE_SUBSCRIBE_EVENT, "*", timeout=5)
        await client.wait_for(lambda name, _: len(client.named("live_error")) == 4)
    assert answers[0]["error"] == no_dict["error"]
    assert no_dict["error"].startswith('send {"ambulances": "*"} for the fleet')
    assert answers[1]["error"].startswith("ambulance id 'no/slash': must match")
    assert answers[2]["error"].startswith("ambulance id 'tracking': 'tracking' is reserved")
    assert [e["message"] for e in client.named("live_error")] == [
        answers[0]["error"], answers[1]["error"], answers[2]["error"], no_dict["error"]
    ]


async def test_the_live_feed_crosses_the_redis_manager(redis_url: str, gate: SocketGate) -> None:
    """Test `aoc bridge` + `aoc realtime`: the feed published through Redis is coalesced there."""
    channel = f"aoc-test-{uuid.uuid4().hex}"
    stream = LiveStream(interval=0.1)
    manager = LiveRedisManager(redis_url, channel=channel)
    sio = create_sio(gate, client_manager=manager, live=stream)
    bridge = socketio.AsyncRedisManager(redis_url, channel=channel, write_only=True)
    async with close_redis(sio.manager, bridge), realtime(sio) as url, board(url) as fleet, \
            board(url) as chosen, board(url) as legacy:
        await fleet.subscribe("*")
        await chosen.subscribe(["A"])
        await legacy.sio.emit("room_join", "A")
        await legacy.wait_for(lambda name, data: name == "data" and data == "room joined: A")
        # The server subscribes to the channel in the background: probe until it listens.
        async with asyncio.timeout(10):
            while not fleet.named("live_states"):
                await send_feed(bridge, publishes(state("PROBE", 1)))
                await asyncio.sleep(0.1)
                await stream.flush()
        await send_feed(bridge, publishes(state("A", 1), state("B", 1)))
        await send_feed(bridge, publishes(state("A", 2), alerts=(alert("A"),)))
        await bridge.emit("data", '{"legacy":"A"}', room="A")
        assert await chosen.wait_for(lambda name, _: name == "live_alert") == alert("A")
        await legacy.wait_for(lambda name, data: name == "data" and data == '{"legacy":"A"}')
        await stream.flush()
        event = await fleet.wait_for(lambda name, data: name == "live_states" and "B" in ids(data))
        await chosen.wait_for(lambda name, data: name == "live_states" and ids(data) == ["A"])
    assert event["states"] == [state("A", 2), state("B", 1)]
    assert chosen.named("live_states") == [{"at": event["at"], "states": [state("A", 2)]}]
    # The feed rooms are no rooms: the legacy client in room A got its `data` only.
    assert [name for name, _ in legacy.events] == ["data", "data"]


async def test_the_stock_js_client_subscribes_with_a_limited_token(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test npm socket.io-client: its ambulance's states and alert as objects, nothing else."""
    token = await create_token(store, "js-live", ["JS-1"], actor="tests")
    stream = LiveStream(interval=0.1)
    sio = create_sio(SocketGate(strict(settings), store), live=stream)
    async with realtime(sio, settings) as url:
        node = await NodeClient.start("dashboard.mjs", "--url", url, "--token", token)
        try:
            await node.wait_for(lambda e: e["event"] == "connect")
            await node.send(cmd="live", ambulances="*")
            await node.wait_for(lambda e: e["event"] == "live_ack")
            await node.send(cmd="live", ambulances=["JS-1"])
            await node.wait_for(lambda e: e["event"] == "live_ack" and "error" not in e["answer"])
            await send_feed(stream, publishes(state("JS-2", 1), alerts=(alert("JS-2"),)))
            await send_feed(stream, publishes(state("JS-1", 1), alerts=(alert("JS-1"),)))
            await stream.flush()
            await node.wait_for(lambda e: e["event"] == "live_states")
        finally:
            await node.close()
    live = [e for e in node.events if e["event"].startswith("live_")]
    assert live[0]["event"] == "live_error"
    assert live[1] == {"event": "live_ack", "answer": {"error": live[0]["data"]["message"]}}
    at = live[4]["data"]["at"]
    assert live[2:] == [
        {"event": "live_ack", "answer": {"ambulances": ["JS-1"], "interval_ms": 100}},
        {"event": "live_alert", "data": alert("JS-1")},
        {"event": "live_states", "data": {"at": at, "states": [state("JS-1", 1)]}},
    ]
