"""Sending a dispatch command and waiting for the bridge to apply it (docs/mqtt-contract.md).

The API never writes an ambulance's state, alarms or events: it publishes a
command under ``dispatch/<id>/<kind>`` (QoS 1, not retained) and the bridge,
the one writer of those documents, applies or refuses it in order with the
ambulance's points. It records the outcome in the state document's
``commands`` (``{"id", "ok", "reason"}``, the last 16), which ``wait`` polls
for. A command the bridge has not recorded within ``AOC_DISPATCH_WAIT_SECONDS``
is answered 202 pending: it is published, and will be applied or refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from aoc import audit
from api.deps import ApiDeps, Publisher
from api.tokens import TokenInfo
from bridge.contract import Kind, dispatch_topic
from broker.client import MqttError
from storage import codec
from storage.base import AMBULANCES, Document

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # between two reads of the state document while waiting
PENDING = {
    "description": "Published, but the bridge did not apply it within "
    "AOC_DISPATCH_WAIT_SECONDS: it will be applied or refused later",
}
REFUSED = {"description": "The bridge refused the command (the detail says why)"}
UNPUBLISHED = {"description": "The MQTT broker did not acknowledge the command: retry"}


@dataclass(frozen=True, slots=True)
class Applied:
    """A command the bridge applied, with the state document it left."""

    state: Document


def command(token: TokenInfo, **fields: Any) -> dict[str, Any]:
    """A new command by ``token``: a fresh ``command_id``, ``at`` (UTC, ms) and ``by``."""
    return {
        "command_id": secrets.token_hex(16),
        "at": codec.format_datetime(datetime.now(UTC)),
        "by": token.name,
        **fields,
    }


async def send(
    deps: ApiDeps,
    publisher: Publisher,
    token: TokenInfo,
    *,
    ambulance_id: str,
    kind: Kind,
    message: Mapping[str, Any],
    action: str,
    target: str,
    details: Mapping[str, Any],
) -> Applied | JSONResponse:
    """Publish ``message``, audit it, and wait for the bridge's outcome.

    ``Applied`` once the bridge applied it; a 202 ``JSONResponse`` (pending)
    when it did not say within the wait; ``HTTPException`` 409 with its reason
    when it refused, 503 when the broker did not take the command.
    """
    command_id = str(message["command_id"])
    topic = dispatch_topic(ambulance_id, kind)
    payload = json.dumps(message, separators=(",", ":")).encode()
    await _publish(publisher, topic, payload, within=deps.publish_timeout)
    # Audited once published: the record says what was sent, by which token.
    await audit.record(
        deps.store,
        actor=token.name,
        action=action,
        target=target,
        details={"command_id": command_id, "ambulance_id": ambulance_id, **details},
    )
    outcome = await wait(deps, ambulance_id, command_id)
    if outcome is None:
        return JSONResponse({"status": "pending", "command_id": command_id}, status_code=202)
    entry, state = outcome
    if entry.get("ok") is not True:
        reason = entry.get("reason") or "refused by the bridge"
        raise HTTPException(409, detail=str(reason))
    return Applied(state)


async def _publish(publisher: Publisher, topic: str, payload: bytes, *, within: float) -> None:
    try:
        # The outer bound holds even for a publisher that ignores its timeout.
        async with asyncio.timeout(within + 1):
            await publisher.publish(topic, payload, qos=1, retain=False, timeout=within)
    except (MqttError, OSError, TimeoutError) as exc:
        log.warning("could not publish the dispatch command to %s: %s", topic, exc)
        raise HTTPException(
            503, detail=f"the MQTT broker did not acknowledge: {exc}", headers={"Retry-After": "5"}
        ) from exc


async def wait(
    deps: ApiDeps, ambulance_id: str, command_id: str
) -> tuple[dict[str, Any], Document] | None:
    """The bridge's record of ``command_id`` and the state it left, or None if not yet.

    Reads the store (the bridge's own record, not the cache, which follows it)
    every ``POLL_SECONDS`` for at most ``AOC_DISPATCH_WAIT_SECONDS``; read once
    even with a wait of 0.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deps.settings.dispatch_wait_seconds
    while True:
        state = await deps.store.get(AMBULANCES, ambulance_id)
        entry = None if state is None else _entry(state, command_id)
        if entry is not None and state is not None:
            return entry, state
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(POLL_SECONDS, remaining))


def _entry(state: Document, command_id: str) -> dict[str, Any] | None:
    commands = state.get("commands")
    if not isinstance(commands, list):
        return None
    for entry in reversed(commands):
        if isinstance(entry, dict) and entry.get("id") == command_id:
            return entry
    return None
