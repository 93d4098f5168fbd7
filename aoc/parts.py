"""The parts of one process, each restarted alone when it fails.

``aoc serve`` runs the bridge, the HTTP API and the Socket.IO server side by
side in one event loop. A part that fails (an exception escapes it) or ends on
its own is logged, one line with the cause (its traceback with the first
failure, then at DEBUG), and started again after a delay that doubles up to a
cap, while the other parts keep serving. The stop event asks every running
part to stop, and interrupts a part that is starting or waiting to restart;
``Parts.run`` returns once all have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# A part (or, under `aoc up`, a process) that ran this long before failing is
# considered healthy again: its next restart waits the shortest delay.
HEALTHY_AFTER_S = 30.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0


@dataclass(frozen=True, slots=True)
class Running:
    """A started part: the coroutine function that runs it, and how to ask it to stop."""

    run: Callable[[], Awaitable[None]]
    stop: Callable[[], None]


# Makes a part afresh for each (re)start, and closes what it opened when it ends.
Start = Callable[[], AbstractAsyncContextManager[Running]]


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
    ) -> None:
        self._stop = stop
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._healthy_after = healthy_after
        self._parts: dict[str, _Part] = {}

    def add(self, name: str, start: Start) -> None:
        """Run the part that ``start`` makes, under ``name`` in the logs."""
        self._parts[name] = _Part(name, start)

    def restarts(self, name: str) -> int:
        """How often the part ``name`` has been restarted."""
        return self._parts[name].restarts

    async def run(self) -> None:
        """Run every part until the stop event, then stop them all and wait for them."""
        async with asyncio.TaskGroup() as group:
            for part in self._parts.values():
                part.task = group.create_task(self._keep(part), name=f"part-{part.name}")
            await self._stop.wait()
            log.info("stopping")
            for part in self._parts.values():
                if part.running is not None:
                    part.running.stop()
                elif part.starting and part.task is not None:
                    # Connecting can take long (a broker that does not answer);
                    # nothing has been taken yet, so it is abandoned.
                    part.task.cancel()
                # A part waiting to restart sees the stop event itself.

    async def _keep(self, part: _Part) -> None:
        loop = asyncio.get_running_loop()
        delay = self._first_delay
        while not self._stop.is_set():
            began = loop.time()
            failure = await self._run_once(part)
            if self._stop.is_set():
                if failure is not None:
                    log.error("%s failed while stopping: %s", part.name, _why(failure))
                return
            if loop.time() - began >= self._healthy_after:
                delay = self._first_delay
            part.restarts += 1
            cause = "ended on its own" if failure is None else _why(failure)
            log.error(
                "%s failed (%s); restart #%d in %.1fs",
                part.name,
                cause,
                part.restarts,
                delay,
                # The traceback once, with the first failure; later ones only at DEBUG.
                exc_info=failure if part.restarts == 1 else None,
            )
            if failure is not None and part.restarts > 1:
                log.debug("%s failure", part.name, exc_info=failure)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(delay * 2, self._max_delay)

    async def _run_once(self, part: _Part) -> Exception | None:
        """Start ``part``, run it until it ends; the exception that ended it, if any."""
        part.starting = True
        try:
            async with part.start() as running:
                part.starting = False
                part.running = running
                if self._stop.is_set():  # the stop came while it was starting
                    running.stop()
                try:
                    await running.run()
                finally:
                    part.running = None
        except Exception as exc:
            return exc
        finally:
            part.starting = False
        return None


def _why(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
