"""Scenario 4: the document store is unavailable (locked, then read-only).

The bridge must stop acknowledging while it cannot store, so the broker keeps
the messages; it retries with backoff and resumes by itself. To prove nothing
was acknowledged early, the bridge is also SIGKILLed while it waits on the
lock: what it held must come back from the broker, not from its memory.
MongoDB cannot run on these machines, so only SQLite is exercised here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.base import AMBULANCES, TRACKINGS
from tests.faults.conftest import Rig
from tests.faults.devices import Fleet, check_aggregates, wait_until

pytestmark = pytest.mark.faults

FLEET = [f"S{n}" for n in range(10)]
HOLDING = "store unavailable, holding the batch"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on ``path`` through a connection of our own."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@contextlib.contextmanager
def read_only(paths: list[Path]) -> Iterator[None]:
    """Make the database and its WAL immutable: not even root can write them.

    Not the ``-shm`` index: it is shared memory, not data, and an immutable file
    under a live mmap kills its users with SIGBUS, which no read-only disk does.
    """
    present = [str(p) for p in paths if p.exists()]
    subprocess.run(["chattr", "+i", *present], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *present], check=True)


def holding(log: str) -> int:
    return log.count(HOLDING)


async def test_store_outages_hold_acks_and_lose_nothing(rig: Rig) -> None:
    """Test that a locked and a read-only SQLite store delay storing but lose or repeat nothing."""
    bridge = rig.aoc("bridge").start()
    fleet = Fleet(rig.mosquitto.port)
    await fleet.run(FLEET, 20)
    await wait_until(lambda: rig.count(TRACKINGS) == 200, timeout=20, what="200 stored")

    with exclusive_lock(rig.store_path):
        await asyncio.gather(*(fleet.device(aid, range(20, 60)) for aid in FLEET))
        await wait_until(lambda: holding(bridge.log_tail()) >= 1, timeout=30, what="retrying")
        assert rig.count(TRACKINGS) == 200
        # Whatever the bridge held unacknowledged must come back from the broker.
        bridge.kill()
        before = holding(bridge.log_tail(10_000))
        bridge.start()
        await wait_until(
            lambda: holding(bridge.log_tail(10_000)) > before, timeout=30, what="restart retrying"
        )
        assert rig.count(TRACKINGS) == 200
        released = time.monotonic()
    await wait_until(lambda: rig.count(TRACKINGS) == 600, timeout=30, what="600 stored")
    lock_recovery = time.monotonic() - released

    wal = rig.store_path.with_name(rig.store_path.name + "-wal")
    retries_before = holding(bridge.log_tail(10_000))
    with read_only([rig.store_path, wal]):
        await asyncio.gather(*(fleet.device(aid, range(60, 80)) for aid in FLEET))
        await wait_until(
            lambda: holding(bridge.log_tail(10_000)) > retries_before, timeout=30, what="retrying"
        )
        await asyncio.sleep(1.0)  # several retries happen here; none may store anything
        assert rig.count(TRACKINGS) == 600
        writable = time.monotonic()
    await wait_until(lambda: rig.count(TRACKINGS) == 800, timeout=30, what="800 stored")
    ro_recovery = time.monotonic() - writable

    docs = await rig.documents(TRACKINGS)
    stored = {doc["_id"] for doc in docs}
    lost = set(fleet.acked) - stored
    log = bridge.log_tail(10_000)
    warnings = sum("WARNING" in line for line in log.splitlines())
    print(
        f"scenario 4: sent {len(fleet.acked)}, stored {len(docs)},"
        f" lost {len(lost)};"
        f" lock: stored {lock_recovery:.1f}s after release; read-only: stored"
        f" {ro_recovery:.1f}s after the file was writable again; {warnings} warning lines"
    )
    assert len(fleet.acked) == 800
    assert not lost
    assert stored == set(fleet.acked)
    # Held, retried and redelivered batches are counted once in the aggregates.
    states = {doc["_id"]: doc for doc in await rig.documents(AMBULANCES)}
    assert check_aggregates(states, docs) == 800
    assert warnings <= 20, log  # per retry at most, never per message (800 here)
