"""Scenario 1: the bridge is SIGKILLed in the middle of a stream, then restarted."""

from __future__ import annotations

import asyncio
import time

import pytest

from storage.base import AMBULANCES, TRACKINGS
from storage.cache import StateCache
from tests.faults.conftest import Rig
from tests.faults.devices import (
    BASE_LAT,
    T0_MS,
    Fleet,
    check_aggregates,
    point_id,
    wait_until,
)

pytestmark = pytest.mark.faults

DEVICES, POINTS = 30, 100


async def test_sigkilled_bridge_loses_nothing_and_counts_each_point_once(rig: Rig) -> None:
    """Test that 3,000 QoS 1 points survive a bridge SIGKILL, each counted once, latest = newest."""
    bridge = rig.aoc("bridge").start()
    fleet = Fleet(rig.mosquitto.port)
    ids = [f"K{n:02d}" for n in range(DEVICES)]
    stream = asyncio.create_task(fleet.run(ids, POINTS, pace=0.01))
    await wait_until(lambda: rig.count(TRACKINGS) >= 600, timeout=30, what="600 points stored")
    bridge.kill()
    killed_at = time.monotonic()
    stored_at_kill = rig.count(TRACKINGS)
    bridge.start()
    restarted_at = time.monotonic()
    await asyncio.wait_for(stream, 60)
    sent = DEVICES * POINTS
    assert len(fleet.acked) == sent
    try:
        await wait_until(lambda: rig.count(TRACKINGS) >= sent, timeout=45)
    except AssertionError:
        missing = set(fleet.acked) - {d["_id"] for d in await rig.documents(TRACKINGS)}
        raise AssertionError(
            f"{len(missing)} points never stored: {sorted(missing)[:10]}"
        ) from None
    recovered = time.monotonic() - restarted_at
    await asyncio.sleep(1.0)  # a late duplicate would land now
    docs = await rig.documents(TRACKINGS)
    stored = {doc["_id"] for doc in docs}
    lost = set(fleet.acked) - stored
    states = {doc["_id"]: doc for doc in await rig.documents(AMBULANCES)}
    print(
        f"scenario 1: sent {sent}, stored {len(docs)}, lost {len(lost)},"
        f" stored before the kill {stored_at_kill}, caught up {recovered:.1f}s after the restart"
        f" ({time.monotonic() - killed_at:.1f}s after the kill)"
    )
    assert not lost
    assert stored == set(fleet.acked)
    # Redelivered points are counted once in the aggregates, and in order.
    assert check_aggregates(states, docs) == sent
    # Redelivered older points must not move the latest state backwards.
    newest = POINTS - 1
    cache = StateCache(rig.redis_url)
    await cache.open()
    try:
        cached = await cache.get_all()
    finally:
        await cache.close()
    for aid in ids:
        for state in (states[aid], cached[aid]):
            assert state["last_seen"].timestamp() * 1000 == T0_MS + newest * 1000
            assert state["location"]["lat"] == pytest.approx(BASE_LAT + newest * 0.0001)
            assert state["speed"] == float(newest % 150)
    assert point_id(ids[0], newest) in stored
