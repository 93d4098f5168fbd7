"""Where `aoc serve` listens: its HTTP and Socket.IO servers bind only the configured address."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from aoc.config import Settings
from tests import services
from tests.broker.test_conf import other_local_addresses


def test_aoc_serve_listens_only_on_loopback_by_default(
    tmp_path: Path,
    mosquitto: services.Service,
    redis_server: services.Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test the default bind: both ports answer on 127.0.0.1 and refuse on every other address.

    Each other address is a local one (127.0.0.2 on Linux, the host's own
    address), so only a missing listener can refuse the connection.
    """
    monkeypatch.delenv("AOC_BIND_HOST", raising=False)  # the child inherits the environment
    assert Settings(_env_file=None).bind_host == "127.0.0.1"  # type: ignore[call-arg]
    others = other_local_addresses()
    assert others, "no local IPv4 address besides 127.0.0.1 (Linux always has 127.0.0.2)"
    serve = services.aoc("serve", tmp_path, mqtt_port=mosquitto.port, redis_port=redis_server.port)
    ports = {"http": serve.port, "socketio": int(serve.env["AOC_SOCKETIO_PORT"])}
    with serve:
        assert "AOC_BIND_HOST" not in serve.env
        health = httpx.get(f"http://127.0.0.1:{ports['http']}/healthz", timeout=10)
        assert health.status_code == 200
        engine = httpx.get(
            f"http://127.0.0.1:{ports['socketio']}/socket.io/",
            params={"EIO": "4", "transport": "polling", "token": serve.token}, timeout=10,
        )
        assert engine.status_code == 200 and engine.text.startswith("0{")  # an Engine.IO open
        for address in others:
            for port in ports.values():
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((address, port), timeout=5).close()
