"""Scenario 5: SIGTERM stops each process cleanly, promptly, and loses nothing in flight.

``aoc bridge`` and ``aoc serve`` finish and acknowledge the batch in hand;
``aoc api`` finishes its requests (each answered only after the broker's
PUBACK). Each must exit with code 0 within ``EXIT_BOUND_S``; after a restart
the store holds every acknowledged message exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from storage.base import AMBULANCES, TRACKINGS
from tests import services
from tests.faults.conftest import Rig
from tests.faults.devices import Fleet, LegacyDevices, check_aggregates, wait_until

pytestmark = pytest.mark.faults

EXIT_BOUND_S = 10.0


def terminate(service: services.Service) -> tuple[int, float]:
    """SIGTERM ``service`` as an orchestrator would; its exit code and how long it took."""
    assert service.proc is not None
    start = time.monotonic()
    os.killpg(service.proc.pid, signal.SIGTERM)
    code = service.proc.wait(EXIT_BOUND_S * 3)
    return code, time.monotonic() - start


@pytest.mark.parametrize("command", ["bridge", "serve"])
async def test_sigterm_mid_stream_exits_zero_and_loses_nothing(rig: Rig, command: str) -> None:
    """Test that SIGTERM mid-stream exits 0 promptly and each point is stored once after restart."""
    process = rig.aoc(command).start()
    fleet = Fleet(rig.mosquitto.port)
    ids = [f"T{command[0]}{n:02d}" for n in range(20)]
    stream = asyncio.create_task(fleet.run(ids, 100, pace=0.01))
    await wait_until(lambda: rig.count(TRACKINGS) >= 400, timeout=30, what="400 stored")
    code, took = terminate(process)
    stored_at_exit = rig.count(TRACKINGS)
    assert "stopping" in process.log_tail(50)
    await asyncio.to_thread(process.start)
    await asyncio.wait_for(stream, 60)
    await wait_until(lambda: rig.count(TRACKINGS) >= 2000, timeout=45, what="2000 stored")
    await asyncio.sleep(0.5)
    docs = await rig.documents(TRACKINGS)
    stored = {doc["_id"] for doc in docs}
    lost = set(fleet.acked) - stored
    print(
        f"scenario 5 ({command}): sent {len(fleet.acked)}, stored {len(docs)}, lost {len(lost)},"
        f" exit code {code} {took:.1f}s after SIGTERM, {stored_at_exit} stored at exit"
    )
    assert code == 0, process.log_tail()
    assert took <= EXIT_BOUND_S
    assert not lost
    assert stored == set(fleet.acked)
    states = {doc["_id"]: doc for doc in await rig.documents(AMBULANCES)}
    assert check_aggregates(states, docs) == len(fleet.acked)


async def test_sigterm_api_answers_in_flight_requests_and_exits_zero(rig: Rig) -> None:
    """Test that `aoc api` under SIGTERM finishes its requests, exits 0, and every 200 is stored."""
    rig.aoc("bridge").start()
    api = rig.aoc("api").start()
    legacy = LegacyDevices(f"http://127.0.0.1:{api.port}")
    ids = [f"TA{n:02d}" for n in range(10)]
    stream = asyncio.gather(*(legacy.device(aid, 200, give_up=True) for aid in ids))
    await wait_until(lambda: len(legacy.answered) >= 300, timeout=30, what="300 answered")
    code, took = terminate(api)
    await asyncio.wait_for(stream, 60)
    answered = dict(legacy.answered)
    await wait_until(lambda: rig.count(TRACKINGS) >= len(answered), timeout=30, what="stored")
    await asyncio.sleep(0.5)
    docs = await rig.documents(TRACKINGS)
    per_post = Counter((doc["ambulance_id"], doc["seq"]) for doc in docs)
    lost = set(answered) - set(per_post)
    duplicated = sum(n - 1 for n in per_post.values())
    print(
        f"scenario 5 (api): {len(answered)} POSTs answered 200, {legacy.failed} refused or"
        f" cut, stored {len(docs)}, duplicated {duplicated}, lost {len(lost)},"
        f" exit code {code} {took:.1f}s after SIGTERM"
    )
    assert code == 0, api.log_tail()
    assert took <= EXIT_BOUND_S
    assert not lost
    assert duplicated == 0
