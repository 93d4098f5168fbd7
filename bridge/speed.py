"""Speed rules: the state colour of a point, and overspeed episodes.

An episode is one stretch of consecutive points above a threshold: it opens
on the first point above, tracks the top speed and where it happened, and
closes on the first point at or below the threshold. The legacy system called
these speed violations and pointed at them from each tracking document
(``speed_above_80`` / ``speed_above_120``); we keep those field names whatever
the configured limits are, because legacy clients read them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from bridge.geo import position_doc, position_from_doc
from bridge.messages import Position

if TYPE_CHECKING:
    from aoc.config import Settings

State = Literal["GREEN", "ORANGE", "RED"]
Threshold = Literal["speed_above_80", "speed_above_120"]
ORANGE: Threshold = "speed_above_80"
RED: Threshold = "speed_above_120"
THRESHOLDS: tuple[Threshold, ...] = (ORANGE, RED)


@dataclass(frozen=True)
class SpeedRules:
    """The two limits (km/h) that colour a point and open episodes."""

    orange_kmh: float = 80
    red_kmh: float = 120

    def __post_init__(self) -> None:
        if not 0 <= self.orange_kmh <= self.red_kmh:
            raise ValueError(
                f"speed limits must satisfy 0 <= orange ({self.orange_kmh}) <= red ({self.red_kmh})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeedRules:
        """The rules configured by ``AOC_SPEED_ORANGE_KMH`` / ``AOC_SPEED_RED_KMH``."""
        return cls(orange_kmh=settings.speed_orange_kmh, red_kmh=settings.speed_red_kmh)

    def limit(self, threshold: Threshold) -> float:
        """The limit (km/h) behind a legacy threshold name."""
        return self.orange_kmh if threshold == ORANGE else self.red_kmh


def classify(speed_kmh: float, rules: SpeedRules) -> State:
    """GREEN up to orange, ORANGE above it up to red, RED above red (every speed gets one)."""
    if speed_kmh > rules.red_kmh:
        return "RED"
    if speed_kmh > rules.orange_kmh:
        return "ORANGE"
    return "GREEN"


def _ms(ts: datetime) -> int:
    return round(ts.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Episode:
    """One overspeed stretch of one ambulance above one threshold."""

    ambulance_id: str
    threshold: Threshold
    limit_kmh: float
    started_at: datetime
    start_location: Position
    max_speed: float
    max_location: Position
    points: int  # points above the limit; the closing point is not counted
    ended_at: datetime | None = None
    end_location: Position | None = None

    @property
    def id(self) -> str:
        """``<aid>:<threshold>:<start ts ms>``: a redelivered point maps to the same episode."""
        return f"{self.ambulance_id}:{self.threshold}:{_ms(self.started_at)}"

    @property
    def closed(self) -> bool:
        return self.ended_at is not None

    def to_doc(self) -> dict[str, Any]:
        """The ``SPEED_VIOLATIONS`` document (also kept inside the ambulance's state)."""
        return {
            "_id": self.id,
            "ambulance_id": self.ambulance_id,
            "threshold": self.threshold,
            "limit_kmh": self.limit_kmh,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "start_location": position_doc(self.start_location),
            "end_location": position_doc(self.end_location),
            "max_speed": self.max_speed,
            "max_location": position_doc(self.max_location),
            "points": self.points,
            "closed": self.closed,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Episode:
        """An episode back from its stored document."""
        start = position_from_doc(doc["start_location"])
        top = position_from_doc(doc["max_location"])
        if start is None or top is None:
            raise ValueError(f"episode {doc.get('_id')!r} has no start or max location")
        return cls(
            ambulance_id=doc["ambulance_id"],
            threshold=doc["threshold"],
            limit_kmh=float(doc["limit_kmh"]),
            started_at=doc["started_at"],
            start_location=start,
            max_speed=float(doc["max_speed"]),
            max_location=top,
            points=int(doc["points"]),
            ended_at=doc.get("ended_at"),
            end_location=position_from_doc(doc.get("end_location")),
        )


def advance(
    episode: Episode | None,
    *,
    ambulance_id: str,
    threshold: Threshold,
    rules: SpeedRules,
    speed_kmh: float,
    position: Position,
    ts: datetime,
) -> Episode | None:
    """The episode after one in-order point: opened, extended, closed, or None if none.

    ``episode`` is the ambulance's open episode for ``threshold`` (or None). A
    returned episode has changed and must be written; it is still open unless
    ``closed``.
    """
    limit = rules.limit(threshold)
    above = speed_kmh > limit
    if episode is None:
        if not above:
            return None
        return Episode(
            ambulance_id=ambulance_id,
            threshold=threshold,
            limit_kmh=limit,
            started_at=ts,
            start_location=position,
            max_speed=speed_kmh,
            max_location=position,
            points=1,
        )
    if not above:
        return replace(episode, ended_at=ts, end_location=position)
    if speed_kmh > episode.max_speed:
        episode = replace(episode, max_speed=speed_kmh, max_location=position)
    return replace(episode, points=episode.points + 1)
