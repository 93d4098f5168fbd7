"""A backlog larger than the bridge's in-memory queue, as after a restart or an outage."""

from __future__ import annotations

import time

import pytest

from storage.base import TRACKINGS
from tests.faults.conftest import Rig
from tests.faults.devices import Fleet, wait_until

pytestmark = pytest.mark.faults

DEVICES, POINTS, QUEUE = 10, 200, 100


async def test_backlog_beyond_the_queue_drains_without_stalling(rig: Rig) -> None:
    """Test that 2,000 queued points drain through a 100-message queue, none lost or stalled.

    The consumer stops reading its socket while its queue is full; outbound
    state publishes once shared that connection, so each batch waited out the
    publish timeout (10 s) for a PUBACK stuck behind the backlog.
    """
    bridge = rig.aoc("bridge", AOC_MQTT_QUEUE_SIZE=str(QUEUE)).start()
    bridge.stop()  # its persistent session now queues everything for it
    fleet = Fleet(rig.mosquitto.port)
    await fleet.run([f"B{n:02d}" for n in range(DEVICES)], POINTS)
    sent = DEVICES * POINTS
    assert len(fleet.acked) == sent
    started = time.monotonic()
    bridge.start()
    # Generous for a loaded machine; with the stall it took minutes.
    await wait_until(lambda: rig.count(TRACKINGS) >= sent, timeout=60, what="backlog stored")
    print(f"backlog: {sent} points drained in {time.monotonic() - started:.1f}s")
    assert rig.count(TRACKINGS) == sent
    assert "publishes failed" not in bridge.log_path.read_text()
