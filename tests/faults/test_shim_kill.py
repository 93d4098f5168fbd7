"""Scenario 6: legacy POSTs through `aoc serve` while it is SIGKILLed mid-stream.

The shim answers 200 only after the broker's PUBACK, so every answered POST is
queued in the bridge's persistent session even though the bridge died with the
shim; after a restart each is stored exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from storage.base import TRACKINGS
from tests.faults.conftest import Rig
from tests.faults.devices import LegacyDevices, wait_until

pytestmark = pytest.mark.faults


async def test_answered_legacy_posts_survive_a_serve_sigkill(rig: Rig) -> None:
    """Test that every POST answered 200 is stored once although `aoc serve` was SIGKILLed."""
    serve = rig.aoc("serve").start()
    legacy = LegacyDevices(f"http://127.0.0.1:{serve.port}")
    ids = [f"H{n:02d}" for n in range(10)]
    stream = asyncio.gather(*(legacy.device(aid, 150, pace=0.01) for aid in ids))
    await wait_until(lambda: len(legacy.answered) >= 400, timeout=30, what="400 answered")
    serve.kill()
    answered_at_kill = len(legacy.answered)
    stored_at_kill = rig.count(TRACKINGS)
    await asyncio.to_thread(serve.start)  # devices keep posting meanwhile
    restarted = time.monotonic()
    await asyncio.wait_for(stream, 90)
    await wait_until(
        lambda: rig.count(TRACKINGS) >= len(legacy.answered), timeout=45, what="all stored"
    )
    caught_up = time.monotonic() - restarted
    await asyncio.sleep(0.5)
    docs = await rig.documents(TRACKINGS)
    per_post = Counter((doc["ambulance_id"], doc["seq"]) for doc in docs)
    lost = set(legacy.answered) - set(per_post)
    duplicated = sum(n - 1 for n in per_post.values())
    print(
        f"scenario 6: {len(legacy.answered)} POSTs answered 200 ({answered_at_kill} before the"
        f" kill, {stored_at_kill} of them stored by then), {legacy.failed} refused or cut,"
        f" stored {len(docs)}, duplicated {duplicated}, lost {len(lost)};"
        f" all stored {caught_up:.1f}s after the restart"
    )
    assert not lost
    assert duplicated == 0
    # A POST cut by the kill may have reached the broker unanswered: stored, never twice.
    assert len(docs) - len(legacy.answered) <= legacy.failed
