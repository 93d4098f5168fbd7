"""The types that flow through the bridge: validated input, and planned output.

``bridge.validate.parse`` turns one MQTT message into one of the input types
(or a ``Rejected``); ``bridge.processor.Processor.plan`` turns a batch of them
into a ``Plan``: the store writes that must be durable before the batch is
acknowledged, and the fan-out (cache, Socket.IO, MQTT) that follows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from bridge.contract import EVENT
from storage.base import Document, Write


@dataclass(frozen=True, slots=True)
class Position:
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Tracking:
    """One GPS point. ``speed_kmh`` is always km/h, whatever the source sent."""

    ambulance_id: str
    position: Position
    speed_kmh: float
    heading: float | None
    ts: datetime  # device time (UTC); server receipt time when the device sent none
    received_at: datetime
    # The device's own ts when its clock was ahead of the receipt time by more
    # than the bound, and ``ts`` was clamped to the receipt time; else None.
    device_ts: datetime | None = None
    seq: int | None = None
    accuracy: float | None = None
    altitude: float | None = None
    destination: Position | None = None
    # What legacy Socket.IO rooms receive (shaped by bridge.validate).
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def id_ts(self) -> datetime:
        """The time the record's id is built from: the device's, even when clamped."""
        return self.device_ts or self.ts


@dataclass(frozen=True, slots=True)
class Crash:
    """A crash alert; ``speed_kmh`` is km/h (the HTTP shim converts legacy m/s)."""

    ambulance_id: str
    position: Position
    speed_kmh: float
    heading: float | None
    ts: datetime
    received_at: datetime
    device_ts: datetime | None = None  # as in Tracking
    body: dict[str, Any] = field(default_factory=dict)
    # Sent again by the broker (MQTT DUP: a delivery never acknowledged), so
    # maybe stored already but never surely broadcast: see ``bridge.processor``.
    redelivered: bool = False

    @property
    def id_ts(self) -> datetime:
        """The time the record's id is built from: the device's, even when clamped."""
        return self.device_ts or self.ts


@dataclass(frozen=True, slots=True)
class Image:
    """One image; ``ext``/``content_type`` come from its magic bytes, never a claim."""

    data: bytes
    ext: str  # "jpg" or "png"
    content_type: str  # "image/jpeg" or "image/png"
    name: str | None = None  # the file name the device gave, for the record only


@dataclass(frozen=True, slots=True)
class Snap:
    ambulance_id: str
    images: tuple[Image, ...]
    ts: datetime  # capture time if given, else receipt time
    received_at: datetime
    device_ts: datetime | None = None  # as in Tracking
    # Form fields / JSON fields other than the images, for the legacy `snap` room.
    body: dict[str, Any] = field(default_factory=dict)
    # Set once the bridge's snapshot lane stored the images (``Processor.upload``):
    # their keys in image order, and the snap id, computed before the bytes
    # were dropped (the images then keep their type and name, not their data).
    stored: tuple[str, ...] = ()
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """A device's retained online/offline status (offline is its Last Will)."""

    ambulance_id: str
    online: bool
    received_at: datetime
    # Replayed by the broker at a (re)subscription: the device's last word, not news of it.
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that failed validation: it becomes a dead-letter record."""

    topic: str
    reason: str
    payload: bytes
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Destination:
    """A dispatcher sets (``destination`` not None) or clears an ambulance's destination.

    ``destination`` is the command's validated ``destination`` object (see
    ``bridge.commands``): a place's GeoJSON Feature or a point.
    """

    ambulance_id: str
    command_id: str
    at: datetime  # when the dispatcher asked (the API's clock)
    by: str  # the dispatcher's token name
    destination: dict[str, Any] | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class AlarmAction:
    """A dispatcher acknowledges or resolves one of an ambulance's alarms."""

    ambulance_id: str
    command_id: str
    at: datetime
    by: str
    alarm_id: str
    action: str  # "acknowledge" or "resolve"
    note: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Check:
    """The bridge's own question: has this ambulance been silent too long? (offline alarms)."""

    ambulance_id: str
    received_at: datetime  # now, as the sweep that asks sees it


Command = Destination | AlarmAction
Parsed = Tracking | Crash | Snap | Status | Destination | AlarmAction | Check | Rejected


@dataclass(frozen=True, slots=True)
class Emit:
    """A legacy Socket.IO emission: event ``data`` to ``room``, payload a JSON string."""

    room: str
    data: str
    event: str = EVENT


@dataclass(frozen=True, slots=True)
class Publish:
    """An outbound MQTT message for MQTT-over-WebSocket dashboards."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


class Outcome(StrEnum):
    """What the processor made of one message (its value names its metrics counter)."""

    TRACKING = "tracking"  # an in-order point: history and latest state
    LATE = "late"  # an older point: history and aggregates, never the latest
    DUPLICATE = "duplicate"  # already stored, or repeated in its batch: nothing written
    CRASH = "crash"  # a crash alert, broadcast
    CRASH_REPEAT = "crash_repeat"  # a crash within the window of a broadcast one: stored only
    SNAP = "snap"
    STATUS = "status"
    # A dispatcher's command, applied or refused (its state says which).
    DESTINATION = "destination"
    ALARM_ACTION = "alarm_action"
    CHECK = "check"  # the offline sweep's question about one ambulance (not a message)
    DEAD_LETTER = "dead_letter"


@dataclass(slots=True)
class Plan:
    """What one batch of messages turns into.

    ``writes`` must be applied (durably) before the batch is acknowledged,
    except its dead letters, which are written once, best effort (see
    ``bridge.service``); the rest is best-effort fan-out done after the
    acknowledgement.
    """

    writes: list[Write] = field(default_factory=list)
    # Latest state per ambulance for the Redis cache (only where it moved forward).
    states: dict[str, Document] = field(default_factory=dict)
    emits: list[Emit] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    # One per message of the batch, in batch order.
    outcomes: list[Outcome] = field(default_factory=list)
    images: int = 0  # images of the batch's snapshots

    @property
    def counts(self) -> dict[str, int]:
        """Counters for metrics and logs: outcome -> number, and "image" (images)."""
        counts = dict(Counter(outcome.value for outcome in self.outcomes))
        if self.images:
            counts["image"] = self.images
        return counts

    def extend(self, other: Plan) -> None:
        """Append ``other``, the plan of the messages after this plan's."""
        self.writes.extend(other.writes)
        self.states.update(other.states)
        self.emits.extend(other.emits)
        self.publishes.extend(other.publishes)
        self.outcomes.extend(other.outcomes)
        self.images += other.images
