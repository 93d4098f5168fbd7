"""Shared fixtures: real servers on free ports, one set per test session.

Tests that kill or reconfigure a server start their own with ``tests.services``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    """A Mosquitto broker running the project's mosquitto.conf."""
    with services.mosquitto(tmp_path_factory.mktemp("mosquitto")) as service:
        yield service


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    """A private Redis server."""
    with services.redis(tmp_path_factory.mktemp("redis")) as service:
        yield service


@pytest.fixture(scope="session")
def redis_url(redis_server: services.Service) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    """A SeaweedFS server with its S3 gateway (slow to start: shared by the session)."""
    service = services.seaweedfs(tmp_path_factory.mktemp("seaweedfs")).start()
    yield service
    service.kill()  # it takes over ten seconds to stop politely; its data is scratch


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
