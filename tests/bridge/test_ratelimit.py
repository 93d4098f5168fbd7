"""Tests of the per-ambulance rate limit (``bridge.ratelimit``).

On a fake clock, and once end to end: real Mosquitto, Redis and `aoc bridge`
configured through its settings.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import aiomqtt
import httpx
import pytest

from aoc import metrics
from bridge.ratelimit import DeviceLimiter
from tests import services
from tests.test_metrics import Samples, value, wait_metrics


class FakeClock:
    """Monotonic seconds that move only when the test says so (fake)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(kind: str) -> float:
    return metrics.MESSAGES_RATE_LIMITED.labels(kind)._value.get()


def passed(limiter: DeviceLimiter, topic: str, count: int) -> int:
    """How many of ``count`` messages on ``topic``, sent at once, pass."""
    return sum(limiter.check(topic) is None for _ in range(count))


def test_a_burst_passes_then_the_rate_refills_it() -> None:
    """Test that the burst passes at once, the excess is cut, and time earns rate tokens."""
    clock = FakeClock()
    limiter = DeviceLimiter(rate=2.0, burst=5, clock=clock)
    before = limited("tracking")
    assert passed(limiter, "aoc/A1/tracking", 8) == 5
    assert limited("tracking") - before == 3
    clock.now += 1.5  # 3 tokens
    assert passed(limiter, "aoc/A1/tracking", 8) == 3
    clock.now += 100  # refills to the burst, never beyond
    assert passed(limiter, "aoc/A1/tracking", 8) == 5


def test_the_reason_names_the_ambulance_and_the_rate() -> None:
    """Test that a cut message's dead-letter reason says who and which limit."""
    limiter = DeviceLimiter(rate=20.0, burst=1, clock=FakeClock())
    assert limiter.check("aoc/A1/tracking") is None
    assert limiter.check("aoc/A1/tracking") == "rate: ambulance A1 over 20 msg/s (burst 1)"


def test_each_ambulance_has_its_own_bucket() -> None:
    """Test that one ambulance's flood leaves another's messages untouched."""
    limiter = DeviceLimiter(rate=1.0, burst=3, clock=FakeClock())
    assert passed(limiter, "aoc/FLOOD/tracking", 100) == 3
    assert passed(limiter, "aoc/CALM/tracking", 3) == 3


def test_tracking_and_snapshots_share_a_bucket_crash_and_status_never_limited() -> None:
    """Test that crashes and statuses pass whatever the bucket holds, and take nothing."""
    limiter = DeviceLimiter(rate=1.0, burst=2, clock=FakeClock())
    before = limited("crash"), limited("status")
    assert passed(limiter, "aoc/A1/crash", 50) == 50
    assert passed(limiter, "aoc/A1/status", 50) == 50
    assert passed(limiter, "aoc/A1/snap", 1) == 1
    assert passed(limiter, "aoc/A1/tracking", 5) == 1
    assert passed(limiter, "aoc/A1/snap", 1) == 0
    assert passed(limiter, "aoc/A1/crash", 5) == 5  # still, once the bucket is empty
    assert (limited("crash"), limited("status")) == before


def test_the_shims_messages_count_as_their_ambulances() -> None:
    """Test that legacy/<id>/... takes from the bucket of <id>, as the device's own topics do."""
    limiter = DeviceLimiter(rate=1.0, burst=3, clock=FakeClock())
    before = limited("tracking")
    assert passed(limiter, "legacy/A1/tracking", 2) == 2
    assert passed(limiter, "aoc/A1/tracking", 5) == 1
    assert passed(limiter, "legacy/A1/snap", 1) == 0
    assert passed(limiter, "legacy/A1/tracking", 1) == 0
    assert limited("tracking") - before == 5
    assert passed(limiter, "legacy/A1/crash", 5) == 5  # never limited, from either root
    assert passed(limiter, "legacy/A2/tracking", 3) == 3
    assert limiter.tracked == 2


def test_topics_without_a_valid_id_are_left_to_the_validator() -> None:
    """Test that a bad id or a foreign topic takes no bucket (it is dead-lettered anyway)."""
    limiter = DeviceLimiter(rate=1.0, burst=1, clock=FakeClock())
    assert passed(limiter, "aoc/bad id!/tracking", 5) == 5
    assert passed(limiter, "other/A1/tracking", 5) == 5
    assert limiter.tracked == 0


def test_buckets_full_again_are_forgotten() -> None:
    """Test that buckets idle for burst/rate seconds are dropped, the busy one kept."""
    clock = FakeClock()
    limiter = DeviceLimiter(rate=10.0, burst=20, clock=clock)  # full again after 2 s
    for n in range(1000):
        limiter.check(f"aoc/A{n}/tracking")
    assert limiter.tracked == 1000
    clock.now += 1.0
    assert passed(limiter, "aoc/BUSY/tracking", 30) == 20
    clock.now += 1.5  # the 1000 idle 2.5 s: full again; BUSY's was used 1.5 s ago
    assert passed(limiter, "aoc/BUSY/tracking", 30) == 15
    assert limiter.tracked == 1


def test_past_the_bound_the_least_recently_used_bucket_is_forgotten() -> None:
    """Test that ids beyond ``max_ambulances`` evict the oldest, which then starts full."""
    clock = FakeClock()
    limiter = DeviceLimiter(rate=1.0, burst=2, max_ambulances=3, clock=clock)
    assert passed(limiter, "aoc/A0/tracking", 5) == 2
    for n in (1, 2):
        limiter.check(f"aoc/A{n}/tracking")
    assert passed(limiter, "aoc/A0/tracking", 1) == 0  # A0 used last: A1 is the oldest now
    limiter.check("aoc/A3/tracking")
    assert limiter.tracked == 3
    assert passed(limiter, "aoc/A1/tracking", 5) == 2  # forgotten: a full bucket again
    assert passed(limiter, "aoc/A0/tracking", 1) == 0  # kept, still empty: A2 went instead
    assert limiter.tracked == 3


def test_cuts_are_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Test that a flood logs one line, then one summary per minute of what was cut."""
    clock = FakeClock()
    limiter = DeviceLimiter(rate=1.0, burst=1, clock=clock)
    with caplog.at_level(logging.WARNING, logger="bridge.ratelimit"):
        passed(limiter, "aoc/A1/tracking", 101)  # 100 cut
        clock.now += 30
        passed(limiter, "aoc/A2/tracking", 51)  # 50 cut, same minute
        clock.now += 31
        passed(limiter, "aoc/A1/tracking", 2)  # 1 cut, a minute after the first line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("rate limit: 1 messages from 1 ambulances")
    # The second line sums everything cut since the first: 99 + 50 + 1.
    assert lines[1].startswith("rate limit: 150 messages from 2 ambulances"), lines[1]


def test_bad_settings_are_refused() -> None:
    """Test that a limiter that could never pass a message cannot be built."""
    for rate, burst in ((0.0, 10), (10.0, 0)):
        with pytest.raises(ValueError, match="rate > 0"):
            DeviceLimiter(rate=rate, burst=burst)


@pytest.mark.e2e
async def test_aoc_bridge_cuts_a_flood_by_its_settings(
    tmp_path: Path, mosquitto: services.Service, redis_server: services.Service
) -> None:
    """Test that `aoc bridge` applies AOC_DEVICE_RATE/BURST to a real device's flood.

    The flooding device sends 20 points as fast as the broker acknowledges them
    and two crash alerts; another sends 10 points. At 0.01 msg/s no token comes
    back during the test: each keeps a burst of 10, and nothing else is cut.
    """
    tag = uuid.uuid4().hex[:8]
    flood, calm = f"FLOOD-{tag}", f"CALM-{tag}"
    env = {"AOC_DEVICE_RATE": "0.01", "AOC_DEVICE_BURST": "10", "AOC_BATCH_WAIT_MS": "50"}
    service = services.aoc(
        "bridge", tmp_path / "bridge", mqtt_port=mosquitto.port, redis_port=redis_server.port,
        env=env,
    )  # fmt: skip
    now_ms = int(time.time() * 1000) - 600_000
    with service:
        port = service.env["AOC_BRIDGE_HTTP_PORT"]
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
            aiomqtt.Client("127.0.0.1", mosquitto.port) as device,
        ):
            for n in range(20):
                body = {"lat": 13.75, "lon": 100.5, "speed": 40, "ts": now_ms + n, "seq": n}
                await device.publish(f"aoc/{flood}/tracking", json.dumps(body), qos=1)
                if n < 10:
                    await device.publish(f"aoc/{calm}/tracking", json.dumps(body), qos=1)
                if n in (5, 15):  # minutes apart: two alerts, not a repeat
                    crash = {"lat": 13.75, "lon": 100.5, "speed": 90, "ts": now_ms + n * 20_000}
                    await device.publish(f"aoc/{flood}/crash", json.dumps(crash), qos=1)

            def settled(samples: Samples) -> bool:
                received = value(samples, "aoc_messages_received_total", kind="tracking")
                crashes = value(samples, "aoc_messages_received_total", kind="crash")
                return received == 30 and crashes == 2

            samples = await wait_metrics(http, settled)
    assert value(samples, "aoc_messages_rate_limited_total", kind="tracking") == 10
    assert value(samples, "aoc_messages_dead_lettered_total", kind="tracking") == 10
    assert value(samples, "aoc_messages_stored_total", kind="tracking") == 20  # 10 + 10
    assert value(samples, "aoc_messages_stored_total", kind="crash") == 2
    assert value(samples, "aoc_messages_rate_limited_total", kind="crash") == 0
    lines = [line for line in service.log_path.read_text().splitlines() if "rate limit:" in line]
    assert len(lines) == 1 and f"({flood} last)" in lines[0], lines
