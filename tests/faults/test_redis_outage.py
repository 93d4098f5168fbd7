"""Scenario 3: Redis stops and comes back empty; `aoc bridge` and `aoc realtime` heal.

The bridge keeps storing and acknowledging without Redis. When Redis returns
(empty: it keeps nothing on disk), the latest-state cache is rebuilt from the
store, even after a quiet outage the bridge never noticed, and the Socket.IO
fan-out through ``AsyncRedisManager`` reaches dashboards again. The log names
the outage a bounded number of times, not once per message. A Redis that
stops answering without refusing (frozen: packets unanswered) holds no batch
either: fan-out waits in tasks of its own, never in the consume loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage.base import TRACKINGS
from storage.cache import StateCache
from tests.e2e.conftest import Dashboard, connect_dashboard
from tests.faults.conftest import Rig
from tests.faults.devices import T0_MS, Fleet, until_async, wait_until

pytestmark = pytest.mark.faults

FLEET = [f"R{n}" for n in range(5)]
REDIS_LINE = re.compile(r"(WARNING|ERROR).*redis", re.IGNORECASE)


async def cached_last_points(rig: Rig) -> dict[str, int]:
    """Each cached ambulance's latest point number ({} while Redis is down)."""
    cache = StateCache(rig.redis_url)
    try:
        await cache.open()
        states = await cache.get_all()
    except Exception:
        return {}
    finally:
        await cache.close()
    return {
        aid: (int(state["last_seen"].timestamp() * 1000) - T0_MS) // 1000
        for aid, state in states.items()
    }


async def received_again(board: Dashboard, fleet: Fleet, aid: str, start: int) -> int:
    """Publish points of ``aid`` until the dashboard gets one; returns how many it took."""
    i = start
    async with asyncio.timeout(40):
        while True:
            await fleet.device(aid, [i])
            ts = str(T0_MS + i * 1000)
            try:
                await board.wait_for(lambda d, ts=ts: aid in d and ts in d, timeout=1.0)
                return i - start + 1
            except TimeoutError:
                i += 1


async def test_redis_outage_heals_cache_and_fan_out(rig: Rig) -> None:
    """Test that storing goes on without Redis, and cache and Socket.IO recover when it returns."""
    bridge = rig.aoc("bridge").start()
    realtime = rig.aoc("realtime").start()
    url = f"http://127.0.0.1:{realtime.env['AOC_SOCKETIO_PORT']}"
    fleet = Fleet(rig.mosquitto.port)
    async with connect_dashboard(url) as board:
        await board.join("tracking")
        await fleet.run(FLEET, 10)
        await wait_until(lambda: len(board.received) >= 50, timeout=20, what="50 events")
        assert {json.loads(d)["ambulance_id"] for d in board.received} == set(FLEET)
        assert await cached_last_points(rig) == dict.fromkeys(FLEET, 9)

        # A loud outage: points keep flowing while Redis is down.
        rig.redis.kill()
        down_at = time.monotonic()
        await fleet.run(FLEET, 40, pace=0.08)  # points 0..39: 0..9 are repeats, 10..39 new
        await wait_until(lambda: rig.count(TRACKINGS) >= 200, timeout=20, what="200 stored")
        rig.redis.start()
        outage = time.monotonic() - down_at
        late_board = await received_again(board, fleet, "R-NEW", 0)
        fan_out_back = time.monotonic() - down_at - outage

        async def rebuilt() -> bool:
            return (await cached_last_points(rig)).items() >= dict.fromkeys(FLEET, 39).items()

        cache_back = await until_async(rebuilt, timeout=20, what="cache rebuilt")

        # A quiet outage: Redis restarts empty between two messages; no call failed.
        rig.redis.kill()
        rig.redis.start()
        await fleet.device("R-QUIET", [0])

        async def rebuilt_quietly() -> bool:
            return await rebuilt() and "R-QUIET" in await cached_last_points(rig)

        quiet_back = await until_async(rebuilt_quietly, timeout=20, what="quiet rebuild")

    log = bridge.log_tail(10_000).splitlines()
    redis_lines = [line for line in log if REDIS_LINE.search(line)]
    print(
        f"scenario 3: {rig.count(TRACKINGS)} points stored, 150 of them during a"
        f" {outage:.1f}s Redis outage; Socket.IO back after {late_board}"
        f" publish(es) in {fan_out_back:.1f}s, cache rebuilt {cache_back:.1f}s later;"
        f" after a quiet restart, rebuilt {quiet_back:.1f}s after the next point;"
        f" {len(redis_lines)} bridge log lines about Redis"
    )
    assert len(redis_lines) <= 10, "\n".join(redis_lines[:20])


async def fanout_failures(port: int, channel: str) -> float:
    """``aoc_fanout_failures_total{channel}`` on the bridge's /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aoc_fanout_failures_total" and sample.labels == {"channel": channel}:
                return float(sample.value)
    return 0.0


async def test_a_frozen_redis_holds_no_batch(rig: Rig) -> None:
    """Test that points are stored while Redis accepts connections but never answers.

    Fan-out used to follow each batch inline: every batch waited for Redis
    (the cache, and Socket.IO through ``AsyncRedisManager``) before the next
    could be taken, and storing stalled for as long as Redis did. Now the
    cache update times out, and the cache is rebuilt once Redis answers, with
    the states stored meanwhile.
    """
    bridge = rig.aoc("bridge").start()
    port = int(bridge.env["AOC_BRIDGE_HTTP_PORT"])
    fleet = Fleet(rig.mosquitto.port)
    await fleet.run(FLEET, 5)

    async def cached_up_to(last: int) -> bool:
        return await cached_last_points(rig) == dict.fromkeys(FLEET, last)

    await until_async(lambda: cached_up_to(4), timeout=20, what="points 0..4 cached")
    assert rig.redis.proc is not None
    os.killpg(rig.redis.proc.pid, signal.SIGSTOP)  # frozen: the kernel still accepts
    try:
        await fleet.run(FLEET, 30)  # points 0..4 again (duplicates), then 5..29
        took = await wait_until(
            lambda: rig.count(TRACKINGS) == 150, timeout=20, what="150 stored, Redis frozen"
        )

        async def timed_out() -> bool:
            return await fanout_failures(port, "cache") >= 1

        await until_async(timed_out, timeout=20, what="a cache update timed out")
    finally:
        os.killpg(rig.redis.proc.pid, signal.SIGCONT)
    healed = await until_async(lambda: cached_up_to(29), timeout=30, what="cache healed")
    print(f"frozen Redis: 125 points stored in {took:.1f}s, cache healed {healed:.1f}s later")
    log = bridge.log_tail(10_000).splitlines()
    assert len([line for line in log if REDIS_LINE.search(line)]) <= 10
