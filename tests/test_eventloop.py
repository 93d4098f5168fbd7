"""aoc.eventloop: which loop each command runs on."""

from __future__ import annotations

import asyncio

import pytest

from aoc import eventloop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize("command", sorted(eventloop.SERVERS))
def test_servers_run_on_uvloop(command: str) -> None:
    """Test that the bridge, API and Socket.IO servers run on uvloop (uvicorn[standard] has it)."""
    pytest.importorskip("uvloop")
    assert eventloop.run(loop_module(), command=command).startswith("uvloop")


def test_up_runs_on_the_standard_loop() -> None:
    """Test that `aoc up` keeps asyncio's loop: uvloop refuses its children's user= and group=."""
    assert eventloop.run(loop_module(), command="up").startswith("asyncio")
