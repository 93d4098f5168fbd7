"""The names devices, the bridge and dashboards agree on, in one place.

- **Ambulance ids**: ``[A-Za-z0-9_-]{1,64}``, and no shared room's name. An id
  becomes a topic level, a storage path, an object key and a room name.
- **MQTT topics**: ``aoc/<ambulance id>/<kind>``. Devices publish the kinds
  ``tracking``, ``snap``, ``crash`` and ``status``; the bridge publishes
  ``state`` (retained) and ``alert``. ``docs/mqtt-contract.md`` describes the
  payloads.
- **Socket.IO rooms** (the legacy dashboards' contract, ``docs/legacy.md``):
  an ambulance's own room is its id; the shared rooms are ``tracking``,
  ``snap``, ``crash``, and ``CRASH_NOTIFY_<id>`` holds one ambulance's crash
  records. Every emission is event ``data`` carrying a JSON string; clients
  join and leave with ``room_join`` and ``room_leave``.

An ambulance whose id was a shared room's name would have its points
delivered to that room as if they were crash alerts or another stream, so
those names (in any letter case, since an operator reads them as the same
word) are not valid ambulance ids anywhere: ``ambulance_id_problem`` refuses
them, and every entry point (MQTT topics, the legacy shim, the read API) asks it.
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = [
    "AMBULANCE_ID",
    "BRIDGE_KINDS",
    "CRASH_NOTIFY_PREFIX",
    "CRASH_ROOM",
    "DEVICE_KINDS",
    "EVENT",
    "JOIN_EVENT",
    "LEAVE_EVENT",
    "PREFIX",
    "SHARED_ROOMS",
    "SNAP_ROOM",
    "TRACKING_ROOM",
    "Kind",
    "ambulance_id_problem",
    "ambulance_room",
    "crash_notify_room",
    "device_kind",
    "parse_topic",
    "reserved_reason",
    "room_kind",
    "subscription",
    "topic",
    "topic_ambulance_id",
    "valid_ambulance_id",
]

# --- ambulance ids -----------------------------------------------------------------------

# An ambulance id becomes a storage path and a room name: nothing else gets in.
AMBULANCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def ambulance_id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid ambulance id, or None when it is one.

    Valid: a string of 1 to 64 of ``A-Z a-z 0-9 _ -`` that names no shared
    Socket.IO room. Every entry point (MQTT topics, the legacy shim, the read
    API) refuses an id with this reason.
    """
    if not isinstance(value, str) or AMBULANCE_ID.fullmatch(value) is None:
        return f"must match {AMBULANCE_ID.pattern}"
    return reserved_reason(value)


def valid_ambulance_id(value: object) -> bool:
    """Whether ``value`` is a valid ambulance id (see ``ambulance_id_problem``)."""
    return ambulance_id_problem(value) is None


# --- MQTT topics ---------------------------------------------------------------------------

PREFIX = "aoc"


class Kind(StrEnum):
    """A topic's last level: what the message is."""

    TRACKING = "tracking"
    SNAP = "snap"
    CRASH = "crash"
    STATUS = "status"  # retained, and the device's Last Will
    STATE = "state"  # retained latest state, published by the bridge
    ALERT = "alert"  # a broadcast crash record, published by the bridge


# What devices publish (and the bridge subscribes to), and what the bridge publishes.
DEVICE_KINDS = (Kind.TRACKING, Kind.SNAP, Kind.CRASH, Kind.STATUS)
BRIDGE_KINDS = (Kind.STATE, Kind.ALERT)


def topic(ambulance_id: str, kind: Kind) -> str:
    """The topic of ``kind`` messages of one ambulance: ``aoc/<id>/<kind>``.

    The id is not checked here: callers build topics from validated ids (and
    tests build bad ones on purpose).
    """
    return f"{PREFIX}/{ambulance_id}/{kind}"


def subscription(kind: Kind) -> str:
    """The topic filter of ``kind`` messages of every ambulance: ``aoc/+/<kind>``."""
    return f"{PREFIX}/+/{kind}"


def parse_topic(value: str) -> tuple[str, Kind] | None:
    """``(ambulance id, kind)`` of a topic built by ``topic``, or None for any other topic.

    None also for an invalid or reserved id. ``bridge.validate`` gives the
    reason a device topic is refused.
    """
    parts = value.split("/")
    if len(parts) != 3 or parts[0] != PREFIX or not valid_ambulance_id(parts[1]):
        return None
    try:
        return parts[1], Kind(parts[2])
    except ValueError:
        return None


def device_kind(value: str) -> Kind | None:
    """The device kind a topic names, whatever its id (to route and count), or None.

    The broker delivers only topics matching the subscriptions, whose id level
    may still be anything: the validator refuses a bad id later, in the lane
    and under the kind the topic names.
    """
    parts = value.split("/")
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    kind = parts[2]
    return Kind(kind) if kind in DEVICE_KINDS else None


def topic_ambulance_id(value: str) -> str | None:
    """The valid ambulance id in ``aoc/<id>/...``, else None (for dead-letter records)."""
    parts = value.split("/", 2)
    if len(parts) >= 2 and parts[0] == PREFIX and valid_ambulance_id(parts[1]):
        return parts[1]
    return None


# --- Socket.IO rooms and events ------------------------------------------------------------

EVENT = "data"  # the one event the server emits; its payload is a JSON string
JOIN_EVENT = "room_join"  # client -> server, with a room name
LEAVE_EVENT = "room_leave"

TRACKING_ROOM = "tracking"  # every ambulance's tracking bodies
SNAP_ROOM = "snap"  # every snapshot
CRASH_ROOM = "crash"  # every crash alert's body
CRASH_NOTIFY_PREFIX = "CRASH_NOTIFY_"  # + ambulance id: that ambulance's crash records
SHARED_ROOMS = (TRACKING_ROOM, SNAP_ROOM, CRASH_ROOM)


def ambulance_room(ambulance_id: str) -> str:
    """The room of one ambulance's tracking bodies: its id."""
    return ambulance_id


def crash_notify_room(ambulance_id: str) -> str:
    """The room of one ambulance's crash records."""
    return CRASH_NOTIFY_PREFIX + ambulance_id


def reserved_reason(ambulance_id: str) -> str | None:
    """Why ``ambulance_id`` may not be an ambulance's id (it names a shared room), or None."""
    folded = ambulance_id.casefold()
    if folded in SHARED_ROOMS:
        return f"{ambulance_id!r} is reserved: it is the name of the shared room {folded!r}"
    if folded.startswith(CRASH_NOTIFY_PREFIX.casefold()):
        return f"{ambulance_id!r} is reserved: {CRASH_NOTIFY_PREFIX}<id> rooms carry crash records"
    return None


def room_kind(room: str) -> Kind:
    """The message kind behind an emission to ``room`` (for metrics)."""
    if room == SNAP_ROOM:
        return Kind.SNAP
    if room == CRASH_ROOM or room.startswith(CRASH_NOTIFY_PREFIX):
        return Kind.CRASH
    return Kind.TRACKING  # the shared tracking room and an ambulance's own room
