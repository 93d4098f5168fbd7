"""Per-ambulance rate limits: a device flooding far above its rate loses its excess.

Each ambulance id has a token bucket: ``rate`` messages a second, holding at
most ``burst`` (a new bucket starts full). A message over it becomes a dead
letter (``rate: ambulance X over N msg/s``), acknowledged like any other, so
the broker never sends it again; it is counted in
``aoc_messages_rate_limited_total{kind}``, and one WARNING line a minute per
bridge says how many were cut. The check costs a dictionary look-up, before
any parsing or decoding, so a flood costs the other ambulances little.

What is limited, and why:

- ``tracking`` and ``snap`` take a token each. A real device sends about one
  point a second, and snapshots far more rarely.
- ``crash`` and ``status`` are never limited: a crash alert is why the system
  exists, and dropping a device's last ``offline`` (its Last Will) would show
  it online for good. A device cannot flood with them cheaply: repeated
  crashes are stored but not broadcast again (``AOC_CRASH_DEDUP_SECONDS``),
  statuses only change a flag, and the broker's limits bound what one
  connection sends.
- A topic whose id level is not a valid ambulance id is not limited here:
  ``bridge.validate`` dead-letters it anyway.

The bucket measures arrival at this bridge, not the device's sending: a
device replaying its offline buffer after a dead zone, or the backlog the
broker replays after the bridge itself was down, arrives as one burst. The
burst must therefore hold the longest such backlog to be kept whole (the
default ``AOC_DEVICE_BURST`` is an hour of 1 Hz points); the bucket also
refills while the backlog drains. An hour, not minutes: what is cut from a
real backlog is lost as data (its dead letters are best effort), while a
flooder's first few thousand messages cost the system little; the limit is
for sustained floods. Several bridges (a shared subscription)
each limit what they receive: an ambulance's messages spread over ``n``
bridges may reach ``n`` times the rate in all. The limit is only as strong as
the ids are: without broker ACLs a client can publish under many ids.

Memory is bounded: a bucket idle long enough to be full again is the same as
no bucket and is forgotten, and past ``max_ambulances`` buckets the least
recently used one is (it starts full again, so forgetting one never cuts a
message that would have passed).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aoc import metrics
from bridge.contract import Kind, device_kind, topic_ambulance_id

# The kinds that take a token (see the module doc for why not crash and status).
LIMITED_KINDS = frozenset({Kind.TRACKING, Kind.SNAP})

# Buckets held at most (about 230 bytes each with its id: 23 MB), far above
# the fleet one bridge serves.
MAX_AMBULANCES = 100_000

# One summary line per this many seconds, per bridge.
LOG_EVERY = 60.0


class _Bucket:
    """One ambulance's tokens: ``bridge.deadletters.TokenBucket``'s refill, with
    the rate and burst held once by the limiter (half the memory per ambulance)."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class DeviceLimiter:
    """Token buckets per ambulance id for the messages of ``LIMITED_KINDS``."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_ambulances: int = MAX_AMBULANCES,
        log_every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or max_ambulances < 1:
            raise ValueError("need rate > 0, burst >= 1 and max_ambulances >= 1")
        self.rate = rate
        self.burst = burst
        self._max = max_ambulances
        self._log_every = log_every
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        # Least recently used first: pruning and eviction take from the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # A bucket idle this long is full again: forgetting it changes nothing.
        self._refill_time = burst / rate
        self._logged_at: float | None = None
        self._cut = 0  # messages cut since the last line
        self._cut_ids: set[str] = set()

    @property
    def tracked(self) -> int:
        """How many ambulances' buckets are held."""
        return len(self._buckets)

    def check(self, topic: str) -> str | None:
        """None when the message on ``topic`` may pass, else its dead-letter reason."""
        kind = device_kind(topic)
        if kind not in LIMITED_KINDS:
            return None
        ambulance_id = topic_ambulance_id(topic)
        if ambulance_id is None:
            return None
        now = self._clock()
        self._prune(now)
        bucket = self._buckets.get(ambulance_id)
        if bucket is None:
            bucket = self._buckets[ambulance_id] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ambulance_id)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        assert kind is not None
        metrics.MESSAGES_RATE_LIMITED.labels(kind).inc()
        self._count(ambulance_id, now)
        return f"rate: ambulance {ambulance_id} over {self.rate:g} msg/s (burst {self.burst})"

    def _prune(self, now: float) -> None:
        """Forget the buckets idle long enough to be full again (oldest first)."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.at < self._refill_time:
                return
            buckets.popitem(last=False)

    def _count(self, ambulance_id: str, now: float) -> None:
        """Count a cut message; log what was cut at most once per ``log_every``.

        The line for the rest of a window comes with the next cut message: the
        metric counts every one in the meantime.
        """
        self._cut += 1
        if len(self._cut_ids) < self._max:
            self._cut_ids.add(ambulance_id)
        if self._logged_at is not None and now - self._logged_at < self._log_every:
            return
        self._log.warning(
            "rate limit: %d messages from %d ambulances dead-lettered (%s last), over %g"
            " msg/s per ambulance (burst %d); next line in %.0f s at the earliest",
            self._cut,
            len(self._cut_ids),
            ambulance_id,
            self.rate,
            self.burst,
            self._log_every,
        )
        self._logged_at = now
        self._cut = 0
        self._cut_ids.clear()
