"""The Socket.IO server under a real uvicorn, with real python-socketio clients."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import socketio

from aoc.config import Settings
from aoc.servers import server
from api import SocketGate, connected_clients, create_realtime_app, create_sio
from tests import services

PAYLOAD = '{"ambulance_id":"332","tracking_latitude":13.7563,"note":"ไทย","tracking_speed":45}'


class Dashboard:
    """A python-socketio client recording every ``data`` event it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = socketio.AsyncClient(reconnection=False)
        self.received: list[Any] = []
        self._arrived = asyncio.Event()
        self.client.on("data", handler=self._on_data)

    async def _on_data(self, data: Any) -> None:
        self.received.append(data)
        self._arrived.set()

    async def connect(self) -> Dashboard:
        await self.client.connect(self.url, transports=["websocket"], wait_timeout=5)
        return self

    async def wait_for(self, wanted: Callable[[Any], bool], within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                for item in self.received:
                    if wanted(item):
                        return item
                self._arrived.clear()
                await self._arrived.wait()

    async def join(self, raw: str, room: str) -> None:
        await self.client.emit("room_join", raw)
        await self.wait_for(lambda d: d == f"room joined: {room}")


@contextlib.asynccontextmanager
async def realtime(
    sio: socketio.AsyncServer, settings: Settings | None = None
) -> AsyncIterator[str]:
    """Serve ``create_realtime_app(sio)`` with uvicorn on a free port, in this event loop."""
    port = services.free_port()
    settings = settings or Settings(_env_file=None)  # type: ignore[call-arg]
    embedded = server(create_realtime_app(sio, settings), host="127.0.0.1", port=port)
    task = asyncio.create_task(embedded.serve(), name="realtime-under-test")
    try:
        async with asyncio.timeout(10):
            while not embedded.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        embedded.stop()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def dashboards(url: str, count: int) -> AsyncIterator[list[Dashboard]]:
    clients = [await Dashboard(url).connect() for _ in range(count)]
    try:
        yield clients
    finally:
        for dashboard in clients:
            await dashboard.client.disconnect()


@contextlib.asynccontextmanager
async def close_redis(*managers: Any) -> AsyncIterator[None]:
    """Stop the managers' Redis listener and connections (python-socketio has no close)."""
    try:
        yield
    finally:
        for manager in managers:
            listener = getattr(manager, "thread", None)
            if isinstance(listener, asyncio.Task):
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            if manager.pubsub is not None:
                await manager.pubsub.aclose()
            if manager.redis is not None:
                await manager.redis.aclose()


@pytest.fixture
async def local_url(gate: SocketGate) -> AsyncIterator[tuple[socketio.AsyncServer, str]]:
    sio = create_sio(gate)
    async with realtime(sio) as url:
        yield sio, url


async def test_home_page(local_url: tuple[socketio.AsyncServer, str]) -> None:
    """Test that GET / on the Socket.IO port is the legacy status page."""
    _, url = local_url
    async with httpx.AsyncClient() as http:
        response = await http.get(url + "/")
    assert response.status_code == 200
    assert "AOC-V.2 Tracking Server On" in response.text
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("raw", ['"332"', "'332'", "332", ' "332" '],
                         ids=["double-quoted", "single-quoted", "plain", "padded"])
async def test_join_reply_goes_to_the_joiner_only(
    local_url: tuple[socketio.AsyncServer, str], raw: str
) -> None:
    """Test that a join (quotes stripped) is confirmed to the joining client alone."""
    sio, url = local_url
    async with dashboards(url, 2) as (joiner, bystander):
        await joiner.join(raw, "332")
        await sio.emit("data", PAYLOAD, room="332")
        assert await joiner.wait_for(lambda d: d == PAYLOAD) == PAYLOAD
        await asyncio.sleep(0.2)
        assert bystander.received == []
        assert joiner.received == ["room joined: 332", PAYLOAD]


async def test_rooms_are_isolated_and_leave_stops_delivery(
    local_url: tuple[socketio.AsyncServer, str],
) -> None:
    """Test that a client in 333 gets nothing for 332, and leaving 332 stops delivery."""
    sio, url = local_url
    async with dashboards(url, 3) as (in_332, in_333, in_tracking):
        await in_332.join('"332"', "332")
        await in_333.join("333", "333")
        await in_tracking.join("tracking", "tracking")
        await sio.emit("data", PAYLOAD, room="332")
        await sio.emit("data", PAYLOAD, room="tracking")
        await in_332.wait_for(lambda d: d == PAYLOAD)
        await in_tracking.wait_for(lambda d: d == PAYLOAD)
        await in_332.client.emit("room_leave", "'332'")
        await asyncio.sleep(0.2)  # the leave is handled before later emits
        await sio.emit("data", '{"after":"leave"}', room="332")
        await sio.emit("data", '{"for":"333"}', room="333")
        await in_333.wait_for(lambda d: d == '{"for":"333"}')
        await asyncio.sleep(0.2)
        assert in_332.received == ["room joined: 332", PAYLOAD]
        assert in_333.received == ["room joined: 333", '{"for":"333"}']
        assert in_tracking.received == ["room joined: tracking", PAYLOAD]


@pytest.mark.parametrize(
    "bad",
    [None, 332, "", '""', "   ", "x" * 129, {"room": "332"}, ["332"]],
    ids=["none", "number", "empty", "only-quotes", "blank", "too-long", "object", "list"],
)
async def test_bad_room_names_are_ignored(
    local_url: tuple[socketio.AsyncServer, str], bad: Any
) -> None:
    """Test that a non-string, empty or over-long room is ignored and the socket keeps working."""
    sio, url = local_url
    async with dashboards(url, 1) as (dashboard,):
        await dashboard.client.emit("room_join", bad)
        await dashboard.client.emit("room_leave", bad)
        await dashboard.client.emit("room_join")  # no argument at all
        await dashboard.join("ok-room", "ok-room")
        assert dashboard.received == ["room joined: ok-room"]
        assert dashboard.client.connected
        sid = dashboard.client.get_sid()
        assert set(sio.rooms(sid)) == {sid, "ok-room"}


async def test_longest_room_name_is_accepted(local_url: tuple[socketio.AsyncServer, str]) -> None:
    """Test that a room name of exactly 128 characters is joined."""
    _, url = local_url
    async with dashboards(url, 1) as (dashboard,):
        await dashboard.join("r" * 128, "r" * 128)


async def test_connected_clients(local_url: tuple[socketio.AsyncServer, str]) -> None:
    """Test that connected_clients counts connections and disconnections."""
    sio, url = local_url
    assert connected_clients(sio) == 0
    async with dashboards(url, 2) as (first, _):
        assert connected_clients(sio) == 2
        assert connected_clients() >= 2
        await first.client.disconnect()
        await until(lambda: connected_clients(sio) == 1)
    await until(lambda: connected_clients(sio) == 0)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (the server sees a disconnect a moment later)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_write_only_redis_manager_reaches_the_rooms(
    redis_url: str, gate: SocketGate
) -> None:
    """Test that a separate write-only AsyncRedisManager emits to the right room via Redis."""
    channel = f"aoc-test-{uuid.uuid4().hex}"
    sio = create_sio(gate, client_manager=socketio.AsyncRedisManager(redis_url, channel=channel))
    bridge = socketio.AsyncRedisManager(redis_url, channel=channel, write_only=True)
    async with close_redis(sio.manager, bridge), realtime(sio) as url, \
            dashboards(url, 2) as (in_332, in_333):
        await in_332.join('"332"', "332")
        await in_333.join("333", "333")
        # The server subscribes to the channel in the background: probe until it listens.
        async with asyncio.timeout(10):
            while "probe" not in in_332.received:
                await bridge.emit("data", "probe", room="332")
                await asyncio.sleep(0.1)
        await bridge.emit("data", PAYLOAD, room="332")
        await bridge.emit("data", '{"for":"333"}', room="333")
        assert await in_332.wait_for(lambda d: d == PAYLOAD) == PAYLOAD
        await in_333.wait_for(lambda d: d == '{"for":"333"}')
        await in_332.client.emit("room_leave", "332")
        await asyncio.sleep(0.2)
        await bridge.emit("data", '{"after":"leave"}', room="332")
        await bridge.emit("data", '{"second":"333"}', room="333")
        await in_333.wait_for(lambda d: d == '{"second":"333"}')
        await asyncio.sleep(0.2)
    assert '{"after":"leave"}' not in in_332.received
    assert not any(d in ("probe", PAYLOAD) for d in in_333.received)
    assert in_333.received == ["room joined: 333", '{"for":"333"}', '{"second":"333"}']
