"""A private set of real servers per fault scenario: they get killed, so none is shared.

``Rig`` owns one Mosquitto, one Redis and the ``aoc`` processes a scenario
starts; it counts what reached the SQLite store and kills everything at the end.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from storage.sqlite import SQLiteDocumentStore
from tests import services


@dataclass
class Rig:
    """One scenario's servers: Mosquitto, Redis and ``aoc`` processes sharing one store."""

    workdir: Path
    mosquitto: services.Service
    redis: services.Service
    client_id: str = field(default_factory=lambda: f"aoc-bridge-{uuid.uuid4().hex[:8]}")
    started: list[services.Service] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "aoc.sqlite3"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def aoc(self, command: str, name: str | None = None, **env: str) -> services.Service:
        """An ``aoc`` process (not started) on this rig's broker, Redis and store."""
        service = services.aoc(
            command,
            self.workdir / (name or command),
            mqtt_port=self.mosquitto.port,
            redis_port=self.redis.port,
            env={
                "AOC_DATA_DIR": str(self.data_dir),
                "AOC_MQTT_CLIENT_ID": self.client_id,
                **env,
            },
        )
        self.started.append(service)
        return service

    def count(self, collection: str) -> int:
        """Rows in ``collection`` right now (0 before the bridge created the file)."""
        if not self.store_path.exists():
            return 0
        uri = f"{self.store_path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            return int(conn.execute(f'SELECT COUNT(*) FROM "{collection}"').fetchone()[0])
        except sqlite3.OperationalError:  # no table yet
            return 0
        finally:
            conn.close()

    async def documents(self, collection: str) -> list[dict[str, Any]]:
        """Every document of ``collection``, read through the project's store."""
        async with SQLiteDocumentStore(self.store_path) as store:
            return [doc async for doc in store.scan(collection)]

    def logs(self) -> str:
        return "\n\n".join(
            f"--- {s.name} ({s.workdir.name}) ---\n{s.log_tail(40)}" for s in self.started
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """Fresh Mosquitto and Redis for one scenario; every process is killed afterwards."""
    broker = services.mosquitto(tmp_path / "mosquitto").start()
    redis = services.redis(tmp_path / "redis").start()
    rig = Rig(tmp_path, broker, redis)
    rig.started += [broker, redis]
    try:
        yield rig
    finally:
        print(rig.logs())  # shown by pytest only when the scenario failed
        for service in reversed(rig.started):
            service.kill()
