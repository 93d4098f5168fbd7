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
