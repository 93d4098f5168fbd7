"""What each of the bridge's two MQTT sessions subscribes to, alone or as one of several bridges.

One bridge subscribes to the device filters themselves (``aoc/+/tracking``...).
Several bridges share the stream: each member subscribes to
``$share/<group>/<filter>`` and the broker hands each message to one member
of the group. Whichever member gets which message, each ambulance's state
stays exact: a batch writes a state only at the version it was planned from
(``bridge.state``), and the member that comes second plans again.

Sessions are persistent, and a session keeps its subscriptions: a bridge that
ran alone and now joins a group would still hold its plain subscription, and
get every message twice (once for all, once as its share). So at each
connection a session subscribes to its form and then drops the others
(``stale``), in that order: the broker handles one client's packets in order,
so no message published in between matches neither. What the session had
queued stays queued and is delivered: unsubscribing removes a filter, not
messages.

A filter is dropped only by its exact text, and a session's subscriptions
cannot be listed: the forms dropped are the plain one and those of
``DEFAULT_SHARE_GROUP`` and of the configured group. A session that was in a
group of another name keeps that subscription: keep the name, or stop the
member and retire it naming that group (``aoc bridge --retire --group NAME``;
README, "Several bridges").
"""

from __future__ import annotations

from bridge.contract import Kind, bridge_filters, shared_subscription

__all__ = [
    "DEFAULT_SHARE_GROUP",
    "MAIN_KINDS",
    "SNAP_KINDS",
    "every_form",
    "stale",
    "subscriptions",
]

# The group `aoc up` (AOC_BRIDGES > 1) and docker-compose use when none is set.
DEFAULT_SHARE_GROUP = "aoc"

# The main lane's kinds, and the snapshot lane's (a connection of its own, so
# that a tracking point never waits behind megabytes of images).
MAIN_KINDS = (Kind.TRACKING, Kind.CRASH, Kind.STATUS, Kind.DESTINATION, Kind.ALARM)
SNAP_KINDS = (Kind.SNAP,)


def _plain(kinds: tuple[Kind, ...]) -> list[str]:
    """Each kind's filters on every root that carries it (devices', legacy shim's, dispatch)."""
    return [topic_filter for kind in kinds for topic_filter in bridge_filters(kind)]


def subscriptions(kinds: tuple[Kind, ...], group: str = "") -> tuple[tuple[str, int], ...]:
    """The QoS 1 filters of ``kinds``: plain, or shared by ``group`` when it is not empty."""
    return tuple((shared_subscription(group, f) if group else f, 1) for f in _plain(kinds))


def every_form(kinds: tuple[Kind, ...], group: str = "") -> list[str]:
    """The filters of ``kinds`` in each form this version knows: plain, default group, ``group``."""
    groups = dict.fromkeys(g for g in ("", DEFAULT_SHARE_GROUP, group))
    return [f for g in groups for f, _ in subscriptions(kinds, g)]


def stale(kinds: tuple[Kind, ...], group: str = "", *, others: tuple[Kind, ...] = ()) -> list[str]:
    """What a session subscribed to ``kinds`` in ``group``'s form drops at each connection.

    The other forms of ``kinds``, and every form of ``others``: kinds another
    lane takes now (sessions of older versions took snapshots on the main lane).
    """
    current = {f for f, _ in subscriptions(kinds, group)}
    forms = every_form(kinds, group) + every_form(others, group)
    return [f for f in forms if f not in current]
