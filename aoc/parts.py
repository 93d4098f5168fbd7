"""The parts of one process, each restarted alone when it fails.

``aoc serve`` runs the bridge, the HTTP API and the Socket.IO server side by
side in one event loop. A part that fails (an exception escapes it, such as a
server whose port is taken, or a bridge that cannot reach the broker) or ends
on its own is logged, one line with the cause, and started again after a delay
that doubles up to a cap (``Backoff``), while the other parts keep serving.
The traceback is logged at ERROR whenever a part fails differently from its
previous failure, or after a healthy run; a repeat of the same failure logs
it only at DEBUG, as does every failure whose message says all (``Explained``:
a server whose port another process took). Each part's restarts and whether it runs are exported
(``aoc_part_restarts_total``, ``aoc_part_up``).

The stop event asks every running part to stop, in the reverse order of
``Parts.add``, each once the part after it has ended (so ``aoc serve``'s
servers finish their requests before the bridge whose connection they publish
on), and interrupts a part that is starting or waiting to restart;
``Parts.run`` returns once all have ended, and
raises ``StopFailed`` if a part failed while stopping (the command then exits
non-zero rather than hide it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from aoc import metrics

log = logging.getLogger(__name__)

# A part (or, under `aoc up`, a process) that ran this long before failing is
# considered healthy again: its next restart waits the shortest delay.
HEALTHY_AFTER_S = 30.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0


class Backoff:
    """Restart delays of one part or process: doubling up to a cap, reset by a healthy run.

    Shared by ``Parts`` and ``aoc up`` (``aoc.supervise``).
    """

    def __init__(
        self,
        first: float = FIRST_DELAY_S,
        cap: float = MAX_DELAY_S,
        healthy_after: float = HEALTHY_AFTER_S,
    ) -> None:
        self.first = first
        self.cap = cap
        self.healthy_after = healthy_after
        self._next = first

    def healthy(self, ran_for: float) -> bool:
        """Whether a run of ``ran_for`` seconds counts as healthy."""
        return ran_for >= self.healthy_after

    def delay(self, ran_for: float) -> float:
        """The delay before the next start, after a run of ``ran_for`` seconds ended."""
        if self.healthy(ran_for):
            self._next = self.first
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    @staticmethod
    async def wait(stop: asyncio.Event, delay: float) -> bool:
        """Wait ``delay`` seconds, or less if ``stop`` is set; whether it is set."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        return stop.is_set()


@dataclass(frozen=True, slots=True)
class Running:
    """A started part: the coroutine function that runs it, and how to ask it to stop."""

    run: Callable[[], Awaitable[None]]
    stop: Callable[[], None]


# Makes a part afresh for each (re)start, and closes what it opened when it ends.
Start = Callable[[], AbstractAsyncContextManager[Running]]


class Explained(Exception):
    """A failure whose message says all there is to know: one line, its traceback at DEBUG."""


class StopFailed(Exception):
    """Parts failed while stopping (their tracebacks are logged); ``failures`` by part name."""

    def __init__(self, failures: dict[str, Exception]) -> None:
        self.failures = failures
        causes = (f"{name} failed while stopping: {_why(exc)}" for name, exc in failures.items())
        super().__init__("; ".join(causes))


@dataclass(slots=True)
class _Part:
    name: str
    start: Start
    restarts: int = 0
    running: Running | None = None
    starting: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Parts:
    """Runs named parts side by side until ``stop`` is set, restarting each that fails."""

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        first_delay: float = FIRST_DELAY_S,
        max_delay: float = MAX_DELAY_S,
        healthy_after: float = HEALTHY_AFTER_S,
        outages: tuple[type[Exception], ...] = (),
    ) -> None:
        """``outages``: failures that mean a dependency is down (the broker, a store).

        Expected while it is, they are one WARNING line each, the traceback at DEBUG.
        """
        self._stop = stop
        self._delays = (first_delay, max_delay, healthy_after)
        self._outages = outages
        self._parts: dict[str, _Part] = {}
        self._stop_failures: dict[str, Exception] = {}

    def add(self, name: str, start: Start) -> None:
        """Run the part that ``start`` makes, under ``name`` in the logs and metrics."""
        self._parts[name] = _Part(name, start)
        metrics.PART_RESTARTS.labels(name)  # exported at 0 from the start
        metrics.PART_UP.labels(name).set(0)

    def restarts(self, name: str) -> int:
        """How often the part ``name`` has been restarted."""
        return self._parts[name].restarts

    async def run(self) -> None:
        """Run every part until the stop event, then stop them all and wait for them.

        Raises ``StopFailed`` once all have ended if any failed while stopping.
        """
        async with asyncio.TaskGroup() as group:
            for part in self._parts.values():
                part.task = group.create_task(self._keep(part), name=f"part-{part.name}")
            await self._stop.wait()
            log.info("stopping")
            # Last added, first stopped, each once the one after it has ended:
            # the servers finish their requests, which publish on the bridge's
            # connection, before the bridge stops.
            for part in reversed(self._parts.values()):
                if part.running is not None:
                    part.running.stop()
                elif part.starting and part.task is not None:
                    # Connecting can take long (a broker that does not answer);
                    # nothing has been taken yet, so it is abandoned.
                    part.task.cancel()
                # A part waiting to restart sees the stop event itself.
                if part.task is not None:
                    await asyncio.wait({part.task})  # never raises, even if it was cancelled
        if self._stop_failures:
            raise StopFailed(dict(self._stop_failures))

    async def _keep(self, part: _Part) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(*self._delays)
        last: str | None = None  # how the previous run failed, if it failed
        while not self._stop.is_set():
            began = loop.time()
            failure = await self._run_once(part)
            if self._stop.is_set():
                if failure is not None:
                    # Likely a batch not finished or not acknowledged: never hidden.
                    log.error("%s failed while stopping", part.name, exc_info=failure)
                    self._stop_failures[part.name] = failure
                return
            ran_for = loop.time() - began
            delay = backoff.delay(ran_for)
            part.restarts += 1
            metrics.PART_RESTARTS.labels(part.name).inc()
            cause = "ended on its own" if failure is None else _why(failure)
            # The traceback at ERROR for a new kind of failure; a repeat only at DEBUG.
            outage = failure is not None and self._is_outage(failure)
            explained = failure is not None and all(
                isinstance(leaf, Explained) for leaf in _leaves(failure)
            )
            new = (
                failure is not None
                and not (outage or explained)
                and (cause != last or backoff.healthy(ran_for))
            )
            log.log(
                logging.WARNING if outage else logging.ERROR,
                "%s failed (%s); restart #%d in %.1fs",
                part.name,
                cause,
                part.restarts,
                delay,
                exc_info=failure if new else None,
            )
            if failure is not None and not new:
                log.debug("%s failure", part.name, exc_info=failure)
            last = None if failure is None else cause
            if await Backoff.wait(self._stop, delay):
                return

    def _is_outage(self, failure: Exception) -> bool:
        leaves = _leaves(failure)
        return bool(self._outages) and all(isinstance(leaf, self._outages) for leaf in leaves)

    async def _run_once(self, part: _Part) -> Exception | None:
        """Start ``part``, run it until it ends; the exception that ended it, if any."""
        part.starting = True
        try:
            async with part.start() as running:
                part.starting = False
                part.running = running
                if self._stop.is_set():  # the stop came while it was starting
                    running.stop()
                metrics.PART_UP.labels(part.name).set(1)
                try:
                    await running.run()
                finally:
                    part.running = None
                    metrics.PART_UP.labels(part.name).set(0)
        except Exception as exc:
            return exc
        finally:
            part.starting = False
        return None


def _leaves(exc: BaseException) -> list[BaseException]:
    """The innermost exceptions of ``exc``: itself, unless it is a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _why(exc: BaseException) -> str:
    """``Type: message`` of each innermost exception (a task group's wrapper says nothing)."""
    return "; ".join(
        f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
        for leaf in _leaves(exc)
    )


def stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGINT, SIGTERM or SIGHUP.

    SIGHUP is what a closed terminal or a dropped SSH session sends: left to
    its default, it would kill the process without a clean stop (a bridge
    would not finish and acknowledge its batch, `aoc up` would leave its
    children running).
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stopping.set)
    return stopping
