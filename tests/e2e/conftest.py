"""The whole one-machine pipeline as real processes: Mosquitto, Redis, `aoc serve`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
import pytest
import socketio

from tests import services


@dataclass
class Stack:
    """A running `aoc serve` and how to reach each of its parts."""

    service: services.AocService
    mqtt_port: int
    redis_url: str
    data_dir: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    @property
    def socketio_url(self) -> str:
        return f"http://127.0.0.1:{self.service.env['AOC_SOCKETIO_PORT']}"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "aoc.sqlite3"

    def mqtt(self, **kwargs: object) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", self.mqtt_port, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack(
    mosquitto: services.Service,
    redis_server: services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("aoc-serve")
    service = services.aoc(
        "serve",
        workdir,
        mqtt_port=mosquitto.port,
        redis_port=redis_server.port,
        env={"AOC_CRASH_DEDUP_SECONDS": "60"},
    )
    with service:
        yield Stack(
            service, mosquitto.port, f"redis://127.0.0.1:{redis_server.port}/0", workdir / "data"
        )
    # A failed test is much easier to read with the server's log next to it.
    print(service.log_tail(60))


@pytest.fixture
def ambulance_id() -> str:
    """A fresh ambulance id per test, so tests sharing the stack never see each other."""
    return f"E2E-{uuid.uuid4().hex[:8]}"


@dataclass
class Dashboard:
    """A real python-socketio client collecting the `data` events it receives."""

    client: socketio.AsyncClient
    received: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def join(self, room: str) -> None:
        ack = f"room joined: {room}"
        await self.client.emit("room_join", room)
        await self.wait_for(lambda data: data == ack)
        self.received.remove(ack)

    async def wait_for(self, match: object, timeout: float = 10.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for data in self.received:
                    if match(data):  # type: ignore[operator]
                        return data
                self.arrived.clear()
                await self.arrived.wait()

    def json(self) -> list[object]:
        return [json.loads(data) for data in self.received]


@contextlib.asynccontextmanager
async def connect_dashboard(url: str) -> AsyncIterator[Dashboard]:
    """A real python-socketio client connected to ``url``, collecting `data` events."""
    client = socketio.AsyncClient(reconnection=False)
    board = Dashboard(client)

    @client.on("data")
    async def on_data(data: str) -> None:
        board.received.append(data)
        board.arrived.set()

    await client.connect(url, transports=["websocket"], wait_timeout=10)
    try:
        yield board
    finally:
        await client.disconnect()


@pytest.fixture
async def dashboard(stack: Stack) -> AsyncIterator[Dashboard]:
    async with connect_dashboard(stack.socketio_url) as board:
        yield board


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    # With the stack's token: the read API needs one (the legacy endpoints do not).
    async with httpx.AsyncClient(
        base_url=stack.http, timeout=10, headers=stack.service.auth_headers
    ) as client:
        yield client


async def eventually(check: object, timeout: float = 10.0, interval: float = 0.05) -> object:
    """Retry an async ``check`` until it returns a truthy value or ``timeout`` passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()  # type: ignore[operator]
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: last result {result!r}")
        await asyncio.sleep(interval)
