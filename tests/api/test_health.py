"""Liveness and readiness, with real components up and down."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from api import ApiDeps
from storage.base import StoreUnavailable
from storage.cache import StateCache
from tests import services
from tests.api.conftest import client_for


async def test_healthz(http: httpx.AsyncClient) -> None:
    """Test that /healthz answers ok."""
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_all_ready(http: httpx.AsyncClient) -> None:
    """Test that /readyz is 200 and reports each component when all are ready."""
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"store": "ok", "redis": "ok"}


async def test_readyz_reports_what_is_down(deps: ApiDeps) -> None:
    """Test that one unreachable and one stalled component make /readyz 503, each reported."""
    dead = StateCache(f"redis://127.0.0.1:{services.free_port()}/0")
    with contextlib.suppress(StoreUnavailable):
        await dead.open()  # fails, but keeps its client: ping reports the refusal

    async def stalled() -> None:
        await asyncio.Event().wait()  # a component that never answers

    deps.ready_checks = {**deps.ready_checks, "redis": dead.ping, "broker": stalled}
    async with client_for(deps) as http:
        started = time.monotonic()
        response = await http.get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    report = response.json()
    assert report["store"] == "ok"
    assert report["redis"].startswith("Redis:")
    assert report["broker"].startswith("timed out")
    assert elapsed < 4  # the checks run concurrently, each with its own short timeout
    await dead.close()
