"""Socket.IO tokens, room limits and legacy mode, with real python-socketio and npm clients.

The server runs under a real uvicorn on loopback (``test_realtime.realtime``);
the stock ``socket.io-client`` runs in Node (``tests/js/dashboard.mjs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from aoc.config import Settings
from api import RevocationSweep, SocketGate, create_sio
from api.tokens import PREFIX, create_token, revoke_token
from storage.sqlite import SQLiteDocumentStore
from tests.api.test_realtime import realtime
from tests.compat.conftest import NodeClient

# Shaped like a token (the prefix, 43 characters), but never created.
UNKNOWN_TOKEN = PREFIX + "0" * 43


@dataclasses.dataclass
class Client:
    """A python-socketio client recording what the server sends it."""

    sio: socketio.AsyncClient
    events: list[tuple[str, Any]]
    arrived: asyncio.Event

    async def wait_for(self, event: str, match: Any = None, within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                for name, data in self.events:
                    if name == event and (match is None or match(data)):
                        return data
                self.arrived.clear()
                await self.arrived.wait()


def new_client() -> Client:
    sio = socketio.AsyncClient(reconnection=False)
    client = Client(sio, [], asyncio.Event())
    for event in ("data", "room_error", "connect_error", "disconnect"):

        async def record(data: Any = None, event: str = event) -> None:
            client.events.append((event, data))
            client.arrived.set()

        sio.on(event, handler=record)
    return client


@contextlib.asynccontextmanager
async def server(settings: Settings, store: SQLiteDocumentStore) -> AsyncIterator[
    tuple[socketio.AsyncServer, str]
]:
    sio = create_sio(SocketGate(settings, store))
    async with realtime(sio, settings) as url:
        yield sio, url


async def connect(url: str, *, auth: Any = None, transport: str = "websocket") -> Client:
    """A connected client; ``socketio.exceptions.ConnectionError`` when refused."""
    client = new_client()
    try:
        await client.sio.connect(url, auth=auth, transports=[transport], wait_timeout=5)
    except socketio.exceptions.ConnectionError as exc:
        refusal = [data for name, data in client.events if name == "connect_error"]
        raise socketio.exceptions.ConnectionError(str(refusal)) from exc
    return client


def strict(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"legacy_mode": False, **changes})


async def test_no_token_is_refused_outside_legacy_mode(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test that without a token, or with a wrong one, the connection is refused with a reason.

    Over WebSocket: python-socketio's polling client takes 30 s to give up on a
    refused namespace; the refusal over long-polling is the npm client's test.
    """
    async with server(strict(settings), store) as (sio, url):
        with pytest.raises(socketio.exceptions.ConnectionError, match="a token is required"):
            await connect(url)
        with pytest.raises(socketio.exceptions.ConnectionError, match="invalid or revoked"):
            await connect(url, auth={"token": UNKNOWN_TOKEN})
        assert sio.manager.rooms.get("/", {}).get(None, {}) == {}  # no session was kept


async def test_a_token_connects_in_auth_or_in_the_url(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test that a valid token connects, in the auth payload and as ?token= (kiosks)."""
    token = await create_token(store, "board", None, actor="tests")
    async with server(strict(settings), store) as (_, url):
        by_auth = await connect(url, auth={"token": token})
        by_query = await connect(f"{url}?token={token}")
        await by_auth.sio.emit("room_join", "tracking")
        await by_auth.wait_for("data", lambda d: d == "room joined: tracking")
        assert by_query.sio.connected
        await by_auth.sio.disconnect()
        await by_query.sio.disconnect()


async def test_a_limited_token_joins_only_its_rooms(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test that a room-limited token joins its ambulance's rooms, and gets an error for others."""
    token = await create_token(store, "kiosk", ["AMB-1"], actor="tests")
    async with server(strict(settings), store) as (sio, url):
        client = await connect(url, auth={"token": token})
        for room in ("AMB-1", "CRASH_NOTIFY_AMB-1"):
            await client.sio.emit("room_join", room)
            await client.wait_for("data", lambda d, room=room: d == f"room joined: {room}")
        for room in ("AMB-2", "tracking", "crash", "CRASH_NOTIFY_AMB-2"):
            await client.sio.emit("room_join", room)
            error = await client.wait_for("room_error", lambda e, room=room: e["room"] == room)
            assert error["message"] == f"this token may not join room {room!r}"
        ack = await client.sio.call("room_join", "AMB-2", timeout=5)
        assert ack == "this token may not join room 'AMB-2'"
        await sio.emit("data", "for AMB-2", room="AMB-2")
        await sio.emit("data", "for tracking", room="tracking")
        await sio.emit("data", "for AMB-1", room="AMB-1")
        await client.wait_for("data", lambda d: d == "for AMB-1")
        received = [data for name, data in client.events if name == "data"]
        assert "for AMB-2" not in received
        assert "for tracking" not in received
        await client.sio.disconnect()


async def test_a_revoked_token_joins_nothing_more(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test that after a revocation the open session's next join is refused, as is a reconnect."""
    token = await create_token(store, "short-lived", None, actor="tests")
    async with server(strict(settings), store) as (_, url):
        client = await connect(url, auth={"token": token})
        await revoke_token(store, "short-lived", actor="tests")
        await client.sio.emit("room_join", "AMB-9")
        error = await client.wait_for("room_error")
        assert error == {"room": "AMB-9", "message": "the token of this connection was revoked"}
        await client.sio.disconnect()
        with pytest.raises(socketio.exceptions.ConnectionError, match="invalid or revoked"):
            await connect(url, auth={"token": token})


async def test_legacy_mode_admits_only_its_networks(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test that legacy mode admits token-less clients from its networks, and no one else."""
    elsewhere = settings.model_copy(
        update={"legacy_mode": True, "legacy_networks": "10.0.0.0/8"}
    )
    async with server(elsewhere, store) as (_, url):
        with pytest.raises(socketio.exceptions.ConnectionError, match="a token is required"):
            await connect(url)
    loopback = settings.model_copy(update={"legacy_mode": True})
    async with server(loopback, store) as (_, url):
        client = await connect(url)
        await client.sio.emit("room_join", "tracking")  # a legacy client joins any room
        await client.wait_for("data", lambda d: d == "room joined: tracking")
        await client.sio.disconnect()


async def js_events(url: str, *args: str, joins: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """What the stock socket.io-client reports for a connection (and ``joins``)."""
    node = await NodeClient.start("dashboard.mjs", "--url", url, *args)
    try:
        event = await node.wait_for(lambda e: e["event"] in ("connect", "error"))
        if event["event"] == "connect":
            for room in joins:
                start = len(node.events)
                await node.send(cmd="join", room=room)
                await node.wait_for(
                    lambda e: e["event"] in ("data", "room_error"), start=start
                )
        return list(node.events)
    finally:
        await node.close()


async def test_stock_socketio_client_needs_a_token(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test the npm socket.io-client: refused without a token, limited with a limited one."""
    token = await create_token(store, "js-kiosk", ["JS-1"], actor="tests")
    async with server(strict(settings), store) as (_, url):
        refused = await js_events(url)
        limited = await js_events(url, "--token", token, joins=("JS-1", "JS-2"))
    assert [e for e in refused if e["event"] in ("connect", "error")] == [
        {"event": "error", "message": refused[-1]["message"]}
    ]
    assert refused[-1]["message"].startswith("a token is required")
    assert {"event": "open", "transport": "polling"} in refused  # refused on long-polling
    outcomes = [e for e in limited if e["event"] in ("data", "room_error")]
    assert outcomes == [
        {"event": "data", "data": "room joined: JS-1"},
        {"event": "room_error", "room": "JS-2", "message": "this token may not join room 'JS-2'"},
    ]


async def test_the_sweep_disconnects_a_revoked_tokens_connections(
    settings: Settings, store: SQLiteDocumentStore
) -> None:
    """Test that after a revocation the sweep closes that token's connections, and no other."""
    revoked = await create_token(store, "leaving", None, actor="tests")
    kept = await create_token(store, "staying", None, actor="tests")
    gate = SocketGate(strict(settings), store)
    sio = create_sio(gate)
    sweep = RevocationSweep(sio, gate, every=0.05)
    sweeping = asyncio.create_task(sweep.run())
    try:
        async with realtime(sio, gate.settings) as url:
            leaving = [await connect(url, auth={"token": revoked}) for _ in range(2)]
            staying = await connect(url, auth={"token": kept})
            for client in (*leaving, staying):
                await client.sio.emit("room_join", "tracking")
                await client.wait_for("data", lambda d: d == "room joined: tracking")
            assert await sweep.sweep() == 0  # nothing revoked yet
            await revoke_token(store, "leaving", actor="tests")
            for client in leaving:
                await client.wait_for("disconnect", within=10)
            await sio.emit("data", "after", room="tracking")
            await staying.wait_for("data", lambda d: d == "after")
            assert staying.sio.connected
            assert sorted(s.token.name for s in gate.sessions.values() if s.token) == ["staying"]
            await staying.sio.disconnect()
    finally:
        sweep.stop()
        await sweeping
