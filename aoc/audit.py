"""The audit log: who changed which account, token or setting, and when.

Every management command (``aoc device``, ``aoc dashboard``, ``aoc token``, and
their HTTP counterparts) records one document per change in the ``audit``
collection of the document store, so the record is as durable as the data and
shared by every process (and logged at debug level). Secrets never enter it.
"""

from __future__ import annotations

import getpass
import logging
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from storage.base import AUDIT, DocumentStore, Write

log = logging.getLogger(__name__)


def operator(configured: str = "") -> str:
    """The actor of a command-line change: ``AOC_OPERATOR``, else the OS user."""
    if configured:
        return configured
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "os:unknown"


async def record(
    store: DocumentStore,
    *,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Store and log one change: ``actor`` did ``action`` (e.g. ``device.add``) to ``target``."""
    doc = {
        # Sortable: MongoDB keeps `at` to the millisecond, and two changes within
        # one are read back in the order made (the store orders by time, then _id).
        "_id": f"{time.time_ns():016x}{secrets.token_hex(4)}",
        "at": datetime.now(UTC),
        "actor": actor,
        "action": action,
        "target": target,
        "details": dict(details or {}),
        # The ambulance_id index is shared by every collection; audit records have none.
        "ambulance_id": None,
    }
    await store.apply([Write(AUDIT, "insert", doc)])
    # Debug: the stored record is the audit log, and each command prints what it
    # changed; `aoc simulate` creating fifty accounts says so in one line.
    log.debug("audit: %s %s %s", actor, action, target, extra={"audit": doc["details"]})
