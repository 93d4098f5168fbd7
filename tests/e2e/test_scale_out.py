"""Scale-out: `aoc bridge`, `aoc api` and `aoc realtime` as separate processes.

They share nothing but Mosquitto, Redis and the store: the bridge reaches the
Socket.IO server through python-socketio's Redis manager, and the API reads
the latest state that the bridge cached in Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

from tests import services
from tests.e2e.conftest import connect_dashboard, eventually
from tests.e2e.test_live import check, publish_and_watch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def parts(
    mosquitto: services.Service,
    redis_server: services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, services.Service]]:
    workdir = tmp_path_factory.mktemp("scale-out")
    shared = {
        "AOC_DATA_DIR": str(workdir / "data"),
        "AOC_MQTT_CLIENT_ID": f"aoc-bridge-{uuid.uuid4().hex[:8]}",
    }
    started: dict[str, services.Service] = {}
    try:
        for command in ("bridge", "api", "realtime"):
            service = services.aoc(
                command,
                workdir / command,
                mqtt_port=mosquitto.port,
                redis_port=redis_server.port,
                env=shared,
            )
            started[command] = service.start()
        yield started
    finally:
        for service in started.values():
            service.stop()


async def test_a_point_crosses_three_processes(
    parts: dict[str, services.Service], mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test that a device point reaches a dashboard on `aoc realtime` and the state on `aoc api`."""
    ambulance_id = f"SCALE-{uuid.uuid4().hex[:8]}"
    realtime_url = f"http://127.0.0.1:{parts['realtime'].env['AOC_SOCKETIO_PORT']}"
    body = {"lat": 13.7, "lon": 100.5, "speed": 95, "heading": 10, "ts": int(time.time() * 1000)}
    async with connect_dashboard(realtime_url) as board:
        await board.join(ambulance_id)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as device:
            await device.publish(f"aoc/{ambulance_id}/tracking", json.dumps(body), qos=1)
        data = json.loads(await board.wait_for(lambda d: ambulance_id in d, timeout=20))
    assert data["tracking_speed"] == 95
    api = parts["api"]
    assert isinstance(api, services.AocService)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{api.port}", headers=api.auth_headers
    ) as http:

        async def state() -> dict[str, object] | None:
            response = await http.get(f"/api/v1/ambulances/{ambulance_id}")
            return response.json() if response.status_code == 200 else None

        latest = await eventually(state)
    assert latest["state"] == "ORANGE"  # type: ignore[index]


async def test_a_live_subscriber_of_aoc_realtime_gets_each_latest_state(
    parts: dict[str, services.Service], mosquitto: services.Service
) -> None:
    """Test the live stream across processes: the bridge's feed crosses the Redis manager."""
    url = f"http://127.0.0.1:{parts['realtime'].env['AOC_SOCKETIO_PORT']}"
    check(await publish_and_watch(mosquitto.port, url))
