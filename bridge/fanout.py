"""Fan-out channels: each with its own queue and task, a timeout per call and a breaker.

Fan-out (the Redis cache, Socket.IO rooms, MQTT ``state``/``alert`` topics)
follows the acknowledgement and is best effort: dashboards resync over HTTP
and the cache is rebuilt from the store. So it must never hold the consume
loop: ``Channel.put`` only queues, and the channel's own task sends, in
order. When its queue is full the oldest plan waiting is dropped. A
destination that keeps failing or timing out (a Redis behind packets dropped,
not refused, costs a whole timeout per call) is skipped for a cool-down by
the channel's ``Breaker``, then tried again.

Every send not attempted is counted in ``aoc_fanout_dropped_total{channel,
reason}`` (reason ``queue_full``, ``breaker_open`` or ``shutdown``); sends
that failed or timed out in ``aoc_fanout_failures_total{channel}``. Logs
say when a breaker opens and closes, never once per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aoc import metrics
from bridge.messages import Plan


class Breaker:
    """Opens after ``threshold`` failures in a row; while open, one try per ``cooldown`` seconds."""

    def __init__(
        self,
        channel: str,
        *,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        if threshold < 1 or cooldown < 0:
            raise ValueError("a breaker needs threshold >= 1 and cooldown >= 0")
        self._channel = channel
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self._failures = 0  # in a row
        self._opened_at: float | None = None  # or the last failed try while open
        self._skipped = 0  # sends skipped since it opened

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self, sends: int = 1) -> bool:
        """Whether to try ``sends`` now; if not, they are counted as skipped.

        While open, the first call after each cool-down is let through: its
        outcome closes the breaker or starts another cool-down.
        """
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._opened_at >= self._cooldown:
            self._opened_at = now
            return True
        self._skipped += sends
        metrics.FANOUT_DROPPED.labels(self._channel, "breaker_open").inc(sends)
        return False

    def success(self) -> None:
        self._failures = 0
        if self._opened_at is not None:
            self._opened_at = None
            self._log.info(
                "fan-out to %s works again; %d sends were skipped meanwhile",
                self._channel, self._skipped,
            )
            self._skipped = 0

    def failure(self, exc: BaseException) -> None:
        self._failures += 1
        if self._opened_at is not None:
            self._opened_at = self._clock()  # a failed try: another cool-down
        elif self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._log.warning(
                "fan-out to %s failed %d times in a row, skipping it for %.0fs at a time"
                " (counted in aoc_fanout_dropped_total): %r",
                self._channel, self._failures, self._cooldown, exc,
            )


class Channel:
    """One fan-out destination: a bounded queue of plans, sent in order by ``run``.

    ``send`` sends one plan, using ``call`` for each call it makes (the
    timeout and the breaker); ``sends`` says how many sends a plan holds for
    this channel (plans with none are not queued); ``on_drop`` hears of every
    plan dropped unsent.
    """

    def __init__(
        self,
        name: str,
        send: Callable[[Plan], Awaitable[None]],
        *,
        sends: Callable[[Plan], int],
        depth: int,
        timeout: float,
        breaker: Breaker,
        drain_timeout: float,
        on_drop: Callable[[Plan], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("a fan-out queue needs room for at least one plan")
        self.name = name
        self.breaker = breaker
        self._send = send
        self._sends = sends
        self._depth = depth
        self._timeout = timeout
        self._drain_timeout = drain_timeout
        self._on_drop = on_drop
        self._log = logger or logging.getLogger(__name__)
        self._plans: deque[Plan] = deque()
        self._current: Plan | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._scope: asyncio.Timeout | None = None
        self.last_error: BaseException | None = None  # of the last failed call

    def put(self, plan: Plan) -> None:
        """Queue ``plan``; never waits. A full queue drops its oldest plan."""
        if not self._sends(plan):
            return
        if len(self._plans) >= self._depth:
            self._drop(self._plans.popleft(), "queue_full")
        self._plans.append(plan)
        self._idle.clear()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until every plan queued so far has been sent (or dropped)."""
        await self._idle.wait()

    def close(self) -> None:
        """Let ``run`` send what is queued, for at most ``drain_timeout`` seconds, and end."""
        self._closing = True
        self._wake.set()
        if self._scope is not None:
            self._scope.reschedule(asyncio.get_running_loop().time() + self._drain_timeout)

    async def call(self, send: Callable[[], Awaitable[object]]) -> bool:
        """Make one call within the timeout; whether it succeeded. Never raises."""
        try:
            async with asyncio.timeout(self._timeout):
                await send()
        except Exception as exc:  # best effort: nothing of it may stop ingestion
            metrics.FANOUT_FAILURES.labels(self.name).inc()
            self.last_error = exc
            self._log.debug("fan-out to %s failed: %r", self.name, exc)
            self.breaker.failure(exc)
            return False
        self.breaker.success()
        return True

    async def run(self) -> None:
        """Send queued plans in order until closed and drained (or out of time)."""
        try:
            async with asyncio.timeout(None) as scope:
                self._scope = scope
                if self._closing:
                    self.close()
                while self._plans or not self._closing:
                    if not self._plans:
                        self._idle.set()
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    self._current = self._plans.popleft()
                    try:
                        await self._send(self._current)
                    except Exception:  # a bug must not stop fan-out, nor the bridge
                        self._log.exception("fan-out to %s failed", self.name)
                    self._current = None
        except TimeoutError:
            pass  # closing, and the drain's time is up
        finally:
            left = [] if self._current is None else [self._current]
            left.extend(self._plans)
            self._current = None
            self._plans.clear()
            for plan in left:
                self._drop(plan, "shutdown")
            self._idle.set()

    def _drop(self, plan: Plan, reason: str) -> None:
        metrics.FANOUT_DROPPED.labels(self.name, reason).inc(self._sends(plan))
        if self._on_drop is not None:
            self._on_drop(plan)
