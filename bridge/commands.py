"""Dispatch commands as the bridge takes them: ``dispatch/<id>/destination`` and ``.../alarm``.

Only the HTTP API's account may publish under ``dispatch/`` (``bridge.contract``),
and the API validated what it sent; this module still checks every field, as
for any other message: a command that fails becomes a dead letter with the
reason, never a crash. The payloads are in ``docs/mqtt-contract.md``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from bridge.contract import Kind
from bridge.messages import AlarmAction, Destination
from bridge.places import PLACE_ID

COMMAND_ID = re.compile(r"[0-9A-Za-z_-]{8,64}")
ALARM_ID = re.compile(r"[0-9A-Za-z_.:-]{1,200}")
ACTIONS = ("acknowledge", "resolve")
MAX_TEXT = 1000  # a note, a name
MAX_RADIUS_M = 50_000.0
# A command is a few hundred bytes: one refused is read back no further than this.
MAX_COMMAND_BYTES = 64 * 1024


class CommandError(ValueError):
    """A command that cannot be taken; the message is its dead-letter reason."""


def parse_command(
    kind: Kind, ambulance_id: str, body: dict[str, Any], received_at: datetime
) -> Destination | AlarmAction:
    """The command in ``body`` (a JSON object) of a ``kind`` dispatch topic."""
    command_id = _match(body, "command_id", COMMAND_ID)
    at = _time(body.get("at"))
    by = _text(body, "by", required=True)
    assert by is not None
    if kind == Kind.DESTINATION:
        if "destination" not in body:
            raise CommandError("destination: required (null clears it)")
        destination = _destination(body["destination"])
        return Destination(ambulance_id, command_id, at, by, destination, received_at)
    if kind == Kind.ALARM:
        alarm_id = _match(body, "alarm_id", ALARM_ID)
        action = body.get("action")
        if action not in ACTIONS:
            raise CommandError(f"action: expected one of {', '.join(ACTIONS)}")
        note = _text(body, "note", required=False)
        return AlarmAction(ambulance_id, command_id, at, by, alarm_id, action, note, received_at)
    raise CommandError(f"topic: no {kind} dispatch commands")


def _destination(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CommandError("destination: expected an object or null")
    kind = value.get("type")
    if kind == "place":
        # The bridge reads the place from its own places (or the store): a detailed
        # polygon would not fit a command, nor belong in every state write.
        return {"type": "place", "place_id": _match(value, "place_id", PLACE_ID)}
    if kind == "point":
        lat = _number(value, "lat", -90.0, 90.0)
        lon = _number(value, "lon", -180.0, 180.0)
        radius = None
        if value.get("radius_m") is not None:
            radius = _number(value, "radius_m", 1.0, MAX_RADIUS_M)
        return {
            "type": "point",
            "lat": lat,
            "lon": lon,
            "radius_m": radius,
            "name": _text(value, "name", required=False),
        }
    raise CommandError("destination.type: expected 'place' or 'point'")


def _match(body: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise CommandError(f"{name}: must match {pattern.pattern}")
    return value


def _text(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise CommandError(f"{name}: expected a non-empty string of at most {MAX_TEXT} characters")
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise CommandError(f"{name}: expected a number in [{low:g}, {high:g}]")
    return float(value)


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise CommandError("at: expected an ISO-8601 time with its zone")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError("at: expected an ISO-8601 time with its zone") from None
    if at.tzinfo is None:
        raise CommandError("at: the time has no zone")
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)
