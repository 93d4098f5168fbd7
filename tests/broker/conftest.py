"""A Mosquitto with accounts on (the dynamic security plugin), and clients logging in to it.

The session's shared broker is anonymous; these tests start their own with the
plugin, whose file holds only ``admin`` at first, and make every other account
through the plugin as `aoc device add` and `aoc up` do.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import aiomqtt
import pytest

from broker import accounts
from tests import services

ADMIN_PASSWORD = "fake-admin-password"  # the test broker's alone
WAIT = 10.0


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    """A broker with authentication and ACLs, shared by one test module."""
    workdir = tmp_path_factory.mktemp("secure-mosquitto")
    with services.mosquitto(workdir, admin_password=ADMIN_PASSWORD) as service:
        yield service
    print(service.log_tail())


@pytest.fixture
async def admin(secure_broker: services.Service) -> AsyncIterator[accounts.DynsecAdmin]:
    async with accounts.DynsecAdmin(
        host="127.0.0.1", port=secure_broker.port, username=services.ADMIN, password=ADMIN_PASSWORD
    ) as client:
        await client.set_default_access()
        yield client


def new_id(stem: str = "T") -> str:
    """A fresh ambulance id (tests sharing a broker never see each other's)."""
    return f"{stem}{uuid.uuid4().hex[:10]}"


def client(
    broker: services.Service,
    username: str | None = None,
    password: str | None = None,
    **options: object,
) -> aiomqtt.Client:
    """An aiomqtt client of ``broker`` logging in as ``username`` (anonymous if None)."""
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=username,
        password=password,
        identifier=f"{username or 'anon'}-{uuid.uuid4().hex[:8]}",
        timeout=WAIT,
        **options,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def logged_in(
    broker: services.Service, username: str, password: str, *filters: str, **options: object
) -> AsyncIterator[aiomqtt.Client]:
    """A connected client, subscribed to ``filters`` (QoS 1) before it is handed out."""
    async with client(broker, username, password, **options) as connected:
        for topic in filters:
            await connected.subscribe(topic, qos=1)
        yield connected


async def received_until(
    subscriber: aiomqtt.Client, topic: str, payload: bytes
) -> list[tuple[str, bytes]]:
    """Every (topic, payload) ``subscriber`` receives up to and including ``payload`` on ``topic``.

    The marker is a positive control: published after the messages under test,
    it arrives after any of them that were delivered (Mosquitto forwards in order).
    """
    seen: list[tuple[str, bytes]] = []
    async with asyncio.timeout(WAIT):
        async for message in subscriber.messages:
            got = (message.topic.value, bytes(message.payload))  # type: ignore[arg-type]
            seen.append(got)
            if got == (topic, payload):
                return seen
    raise AssertionError(f"the subscription ended before the marker: {seen}")
