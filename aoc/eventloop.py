"""The event loop every ``aoc`` command runs on: uvloop where it is installed.

uvloop (libuv) runs the same asyncio code with less overhead per callback,
socket read and timer than the standard loop; the bridge makes several of
each per message. ``uvicorn[standard]`` installs it on CPython (not on
Windows): elsewhere the standard loop runs everything unchanged.
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


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop``, or None (the standard loop) when uvloop is not installed."""
    return None if uvloop is None else uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
