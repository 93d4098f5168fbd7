"""Fan-out channels: each with its own queue and task, a timeout per call and a breaker.

Fan-out (the Redis cache, Socket.IO rooms, MQTT ``state``/``alert`` topics)
follows the acknowledgement and is best effort: dashboards resync over HTTP
and the cache is rebuilt from the store. So it must never hold the consume
loop: ``Channel.put`` only queues, and the channel's own task sends, in
order. When its queue is full the oldest plan waiting is dropped. A
destination that keeps failing or timing out (a Redis behind packets dropped,
not refused, costs a whole timeout per call) is skipped for a cool-down by
the channel's ``Breaker``, then tried again.

Crash alerts (``is_alert``: emissions to the ``crash`` and
``CRASH_NOTIFY_<id>`` rooms, ``aoc/<id>/alert`` publications) are the
exception: a channel splits them off each plan into a queue of their own,
which is never cut when full (alerts are rare and small: the processor
broadcasts at most one per ambulance per crash window, so they may exceed
the depth) and which is sent first, before older tracking. That is safe: an
alert depends on no tracking order, and the rest of each plan (states,
tracking, snapshots) keeps its order. An open breaker skips everything but
alerts: each alert is still tried (it costs at most one timeout, on the
channel's own task), and one that gets through closes the breaker. On stop,
alerts are sent first within the drain bound; any left unsent are logged at
ERROR with their crash record ids (the records are stored: an operator can
still find them).

Every send not attempted is counted in ``aoc_fanout_dropped_total{channel,
reason}`` (reason ``queue_full``, ``breaker_open`` or ``shutdown``); sends
that failed or timed out in ``aoc_fanout_failures_total{channel}``. Logs
say when a breaker opens and closes, never once per message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aoc import metrics
from bridge.contract import Kind, room_kind
from bridge.messages import Emit, Plan, Publish
from bridge.public import ID


def is_alert(send: Emit | Publish) -> bool:
    """Whether an emission or publication carries an alert: a crash, an alarm, an event.

    Never dropped by a queue, and sent first.
    """
    if isinstance(send, Emit):
        return room_kind(send.room) in (Kind.CRASH, Kind.ALERT)
    return send.topic.rpartition("/")[2] == Kind.ALERT  # the kind: ``topic``'s last level


def split_alerts(plan: Plan) -> tuple[Plan | None, Plan]:
    """``plan``'s crash alerts as a plan of their own (None: it has none), and the rest.

    Either part only holds what the channels send (states, emits, publishes).
    """
    if not any(map(is_alert, plan.emits)) and not any(map(is_alert, plan.publishes)):
        return None, plan
    alerts = Plan(
        emits=[e for e in plan.emits if is_alert(e)],
        publishes=[p for p in plan.publishes if is_alert(p)],
    )
    rest = Plan(
        states=plan.states,
        emits=[e for e in plan.emits if not is_alert(e)],
        publishes=[p for p in plan.publishes if not is_alert(p)],
    )
    return alerts, rest


def alert_ids(plan: Plan) -> list[str]:
    """The crash record ids in a plan's alerts (``CRASH_NOTIFY_<id>`` and ``alert`` bodies)."""
    bodies: list[str | bytes] = [e.data for e in plan.emits if is_alert(e)]
    bodies += [p.payload for p in plan.publishes if is_alert(p)]
    ids: set[str] = set()
    for body in bodies:
        try:
            record = json.loads(body)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        # The room's record has the stored ``_id``, the MQTT alert the public ``id``.
        record_id = record.get("_id", record.get(ID))
        if isinstance(record_id, str):
            ids.add(record_id)
    return sorted(ids)


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

    Beside it, an unbounded queue of crash alerts, sent first (see the module doc).

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
        self._plans: deque[Plan] = deque()  # at most ``depth``
        self._alerts: deque[Plan] = deque()  # never cut: sent first
        self._current: Plan | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._scope: asyncio.Timeout | None = None
        self.last_error: BaseException | None = None  # of the last failed call

    def put(self, plan: Plan) -> None:
        """Queue ``plan``; never waits. A full queue drops its oldest plan, never an alert."""
        alerts, rest = split_alerts(plan)
        if alerts is not None and self._sends(alerts):
            self._alerts.append(alerts)
        if self._sends(rest):
            if len(self._plans) >= self._depth:
                self._drop(self._plans.popleft(), "queue_full")
            self._plans.append(rest)
        if self._alerts or self._plans:
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
            self.settled(exc)
            return False
        self.settled(None)
        return True

    @property
    def timeout(self) -> float:
        """Seconds each call has."""
        return self._timeout

    def settled(self, error: BaseException | None) -> None:
        """Count one call made without ``call`` (its own timeout): None if it succeeded.

        For a channel sending many calls at once under one wait (``Bridge._publish``).
        """
        if error is None:
            self.breaker.success()
            return
        metrics.FANOUT_FAILURES.labels(self.name).inc()
        self.last_error = error
        self._log.debug("fan-out to %s failed: %r", self.name, error)
        self.breaker.failure(error)

    async def run(self) -> None:
        """Send queued plans in order, alerts first, until closed and drained (or out of time)."""
        try:
            async with asyncio.timeout(None) as scope:
                self._scope = scope
                if self._closing:
                    self.close()
                while self._alerts or self._plans or not self._closing:
                    if not self._alerts and not self._plans:
                        self._idle.set()
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    queue = self._alerts or self._plans
                    self._current = queue.popleft()
                    try:
                        await self._send(self._current)
                    except Exception:  # a bug must not stop fan-out, nor the bridge
                        self._log.exception("fan-out to %s failed", self.name)
                    self._current = None
        except TimeoutError:
            pass  # closing, and the drain's time is up
        finally:
            left = [] if self._current is None else [self._current]
            left.extend(self._alerts)
            left.extend(self._plans)
            self._current = None
            self._alerts.clear()
            self._plans.clear()
            unsent = sorted({i for plan in left for i in alert_ids(plan)})
            if unsent:
                self._log.error(
                    "stopping with %d crash alerts not sent to %s (stored: crash records %s)",
                    len(unsent), self.name, ", ".join(unsent),
                )
            for plan in left:
                self._drop(plan, "shutdown")
            self._idle.set()

    def _drop(self, plan: Plan, reason: str) -> None:
        metrics.FANOUT_DROPPED.labels(self.name, reason).inc(self._sends(plan))
        if self._on_drop is not None:
            self._on_drop(plan)
