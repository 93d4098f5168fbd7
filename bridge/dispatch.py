"""The dispatch rules: places entered and left, destinations and ETAs, arrivals, alarms.

``Dispatch`` is called by ``bridge.processor`` while it plans a batch, on the
working copy of each ambulance's state; everything it decides goes into the
plan like any other write (the state's outbox, conditional on its version), so
a redelivered message or a second bridge never emits an event or an alarm twice.

- **Places** (``bridge.places``): an ambulance enters a place when a point is
  inside it, and leaves it only when a point is more than ``margin_m``
  (``AOC_GEOFENCE_MARGIN_M``) outside it. A point jittering across an edge by
  less than the margin is one ``enter``, not a storm. Late points (older than
  the latest) move no membership.
- **Destinations**: set or cleared by a dispatcher's command. Each point
  updates the remaining distance and the ETA (``bridge.eta``); the ambulance
  arrives when it is inside the destination place, or within the point's radius.
- **Alarms** (``bridge.alarms``): a crash; an overspeed episode above the
  configured threshold (its end is recorded when it closes); an ambulance
  silent for ``offline_after_s`` unless it is inside a place of kind
  ``station`` (the bridge's sweep asks, ``Check``); geofence events named by
  ``AOC_GEOFENCE_ALARMS``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import shapely

from aoc.config import geofence_alarm_rules
from bridge import alarms, eta
from bridge.address import describe
from bridge.contract import ALARMS_ROOM, EVENTS_ROOM
from bridge.geo import haversine_m, position_doc
from bridge.ids import epoch_ms
from bridge.messages import AlarmAction, Check, Crash, Destination, Position, Publish, Tracking
from bridge.places import (
    Place,
    PlaceIndex,
    distance_m,
    membership,
    place_feature,
    place_from_doc,
    places_from_geojson,
)
from bridge.public import public_record
from bridge.speed import RED, Episode, Threshold
from bridge.state import AmbulanceState
from storage.base import ALARMS, EVENTS, PLACES, Document, DocumentStore

if TYPE_CHECKING:
    from aoc.config import Settings

STATION = "station"  # the place kind where a silent ambulance is parked, not lost
COMMANDS_KEPT = 16


class Sink(Protocol):
    """Where the rules put what they decide (``bridge.processor``'s plan draft)."""

    publishes: list[Publish]
    dirty: set[str]
    moved: set[str]

    def upsert(self, collection: str, doc: Document) -> None: ...
    def insert(self, collection: str, doc: Document) -> None: ...
    def alert(self, room: str, value: Any) -> None: ...


@dataclass(frozen=True)
class DispatchRules:
    """The settings of the rules (``AOC_GEOFENCE_*``, ``AOC_ETA_*``, ``AOC_OFFLINE_*``...)."""

    margin_m: float = 30.0
    arrival_radius_m: float = 50.0
    eta_window_s: float = 300.0
    eta_floor_kmh: float = 10.0
    offline_after_s: float = 300.0
    # The overspeed episodes that raise an alarm (None: none do).
    overspeed: Threshold | None = RED
    # (place kind or id, "enter" | "exit") pairs whose events are alarms.
    geofence_alarms: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchRules:
        return cls(
            margin_m=settings.geofence_margin_m,
            arrival_radius_m=settings.arrival_radius_m,
            eta_window_s=settings.eta_window_seconds,
            eta_floor_kmh=settings.eta_min_speed_kmh,
            offline_after_s=settings.offline_after_seconds,
            overspeed=overspeed_threshold(settings.overspeed_alarm),
            geofence_alarms=geofence_alarm_rules(settings.geofence_alarms),
        )


def overspeed_threshold(name: str) -> Threshold | None:
    """``AOC_OVERSPEED_ALARM``: ``red`` (default), ``orange`` or ``off``."""
    choices: dict[str, Threshold | None] = {
        "red": "speed_above_120", "orange": "speed_above_80", "off": None,
    }
    return choices[name]


class Dispatch:
    """The rules, over the places ``places()`` gives at the time of each call."""

    def __init__(
        self, rules: DispatchRules | None = None, places: PlaceIndex | None = None
    ) -> None:
        self.rules = rules or DispatchRules()
        self.places = places or PlaceIndex(())
        # Ids of places removed (tombstones): an ambulance inside one leaves it silently.
        # Any other id this bridge does not know (another bridge read it first) is kept.
        self.removed: set[str] = set()
        # Places read from the store for a command (not in the index yet), and
        # destination places rebuilt from a state's stored geometry; both bounded.
        self._fetched: OrderedDict[str, Place] = OrderedDict()
        self._destinations: OrderedDict[str, Place] = OrderedDict()

    async def prepare(self, store: DocumentStore, items: Iterable[object]) -> None:
        """Read the places the batch's destination commands name that the index lacks."""
        for item in items:
            if isinstance(item, Destination) and item.destination is not None:
                place_id = item.destination.get("place_id")
                if place_id and self.place(place_id) is None:
                    doc = await store.get(PLACES, place_id)
                    place = None if doc is None else _readable(doc)
                    if place is not None and place.removed_at is None:
                        _remember(self._fetched, place_id, place)

    def place(self, place_id: str) -> Place | None:
        """A live place this bridge knows: in its index, or read for a command."""
        return self.places.get(place_id) or self._fetched.get(place_id)

    # --- points, crashes, silence ----------------------------------------------------------

    def on_point(
        self,
        item: Tracking,
        state: AmbulanceState,
        sink: Sink,
        *,
        previous_seen: datetime | None,
        opened: Iterable[Episode] = (),
        closed: Iterable[Episode] = (),
    ) -> None:
        """One in-order point, after the state moved to it."""
        seconds = None if previous_seen is None else (item.ts - previous_seen).total_seconds()
        state.recent_speed = eta.recent_speed(
            state.recent_speed, item.speed_kmh, seconds, self.rules.eta_window_s
        )
        self.heard(state, item.received_at, sink)
        if len(self.places) or state.places:
            self._membership(item, state, sink)
        if state.destination is not None and state.destination.get("arrived_at") is None:
            self._approach(item.position, item.ts, state, sink)
        for episode in opened:
            if episode.threshold == self.rules.overspeed:
                self._raise(
                    state, sink, "overspeed", "overspeed", episode.started_at,
                    subject=episode.threshold,
                    location=position_doc(episode.start_location),
                    address=describe(episode.start_location, self.places),
                    details={
                        "episode_id": episode.id,
                        "threshold": episode.threshold,
                        "limit_kmh": episode.limit_kmh,
                        "started_at": episode.started_at,
                        "ended_at": None,
                        "max_speed": episode.max_speed,
                    },
                )
        for episode in closed:
            if episode.threshold == self.rules.overspeed:
                details = {
                    "episode_id": episode.id,
                    "ended_at": episode.ended_at,
                    "max_speed": episode.max_speed,
                    "end_location": position_doc(episode.end_location),
                }
                self._ended(state, sink, "overspeed", item.ts, details)

    def on_crash(self, item: Crash, record: Document, state: AmbulanceState, sink: Sink) -> None:
        """A broadcast crash (not a repeat within the dedup window): its alarm."""
        self.heard(state, item.received_at, sink)
        self._raise(
            state, sink, "crash", "crash", item.ts,
            location=position_doc(item.position),
            address=describe(item.position, self.places),
            details={
                "crash_id": record["_id"],
                "speed": item.speed_kmh,
                "heading": item.heading,
                "delay_s": record.get("delay_s"),
            },
        )

    def resend_crash_alarm(self, state: AmbulanceState, record: Document, sink: Sink) -> None:
        """Send again the alarm of a crash stored but never fanned out (a broker redelivery).

        Only while the alarm is unresolved and its latest crash is this one.
        """
        alarm = state.alarms.get("crash")
        if alarm is not None and alarm["details"].get("crash_id") == record["_id"]:
            sink.alert(ALARMS_ROOM, alarms.alarm_message(alarm, alarms.last_event(alarm)))
            sink.publishes.append(alarms.alarm_publish(alarm, alarms.last_event(alarm)))

    def heard(self, state: AmbulanceState, at: datetime, sink: Sink) -> None:
        """A message from the ambulance: the end of any silence (its offline alarm ends)."""
        if state.heard_at is not None and at <= state.heard_at:
            return
        state.heard_at = at
        sink.dirty.add(state.ambulance_id)
        if state.silence_handled:
            state.silence_handled = None
            self._ended(state, sink, "offline", at, {"back_at": at})

    def on_check(self, item: Check, state: AmbulanceState, sink: Sink) -> None:
        """The sweep's question: silent for too long, and not parked at a station?"""
        heard = state.heard_at
        if heard is None or state.silence_handled:
            return
        silent_s = (item.received_at - heard).total_seconds()
        if silent_s < self.rules.offline_after_s:
            return
        state.silence_handled = True
        sink.dirty.add(state.ambulance_id)
        if any(self._kind(place_id) == STATION for place_id in state.places):
            return  # parked: a station's ambulances may sleep
        location = position_doc(state.location)
        self._raise(
            state, sink, "offline", "offline", item.received_at,
            location=location,
            address=None if state.location is None else describe(state.location, self.places),
            details={"silent_since": heard, "last_seen": state.last_seen, "back_at": None},
        )

    # --- dispatcher commands ----------------------------------------------------------------

    def on_destination(self, command: Destination, state: AmbulanceState, sink: Sink) -> None:
        """Set or clear the destination; arrival at once if the ambulance is already there."""
        aid = state.ambulance_id
        value = command.destination
        if value is None:
            state.destination = state.destination_geometry = state.eta = None
        elif value["type"] == "place":
            place = self.place(value["place_id"])
            if place is None:
                self.refuse(state, command.command_id, f"no place {value['place_id']!r}")
                return
            state.destination = _destination_doc(command, place=place)
            state.destination_geometry = compact_feature(place)
            _remember(self._destinations, _geometry_key(state.destination), place)
        else:
            state.destination = _destination_doc(
                command, point=(value["lat"], value["lon"], value.get("name")),
                radius_m=value.get("radius_m") or self.rules.arrival_radius_m,
            )
            state.destination_geometry = None
        if state.destination is not None:
            state.eta = None
            if state.location is not None and state.last_seen is not None:
                self._approach(state.location, command.at, state, sink)
        self._done(state, command.command_id, None)
        sink.dirty.add(aid)
        sink.moved.add(aid)

    def on_alarm_action(self, command: AlarmAction, state: AmbulanceState, sink: Sink) -> None:
        """Acknowledge or resolve an alarm, or record why not."""
        alarm, reason = alarms.act(state, command)
        if alarm is not None:
            self._send_alarm(state, sink, alarm, alarm["status"])
        self._done(state, command.command_id, reason)
        sink.dirty.add(state.ambulance_id)

    @staticmethod
    def seen(state: AmbulanceState, command_id: str) -> bool:
        """Whether this command was taken already (a redelivery)."""
        return any(entry["id"] == command_id for entry in state.commands)

    # --- internals ----------------------------------------------------------------------------

    def _membership(self, item: Tracking, state: AmbulanceState, sink: Sink) -> None:
        inside, entered, exited = membership(
            frozenset(state.places), item.position, self.places, self.rules.margin_m
        )
        # A place this bridge has not read yet (another bridge has): still inside it.
        inside |= {p for p in state.places if self.places.get(p) is None and p not in self.removed}
        if not entered and not exited and sorted(inside) == state.places:
            return
        state.places = sorted(inside)
        sink.dirty.add(state.ambulance_id)
        sink.moved.add(state.ambulance_id)
        for event, ids in (("exit", exited), ("enter", entered)):
            for place_id in ids:
                place = self.places.get(place_id)
                self._event(
                    state, sink, event, item.ts, item.position, place_id=place_id, place=place
                )
                if self._is_alarm(place_id, place, event):
                    self._raise(
                        state, sink, f"geofence:{place_id}:{event}", "geofence", item.ts,
                        subject=place_id,
                        location=position_doc(item.position),
                        address=describe(item.position, self.places),
                        details={
                            "event": event,
                            "place_id": place_id,
                            "place_name": None if place is None else place.name,
                        },
                    )

    def _approach(self, here: Position, at: datetime, state: AmbulanceState, sink: Sink) -> None:
        """Update the remaining distance and ETA to the destination; arrive when there."""
        destination = state.destination
        assert destination is not None
        place = self._destination_place(state)
        if place is not None:
            remaining = distance_m(here, place)
            there = remaining <= 0
        else:
            target = Position(destination["location"]["lat"], destination["location"]["lon"])
            remaining = haversine_m(here, target)
            there = remaining <= (destination.get("radius_m") or self.rules.arrival_radius_m)
        window, floor = self.rules.eta_window_s, self.rules.eta_floor_kmh
        if there:
            state.destination = destination | {"arrived_at": at}
            state.eta = eta.arrived(at, window_s=window, floor_kmh=floor)
            self._event(
                state, sink, "arrival", at, here,
                place_id=destination.get("place_id"), place=place, name=destination.get("name"),
            )
        else:
            state.eta = eta.estimate(
                remaining, state.recent_speed, at, window_s=window, floor_kmh=floor
            )
        sink.dirty.add(state.ambulance_id)
        sink.moved.add(state.ambulance_id)

    def _destination_place(self, state: AmbulanceState) -> Place | None:
        destination = state.destination
        if destination is None or destination["type"] != "place":
            return None
        key = _geometry_key(destination)
        place = self._destinations.get(key)
        if place is None and state.destination_geometry is not None:
            # Loaded from the store (a restart, another bridge's command): parse once.
            place = places_from_geojson(state.destination_geometry)[0]
            _remember(self._destinations, key, place)
        return place

    def _event(
        self,
        state: AmbulanceState,
        sink: Sink,
        kind: str,
        at: datetime,
        where: Position,
        *,
        place_id: str | None,
        place: Place | None,
        name: str | None = None,
    ) -> None:
        aid = state.ambulance_id
        event = {
            "_id": f"{aid}.{kind}.{place_id or 'point'}.{epoch_ms(at)}",
            "ambulance_id": aid,
            "type": kind,
            "place_id": place_id,
            "place_name": place.name if place is not None else name,
            "place_kind": None if place is None else place.kind,
            "at": at,
            "location": position_doc(where),
        }
        sink.insert(EVENTS, event)
        sink.alert(EVENTS_ROOM, event_message(event))

    def _raise(
        self,
        state: AmbulanceState,
        sink: Sink,
        key: str,
        kind: str,
        at: datetime,
        **fields: Any,
    ) -> None:
        alarm, event = alarms.raise_alarm(state, key, kind, at, **fields)
        self._send_alarm(state, sink, alarm, event)

    def _ended(
        self, state: AmbulanceState, sink: Sink, key: str, at: datetime, details: Document
    ) -> None:
        alarm = alarms.end_condition(state, key, at, details)
        if alarm is not None:
            self._send_alarm(state, sink, alarm, "updated")

    @staticmethod
    def _send_alarm(state: AmbulanceState, sink: Sink, alarm: Document, event: str) -> None:
        aid = state.ambulance_id
        sink.dirty.add(aid)
        sink.upsert(ALARMS, alarm)
        sink.alert(ALARMS_ROOM, alarms.alarm_message(alarm, event))
        sink.publishes.append(alarms.alarm_publish(alarm, event))

    def _is_alarm(self, place_id: str, place: Place | None, event: str) -> bool:
        wanted = self.rules.geofence_alarms
        if not wanted:
            return False
        kind = None if place is None else place.kind
        return (place_id, event) in wanted or (kind is not None and (kind, event) in wanted)

    def _kind(self, place_id: str) -> str | None:
        place = self.places.get(place_id)
        return None if place is None else place.kind

    @staticmethod
    def _done(state: AmbulanceState, command_id: str, reason: str | None) -> None:
        entry = {"id": command_id, "ok": reason is None, "reason": reason}
        state.commands = [*state.commands, entry][-COMMANDS_KEPT:]

    def refuse(self, state: AmbulanceState, command_id: str, reason: str) -> None:
        """Record a command refused (its state says why: the API answers 409 with it)."""
        self._done(state, command_id, reason)


# A destination place's geometry rides in every state write: at most this many vertices.
COMPACT_VERTICES = 500
CACHED = 1000  # places per cache (fetched for commands, rebuilt from states)


def compact_feature(place: Place) -> dict[str, Any]:
    """The place's Feature, its polygon simplified (a few metres) to at most COMPACT_VERTICES."""
    geometry = place.geometry
    tolerance = 0.00001  # degrees: about a metre
    while geometry is not None and shapely.get_num_coordinates(geometry) > COMPACT_VERTICES:
        geometry = shapely.simplify(place.geometry, tolerance, preserve_topology=True)
        tolerance *= 2
    return place_feature(replace(place, geometry=geometry))


def _geometry_key(destination: Document) -> str:
    return f"{destination['place_id']}@{destination['command_id']}"


def _remember(cache: OrderedDict[str, Place], key: str, place: Place) -> None:
    cache[key] = place
    cache.move_to_end(key)
    while len(cache) > CACHED:
        cache.popitem(last=False)


def _readable(doc: Document) -> Place | None:
    try:
        return place_from_doc(doc)
    except (KeyError, TypeError, ValueError, IndexError):
        return None  # a damaged document: no such place (PlaceWatch logs it)


def event_message(event: Document) -> dict[str, Any]:
    """What the ``events`` room carries for one stored event."""
    return {"type": "event", "event": public_record(event)}


def _destination_doc(
    command: Destination,
    *,
    place: Place | None = None,
    point: tuple[float, float, str | None] | None = None,
    radius_m: float | None = None,
) -> Document:
    """The destination as the public state shows it (a place's geometry is kept apart)."""
    if place is not None:
        centre = _centre(place)
        base = {
            "type": "place",
            "place_id": place.id,
            "name": place.name,
            "kind": place.kind,
            "location": position_doc(centre),
            "radius_m": place.radius_m,
        }
    else:
        assert point is not None
        lat, lon, name = point
        base = {
            "type": "point",
            "place_id": None,
            "name": name,
            "kind": None,
            "location": {"lat": lat, "lon": lon},
            "radius_m": radius_m,
        }
    return base | {
        "set_at": command.at,
        "set_by": command.by,
        "command_id": command.command_id,
        "arrived_at": None,
    }


def _centre(place: Place) -> Position:
    """A point of the place to show it by: a circle's centre, a point inside a polygon."""
    if place.geometry is None:
        assert place.center is not None  # a circle
        return place.center
    inner = place.geometry.representative_point()
    return Position(inner.y, inner.x)
