"""``bench limits``: what one heavy HTTP client costs everyone else on ``aoc serve``.

Three scenarios, each against a fresh stack:

- ``upload``: a 10 x 5 MB legacy snapshot upload (sent by ``curl`` in its own
  process, so the benchmark's loop only measures) while a probe GETs
  ``/healthz`` every 20 ms and a dashboard in room ``tracking`` receives a
  point published every 50 ms: the worst ``/healthz`` latency and fan-out
  delay during the upload, per run, and their medians.
- ``slow``: N chunked POSTs to the legacy tracking endpoint that never finish:
  file descriptors the server holds for them, how long until it closes each,
  and what it answered.
- ``fleet``: 20,000 ambulances written into the store and the Redis cache
  (``--source store`` runs ``aoc serve`` with an unreachable Redis, so the
  list falls back to the store); ``GET /api/v1/ambulances`` followed through
  every ``next_cursor``, with the same two probes.

``--aoc-pythonpath`` runs the ``aoc`` process from another checkout (the code
before a change) while this benchmark stays the same, for before/after figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import socketio

from bench import stack as stack_mod
from bench.stack import Stack
from bench.stats import median, percentile
from bridge import contract
from bridge.contract import Kind
from storage.base import AMBULANCES, Write
from storage.cache import StateCache
from storage.sqlite import SQLiteDocumentStore

SNAPSHOT = "/api/snapshot/postAmbulanceImageUpload"
TRACKING = "/api/tracking/postAmbulanceTracking"
JPEG_MAGIC = b"\xff\xd8\xff\xe0"


@dataclass
class Probes:
    """``/healthz`` latencies and fan-out delays, each as (sent at, seconds)."""

    healthz: list[tuple[float, float]] = field(default_factory=list)
    fanout: list[tuple[float, float]] = field(default_factory=list)
    published: dict[int, float] = field(default_factory=dict)

    def worst(self, start: float, end: float) -> tuple[float, float]:
        """The largest /healthz latency and fan-out delay of probes sent in [start, end]."""
        health = [d for t, d in self.healthz if start <= t <= end]
        fan = [d for t, d in self.fanout if start <= t <= end]
        return max(health, default=float("nan")), max(fan, default=float("nan"))

    def typical(self, start: float, end: float) -> tuple[float, float]:
        """The p50 /healthz latency and fan-out delay in [start, end]."""
        health = [d for t, d in self.healthz if start <= t <= end]
        fan = [d for t, d in self.fanout if start <= t <= end]
        return percentile(health, 50), percentile(fan, 50)


async def _healthz_loop(url: str, probes: Probes) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            sent = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                await client.get(f"{url}/healthz")
                probes.healthz.append((sent, time.monotonic() - sent))
            await asyncio.sleep(max(0.0, sent + 0.02 - time.monotonic()))


async def _fanout_loop(stack: Stack, probes: Probes) -> None:
    aid = f"FAN-{uuid.uuid4().hex[:6]}"
    board = socketio.AsyncClient(reconnection=False)
    joined = asyncio.Event()

    @board.on(contract.EVENT)  # type: ignore[untyped-decorator]
    async def on_data(data: object) -> None:
        now = time.monotonic()
        if data == "room joined: tracking":
            joined.set()
            return
        with contextlib.suppress(ValueError, TypeError, KeyError):
            body = json.loads(str(data))
            if body.get("ambulance_id") == aid:
                sent = probes.published.pop(int(body["seq"]), None)
                if sent is not None:
                    probes.fanout.append((sent, now - sent))

    await board.connect(stack.socketio_url, transports=["websocket"], wait_timeout=10)
    try:
        await board.emit(contract.JOIN_EVENT, contract.TRACKING_ROOM)
        async with asyncio.timeout(10):
            await joined.wait()
        async with stack.mqtt() as client:
            seq = 0
            while True:
                sent = time.monotonic()
                body = {"lat": 13.75, "lon": 100.5, "speed": 40, "ts": stack_mod.now_ms(),
                        "seq": seq}
                probes.published[seq] = sent
                await client.publish(contract.topic(aid, Kind.TRACKING), json.dumps(body), qos=1)
                seq += 1
                await asyncio.sleep(max(0.0, sent + 0.05 - time.monotonic()))
    finally:
        await board.disconnect()


@contextlib.asynccontextmanager
async def probing(stack: Stack) -> AsyncIterator[Probes]:
    """Run both probes for the duration of the block."""
    probes = Probes()
    tasks = [
        asyncio.create_task(_healthz_loop(stack.http_url, probes), name="healthz-probe"),
        asyncio.create_task(_fanout_loop(stack, probes), name="fanout-probe"),
    ]
    try:
        await asyncio.sleep(2.0)  # warm: the dashboard joined, the first points through
        yield probes
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def _report(rows: list[tuple[float, float, float]], what: str) -> None:
    """Per-run (duration, worst /healthz, worst fan-out) and the medians."""
    for n, (took, health, fan) in enumerate(rows, 1):
        print(f"  run {n}: {what} {_ms(took)}  worst /healthz {_ms(health)}"
              f"  worst fan-out {_ms(fan)}", flush=True)
    print(f"median of {len(rows)}: {what} {_ms(median([r[0] for r in rows]))}"
          f"  worst /healthz {_ms(median([r[1] for r in rows]))}"
          f"  worst fan-out {_ms(median([r[2] for r in rows]))}", flush=True)


async def upload(stack: Stack, *, runs: int, files: int, size: int) -> None:
    """A ``files`` x ``size`` legacy upload per run, with both probes watching."""
    await stack.probe()
    with tempfile.TemporaryDirectory(prefix="aoc-bench-upload-") as tmp:
        paths = []
        for i in range(files):
            path = Path(tmp) / f"image{i}.jpg"
            path.write_bytes(JPEG_MAGIC + os.urandom(size - len(JPEG_MAGIC)))
            paths.append(path)
        form = ["-F", "ambulance_id=BENCH-UP"]
        for path in paths:
            form += ["-F", f"files=@{path};type=image/jpeg"]
        rows = []
        async with probing(stack) as probes:
            quiet_start = time.monotonic()
            await asyncio.sleep(2.0)
            base = probes.typical(quiet_start, time.monotonic())
            print(f"quiet: p50 /healthz {_ms(base[0])}  p50 fan-out {_ms(base[1])}", flush=True)
            for _ in range(runs):
                start = time.monotonic()
                curl = await asyncio.create_subprocess_exec(
                    "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                    *form, f"{stack.http_url}{SNAPSHOT}",
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await curl.communicate()
                end = time.monotonic()
                await asyncio.sleep(1.5)  # let late probes of the window land
                health, fan = probes.worst(start, end)
                print(f"  upload answered {out.decode()}", flush=True)
                rows.append((end - start, health, fan))
                await asyncio.sleep(1.0)
    _report(rows, f"{files} x {size / 2**20:.0f} MB upload")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _hold(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {TRACKING} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def _until_closed(
    reader: asyncio.StreamReader, opened: float, cap: float
) -> tuple[float | None, str]:
    try:
        async with asyncio.timeout(cap):
            data = await reader.read()  # to EOF: the server closed it
    except TimeoutError:
        return None, "still open"
    except ConnectionError:
        return time.monotonic() - opened, "reset"
    status = data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without answer"
    return time.monotonic() - opened, status


async def slow(stack: Stack, *, connections: int, cap: float) -> None:
    """``connections`` never-finishing chunked POSTs: fds held, and for how long."""
    await stack.probe()
    pid = stack.pids()["aoc-serve"]
    port = int(stack.app.env["AOC_HTTP_PORT"])
    before = _fds(pid)
    opened = time.monotonic()
    held = [await _hold(port) for _ in range(connections)]
    await asyncio.sleep(1.0)
    during = _fds(pid)
    async with httpx.AsyncClient(timeout=10) as client:
        health = await client.get(f"{stack.http_url}/healthz")
    print(f"{connections} unfinished POSTs: server fds {before} -> {during}"
          f" (+{during - before}); /healthz meanwhile: {health.status_code}", flush=True)
    results = await asyncio.gather(*(_until_closed(r, opened, cap) for r, _ in held))
    for _, writer in held:
        writer.close()
    closed = [t for t, _ in results if t is not None]
    answers: dict[str, int] = {}
    for _, status in results:
        answers[status] = answers.get(status, 0) + 1
    print(f"closed by the server within {cap:.0f} s: {len(closed)} of {connections}"
          f"  (median {median(closed):.1f} s, max {max(closed, default=float('nan')):.1f} s)")
    print(f"answers: {answers}; server fds after: {_fds(pid)}", flush=True)


def _state(aid: str, at: datetime) -> dict[str, object]:
    return {
        "_id": aid, "ambulance_id": aid, "location": {"lat": 13.7563, "lon": 100.5018},
        "speed": 45.5, "heading": 180.0, "state": "GREEN", "last_seen": at, "received_at": at,
        "online": True, "covered_distance": 120.5, "avg_speed": 40.0, "speed_sum": 80.0,
        "speed_count": 2, "estimated_time": None, "destination_location": None,
        "source_location": {"lat": 13.75, "lon": 100.5}, "open_episodes": {},
    }


async def _fill(stack: Stack, count: int, *, cache: bool) -> None:
    now = datetime.now(UTC)
    states = {f"FLEET-{i:05d}": _state(f"FLEET-{i:05d}", now - timedelta(seconds=i))
              for i in range(count)}
    async with SQLiteDocumentStore(stack.store_path) as store:
        await store.apply([Write(AMBULANCES, "upsert", doc) for doc in states.values()])
    if cache:
        redis = StateCache(f"redis://127.0.0.1:{stack.redis.port}/0")
        await redis.open()
        try:
            # What the bridge has cached (the probe's ambulances) plus the fleet.
            await redis.rebuild({**await redis.get_all(), **states})
        finally:
            await redis.close()


async def _list_fleet(client: httpx.AsyncClient, url: str) -> tuple[int, int, int, set[str]]:
    """Follow every page: (ambulances, requests, bytes, sources)."""
    items = requests = size = 0
    sources: set[str] = set()
    params: dict[str, str] = {}
    while True:
        response = await client.get(f"{url}/api/v1/ambulances", params=params)
        response.raise_for_status()
        body = response.json()
        items += len(body["items"])
        requests += 1
        size += len(response.content)
        sources.add(body["source"])
        cursor = body.get("next_cursor")
        if not cursor:
            return items, requests, size, sources
        params = {"cursor": cursor}


async def fleet(stack: Stack, *, runs: int, count: int, cache: bool) -> None:
    """List ``count`` ambulances through every page, with both probes watching."""
    await stack.probe()
    await _fill(stack, count, cache=cache)
    rows = []
    async with (
        probing(stack) as probes,
        httpx.AsyncClient(timeout=60, headers=stack.app.auth_headers) as client,
    ):
        for _ in range(runs):
            start = time.monotonic()
            items, requests, size, sources = await _list_fleet(client, stack.http_url)
            end = time.monotonic()
            await asyncio.sleep(1.5)
            health, fan = probes.worst(start, end)
            print(f"  listed {items} ambulances in {requests} requests,"
                  f" {size / 1e6:.2f} MB, from {sorted(sources)}", flush=True)
            rows.append((end - start, health, fan))
            await asyncio.sleep(0.5)
    _report(rows, "whole fleet")
