"""Trips and stops: what an ambulance's points mean, kept as they arrive (issue 14).

``Trips`` is called by ``bridge.processor`` on each in-order point, after the
dispatch rules (which keep ``state.places``), on the working copy of the
ambulance's state; its writes go into the plan like the others (the state's
outbox, conditional on its version), so a redelivered batch or a second bridge
never writes a trip twice. The open trip or stop lives in ``state.motion``:

    {"trip": <open trip doc> | None, "stop": <open stop doc> | None,
     "slow_since": datetime | None, "slow_location": {"lat", "lon"} | None,
     "slow_distance": float,   # covered_distance when the slow stretch started
     "slow_trip_distance": float,  # the open trip's distance_m then (what it keeps if it ends)
     "slow_points": int}       # points since then (taken off the trip if it ends there)

- A **stop**: the speed stays below ``stop_kmh`` (``AOC_STOP_SPEED_KMH``) for at
  least ``stop_min_s`` (``AOC_STOP_MIN_SECONDS``). The open trip then ends where
  and when the slow stretch started, and the stop opens there.
- A **trip**: what lies between stops. A point at or above the speed ends the
  open stop at its time, and a trip starts there. The first point of an
  ambulance opens a trip if it moves, a pending stop if slow.
- **Writes**: a trip or stop document is upserted when it opens, when it
  closes, and on the first point of each new minute since it started (a
  checkpoint), so readers see ongoing ones at a bounded write cost. Between
  writes a point only updates a few numbers of the state's copy: no document
  is built and nothing is read.

Limits: late points (older than the latest) move no trip or stop; a gap in the
points (a device switched off) is part of the trip or stop it falls in; crashes
and snapshots count into whichever trip or stop is open when they are planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bridge.address import describe
from bridge.geo import position_doc, position_from_doc
from bridge.ids import epoch_ms
from bridge.messages import Position, Tracking
from bridge.places import PlaceIndex
from bridge.state import AmbulanceState
from storage.base import STOPS, TRIPS, Document

if TYPE_CHECKING:
    from aoc.config import Settings
    from bridge.dispatch import Sink

CHECKPOINT = timedelta(seconds=60)  # an open trip or stop is written at most this often


@dataclass(frozen=True)
class TripRules:
    """The settings of the rule (``AOC_STOP_SPEED_KMH``, ``AOC_STOP_MIN_SECONDS``).

    Overspeed is the red limit's (``AOC_SPEED_RED_KMH``), through ``bridge.speed``'s episodes.
    """

    stop_kmh: float = 5.0
    stop_min_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> TripRules:
        return cls(
            stop_kmh=settings.stop_speed_kmh,
            stop_min_s=settings.stop_min_seconds,
        )


class Trips:
    """The rule, over the places ``places`` holds at the time of each call."""

    def __init__(self, rules: TripRules | None = None) -> None:
        self.rules = rules or TripRules()

    def on_point(
        self,
        item: Tracking,
        state: AmbulanceState,
        sink: Sink,
        *,
        previous_seen: datetime | None,
        was_red: bool,
        step_m: float,
        opened_red: bool,
        places: PlaceIndex,
    ) -> None:
        """One in-order point, after the state (its ``covered_distance``, places) moved to it.

        ``step_m``: the distance from the previous point; ``was_red``: an
        overspeed episode above the red limit (``bridge.speed``) was open before
        this point, so the time since the previous one is overspeed time;
        ``opened_red``: this point opened one.
        """
        motion = state.motion
        if motion is None:
            motion = state.motion = {
                "trip": None, "stop": None, "slow_since": None, "slow_location": None,
                "slow_distance": 0.0, "slow_trip_distance": 0.0, "slow_points": 0,
            }
        ts = item.ts
        trip = motion["trip"]
        if trip is not None and previous_seen is not None:
            trip["points"] += 1
            trip["distance_m"] += step_m
            if item.speed_kmh > trip["max_speed"]:  # noqa: PLR1730 (no call: the hot path)
                trip["max_speed"] = item.speed_kmh
            if was_red:
                trip["overspeed_s"] += (ts - previous_seen).total_seconds()
            if opened_red:
                trip["overspeed_episodes"] += 1
        if item.speed_kmh >= self.rules.stop_kmh:
            changed = self._moving(item, state, motion, sink, places, opened_red=opened_red)
        else:
            changed = self._slow(item, state, motion, sink, places)
        if changed or previous_seen is None:
            return
        # A checkpoint on the first point of each new minute of the open trip or stop.
        doc, collection = (trip, TRIPS) if trip is not None else (motion["stop"], STOPS)
        if doc is not None:
            started = doc["started_at"]
            if (ts - started) // CHECKPOINT != (previous_seen - started) // CHECKPOINT:
                self._write(sink, collection, doc, ts, item.position)

    def _moving(
        self,
        item: Tracking,
        state: AmbulanceState,
        motion: dict[str, Any],
        sink: Sink,
        places: PlaceIndex,
        *,
        opened_red: bool,
    ) -> bool:
        """A point at or above the speed: the open stop ends, a trip starts. Whether written."""
        if motion["slow_since"] is not None:
            motion["slow_since"] = motion["slow_location"] = None
            motion["slow_points"] = 0
        if motion["trip"] is not None:
            return False
        stop = motion["stop"]
        if stop is not None:
            stop["ended_at"] = item.ts
            stop["open"] = False
            self._write(sink, STOPS, stop, item.ts)
            motion["stop"] = None
        motion["trip"] = trip = self._open_trip(state, item, places, opened_red=opened_red)
        self._write(sink, TRIPS, trip, item.ts)
        return True

    def _slow(
        self,
        item: Tracking,
        state: AmbulanceState,
        motion: dict[str, Any],
        sink: Sink,
        places: PlaceIndex,
    ) -> bool:
        """A point below the speed: slow long enough, the trip ends and a stop opens."""
        if motion["slow_since"] is None:
            motion["slow_since"] = item.ts
            motion["slow_location"] = position_doc(item.position)
            motion["slow_distance"] = state.covered_distance
            trip = motion["trip"]
            motion["slow_trip_distance"] = 0.0 if trip is None else trip["distance_m"]
            motion["slow_points"] = 0
        else:
            motion["slow_points"] += 1
        slow_since: datetime = motion["slow_since"]
        if motion["stop"] is not None:
            return False
        if (item.ts - slow_since).total_seconds() < self.rules.stop_min_s:
            return False
        trip = motion["trip"]
        if trip is not None:
            self._close_trip(state, motion, trip, places)
            self._write(sink, TRIPS, trip, slow_since)
            motion["trip"] = None
        motion["stop"] = stop = self._open_stop(state, motion, places)
        self._write(sink, STOPS, stop, item.ts)
        return True

    @staticmethod
    def count(state: AmbulanceState, sink: Sink, field: str) -> None:
        """A crash or snapshot of the ambulance: counted into its open trip or stop."""
        motion = state.motion
        if motion is None:
            return
        doc = motion["trip"] or motion["stop"]
        if doc is not None:
            doc[field] += 1
            sink.dirty.add(state.ambulance_id)

    # --- internals --------------------------------------------------------------------------

    @staticmethod
    def _open_trip(
        state: AmbulanceState, item: Tracking, places: PlaceIndex, *, opened_red: bool
    ) -> Document:
        """A trip from ``item``; ``opened_red``: its point opened an overspeed episode."""
        aid = state.ambulance_id
        here = position_doc(item.position)
        return {
            "_id": f"{aid}.trip.{epoch_ms(item.ts)}",
            "ambulance_id": aid,
            "started_at": item.ts,
            "ended_at": None,
            "start_location": here,
            "end_location": here,
            "start_place": describe(item.position, places),
            "end_place": None,
            "distance_m": 0.0,
            "duration_s": 0.0,
            "max_speed": item.speed_kmh,
            "avg_speed": 0.0,
            "overspeed_s": 0.0,
            "overspeed_episodes": 1 if opened_red else 0,
            "points": 1,
            "crashes": 0,
            "snapshots": 0,
            "open": True,
        }

    @staticmethod
    def _close_trip(
        state: AmbulanceState, motion: dict[str, Any], trip: Document, places: PlaceIndex
    ) -> None:
        """End the trip where the slow stretch started: what came since is the stop's."""
        end = position_from_doc(motion["slow_location"])
        assert end is not None
        # The trip's own distance when the slow stretch started: not covered_distance, which
        # late points settled since (bridge.late) may have moved, by a detour on this very trip.
        kept = motion.get("slow_trip_distance")
        if kept is None:  # a state saved before the field existed
            kept = trip["distance_m"] - max(0.0, state.covered_distance - motion["slow_distance"])
        trip["distance_m"] = max(0.0, kept)
        trip["points"] -= motion["slow_points"]
        trip["ended_at"] = motion["slow_since"]
        trip["end_location"] = motion["slow_location"]
        trip["end_place"] = describe(end, places)
        trip["open"] = False

    @staticmethod
    def _open_stop(
        state: AmbulanceState, motion: dict[str, Any], places: PlaceIndex
    ) -> Document:
        aid = state.ambulance_id
        since: datetime = motion["slow_since"]
        where = position_from_doc(motion["slow_location"])
        assert where is not None
        return {
            "_id": f"{aid}.stop.{epoch_ms(since)}",
            "ambulance_id": aid,
            "started_at": since,
            "ended_at": None,
            "location": motion["slow_location"],
            # The dispatch rules keep the places it is in (by their hysteresis).
            "place_id": state.places[0] if state.places else None,
            "place": describe(where, places),
            "duration_s": 0.0,
            "crashes": 0,
            "snapshots": 0,
            "open": True,
        }

    @staticmethod
    def _write(
        sink: Sink, collection: str, doc: Document, at: datetime, here: Position | None = None
    ) -> None:
        """Upsert a copy of ``doc`` as of ``at``, the latest point (``here``), unless closed."""
        end = doc["ended_at"] or at
        written = dict(doc)  # the state's copy moves on with the next points
        if here is not None and collection == TRIPS and doc["ended_at"] is None:
            written["end_location"] = position_doc(here)
        duration = (end - doc["started_at"]).total_seconds()
        written["duration_s"] = duration
        if collection == TRIPS:
            written["avg_speed"] = 0.0 if duration <= 0 else doc["distance_m"] / duration * 3.6
        sink.upsert(collection, written)
