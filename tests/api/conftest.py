"""Fixtures of the API tests: the real app over real SQLite, files, Redis and Mosquitto."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from aoc.config import Settings
from api import ApiDeps, SocketGate, create_app
from api.tokens import create_token
from broker.client import MqttClient
from storage.cache import StateCache
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services

MAX_IMAGE_BYTES = 4096
MAX_UPLOAD_FILES = 3


@pytest.fixture
def ambulance_id() -> str:
    return f"amb-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        max_image_bytes=MAX_IMAGE_BYTES,
        max_upload_files=MAX_UPLOAD_FILES,
        # The legacy endpoints and token-less Socket.IO, for the test clients on loopback;
        # the tests of the guards themselves turn it off.
        legacy_mode=True,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteDocumentStore]:
    async with SQLiteDocumentStore(tmp_path / "aoc.sqlite3") as opened:
        yield opened  # type: ignore[misc]


@pytest.fixture
async def api_token(store: SQLiteDocumentStore) -> str:
    """A token that reads every ambulance."""
    return await create_token(store, "api-tests", None, actor="tests")


@pytest.fixture
def gate(settings: Settings, store: SQLiteDocumentStore) -> SocketGate:
    """The Socket.IO gate of the tests' settings (legacy mode on, for loopback clients)."""
    return SocketGate(settings, store)


@pytest.fixture
async def objects(tmp_path: Path) -> AsyncIterator[LocalObjectStore]:
    async with LocalObjectStore(tmp_path / "objects") as opened:
        yield opened  # type: ignore[misc]


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[StateCache]:
    cache = StateCache(redis_url, prefix=f"api-test-{uuid.uuid4().hex}")
    await cache.open()
    yield cache
    await cache.close()


@pytest.fixture
async def publisher(mosquitto: services.Service) -> AsyncIterator[MqttClient]:
    client = MqttClient(
        host="127.0.0.1",
        port=mosquitto.port,
        client_id=f"api-test-{uuid.uuid4().hex[:8]}",
        clean_session=True,
        manual_ack=False,
    )
    async with client:
        yield client


@pytest.fixture
def deps(
    settings: Settings,
    store: SQLiteDocumentStore,
    objects: LocalObjectStore,
    cache: StateCache,
    publisher: MqttClient,
) -> ApiDeps:
    return ApiDeps(
        settings=settings,
        store=store,
        objects=objects,
        cache=cache,
        publisher=publisher,
        ready_checks={"store": store.ping, "redis": cache.ping},
    )


def client_for(deps: ApiDeps, token: str | None = None) -> httpx.AsyncClient:
    """An in-process client of the app (from 127.0.0.1), sending ``token`` as a bearer."""
    transport = httpx.ASGITransport(app=create_app(deps))
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=15, headers=headers
    )


@pytest.fixture
async def http(deps: ApiDeps, api_token: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a token that reads everything."""
    async with client_for(deps, api_token) as client:
        yield client


@dataclass
class Subscriber:
    """An MQTT subscriber on ``aoc/<id>/#`` and the shim's ``legacy/<id>/#`` of the test broker."""

    client: aiomqtt.Client

    async def next(self, within: float = 5.0) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(within):
            message = await anext(self.client.messages)
        assert isinstance(message.payload, bytes)
        return str(message.topic), json.loads(message.payload)

    async def nothing(self, wait: float = 0.2) -> None:
        """Assert that no message arrives within ``wait`` seconds."""
        try:
            async with asyncio.timeout(wait):
                message = await anext(self.client.messages)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message on {message.topic}: {message.payload!r}")


@pytest.fixture
async def subscriber(mosquitto: services.Service, ambulance_id: str) -> AsyncIterator[Subscriber]:
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.subscribe(f"aoc/{ambulance_id}/#", qos=1)
        await client.subscribe(f"legacy/{ambulance_id}/#", qos=1)
        yield Subscriber(client)
