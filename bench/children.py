"""Helper processes of ``aoc bench``: publishers, subscribers, watchers, reference servers.

Each is ``python -m bench.<module> '<json config>'`` (or any argv) speaking a
line protocol on its standard streams, so the orchestrator can start many
and release them at once:

- the child prints ``ready`` (after connecting) and waits;
- the orchestrator writes ``go``; the child does its work;
- the orchestrator may write ``stop`` to end it early;
- the child's last stdout line is its result, one JSON object.

Their stderr goes to a log file in the run's directory. Separate processes,
not threads: one Python process cannot publish fast enough to find the
broker's ceiling (the GIL), and its pid gives its own CPU and memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class ChildFailed(RuntimeError):
    """A helper process exited, or said nothing in time."""


class Child:
    """One helper process and the lines it printed so far."""

    def __init__(self, name: str, argv: Sequence[str], logdir: Path) -> None:
        self.name = name
        logdir.mkdir(parents=True, exist_ok=True)
        self.log_path = logdir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONPATH": _pythonpath()},
                start_new_session=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"read-{name}", daemon=True).start()

    @classmethod
    def python(cls, name: str, module: str, config: dict[str, Any], logdir: Path) -> Child:
        """``python -m <module> <config as JSON>``."""
        return cls(name, [sys.executable, "-m", module, json.dumps(config)], logdir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # end of output

    def line(self, timeout: float) -> str:
        """The next line printed; ``ChildFailed`` if none comes in time or the child ended."""
        try:
            got = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildFailed(f"{self.name}: nothing printed in {timeout:.0f}s") from None
        if got is None:
            self._lines.put(None)
            raise ChildFailed(f"{self.name} exited ({self.proc.wait()}): {self.log_tail()}")
        return got

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.line(max(0.1, deadline - time.monotonic())) != "ready":
            pass

    def send(self, word: str) -> None:
        """Write one command line (``go``, ``stop``); ignored once the child has exited."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        """The JSON result line (lines before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.line(max(0.1, deadline - time.monotonic()))
            if text.startswith("{"):
                parsed: dict[str, Any] = json.loads(text)
                return parsed

    def close(self) -> None:
        """End the child (SIGTERM, then SIGKILL): used on every way out."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH", "")
    return f"{ROOT}{os.pathsep}{current}" if current else str(ROOT)


def serve_protocol(ready: bool = True) -> None:
    """In a child: print ``ready`` and block until ``go`` (or ``stop``) arrives."""
    if ready:
        print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() in ("go", "stop"):
            return


def stop_requested() -> threading.Event:
    """In a child: an event set when ``stop`` arrives on stdin (read on a thread)."""
    event = threading.Event()

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        event.set()  # stop, or the orchestrator went away

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return event


def emit_result(result: dict[str, Any]) -> None:
    """In a child: print the result as its last stdout line."""
    print(json.dumps(result, separators=(",", ":")), flush=True)
