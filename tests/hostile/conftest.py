"""The real application for the hostile HTTP tests, served on an event loop of its own.

Hypothesis and schemathesis drive synchronous test functions, one example
after another, while the application's stores and clients (SQLite, Redis,
Mosquitto) belong to one event loop. So the application runs on a loop in a
background thread for the whole module, and each request is sent to it
in-process (ASGI, through httpx) and waited for. Its data directory is the
only place it may write; an MQTT subscriber records what the legacy shim
publishes, to prove the good requests between the hostile ones went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import httpx
import pytest

from aoc.config import Settings
from api import ApiDeps, create_app
from api.tokens import create_token
from bridge.processor import Processor
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from broker.client import MqttClient
from storage.cache import StateCache
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.hostile.strategies import encode
from tests.hostile.tree import Watch
from tests.images import TINY_JPEG

T = TypeVar("T")

MAX_IMAGE_BYTES = 4096
MAX_UPLOAD_FILES = 3
# The ambulance whose records are in the store before the hostile requests.
SEEDED = "hostile-seeded"


class LoopThread:
    """An asyncio event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Served:
    """The application under test, its data directory, and what it published."""

    runner: LoopThread
    client: httpx.AsyncClient
    data_dir: Path
    test_dir: Path
    base_dir: Path
    app: Any
    token: str  # reads every ambulance; the client sends it on every request
    published: list[tuple[str, bytes]] = field(default_factory=list, repr=False)

    def request(self, method: str, url: str | httpx.URL, **options: Any) -> httpx.Response:
        return self.runner.run(self.client.request(method, url, **options))

    def watch(self) -> Watch:
        return Watch(self.data_dir, test_dir=self.test_dir, base_dir=self.base_dir)

    def wait_published(self, topic: str, marker: bytes, within: float = 10.0) -> bytes:
        """The payload published on ``topic`` that contains ``marker``, once it arrived."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for seen, payload in list(self.published):
                if seen == topic and marker in payload:
                    return payload
            time.sleep(0.01)
        raise AssertionError(f"nothing with {marker!r} published on {topic} within {within}s")


def assert_good_reads_work(served: Served) -> None:
    """The good requests around hostile ones: the seeded ambulance and its image, read back."""
    good = served.request("GET", f"/api/v1/ambulances/{SEEDED}")
    assert good.status_code == 200, good.text
    assert good.json()["ambulance_id"] == SEEDED
    snapshots = served.request("GET", f"/api/v1/ambulances/{SEEDED}/snapshots")
    assert snapshots.status_code == 200, snapshots.text
    [link] = snapshots.json()["current"]["images"]
    image = served.request("GET", f"/files/{link['key']}")
    assert (image.status_code, image.content) == (200, TINY_JPEG)


async def _seed(store: SQLiteDocumentStore, objects: LocalObjectStore) -> None:
    """Records of ``SEEDED`` (a state, a point, a crash, a snapshot) for the read API."""
    received = datetime.now(UTC)
    t0 = received - timedelta(minutes=5)
    limits = Limits(max_image_bytes=MAX_IMAGE_BYTES, max_upload_files=MAX_UPLOAD_FILES)
    batch = [
        parse(f"aoc/{SEEDED}/tracking",
              encode({"lat": 13.75, "lon": 100.5, "speed": 30, "ts": t0.isoformat()}),
              received, limits),
        parse(f"aoc/{SEEDED}/crash",
              encode({"lat": 13.76, "lon": 100.5, "speed": 70,
                      "ts": (t0 + timedelta(seconds=5)).isoformat()}),
              received, limits),
        parse(f"aoc/{SEEDED}/snap", TINY_JPEG, received, limits),
        parse("aoc/../tracking", b"{}", received, limits),  # a dead letter
    ]
    processor = Processor(
        store=store, objects=objects, rules=SpeedRules(), crash_dedup_s=60.0, maps_key=None,
        dead_letter_payload_bytes=64,
    )
    plan = await processor.plan(batch)
    await store.apply(plan.writes)
    processor.applied(plan)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, mosquitto: services.Service
) -> Iterator[Served]:
    test_dir = tmp_path_factory.mktemp("hostile-http")
    data_dir = test_dir / "data"
    runner = LoopThread()
    stack = contextlib.AsyncExitStack()

    async def start() -> Served:
        store = await stack.enter_async_context(SQLiteDocumentStore(data_dir / "aoc.sqlite3"))
        objects = await stack.enter_async_context(LocalObjectStore(data_dir / "objects"))
        cache = StateCache(redis_url, prefix=f"hostile-{uuid.uuid4().hex}")
        await cache.open()
        stack.push_async_callback(cache.close)
        publisher = await stack.enter_async_context(MqttClient(
            host="127.0.0.1", port=mosquitto.port, client_id=f"hostile-{uuid.uuid4().hex[:8]}",
            clean_session=True, manual_ack=False,
        ))
        await _seed(store, objects)
        # A dispatch token: the dispatch commands' paths are fuzzed too, not only refused.
        token = await create_token(store, "hostile", None, actor="tests", dispatch=True)
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=data_dir,
            max_image_bytes=MAX_IMAGE_BYTES,
            max_upload_files=MAX_UPLOAD_FILES,
            legacy_mode=True,  # the legacy endpoints, for this loopback client
            # No bridge applies dispatch commands here: answer pending at once.
            dispatch_wait_seconds=0,
        )
        deps = ApiDeps(
            settings=settings, store=store, objects=objects, cache=cache, publisher=publisher,
            ready_checks={"store": store.ping, "redis": cache.ping},
        )
        app = create_app(deps)
        client = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        ))
        served = Served(
            runner, client, data_dir, test_dir, tmp_path_factory.getbasetemp(), app, token
        )
        subscriber = await stack.enter_async_context(
            aiomqtt.Client("127.0.0.1", mosquitto.port)
        )
        await subscriber.subscribe("aoc/#", qos=1)
        await subscriber.subscribe("legacy/#", qos=1)  # the shim publishes there

        async def record() -> None:
            async for message in subscriber.messages:
                assert isinstance(message.payload, bytes)
                served.published.append((str(message.topic), message.payload))

        task = asyncio.get_running_loop().create_task(record())

        async def stop_recording() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop_recording)
        return served

    try:
        yield runner.run(start())
    finally:
        runner.run(stack.aclose())
        runner.stop()
