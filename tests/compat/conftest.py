"""The legacy clients against the whole stack: real processes, stock JavaScript clients.

One ``aoc serve`` per test module (with the session's Mosquitto and Redis);
each test uses its own ambulance ids. Dashboards are the stock
``socket.io-client`` v4 and MQTT.js, run by Node scripts in ``tests/js`` that
take commands on stdin and print what they receive as JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.base import Query
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.e2e.conftest import Stack

JS_DIR = Path(__file__).resolve().parent.parent / "js"
MAPS_KEY = "compat-test-maps-key"  # set through the environment, as operators must
TRACKING = "/api/tracking/postAmbulanceTracking"
CRASH = "/api/crash/postAmbulanceCrashNotify"
SNAPSHOT = "/api/snapshot/postAmbulanceImageUpload"
WAIT = 15.0  # generous: other engineers load the same two cores


@dataclass
class CompatStack(Stack):
    """The stack, plus the MQTT-over-WebSocket port of its Mosquitto."""

    ws_port: int = 0

    @property
    def mqtt_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def mqtt_tcp_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"


@pytest.fixture(scope="module")
def stack(
    mosquitto: services.Service,
    redis_server: services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CompatStack]:
    workdir = tmp_path_factory.mktemp("aoc-compat")
    service = services.aoc(
        "serve",
        workdir,
        mqtt_port=mosquitto.port,
        redis_port=redis_server.port,
        env={"AOC_CRASH_DEDUP_SECONDS": "60", "AOC_GOOGLE_MAPS_KEY": MAPS_KEY},
    )
    with service:
        yield CompatStack(
            service,
            mosquitto.port,
            f"redis://127.0.0.1:{redis_server.port}/0",
            workdir / "data",
            ws_port=mosquitto.extra_ports[0],
        )
    print(service.log_tail(60))  # shown next to a failure


@pytest.fixture
def new_id() -> Callable[[], str]:
    """Makes fresh ambulance ids, so tests sharing the stack never see each other."""
    return lambda: f"C{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def http(stack: CompatStack) -> AsyncIterator[httpx.AsyncClient]:
    # With the stack's token: the read API needs one (the legacy endpoints do not).
    async with httpx.AsyncClient(
        base_url=stack.http, timeout=WAIT, headers=stack.service.auth_headers
    ) as client:
        yield client


def node_script(name: str) -> list[str]:
    """The command running ``tests/js/<name>``, failing clearly if its packages are missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `make setup`")
    if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `make setup` (npm ci in tests/js)")
    return [node, str(JS_DIR / name)]


class NodeClient:
    """A Node script as a child process: JSON commands in, JSON events out."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name=f"read-{name}")

    @classmethod
    async def start(cls, script: str, *args: str) -> NodeClient:
        proc = await asyncio.create_subprocess_exec(
            *node_script(script),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=JS_DIR,
        )
        return cls(proc, script)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            if line.strip():
                self.events.append(json.loads(line))
                self._arrived.set()
        self._arrived.set()  # end of output: waiters re-check and see the exit

    async def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], *, start: int = 0, timeout: float = WAIT
    ) -> dict[str, Any]:
        """The first event from index ``start`` on that ``match``es, waiting for it if need be."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for event in self.events[start:]:
                        if match(event):
                            return event
                    if self.proc.returncode is not None and self._reader.done():
                        raise AssertionError(f"{self.name} exited: {self.events}")
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            message = f"{self.name}: no matching event in {timeout}s: {self.events}"
            raise AssertionError(message) from None

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@dataclass
class JsDashboard:
    """A legacy dashboard: the stock socket.io-client v4 in Node."""

    node: NodeClient
    acks: int = 0
    joined: list[str] = field(default_factory=list)

    @property
    def data(self) -> list[str]:
        """Every `data` payload received, in order, exactly as the client got it."""
        return [e["data"] for e in self.node.events if e["event"] == "data"]

    @property
    def payloads(self) -> list[str]:
        """``data`` without the join replies: what the server emitted to the rooms."""
        return [d for d in self.data if not d.startswith("room joined: ")]

    async def join(self, room: str, *, expect: str | None = None) -> None:
        """Join as dashboards do (``room_join`` with the string) and wait for the reply."""
        reply = f"room joined: {expect if expect is not None else room}"
        start = len(self.node.events)
        await self.node.send(cmd="join", room=room)
        await self.node.wait_for(
            lambda e: e["event"] == "data" and e["data"] == reply, start=start
        )

    async def leave(self, room: str) -> None:
        """``room_leave``, waiting for the server's acknowledgement that it has handled it."""
        self.acks += 1
        number = self.acks
        await self.node.send(cmd="leave", room=room, ack=number)
        await self.node.wait_for(lambda e: e["event"] == "ack" and e["id"] == number)

    async def wait_data(self, match: Callable[[str], bool], timeout: float = WAIT) -> str:
        """The first room payload (not a join reply) that ``match``es, waiting for it."""
        event = await self.node.wait_for(
            lambda e: e["event"] == "data"
            and not e["data"].startswith("room joined: ")
            and match(e["data"]),
            timeout=timeout,
        )
        return str(event["data"])


@contextlib.asynccontextmanager
async def js_dashboard(stack: CompatStack) -> AsyncIterator[JsDashboard]:
    """A connected stock socket.io-client (default transports: polling, then WebSocket)."""
    node = await NodeClient.start("dashboard.mjs", "--url", stack.socketio_url)
    try:
        event = await node.wait_for(lambda e: e["event"] in ("connect", "error"))
        assert event["event"] == "connect", node.events
        yield JsDashboard(node)
    finally:
        await node.close()


@dataclass
class JsMqtt:
    """An MQTT.js client (a dashboard over WebSocket, or a device over TCP)."""

    node: NodeClient
    published: int = 0

    async def subscribe(self, *topics: str) -> None:
        await self.node.send(cmd="subscribe", topics=list(topics))
        event = await self.node.wait_for(lambda e: e["event"] in ("subscribed", "error"))
        assert event["event"] == "subscribed", event
        assert all(qos == 1 for _, qos in event["granted"]), event

    async def publish(self, topic: str, payload: str) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        self.published += 1
        number = self.published
        await self.node.send(cmd="publish", topic=topic, payload=payload, id=number)
        event = await self.node.wait_for(
            lambda e: (e["event"] == "published" and e["id"] == number) or e["event"] == "error"
        )
        assert event["event"] == "published", event

    def messages(self, topic: str) -> list[dict[str, Any]]:
        return [e for e in self.node.events if e["event"] == "message" and e["topic"] == topic]


@contextlib.asynccontextmanager
async def js_mqtt(url: str) -> AsyncIterator[JsMqtt]:
    node = await NodeClient.start("mqtt_client.mjs", "--url", url)
    try:
        event = await node.wait_for(lambda e: e["event"] in ("connect", "error"))
        assert event["event"] == "connect", node.events
        yield JsMqtt(node)
    finally:
        await node.close()


async def express_bodies(requests: list[tuple[str, str]]) -> list[str]:
    """What the legacy server emitted for each (``json``/``form``, raw body): JSON.stringify."""
    proc = await asyncio.create_subprocess_exec(
        *node_script("express_body.mjs"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    lines = "".join(json.dumps({"type": kind, "raw": raw}) + "\n" for kind, raw in requests)
    async with asyncio.timeout(WAIT):
        out, _ = await proc.communicate(lines.encode())
    assert proc.returncode == 0
    return [json.loads(line) for line in out.decode().splitlines()]


async def stored(stack: Stack, collection: str, ambulance_id: str) -> list[dict[str, Any]]:
    """The documents of one ambulance in one collection of the stack's SQLite store."""
    async with SQLiteDocumentStore(stack.store_path) as store:
        page = await store.find(Query(collection, ambulance_id=ambulance_id, limit=1000))
        return page.items


async def eventually_stored(
    stack: Stack, collection: str, ambulance_id: str, count: int, timeout: float = WAIT
) -> list[dict[str, Any]]:
    """Wait until ``count`` documents of the ambulance are stored, and return them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        docs = await stored(stack, collection, ambulance_id)
        if len(docs) >= count:
            return docs
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{len(docs)} of {count} {collection} stored: {docs}")
        await asyncio.sleep(0.05)
