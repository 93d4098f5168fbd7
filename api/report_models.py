"""Response models of the reports (``api.routes.reports``): trips, stops and the summary.

As in ``api.models``: stored fields a model does not name stay out, the id is
``id``, measures are rounded on the way out (metres and seconds to 0.1, km/h to
0.1). Times are shown in the report's zone (ISO 8601 with its offset).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from api.models import Kmh, Location, Metres, _Record


def _tenths(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


Seconds = Annotated[float | None, PlainSerializer(_tenths, return_type=float | None)]


class ReportRange(BaseModel):
    """The range as resolved: ``from`` inclusive, ``to`` exclusive, both in ``tz``."""

    model_config = ConfigDict(populate_by_name=True)
    tz: str = Field(description="the IANA zone of the day boundaries and of the times shown")
    from_: datetime = Field(alias="from", description="start, inclusive")
    to: datetime = Field(description="end, exclusive (the day after a `to` date)")


class Trip(_Record):
    """A drive between two stops (``open``: still going, figures up to its last checkpoint)."""

    ambulance_id: str
    started_at: datetime
    ended_at: datetime | None = None
    open: bool = False
    start_location: Location | None = None
    end_location: Location | None = None
    start_place: str | None = None
    end_place: str | None = None
    distance_m: Metres = None
    duration_s: Seconds = None
    max_speed: Kmh = Field(default=None, description="km/h")
    avg_speed: Kmh = Field(default=None, description="km/h, distance over duration")
    overspeed_s: Seconds = Field(default=None, description="time above the red limit")
    overspeed_episodes: int = 0
    points: int = 0
    crashes: int = 0
    snapshots: int = 0


class Stop(_Record):
    """A time below the stop speed (``open``: still stopped)."""

    ambulance_id: str
    started_at: datetime
    ended_at: datetime | None = None
    open: bool = False
    location: Location | None = None
    place_id: str | None = Field(default=None, description="a known place it is in")
    place: str | None = Field(default=None, description="that place's name, else the town")
    duration_s: Seconds = None
    crashes: int = 0
    snapshots: int = 0


class TripPage(ReportRange):
    items: list[Trip]
    next_cursor: str | None = None


class StopPage(ReportRange):
    items: list[Stop]
    next_cursor: str | None = None


class Figures(BaseModel):
    distance_m: float = Field(description="metres driven, to 0.1")
    driving_s: float = Field(description="seconds in trips, to 0.1")
    stopped_s: float = Field(description="seconds in stops, to 0.1")
    max_speed: float = Field(description="km/h, to 0.1")
    overspeed_episodes: int
    overspeed_minutes: float = Field(description="minutes above the red limit, to 0.1")
    crashes: int
    snapshots: int
    trips: int
    stops: int


class AmbulanceFigures(Figures):
    ambulance_id: str


class Summary(ReportRange):
    ambulances: list[AmbulanceFigures] = Field(
        description="by id; only ambulances with a trip or stop in the range, unless one is asked"
    )
    total: Figures = Field(description="the fleet's sums (max_speed: the highest)")
