"""CORS: browsers from configured origins only, on the HTTP API and on Socket.IO.

Served by a real uvicorn; the clients are httpx and python-socketio, which let
a test send the ``Origin`` header a browser would. Clients that send none
(devices, scripts, the legacy clients) are never concerned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import socketio

from aoc.config import Settings
from api import ApiDeps, SocketGate, create_app, create_realtime_app, create_sio
from api.tokens import create_token
from tests import services
from tests.api.test_limits import serving

DASHBOARD = "https://dashboard.example.org"
OTHER = "https://elsewhere.example.net"
ALLOW_ORIGIN = "access-control-allow-origin"


def test_the_setting_is_a_comma_separated_list() -> None:
    """Test that AOC_CORS_ORIGINS splits at commas, drops blanks and trailing slashes."""
    assert Settings(_env_file=None).cors_origin_list == []  # type: ignore[call-arg]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        cors_origins=f" {DASHBOARD}/ ,, http://localhost:8080",
    )
    assert settings.cors_origin_list == [DASHBOARD, "http://localhost:8080"]


@contextlib.asynccontextmanager
async def api(deps: ApiDeps, origins: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client (with a token) of the API served with ``AOC_CORS_ORIGINS=origins``."""
    settings = deps.settings.model_copy(update={"cors_origins": origins})
    app = create_app(dataclasses.replace(deps, settings=settings))
    token = await create_token(deps.store, f"cors-{uuid.uuid4().hex[:8]}", None, actor="tests")
    async with (
        serving(app) as port,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):
        yield client


async def test_http_answers_carry_the_origin_only_when_it_is_allowed(deps: ApiDeps) -> None:
    """Test that an allowed origin is named in the answer, another is not, and no Origin works."""
    async with api(deps, f"{DASHBOARD},http://localhost:8080") as client:
        allowed = await client.get("/api/v1/ambulances", headers={"Origin": DASHBOARD})
        assert allowed.status_code == 200
        assert allowed.headers[ALLOW_ORIGIN] == DASHBOARD
        refused = await client.get("/api/v1/ambulances", headers={"Origin": OTHER})
        assert ALLOW_ORIGIN not in refused.headers
        # A device or a script sends no Origin: served as before.
        plain = await client.get("/api/v1/ambulances")
        assert plain.status_code == 200 and ALLOW_ORIGIN not in plain.headers
        # The preflight a browser sends before a request with a token header.
        preflight = {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        ok = await client.options("/api/v1/ambulances", headers={"Origin": DASHBOARD, **preflight})
        assert ok.status_code == 200 and ok.headers[ALLOW_ORIGIN] == DASHBOARD
        no = await client.options("/api/v1/ambulances", headers={"Origin": OTHER, **preflight})
        assert no.status_code >= 400 and ALLOW_ORIGIN not in no.headers


async def test_http_allows_no_other_origin_by_default(deps: ApiDeps) -> None:
    """Test the default (no origins): no answer names an origin, so no other page reads it."""
    async with api(deps, "") as client:
        got = await client.get("/api/v1/ambulances", headers={"Origin": OTHER})
        assert got.status_code == 200 and ALLOW_ORIGIN not in got.headers
        preflight = await client.options(
            "/api/v1/ambulances",
            headers={"Origin": OTHER, "Access-Control-Request-Method": "GET"},
        )
        assert ALLOW_ORIGIN not in preflight.headers


async def test_http_allows_any_origin_only_when_told(deps: ApiDeps) -> None:
    """Test AOC_CORS_ORIGINS=*: every origin may read."""
    async with api(deps, "*") as client:
        got = await client.get("/api/v1/ambulances", headers={"Origin": OTHER})
        assert got.headers[ALLOW_ORIGIN] == "*"


async def socketio_connects(
    port: int, origin: str | None, transport: str, *, headers: dict[str, str] | None = None
) -> bool:
    """Whether a python-socketio client sending ``origin`` (and ``headers``) gets connected."""
    client = socketio.AsyncClient(reconnection=False)
    headers = dict(headers or {})
    if origin is not None:
        headers["Origin"] = origin
    try:
        await client.connect(
            f"http://127.0.0.1:{port}", headers=headers, transports=[transport], wait_timeout=5
        )
    except socketio.exceptions.ConnectionError:
        return False
    connected = client.connected
    # A polling client's disconnect waits out its pending long poll: not our concern.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await client.disconnect()
    return connected


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_refuses_browsers_from_other_origins(
    transport: str, gate: SocketGate
) -> None:
    """Test that a configured origin connects, another is refused, and no Origin connects."""
    sio = create_sio(gate, cors_origins=[DASHBOARD])
    async with serving(create_realtime_app(sio, gate.settings), graceful_timeout=1.0) as port:
        assert await socketio_connects(port, DASHBOARD, transport)
        assert not await socketio_connects(port, OTHER, transport)
        assert await socketio_connects(port, None, transport)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_admits_its_own_origin_only_by_default(
    transport: str, gate: SocketGate
) -> None:
    """Test the default: a page served by the Socket.IO port itself connects, no other."""
    sio = create_sio(gate)
    async with serving(create_realtime_app(sio, gate.settings), graceful_timeout=1.0) as port:
        assert await socketio_connects(port, f"http://127.0.0.1:{port}", transport)
        assert not await socketio_connects(port, DASHBOARD, transport)
        assert await socketio_connects(port, None, transport)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_admits_the_dashboard_of_the_http_port(
    transport: str, gate: SocketGate
) -> None:
    """Test that /dashboard's origin (this host, the HTTP port) connects; other ports do not."""
    http_port = services.free_port()
    sio = create_sio(gate, cors_origins=[DASHBOARD], dashboard_port=http_port)
    async with serving(create_realtime_app(sio, gate.settings), graceful_timeout=1.0) as port:
        assert await socketio_connects(port, f"http://127.0.0.1:{http_port}", transport)
        assert await socketio_connects(port, f"http://127.0.0.1:{port}", transport)
        assert await socketio_connects(port, DASHBOARD, transport)
        assert not await socketio_connects(port, f"http://127.0.0.1:{http_port + 1}", transport)
        assert not await socketio_connects(port, f"http://evil.example:{http_port}", transport)
        assert not await socketio_connects(port, OTHER, transport)


@pytest.mark.parametrize("dashboard", [False, True])
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_admits_the_page_behind_a_tls_proxy(
    transport: str, dashboard: bool, gate: SocketGate
) -> None:
    """Test that the origin named by X-Forwarded-Proto/Host connects, as Engine.IO's own check.

    A TLS reverse proxy speaks plain HTTP to us: only its forwarded headers
    name the page's origin, with or without the dashboard's port configured.
    """
    dashboard_port = services.free_port() if dashboard else None
    sio = create_sio(gate, dashboard_port=dashboard_port)
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "aoc.example.org"}
    async with serving(create_realtime_app(sio, gate.settings), graceful_timeout=1.0) as port:
        assert await socketio_connects(
            port, "https://aoc.example.org", transport, headers=proxied
        )
        # A list of proxies: the first (the one the browser reached) counts.
        chained = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "aoc.example.org, x"}
        assert await socketio_connects(
            port, "https://aoc.example.org", transport, headers=chained
        )
        # Only the scheme forwarded: the host is the Host header's.
        assert await socketio_connects(
            port, f"https://127.0.0.1:{port}", transport, headers={"X-Forwarded-Proto": "https"}
        )
        assert not await socketio_connects(port, "https://aoc.example.org", transport)
        assert not await socketio_connects(port, OTHER, transport, headers=proxied)
        if dashboard_port is not None:
            # The dashboard on the HTTP port, reached through the same proxy name.
            assert await socketio_connects(
                port, f"https://aoc.example.org:{dashboard_port}", transport, headers=proxied
            )


@pytest.mark.parametrize("command", ["serve", "realtime"])
async def test_the_processes_apply_the_setting(
    command: str,
    tmp_path: Path,
    mosquitto: services.Service,
    redis_server: services.Service,
) -> None:
    """Test `aoc serve` and `aoc realtime` run with AOC_CORS_ORIGINS: it reaches both servers."""
    process = services.aoc(
        command,
        tmp_path,
        mqtt_port=mosquitto.port,
        redis_port=redis_server.port,
        env={"AOC_CORS_ORIGINS": DASHBOARD},
    )
    with process:
        socketio_port = int(process.env["AOC_SOCKETIO_PORT"])
        assert await socketio_connects(socketio_port, DASHBOARD, "websocket")
        assert not await socketio_connects(socketio_port, OTHER, "websocket")
        if command == "serve":
            url = f"http://127.0.0.1:{process.port}/healthz"
            async with httpx.AsyncClient(timeout=10) as client:
                allowed = await client.get(url, headers={"Origin": DASHBOARD})
                assert allowed.headers[ALLOW_ORIGIN] == DASHBOARD
                refused = await client.get(url, headers={"Origin": OTHER})
                assert ALLOW_ORIGIN not in refused.headers
