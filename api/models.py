"""Response models of the read API: the public view of stored documents.

Each model ignores the fields it does not name, so internal bookkeeping of the
bridge (running sums, open episodes) never leaks into responses. A record's id
is ``id``, as in the MQTT alert, and measures are rounded on the way out
(``bridge.public``): metres to 0.1 m, speeds to 0.1 km/h.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

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


class Destination(_Doc):
    """Where an ambulance is sent (set by a dispatcher, docs/mqtt-contract.md)."""

    type: str = Field(description="place or point")
    place_id: str | None = None
    name: str | None = None
    kind: str | None = None
    location: Location | None = Field(default=None, description="centre or representative point")
    radius_m: Metres = None
    set_at: datetime | None = None
    set_by: str | None = None
    command_id: str | None = None
    arrived_at: datetime | None = None


class Eta(_Doc):
    """The estimated arrival at the destination (straight line, recent speed)."""

    distance_m: Metres = None
    speed_kmh: Kmh = None
    speed_basis: str | None = Field(default=None, description="recent or floor")
    window_s: float | None = None
    floor_kmh: float | None = None
    seconds: float | None = None
    arrive_at: datetime | None = None
    computed_at: datetime | None = None
    model: str | None = None


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
    destination: Destination | None = None
    eta: Eta | None = None
    places: list[str] = Field(default_factory=list, description="ids of the places it is inside")


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


class DestinationResult(BaseModel):
    """An ambulance's destination and ETA once the bridge applied a command."""

    ambulance_id: str
    destination: Destination | None
    eta: Eta | None


class Pending(BaseModel):
    """A published command the bridge has not applied yet (within AOC_DISPATCH_WAIT_SECONDS)."""

    status: Literal["pending"]
    command_id: str


class AlarmTransition(_Doc):
    action: str = Field(description="opened, ended, acknowledged or resolved (a repeat "
                        "raises count and updated_at instead)")
    at: datetime | None = None
    by: str | None = None
    note: str | None = None
    command_id: str | None = None


class Alarm(_Record):
    """An alarm (crash, overspeed, offline, geofence) and its lifecycle."""

    ambulance_id: str
    kind: str
    subject: str | None = None
    status: str = Field(description="open, acknowledged or resolved")
    active: bool
    opened_at: datetime
    updated_at: datetime | None = None
    count: int = 1
    location: Location | None = None
    address: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    note: str | None = None
    transitions: list[AlarmTransition] = Field(default_factory=list)


class AlarmPage(BaseModel):
    items: list[Alarm]
    next_cursor: str | None = None


class Event(_Record):
    """What an ambulance did at a place: enter, exit or arrival."""

    ambulance_id: str
    type: str
    place_id: str | None = None
    place_name: str | None = None
    place_kind: str | None = None
    at: datetime
    location: Location | None = None


class EventPage(BaseModel):
    items: list[Event]
    next_cursor: str | None = None
