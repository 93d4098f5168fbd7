"""The event loop an ``aoc`` command runs on: uvloop for the servers, where it is installed.

uvloop (libuv) runs the same asyncio code with less overhead per callback,
socket read and timer than the standard loop; the bridge makes several of
each per message. ``uvicorn[standard]`` installs it on CPython (not on
Windows): elsewhere the standard loop runs everything unchanged.

Only the servers (``SERVERS``) take it: ``aoc up`` starts its children with
``user=``/``group=``, which uvloop's subprocesses refuse, and the other
commands have no hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # Windows, PyPy: the standard loop
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")

# The commands that run the bridge, the API or Socket.IO: the hot paths.
SERVERS = frozenset({"serve", "bridge", "api", "realtime"})


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop``, or None (the standard loop) when uvloop is not installed."""
    return None if uvloop is None else uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, command: str) -> T:
    """``asyncio.run(main)`` for ``command``: on ``loop_factory``'s loop for the servers."""
    factory = loop_factory() if command in SERVERS else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
