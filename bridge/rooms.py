"""The legacy Socket.IO rooms: their names, and the ambulance ids they reserve.

Every emission goes to a room, and dashboards join rooms by name: an
ambulance's own room is its id, and the shared rooms are named below. An
ambulance whose id was a shared room's name would have its points delivered
to that room as if they were crash alerts or another stream, so those names
(in any letter case, since an operator reads them as the same word) are not
valid ambulance ids anywhere: ``bridge.ids.ambulance_id_problem`` refuses them.
"""

from __future__ import annotations

__all__ = [
    "CRASH",
    "CRASH_NOTIFY_PREFIX",
    "SHARED",
    "SNAP",
    "TRACKING",
    "crash_notify",
    "kind_of",
    "reserved_reason",
]

TRACKING = "tracking"  # every ambulance's tracking bodies
SNAP = "snap"  # every snapshot
CRASH = "crash"  # every crash alert's body
CRASH_NOTIFY_PREFIX = "CRASH_NOTIFY_"  # + ambulance id: that ambulance's crash records
SHARED = (TRACKING, SNAP, CRASH)


def crash_notify(ambulance_id: str) -> str:
    """The room of one ambulance's crash records."""
    return CRASH_NOTIFY_PREFIX + ambulance_id


def reserved_reason(ambulance_id: str) -> str | None:
    """Why ``ambulance_id`` may not be an ambulance's id (it names a shared room), or None."""
    folded = ambulance_id.casefold()
    if folded in SHARED:
        return f"{ambulance_id!r} is reserved: it is the name of the shared room {folded!r}"
    if folded.startswith(CRASH_NOTIFY_PREFIX.casefold()):
        return f"{ambulance_id!r} is reserved: {CRASH_NOTIFY_PREFIX}<id> rooms carry crash records"
    return None


def kind_of(room: str) -> str:
    """The message kind behind an emission to ``room`` (for metrics)."""
    if room == SNAP:
        return "snap"
    if room == CRASH or room.startswith(CRASH_NOTIFY_PREFIX):
        return "crash"
    return "tracking"  # the shared tracking room and an ambulance's own room
