"""Logging, configured once per process at the entry point.

Quiet by default: INFO shows starts, stops, outages and dead letters, not
per-message traffic. ``AOC_LOG_FORMAT=json`` writes one JSON object per line
for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(*, level: str = "INFO", fmt: str = "text", process: str = "aoc") -> None:
    """Send every logger to stderr in the chosen format; silence chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s {process} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request and per-connection lines are noise at INFO; errors still show.
    # uvicorn.error carries uvicorn's start-up banner and per-WebSocket lines.
    quiet = ("uvicorn.error", "uvicorn.access", "engineio", "socketio", "botocore", "urllib3")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


class Throttle(logging.Filter):
    """Lets each distinct message through at most once per ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._seconds = seconds
        self._last: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        last = self._last.get(record.msg)
        if last is not None and now - last < self._seconds:
            return False
        self._last[record.msg] = now
        return True


def throttled(name: str, *, seconds: float) -> logging.Logger:
    """A logger that repeats each message at most once per ``seconds``.

    For libraries that log on every call during an outage: python-socketio's
    Redis manager logs two errors per emit while Redis is down, and never raises.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, Throttle) for f in logger.filters):
        logger.addFilter(Throttle(seconds))
    return logger


class LineBudget:
    """At most ``lines`` log lines per window of ``seconds``; counts the lines held back.

    For a line a client can trigger at will (a dead letter): a flood of junk
    would otherwise become a flood of log lines. The caller logs when ``take()``
    says so, and logs one summary line when ``held_back()`` returns more than 0.
    """

    def __init__(
        self, *, lines: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if lines < 1 or seconds <= 0:
            raise ValueError("need lines >= 1 and seconds > 0")
        self.lines = lines
        self.seconds = seconds
        self._clock = clock
        self._start = clock()
        self._used = 0
        self._held = 0  # in the current window
        self._ended = 0  # in windows that have ended, not yet reported

    def _roll(self) -> None:
        now = self._clock()
        if now - self._start >= self.seconds:
            self._ended += self._held
            self._start, self._used, self._held = now, 0, 0

    def take(self) -> bool:
        """Whether one more line may be logged now (else it is counted as held back)."""
        self._roll()
        if self._used < self.lines:
            self._used += 1
            return True
        self._held += 1
        return False

    def held_back(self) -> int:
        """Lines held back in windows that have ended since the last call (then 0 again)."""
        self._roll()
        count, self._ended = self._ended, 0
        return count
