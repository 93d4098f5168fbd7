"""Response models of the read API: the public view of stored documents.

Each model ignores the fields it does not name, so internal bookkeeping of the
bridge (running sums, open episodes) never leaks into responses. A record's id
is ``id``, as in the MQTT alert, and measures are rounded on the way out
(``bridge.public``): metres to 0.1 m, speeds to 0.1 km/h.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PlainSerializer

from bridge.public import ID, kmh, metres

# Stored with full precision, answered rounded (``bridge.public``).
Metres = Annotated[float | None, PlainSerializer(metres, return_type=float | None)]
Kmh = Annotated[float | None, PlainSerializer(kmh, return_type=float | None)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Record(_Doc):
    id: str = Field(validation_alias=AliasChoices("_id", ID))


class Location(BaseModel):
    lat: float
    lon: float


class AmbulanceState(_Doc):
    """The latest state of one ambulance."""

    ambulance_id: str
    location: Location | None = None
    speed: Kmh = Field(default=None, description="km/h, to 0.1")
    heading: float | None = None
    state: str | None = Field(default=None, description="GREEN, ORANGE or RED")
    last_seen: datetime | None = Field(default=None, description="device time of the latest point")
    received_at: datetime | None = None
    online: bool = False
    covered_distance: Metres = Field(default=None, description="metres, to 0.1")
    avg_speed: Kmh = Field(default=None, description="km/h, to 0.1")
    estimated_time: float | None = Field(default=None, description="seconds to the destination")
    source_location: Location | None = None
    destination_location: Location | None = None


class AmbulanceList(BaseModel):
    items: list[AmbulanceState]
    source: str = Field(description="where the states came from: cache or store")
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next page; null on the last page"
    )


class TrackPoint(_Record):
    ambulance_id: str
    location: Location | None = None
    speed: Kmh = Field(default=None, description="km/h, to 0.1")
    heading: float | None = None
    state: str | None = None
    count_datetime: datetime
    received_at: datetime | None = None
    seq: int | None = None
    accuracy: Metres = Field(default=None, description="metres, to 0.1")
    altitude: Metres = Field(default=None, description="metres, to 0.1")
    destination_location: Location | None = None
    covered_distance: Metres = Field(default=None, description="metres, to 0.1")
    avg_speed: Kmh = Field(default=None, description="km/h, to 0.1")
    estimated_time: float | None = None
    speed_above_80: str | None = None
    speed_above_120: str | None = None
    late: bool = False


class TrackPage(BaseModel):
    items: list[TrackPoint]
    next_cursor: str | None = None


class LocationDetail(BaseModel):
    address: str | None = None
    image: str | None = None


class CrashRecord(_Record):
    ambulance_id: str
    location: Location | None = None
    speed: Kmh = Field(default=None, description="km/h, to 0.1")
    heading: float | None = None
    state: str | None = None
    count_datetime: datetime
    received_at: datetime | None = None
    location_detail: LocationDetail | None = None
    duplicate_of: str | None = None


class CrashPage(BaseModel):
    items: list[CrashRecord]
    next_cursor: str | None = None


class ImageLink(BaseModel):
    name: str = Field(description="image0, image1, ... as in the legacy imagesObj")
    key: str
    url: str


class ImageSet(BaseModel):
    id: str | None = None
    created_at: datetime | None = None
    images: list[ImageLink]


class Snapshots(BaseModel):
    ambulance_id: str
    current: ImageSet | None
    history: list[ImageSet]
    next_cursor: str | None = None


class DeadLetter(_Record):
    topic: str
    ambulance_id: str | None = None
    reason: str
    received_at: datetime
    payload: str
    payload_base64: bool = False
    payload_size: int | None = None
    truncated: bool = False


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None = None
