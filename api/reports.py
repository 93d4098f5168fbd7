"""Fleet reports from stored trips and stops (issue 14): the range a request means, and the sums.

Pure: no store and no HTTP, so the API (``api.routes.reports``) and the
benchmark (``bench.reports``) run the very same code.

A range is ``[start, end)`` in UTC. ``from``/``to`` are calendar days in the
caller's zone (``2026-03-01``: its local midnight; ``to`` names the LAST day
included, so ``from=2026-03-01&to=2026-03-31`` is March) or ISO datetimes
(``to`` then exclusive; one without an offset is read in the zone).

Trips and stops belong to the range their ``started_at`` falls in, with the
figures they were stored with: an open one counts up to its last checkpoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_DAYS = 366  # the longest range a report covers: a year, leap day included
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The summary's figures, in their order in the answer and in CSV.
FIGURES = (
    "distance_m", "driving_s", "stopped_s", "max_speed", "overspeed_episodes",
    "overspeed_minutes", "crashes", "snapshots", "trips", "stops",
)


class RangeError(ValueError):
    """A ``from``, ``to`` or ``tz`` the report cannot use; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Range:
    """What a report covers: ``[start, end)`` in UTC, shown in ``tz``."""

    start: datetime
    end: datetime
    tz: ZoneInfo

    def local(self, value: datetime) -> datetime:
        """``value`` as the caller's zone shows it (the same instant)."""
        return value.astimezone(self.tz)


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Asia/Bangkok``); ``RangeError`` for an unknown one."""
    try:
        return ZoneInfo(name)
    # Not found is a KeyError; a path-like or empty key a ValueError; a
    # directory or unreadable file under the zone path an OSError.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise RangeError("tz", f"unknown time zone {name!r}: use an IANA name such as "
                         "Asia/Bangkok or UTC") from None


def _bound(field: str, text: str, tz: ZoneInfo, *, last_day: bool) -> datetime:
    try:
        if _DAY.match(text):
            day = date.fromisoformat(text)
            if last_day:  # `to` names the last day included: the range ends at its end
                day += timedelta(days=1)
            at = datetime.combine(day, time(), tz)
        else:
            if "T" not in text.upper() and " " not in text:
                # A date in another form (20260301) would be taken as an exclusive `to`.
                raise ValueError(text)
            at = datetime.fromisoformat(text)
            if at.tzinfo is None:
                at = at.replace(tzinfo=tz)
        return at.astimezone(UTC)
    except OverflowError:
        raise RangeError(field, f"{text!r} is out of the representable range") from None
    except ValueError:
        raise RangeError(field, f"{text!r} is neither a date (YYYY-MM-DD) nor an ISO "
                         "datetime") from None


def resolve(start: str, end: str, tz_name: str = "UTC") -> Range:
    """The range of ``from=start&to=end&tz=tz_name``; ``RangeError`` when it is unusable."""
    tz = zone(tz_name)
    span = Range(_bound("from", start, tz, last_day=False), _bound("to", end, tz, last_day=True),
                 tz)
    if span.end <= span.start:
        raise RangeError("to", "`to` must come after `from`")
    # Measured on the zone's clocks: a year of days across a DST change is
    # 366 days, not 366 days and an hour.
    wall = span.local(span.end).replace(tzinfo=None) - span.local(span.start).replace(tzinfo=None)
    if wall > timedelta(days=MAX_DAYS):
        raise RangeError("to", f"a report covers at most {MAX_DAYS} days: split the range")
    return span


def _number(doc: Mapping[str, Any], name: str) -> float:
    """A stored measure, 0 when missing or damaged (a report never fails on one document)."""
    value = doc.get(name)
    # Exact types (a bool is an int, never a measure): this runs for every
    # figure of every document of a report.
    if type(value) is float:
        return value if math.isfinite(value) else 0.0
    if type(value) is int:
        return float(value)
    return 0.0


def _count(doc: Mapping[str, Any], name: str) -> int:
    return int(_number(doc, name))


@dataclass(slots=True)
class Figures:
    """The running sums of one ambulance (or of the fleet)."""

    distance_m: float = 0.0
    driving_s: float = 0.0
    stopped_s: float = 0.0
    max_speed: float = 0.0
    overspeed_episodes: int = 0
    overspeed_s: float = 0.0
    crashes: int = 0
    snapshots: int = 0
    trips: int = 0
    stops: int = 0

    def add_trip(self, doc: Mapping[str, Any]) -> None:
        self.trips += 1
        self.distance_m += _number(doc, "distance_m")
        self.driving_s += _number(doc, "duration_s")
        self.max_speed = max(self.max_speed, _number(doc, "max_speed"))
        self.overspeed_episodes += _count(doc, "overspeed_episodes")
        self.overspeed_s += _number(doc, "overspeed_s")
        self.crashes += _count(doc, "crashes")
        self.snapshots += _count(doc, "snapshots")

    def add_stop(self, doc: Mapping[str, Any]) -> None:
        self.stops += 1
        self.stopped_s += _number(doc, "duration_s")
        self.crashes += _count(doc, "crashes")
        self.snapshots += _count(doc, "snapshots")

    def merge(self, other: Figures) -> None:
        for f in fields(self):
            if f.name == "max_speed":
                self.max_speed = max(self.max_speed, other.max_speed)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def public(self) -> dict[str, float | int]:
        """The figures as answered: measures to 0.1, overspeed in minutes."""
        return {
            "distance_m": round(self.distance_m, 1),
            "driving_s": round(self.driving_s, 1),
            "stopped_s": round(self.stopped_s, 1),
            "max_speed": round(self.max_speed, 1),
            "overspeed_episodes": self.overspeed_episodes,
            "overspeed_minutes": round(self.overspeed_s / 60, 1),
            "crashes": self.crashes,
            "snapshots": self.snapshots,
            "trips": self.trips,
            "stops": self.stops,
        }


class Summary:
    """Sums per ambulance, fed one document at a time: holds one ``Figures`` per ambulance."""

    def __init__(self) -> None:
        self.ambulances: dict[str, Figures] = {}
        self.skipped = 0  # documents without an ambulance id

    def include(self, ambulance_id: str) -> None:
        """List ``ambulance_id`` even if it has nothing in the range (zeros)."""
        self.ambulances.setdefault(ambulance_id, Figures())

    def _of(self, doc: Mapping[str, Any]) -> Figures | None:
        aid = doc.get("ambulance_id")
        if not isinstance(aid, str):
            self.skipped += 1
            return None
        figures = self.ambulances.get(aid)
        if figures is None:
            figures = self.ambulances[aid] = Figures()
        return figures

    def add_trip(self, doc: Mapping[str, Any]) -> None:
        if (figures := self._of(doc)) is not None:
            figures.add_trip(doc)

    def add_stop(self, doc: Mapping[str, Any]) -> None:
        if (figures := self._of(doc)) is not None:
            figures.add_stop(doc)

    def rows(self) -> list[dict[str, Any]]:
        """One row per ambulance, by id: ``ambulance_id`` then ``FIGURES``."""
        return [
            {"ambulance_id": aid, **self.ambulances[aid].public()}
            for aid in sorted(self.ambulances)
        ]

    def total(self) -> dict[str, float | int]:
        """The fleet's figures: sums, and the highest speed."""
        total = Figures()
        for figures in self.ambulances.values():
            total.merge(figures)
        return total.public()
