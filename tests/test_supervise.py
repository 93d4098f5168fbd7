"""`aoc up`: the supervised one-machine stack, run as `make run` runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
