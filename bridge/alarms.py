"""Alarms: what a dispatcher must answer, and their lifecycle.

An alarm is raised by a rule (``bridge.dispatch``): a crash, an overspeed
episode, an ambulance gone silent, or a geofence event configured as an alarm.
It moves ``open`` -> ``acknowledged`` -> ``resolved``; a dispatcher may also
resolve an open alarm at once. Each ``ALARMS`` document keeps its transitions
(who, when, with which note and command).

Each rule has a key per ambulance (``crash``, ``overspeed``, ``offline``,
``geofence:<place>:<enter|exit>``). While an alarm of that key is not resolved
it lives in the ambulance's state (``AmbulanceState.alarms``), and the rule
firing again updates it (``count``, ``updated_at``, its details) instead of
opening another: a dispatcher is not asked twice about one thing. Once
resolved, the next firing opens a new alarm.

Only the bridge writes alarms, planned like any other write of the ambulance
(its state's outbox, conditional on its version), so several bridges never
open the same alarm twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bridge.contract import Kind, topic
from bridge.ids import epoch_ms
from bridge.jsjson import dumps
from bridge.messages import AlarmAction, Publish
from bridge.public import public_record
from bridge.state import AmbulanceState

OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
# Transitions kept per alarm: the first ones (opened, acknowledged) and the latest.
TRANSITIONS_KEPT = 50

Alarm = dict[str, Any]


def raise_alarm(
    state: AmbulanceState,
    key: str,
    kind: str,
    at: datetime,
    *,
    subject: str | None = None,
    location: dict[str, float] | None = None,
    address: str | None = None,
    details: dict[str, Any] | None = None,
) -> tuple[Alarm, str]:
    """The alarm of ``key`` opened, or updated when one is not resolved yet; and which."""
    current = state.alarms.get(key)
    if current is not None:
        alarm = current | {
            "count": current["count"] + 1,
            "updated_at": at,
            "details": current["details"] | (details or {}),
        }
        if location is not None:
            alarm["location"] = location
        if address is not None:
            alarm["address"] = address
        state.alarms[key] = alarm
        return alarm, "updated"
    parts = [state.ambulance_id, kind, *([subject] if subject else []), str(epoch_ms(at))]
    alarm = {
        "_id": ".".join(parts),
        "ambulance_id": state.ambulance_id,
        "kind": kind,
        "subject": subject,
        "status": OPEN,
        "active": True,
        "opened_at": at,
        "updated_at": at,
        "count": 1,
        "location": location,
        "address": address,
        "details": details or {},
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolved_by": None,
        "note": None,
        "transitions": [_transition("opened", at)],
    }
    state.alarms[key] = alarm
    return alarm, "opened"


def end_condition(
    state: AmbulanceState, key: str, at: datetime, details: dict[str, Any]
) -> Alarm | None:
    """Record on the unresolved alarm of ``key`` that its condition ended (None: there is none).

    The alarm stays as it is in its lifecycle: a dispatcher still resolves it.
    """
    current = state.alarms.get(key)
    if current is None:
        return None
    alarm = current | {
        "updated_at": at,
        "details": current["details"] | details,
        "transitions": _kept([*current["transitions"], _transition("ended", at)]),
    }
    state.alarms[key] = alarm
    return alarm


def act(state: AmbulanceState, command: AlarmAction) -> tuple[Alarm | None, str | None]:
    """Apply a dispatcher's action: (the alarm as it now is, None), or (None, why not)."""
    key = next((k for k, a in state.alarms.items() if a["_id"] == command.alarm_id), None)
    if key is None:
        return None, f"alarm {command.alarm_id} is not open: resolved already, or unknown"
    current = state.alarms[key]
    at, by, note = command.at, command.by, command.note
    step = _transition(command.action, at, by=by, note=note, command_id=command.command_id)
    if command.action == "acknowledge":
        if current["status"] != OPEN:
            return None, f"alarm {command.alarm_id} is {current['status']} already"
        alarm = current | {"status": ACKNOWLEDGED, "acknowledged_at": at, "acknowledged_by": by}
        step["action"] = ACKNOWLEDGED
    else:
        resolved = {"status": RESOLVED, "active": False, "resolved_at": at, "resolved_by": by}
        alarm = current | resolved
        step["action"] = RESOLVED
    if note is not None:
        alarm["note"] = note
    alarm["updated_at"] = at
    alarm["transitions"] = _kept([*current["transitions"], step])
    if alarm["status"] == RESOLVED:
        del state.alarms[key]
    else:
        state.alarms[key] = alarm
    return alarm, None


def alarm_message(alarm: Alarm, event: str) -> dict[str, Any]:
    """What the ``alarms`` room and ``aoc/<id>/alert`` carry: ``opened``, ``updated``, ..."""
    return {"type": "alarm", "event": event, "alarm": public_record(alarm)}


def alarm_publish(alarm: Alarm, event: str) -> Publish:
    """The alarm message on its ambulance's ``aoc/<id>/alert`` (QoS 1, not retained)."""
    payload = dumps(alarm_message(alarm, event)).encode("utf-8")
    return Publish(topic(alarm["ambulance_id"], Kind.ALERT), payload, retain=False, qos=1)


def last_event(alarm: Alarm) -> str:
    """The event an alarm's latest change was: ``opened``, ``acknowledged``, ... or ``updated``."""
    action = alarm["transitions"][-1]["action"] if alarm["transitions"] else None
    if action == "opened" and alarm["count"] > 1:
        return "updated"
    return action if action in ("opened", ACKNOWLEDGED, RESOLVED) else "updated"


def _transition(
    action: str,
    at: datetime,
    *,
    by: str | None = None,
    note: str | None = None,
    command_id: str | None = None,
) -> dict[str, Any]:
    return {"action": action, "at": at, "by": by, "note": note, "command_id": command_id}


def _kept(transitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The first transition (opened) and the latest ones: an alarm that ends
    # again and again (an ambulance speeding every day) stays a bounded document.
    if len(transitions) <= TRANSITIONS_KEPT:
        return transitions
    return [transitions[0], *transitions[-(TRANSITIONS_KEPT - 1):]]
