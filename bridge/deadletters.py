"""Dead-letter records: best effort, bounded in rate, age and count.

A dead letter is a diagnostic of a message the bridge refused, and any client
can cause as many as it likes. So, unlike the records of good messages:

- it never holds a batch: it is written after the good records are durable,
  once, and a failure (disk full, a poison record) is counted and logged
  once per streak of failures; the batch is acknowledged all the same;
- at most ``rate`` records a second are written (a token bucket per bridge,
  bursts of ``burst``); the rest are counted and dropped;
- every ``prune_every`` seconds, records older than ``max_age`` and all but the
  ``max_count`` newest are deleted. Between two prunes at most
  ``burst + rate * prune_every`` records are added, which bounds the overshoot.

Every record not kept is counted in ``aoc_dead_letters_dropped_total{reason}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from aoc import metrics
from storage.base import DEAD_LETTERS, DocumentStore, Write


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full."""

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("need rate > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` whole tokens; how many were granted."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted


class DeadLetters:
    """Writes and prunes the ``dead_letters`` collection for one bridge."""

    def __init__(
        self,
        *,
        store: DocumentStore,
        rate: float = 10.0,
        burst: int = 200,
        max_count: int = 10_000,
        max_age: timedelta = timedelta(days=7),
        prune_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        logger: logging.Logger | None = None,
    ) -> None:
        """``clock`` (monotonic seconds) paces writes and prunes; ``now`` dates the age cutoff."""
        self._store = store
        self._bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
        self._max_count = max_count
        self._max_age = max_age
        self._prune_every = prune_every
        self._clock = clock
        self._now = now
        self._log = logger or logging.getLogger(__name__)
        self._pruned_at: float | None = None
        self._failing = False  # the last write failed: its streak has been logged
        self._prune_failing = False

    async def write(self, writes: Sequence[Write]) -> int:
        """Write the dead-letter records the rate allows; never raises. How many were written."""
        if not writes:
            return 0
        granted = self._bucket.take(len(writes))
        if granted < len(writes):
            metrics.DEAD_LETTERS_DROPPED.labels("rate").inc(len(writes) - granted)
        if not granted:
            return 0
        try:
            await self._store.apply(writes[:granted])
        except Exception as exc:  # disk full, a poison record: never a reason to hold the batch
            metrics.DEAD_LETTERS_DROPPED.labels("write_failed").inc(granted)
            if not self._failing:
                self._failing = True
                self._log.warning(
                    "dead letters not stored, acknowledging their batches anyway"
                    " (counted in aoc_dead_letters_dropped_total): %s",
                    exc,
                )
            return 0
        if self._failing:
            self._failing = False
            self._log.warning("dead letters stored again")
        return granted

    async def prune(self) -> None:
        """Apply the age and count bounds, at most once per ``prune_every``; never raises.

        Cheap to call per batch: it only reads the clock until a prune is due.
        """
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < self._prune_every:
            return
        self._pruned_at = now
        try:
            pruned = await self._store.prune(
                DEAD_LETTERS, before=self._now() - self._max_age, keep=self._max_count
            )
        except Exception as exc:  # tried again at the next interval
            if not self._prune_failing:
                self._prune_failing = True
                self._log.warning(
                    "pruning dead letters failed, retrying every %.0f s: %s", self._prune_every, exc
                )
            return
        self._prune_failing = False
        metrics.DEAD_LETTERS_DROPPED.labels("pruned_age").inc(pruned.by_age)
        metrics.DEAD_LETTERS_DROPPED.labels("pruned_count").inc(pruned.by_count)
        if pruned.by_age or pruned.by_count:
            self._log.debug(
                "pruned %d dead letters by age, %d by count", pruned.by_age, pruned.by_count
            )
