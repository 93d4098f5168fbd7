"""`aoc up`: the supervised one-machine stack, run as `make run` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aoc import supervise
from tests import services


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _serve_pid(log: Path) -> int | None:
    pids = re.findall(r"aoc-serve started \(pid (\d+)\)", log.read_text(errors="replace"))
    return int(pids[-1]) if pids else None


def test_up_restarts_a_crashed_part_and_stops_everything(tmp_path: Path) -> None:
    """Test that `aoc up` restarts a killed `aoc serve`, logs the cause, and Ctrl-C stops all."""
    ports, env = services.up_settings(tmp_path / "data")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "aoc.cli", "up"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(lambda: _healthy(ports["http"]), 60, "the stack to come up")
        # `aoc up` logs the child's pid once it has seen its port open itself.
        _wait_for(lambda: _serve_pid(log) is not None, 60, "the start line")
        first = _serve_pid(log)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: _serve_pid(log) not in (None, first), 60, "a restart")
        _wait_for(lambda: _healthy(ports["http"]), 60, "the restarted server")
        text = log.read_text()
        assert "aoc-serve died (signal 9); restart #1" in text
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    for name in ("mqtt", "redis", "http", "sio"):
        assert not services.port_is_open(ports[name]), f"{name} still listening after Ctrl-C"
    text = log.read_text()
    assert text.index("aoc-serve stopped") < text.index("mosquitto stopped")


@contextlib.contextmanager
def _port_that_never_accepts() -> Iterator[int]:
    """A listening port whose accept queue is full: new connections hang in SYN_SENT.

    Linux drops SYNs to a listener whose queue is full, so a client's connect
    neither succeeds nor fails until its own timeout.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # more than the queue holds (backlog 0: one, plus slack)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def _round_trip() -> bytes:
    """One message through a local echo server: work that needs the event loop throughout."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"ping\n")
        answer = await reader.readline()
        writer.close()
        return answer


async def test_waiting_for_a_port_leaves_the_event_loop_running() -> None:
    """Test that `aoc up` waiting on a port that never answers still runs its other tasks.

    The wait's single attempt (timeout 0) hangs on a listener that accepts
    nothing; meanwhile another task completes a TCP round trip. A blocking
    connect would hold the loop for the whole attempt, and the wait would have
    failed before the other task ever ran.
    """
    with _port_that_never_accepts() as port:
        child = supervise.Child("silent", ["true"], port)
        waiting = asyncio.create_task(supervise.wait_port(child, timeout=0.0))
        assert await _round_trip() == b"ping\n"
        assert not waiting.done(), "the wait ended before the other task could run"
        with pytest.raises(TimeoutError, match="did not open port"):
            await waiting


async def test_wait_port_sees_a_listening_port() -> None:
    """Test that the wait ends once the child's port accepts connections."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        child = supervise.Child("listening", ["true"], server.sockets[0].getsockname()[1])
        await supervise.wait_port(child, timeout=5.0)
