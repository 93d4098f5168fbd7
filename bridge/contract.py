"""The names devices, the bridge and dashboards agree on, in one place.

- **Ambulance ids**: ``[A-Za-z0-9_-]{1,64}``, and no shared room's name. An id
  becomes a topic level, a storage path, an object key and a room name.
- **MQTT topics**: ``aoc/<ambulance id>/<kind>``. Devices publish the kinds
  ``tracking``, ``snap``, ``crash`` and ``status``; the bridge publishes
  ``state`` (retained) and ``alert``. The legacy HTTP shim publishes on
  behalf of legacy devices under a root of its own,
  ``legacy/<ambulance id>/<kind>`` (``tracking``, ``snap``, ``crash``): the
  only messages that may carry a ``legacy`` body (see "The legacy root"
  below). ``docs/mqtt-contract.md`` describes the payloads.
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

The legacy root: a legacy body is re-emitted to legacy rooms as it was sent,
so only the legacy shim may send one. An MQTT subscriber never learns which
account published a message; what the bridge sees is the topic. So the shim
publishes under ``legacy/``, a root the broker lets only its account write
(devices may write only ``aoc/<own id>/...``), and ``bridge.validate`` takes a
``legacy`` body on ``legacy/...`` topics only. Otherwise a message on
``legacy/<id>/<kind>`` is what the same message on ``aoc/<id>/<kind>`` is.
The bridge subscribes to both roots (``bridge_filters``), on persistent
sessions that renew their subscriptions at every connection.

The dispatch root: a dispatcher's commands (an ambulance's destination, an
alarm's acknowledgement or resolution) come from the HTTP API, which
publishes them under ``dispatch/<ambulance id>/<kind>`` (``destination``,
``alarm``). Only the API's account may write that root. They reach the bridge
on its main lane, so that one writer, in order with the ambulance's points,
moves its state, its alarms and its events (``bridge.dispatch``).
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = [
    "ALARMS_ROOM",
    "AMBULANCE_ID",
    "BRIDGE_KINDS",
    "CRASH_NOTIFY_PREFIX",
    "CRASH_ROOM",
    "DEVICE_KINDS",
    "DISPATCH_KINDS",
    "DISPATCH_PREFIX",
    "DISPATCH_ROOMS",
    "EVENT",
    "EVENTS_ROOM",
    "JOIN_EVENT",
    "LEAVE_EVENT",
    "LEGACY_KINDS",
    "LEGACY_PREFIX",
    "LIVE_ALERT_EVENT",
    "LIVE_ALERT_FEED",
    "LIVE_ERROR_EVENT",
    "LIVE_FLEET",
    "LIVE_PREFIX",
    "LIVE_STATES_EVENT",
    "LIVE_STATE_FEED",
    "LIVE_SUBSCRIBE_EVENT",
    "LIVE_UNSUBSCRIBE_EVENT",
    "PREFIX",
    "SHARED_ROOMS",
    "SHARE_PREFIX",
    "SNAP_ROOM",
    "TRACKING_ROOM",
    "Kind",
    "ambulance_id_problem",
    "ambulance_room",
    "bridge_filters",
    "consumed_kinds",
    "crash_notify_room",
    "device_kind",
    "dispatch_topic",
    "is_dispatch_topic",
    "is_legacy_topic",
    "legacy_subscription",
    "legacy_topic",
    "parse_topic",
    "reserved_reason",
    "room_kind",
    "shared_subscription",
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
# The legacy shim's own root. MQTT never tells a subscriber which account
# published a message: the topic is all the bridge learns of its origin. So
# the one account allowed to send legacy bodies gets a root that only it may
# publish to (the broker's ACLs), and a legacy body anywhere else is refused.
LEGACY_PREFIX = "legacy"
# The HTTP API's dispatch commands (see the module doc): only its account writes here.
DISPATCH_PREFIX = "dispatch"
# MQTT shared subscriptions: ``$share/<group>/<filter>`` delivers each message
# to one subscriber of the group (several bridges taking turns on the stream).
SHARE_PREFIX = "$share"


class Kind(StrEnum):
    """A topic's last level: what the message is."""

    TRACKING = "tracking"
    SNAP = "snap"
    CRASH = "crash"
    STATUS = "status"  # retained, and the device's Last Will
    STATE = "state"  # retained latest state, published by the bridge
    ALERT = "alert"  # a broadcast crash record or an alarm, published by the bridge
    DESTINATION = "destination"  # a dispatcher sets or clears a destination (the API)
    ALARM = "alarm"  # a dispatcher acknowledges or resolves an alarm (the API)


# What devices publish (and the bridge subscribes to), and what the bridge publishes.
DEVICE_KINDS = (Kind.TRACKING, Kind.SNAP, Kind.CRASH, Kind.STATUS)
BRIDGE_KINDS = (Kind.STATE, Kind.ALERT)
# What the legacy shim publishes under LEGACY_PREFIX: the legacy HTTP
# endpoints' messages (legacy devices have no status and no Last Will).
LEGACY_KINDS = (Kind.TRACKING, Kind.SNAP, Kind.CRASH)
# What the HTTP API publishes under DISPATCH_PREFIX.
DISPATCH_KINDS = (Kind.DESTINATION, Kind.ALARM)
# The roots the bridge consumes, and the kinds each may carry.
_CONSUMED = {PREFIX: DEVICE_KINDS, LEGACY_PREFIX: LEGACY_KINDS, DISPATCH_PREFIX: DISPATCH_KINDS}


def topic(ambulance_id: str, kind: Kind) -> str:
    """The topic of ``kind`` messages of one ambulance: ``aoc/<id>/<kind>``.

    The id is not checked here: callers build topics from validated ids (and
    tests build bad ones on purpose).
    """
    return f"{PREFIX}/{ambulance_id}/{kind}"


def legacy_topic(ambulance_id: str, kind: Kind) -> str:
    """The topic the legacy shim publishes one ambulance's ``kind`` on: ``legacy/<id>/<kind>``.

    ``kind`` must be one of ``LEGACY_KINDS`` (``ValueError`` otherwise); the
    id is not checked, as in ``topic``.
    """
    if kind not in LEGACY_KINDS:
        raise ValueError(f"the legacy shim publishes no {kind} messages")
    return f"{LEGACY_PREFIX}/{ambulance_id}/{kind}"


def dispatch_topic(ambulance_id: str, kind: Kind) -> str:
    """The topic of a dispatch command about one ambulance: ``dispatch/<id>/<kind>``."""
    if kind not in DISPATCH_KINDS:
        raise ValueError(f"there are no {kind} dispatch commands")
    return f"{DISPATCH_PREFIX}/{ambulance_id}/{kind}"


def subscription(kind: Kind) -> str:
    """The topic filter of ``kind`` messages of every ambulance: ``aoc/+/<kind>``."""
    return f"{PREFIX}/+/{kind}"


def legacy_subscription(kind: Kind) -> str:
    """The topic filter of the legacy shim's ``kind`` messages: ``legacy/+/<kind>``."""
    return f"{LEGACY_PREFIX}/+/{kind}"


def bridge_filters(kind: Kind) -> tuple[str, ...]:
    """The topic filters the bridge consumes ``kind`` messages on.

    The devices' ``aoc/+/<kind>`` and, for the kinds the legacy shim sends,
    its ``legacy/+/<kind>``: the two roots of one kind go to the same lane.
    """
    if kind in DISPATCH_KINDS:
        return (f"{DISPATCH_PREFIX}/+/{kind}",)
    if kind not in DEVICE_KINDS:
        raise ValueError(f"devices publish no {kind} messages")
    if kind in LEGACY_KINDS:
        return subscription(kind), legacy_subscription(kind)
    return (subscription(kind),)


def shared_subscription(group: str, topic_filter: str) -> str:
    """``topic_filter`` shared by the subscribers of ``group``: ``$share/<group>/<filter>``.

    Each message matching it goes to one member of the group only. The group
    is a single topic level: no ``/``, ``+`` or ``#``.
    """
    if not group or any(char in group for char in "/+#"):
        raise ValueError(f"a share group is one topic level without wildcards, got {group!r}")
    return f"{SHARE_PREFIX}/{group}/{topic_filter}"


def is_dispatch_topic(value: str) -> bool:
    """Whether ``value`` is under the API's dispatch root (``dispatch/...``)."""
    return value.split("/", 1)[0] == DISPATCH_PREFIX


def is_legacy_topic(value: str) -> bool:
    """Whether ``value`` is under the legacy shim's root (``legacy/...``)."""
    return value.split("/", 1)[0] == LEGACY_PREFIX


def parse_topic(value: str) -> tuple[str, Kind] | None:
    """``(ambulance id, kind)`` of a topic built by ``topic`` or ``legacy_topic``, else None.

    A legacy topic names the device message it carries (its kind is one of
    ``LEGACY_KINDS``); ``is_legacy_topic`` tells the roots apart. None also
    for an invalid or reserved id. ``bridge.validate`` gives the reason a
    device topic is refused.
    """
    parts = value.split("/")
    if len(parts) != 3 or parts[0] not in _CONSUMED or not valid_ambulance_id(parts[1]):
        return None
    try:
        kind = Kind(parts[2])
    except ValueError:
        return None
    if parts[0] != PREFIX and kind not in _CONSUMED[parts[0]]:
        return None
    return parts[1], kind


def consumed_kinds(root: str) -> tuple[Kind, ...] | None:
    """The kinds the bridge takes under topic root ``root``, or None for a root it ignores."""
    return _CONSUMED.get(root)


def device_kind(value: str) -> Kind | None:
    """The device kind a topic names, whatever its id (to route and count), or None.

    The broker delivers only topics matching the subscriptions, whose id level
    may still be anything: the validator refuses a bad id later, in the lane
    and under the kind the topic names. A legacy topic names the kind it
    carries, so the shim's snapshots take the snapshot lane too.
    """
    parts = value.split("/")
    kinds = _CONSUMED.get(parts[0])
    if len(parts) != 3 or kinds is None:
        return None
    kind = parts[2]
    return Kind(kind) if kind in kinds else None


def topic_ambulance_id(value: str) -> str | None:
    """The valid ambulance id in ``aoc/<id>/...``, ``legacy/<id>/...`` or ``dispatch/<id>/...``.

    None when there is none.

    For dead-letter records and rate limits: the legacy shim's messages of an
    ambulance count as that ambulance's.
    """
    parts = value.split("/", 2)
    if len(parts) >= 2 and parts[0] in _CONSUMED and valid_ambulance_id(parts[1]):
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
# New dashboards' dispatch rooms (docs/socketio.md): alarms as they open and
# move through their lifecycle, and enter/exit/arrival events. Event ``data``
# too, with a JSON string; names no ambulance may take either.
ALARMS_ROOM = "alarms"
EVENTS_ROOM = "events"
DISPATCH_ROOMS = (ALARMS_ROOM, EVENTS_ROOM)


def ambulance_room(ambulance_id: str) -> str:
    """The room of one ambulance's tracking bodies: its id."""
    return ambulance_id


def crash_notify_room(ambulance_id: str) -> str:
    """The room of one ambulance's crash records."""
    return CRASH_NOTIFY_PREFIX + ambulance_id


def reserved_reason(ambulance_id: str) -> str | None:
    """Why ``ambulance_id`` may not be an ambulance's id (it names a shared room), or None."""
    folded = ambulance_id.casefold()
    if folded in SHARED_ROOMS or folded in DISPATCH_ROOMS:
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
    if room in DISPATCH_ROOMS:
        return Kind.ALERT  # alarms and events: rare, and sent before the rest
    return Kind.TRACKING  # the shared tracking room and an ambulance's own room


# --- The live stream (new dashboards: ``api.live``, docs/socketio.md) ---------------------

# Client -> server: what to watch, ``{"ambulances": "*"}`` (the fleet) or a list of ids.
LIVE_SUBSCRIBE_EVENT = "live_subscribe"
LIVE_UNSUBSCRIBE_EVENT = "live_unsubscribe"
# Server -> client: every interval, the latest public state of each ambulance updated in it.
LIVE_STATES_EVENT = "live_states"
# Server -> client, at once: a broadcast crash's public record (never coalesced).
LIVE_ALERT_EVENT = "live_alert"
LIVE_ERROR_EVENT = "live_error"  # a refused subscription: {"message": ...}
# Rooms the live stream uses internally. ``:`` is in no ambulance id, and
# ``room_join`` refuses the prefix, so no legacy room and no client can name them.
LIVE_PREFIX = "live:"
LIVE_FLEET = LIVE_PREFIX + "fleet"  # the fleet's subscribers
# What bridges emit for Socket.IO servers to coalesce (``bridge.live``): never
# delivered to a client as such.
LIVE_STATE_FEED = LIVE_PREFIX + "feed:state"
LIVE_ALERT_FEED = LIVE_PREFIX + "feed:alert"
