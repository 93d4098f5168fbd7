"""``bench junk``: a flood of invalid payloads, and good points published in between.

Several publisher processes send M distinct invalid payloads of about S bytes
each (QoS 1, as fast as the broker acknowledges them), while one more device
sends G good tracking points spread over the flood. Once the bridge has taken
all of it, prints what the flood cost: growth of the SQLite files, WARNING lines
in the bridge's log, and how many good points were stored (all of them, or the
flood held good messages back).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import httpx

from bench import stack as stack_mod
from bench.stack import Stack
from bridge import contract
from bridge.contract import Kind

_DEAD = 'aoc_messages_dead_lettered_total{kind="tracking"}'
_STORED = 'aoc_messages_stored_total{kind="tracking"}'


def _junk(n: int, size: int) -> bytes:
    # Distinct payloads: identical ones would be taken for redeliveries.
    head = f"not json #{n} ".encode()
    return head + b"x" * max(size - len(head), 0)


@dataclass(frozen=True)
class _Flood:
    """One publisher process's share of the flood."""

    port: int
    topic: str
    first: int
    count: int
    size: int
    window: int


async def _flood(job: _Flood) -> None:
    numbers = iter(range(job.first, job.first + job.count))
    async with aiomqtt.Client(
        "127.0.0.1", job.port, max_inflight_messages=job.window, max_queued_outgoing_messages=0
    ) as client:
        client.pending_calls_threshold = 1_000_000

        async def worker() -> None:
            for n in numbers:
                await client.publish(job.topic, _junk(n, job.size), qos=1, timeout=120)

        await asyncio.gather(*(worker() for _ in range(job.window)))


def _publisher(job: _Flood) -> None:
    """One publisher process (a separate client, as a device would be)."""
    asyncio.run(_flood(job))


def _sizes(store: Path) -> int:
    """Bytes of the SQLite database and its WAL."""
    return sum(p.stat().st_size for p in (store, Path(f"{store}-wal")) if p.exists())


def _warnings(log: Path) -> int:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if " WARNING " in line)


async def _good(stack: Stack, aid: str, count: int, spread_s: float) -> None:
    base = stack_mod.now_ms() - count - 1000
    async with stack.mqtt() as client:
        for seq in range(count):
            body = {"lat": 13.7 + seq * 1e-5, "lon": 100.5, "speed": 40, "ts": base + seq}
            await client.publish(contract.topic(aid, Kind.TRACKING), json.dumps(body), qos=1)
            await asyncio.sleep(spread_s / count)


async def _value(http: httpx.AsyncClient, stack: Stack, name: str) -> float:
    return (await stack_mod.scrape(http, stack.metrics_url) or {}).get(name, 0.0)


async def junk(
    stack: Stack,
    *,
    messages: int,
    publishers: int,
    size: int,
    good: int,
    window: int,
    timeout: float,
) -> None:
    """One flood; prints its cost."""
    probe_s = await stack.probe()
    print(f"pipeline up (first point stored {probe_s:.2f}s after the first try)", flush=True)
    log = stack.app.log_path
    aid = f"GOOD-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient() as http:
        dead0, stored0 = await _value(http, stack, _DEAD), await _value(http, stack, _STORED)
        size0, warn0 = _sizes(stack.store_path), _warnings(log)
        share = [
            messages // publishers + (1 if i < messages % publishers else 0)
            for i in range(publishers)
        ]
        starts = [sum(share[:i]) for i in range(publishers)]
        context = multiprocessing.get_context("spawn")
        procs = [
            context.Process(
                target=_publisher,
                args=(
                    _Flood(
                        stack.mqtt_port,
                        contract.topic(f"JUNK-{i}", Kind.TRACKING),
                        starts[i],
                        share[i],
                        size,
                        window,
                    ),
                ),
            )
            for i in range(publishers)
        ]
        started = time.monotonic()
        for proc in procs:
            proc.start()
        # Good points over about the time the flood took (5 s).
        await _good(stack, aid, good, spread_s=5.0)
        for proc in procs:
            await asyncio.to_thread(proc.join, timeout)
        published_s = time.monotonic() - started
        while time.monotonic() - started < timeout:
            dead = await _value(http, stack, _DEAD) - dead0
            stored = await _value(http, stack, _STORED) - stored0
            if dead >= messages and stored >= good:
                break
            await asyncio.sleep(0.1)
        taken_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the last log lines and WAL frames land
        growth = _sizes(stack.store_path) - size0
        warnings = _warnings(log) - warn0
        samples = await stack_mod.scrape(http, stack.metrics_url) or {}
    in_store = stack_mod.stored_points(stack.store_path, aid)
    print(
        f"{messages} invalid payloads of {size} B from {publishers} processes, {good} good"
        f" points in between: published in {published_s:.1f}s, all taken in {taken_s:.1f}s",
        flush=True,
    )
    print(f"  dead-lettered (counted): {dead:.0f}", flush=True)
    print(f"  SQLite growth (db + wal): {growth / 1e6:.1f} MB", flush=True)
    print(f"  WARNING lines logged: {warnings}", flush=True)
    print(f"  good points stored: {in_store}/{good}", flush=True)
    dropped = {k: v for k, v in samples.items() if k.startswith("aoc_dead_letters_dropped_total")}
    for name, number in sorted(dropped.items()):
        print(f"  {name} {number:.0f}", flush=True)
