"""What the bridge hands Socket.IO servers for the live stream (``api.live``).

For each batch, one emission to room ``LIVE_STATE_FEED`` carrying the JSON
array of the batch's ``aoc/<id>/state`` payloads, and one to
``LIVE_ALERT_FEED`` per broadcast crash carrying its ``aoc/<id>/alert``
payload. The bridge sends them on a fan-out channel of their own (``live``:
``bridge.service``, ``bridge.fanout``): in ``aoc serve`` straight to the
process's ``api.live.LiveStream``, and from ``aoc bridge`` through the
python-socketio Redis manager, whose messages every ``aoc realtime`` server
intercepts (``api.live.LiveRedisManager``): no client ever receives them as
such. The payloads are the MQTT ones, already encoded: joining them costs no
second serialisation. Alerts are alerts to the fan-out: never dropped, sent
first.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.contract import (
    LIVE_ALERT_EVENT,
    LIVE_ALERT_FEED,
    LIVE_STATE_FEED,
    LIVE_STATES_EVENT,
    Kind,
)
from bridge.messages import Emit, Publish


def feed(publishes: Sequence[Publish]) -> list[Emit]:
    """The live-stream emissions of a plan's MQTT ``state`` and ``alert`` publications."""
    states: list[str] = []
    emits: list[Emit] = []
    for publish in publishes:
        kind = publish.topic.rpartition("/")[2]
        if kind == Kind.STATE:
            states.append(publish.payload.decode("utf-8"))
        elif kind == Kind.ALERT:
            emits.append(
                Emit(LIVE_ALERT_FEED, publish.payload.decode("utf-8"), event=LIVE_ALERT_EVENT)
            )
    if states:
        emits.insert(0, Emit(LIVE_STATE_FEED, "[" + ",".join(states) + "]", LIVE_STATES_EVENT))
    return emits


def feed_count(plan_publishes: Sequence[Publish]) -> int:
    """How many live-stream emissions ``feed`` makes of these publications (without making them)."""
    states = alerts = 0
    for publish in plan_publishes:
        kind = publish.topic.rpartition("/")[2]
        states += kind == Kind.STATE
        alerts += kind == Kind.ALERT
    return (1 if states else 0) + alerts
