"""One ambulance's latest state, as the bridge plans from it and stores it.

The ``AMBULANCES`` document is the truth several bridges share: each batch
writes it with ``Write.expect`` set to the version it was planned from, so a
bridge that planned from an old version gets ``storage.base.Conflict`` and
plans again from the store.

The document also carries the **outbox**: the other writes of the batch that
wrote it, for this ambulance (episodes, current images, history records). The
state upsert is the batch's commit point and is applied first; MongoDB stores
the rest in further bulk writes, and a crash in between would lose them. A
bridge that loads a state from the store replays what of its outbox is not
stored yet (``bridge.processor``), so a committed batch is never half stored.

Field names are those of the legacy-compatible document the read API, the
Redis cache and ``aoc/<id>/state`` read: they must not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from bridge.geo import position_doc, position_from_doc
from bridge.messages import Position
from bridge.speed import THRESHOLDS, Episode, State, Threshold
from storage.base import AMBULANCES, Document, Version, Write

# The fields of the retained ``aoc/<id>/state`` message (and of the live stream's states).
# ``version`` is the store's: several bridges publish with nothing ordering them, so a
# consumer keeps, per ambulance, the state of the highest version it has seen.
PUBLIC_FIELDS = (
    "ambulance_id",
    "location",
    "speed",
    "heading",
    "state",
    "last_seen",
    "online",
    "covered_distance",
    "avg_speed",
    "estimated_time",
    # Dispatch (``bridge.dispatch``): the places it is in, its destination and ETA.
    "places",
    "destination",
    "eta",
    "version",
)

# Broadcast crashes remembered per ambulance for deduplication: enough for any
# realistic burst, and older than this they no longer matter.
CRASHES_KEPT = 32
CRASHES_HORIZON = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class CrashAnchor:
    """A broadcast crash: its time and record id (an anchor of crash deduplication)."""

    at: datetime
    id: str


@dataclass(slots=True)
class AmbulanceState:
    """The latest state of one ambulance; ``to_doc`` is its ``AMBULANCES`` document."""

    ambulance_id: str
    location: Position | None = None
    speed: float | None = None
    heading: float | None = None
    state: State | None = None
    last_seen: datetime | None = None  # device ts of the latest in-order point
    last_point_id: str | None = None  # and its id, to tell a redelivery from a same-instant point
    received_at: datetime | None = None
    online: bool = False
    covered_distance: float = 0.0
    avg_speed: float = 0.0
    speed_sum: float = 0.0
    speed_count: int = 0
    estimated_time: float | None = None
    destination_location: Position | None = None
    source_location: Position | None = None
    # The open episode per threshold, so a restart continues it.
    open_episodes: dict[Threshold, Episode] = field(default_factory=dict)
    # The recent broadcast crashes, oldest first (see ``remember_crash``).
    crashes: list[CrashAnchor] = field(default_factory=list)
    # The current images: the snap (history) id, its time, and what it replaced.
    images_id: str | None = None
    images_at: datetime | None = None
    images_replaced_id: str | None = None
    # Dispatch (``bridge.dispatch``). When its latest message was received, and
    # whether the silence since then has been looked at (None: not yet), which
    # the offline sweep's store query selects on.
    heard_at: datetime | None = None
    silence_handled: bool | None = None
    # The ids of the places it is inside, by the hysteresis rule (sorted).
    places: list[str] = field(default_factory=list)
    # A moving average of its speed (km/h) over about AOC_ETA_WINDOW_SECONDS.
    recent_speed: float | None = None
    # Its destination as the public state shows it, the place's GeoJSON
    # geometry behind it (None for a point), and the estimate of its arrival.
    destination: dict[str, Any] | None = None
    destination_geometry: dict[str, Any] | None = None
    eta: dict[str, Any] | None = None
    # Its alarms not yet resolved, by rule key (``bridge.alarms``).
    alarms: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The last dispatch commands taken: {"id", "ok", "reason"}, oldest first.
    commands: list[dict[str, Any]] = field(default_factory=list)
    # Trips and stops (``bridge.trips``): the open trip or stop, and the slow
    # stretch that may become a stop (None: no point yet).
    motion: dict[str, Any] | None = None
    # How many times the document was written (0: never). Each write expects
    # the version it was planned from.
    version: int = 0
    # The other writes of the batch that wrote this version (see the module doc).
    outbox: tuple[Write, ...] = ()
    # The ``version`` as stored when it is not an int (damaged outside the
    # bridge): what the next write expects, so that it replaces it (not stored).
    damaged_version: Version | None = field(default=None, compare=False, repr=False)

    def remember_crash(self, at: datetime, record_id: str) -> None:
        """Add a broadcast crash to ``crashes``, oldest first, bounded."""
        crashes = sorted([*self.crashes, CrashAnchor(at, record_id)], key=lambda c: c.at)
        newest = crashes[-1].at
        kept = [crash for crash in crashes if newest - crash.at <= CRASHES_HORIZON]
        self.crashes = kept[-CRASHES_KEPT:]

    def copy(self) -> AmbulanceState:
        """A working copy: the containers are new, their (immutable) items shared."""
        return replace(
            self,
            open_episodes=dict(self.open_episodes),
            crashes=list(self.crashes),
            places=list(self.places),
            alarms=dict(self.alarms),
            commands=list(self.commands),
            motion=_copy_motion(self.motion),
        )

    def public(self) -> Document:
        """The view published on ``aoc/<id>/state``."""
        return public_view(self.to_doc(outbox=False))

    def to_doc(self, *, outbox: bool = True) -> Document:
        """The ``AMBULANCES`` document (without the outbox: what the Redis cache keeps)."""
        doc: Document = {"_id": self.ambulance_id}
        for name in _DOC_FIELDS:  # dataclasses.fields() per call was most of this method
            value = getattr(self, name)
            if name in _POSITIONS:
                value = position_doc(value)
            doc[name] = value
        doc["open_episodes"] = {
            threshold: episode.to_doc() for threshold, episode in self.open_episodes.items()
        }
        doc["crashes"] = [{"at": crash.at, "id": crash.id} for crash in self.crashes]
        if outbox:
            doc["outbox"] = [
                {"collection": w.collection, "kind": w.kind, "doc": w.doc} for w in self.outbox
            ]
        else:
            del doc["outbox"]
        return doc

    @classmethod
    def from_doc(cls, ambulance_id: str, doc: Document | None) -> AmbulanceState:
        """The state in a stored document (None: never seen), upgraded from older versions.

        Fields an older version did not store take their defaults, and a
        document without ``version`` is version 0. A ``version`` that is not an
        int counts as the int it reads as (else 0), and is kept as stored in
        ``damaged_version``, for the next write to expect.
        """
        state = cls(ambulance_id)
        if doc is None:
            return state
        for spec in fields(cls):
            if spec.name in doc and spec.name not in _STRUCTURED:
                value = doc[spec.name]
                if spec.name in _POSITIONS:
                    value = position_from_doc(value)
                setattr(state, spec.name, value)
        state.version, state.damaged_version = _version(doc.get("version"))
        episodes: dict[str, Document] = doc.get("open_episodes") or {}
        state.open_episodes = {
            threshold: Episode.from_doc(episodes[threshold])
            for threshold in THRESHOLDS
            if episodes.get(threshold) is not None
        }
        state.crashes = [CrashAnchor(c["at"], c["id"]) for c in doc.get("crashes") or []]
        # Older versions anchored crash dedup on one crash: keep it as the first
        # window, or the first crash after an upgrade would alert a second time.
        last_at, last_id = doc.get("last_crash_at"), doc.get("last_crash_id")
        if last_at is not None and last_id is not None and not state.crashes:
            state.crashes = [CrashAnchor(last_at, last_id)]
        state.outbox = tuple(
            Write(w["collection"], w["kind"], w["doc"]) for w in doc.get("outbox") or []
        )
        return state

    def next_version(self, outbox: Iterable[Write]) -> Write:
        """Move to the next version, with ``outbox``: its upsert, expecting the one planned from."""
        expect = self.version if self.damaged_version is None else self.damaged_version
        self.version += 1
        self.damaged_version = None
        self.outbox = tuple(outbox)
        return Write(AMBULANCES, "upsert", self.to_doc(), expect=expect)


def public_view(doc: Document) -> Document:
    """The ``aoc/<id>/state`` view of an ``AMBULANCES`` document (as ``AmbulanceState.public``)."""
    return {name: doc[name] for name in PUBLIC_FIELDS}


def cache_view(doc: Document) -> Document:
    """What the Redis cache keeps of a stored ``AMBULANCES`` document: as ``to_doc(outbox=False)``.

    The outbox is a batch's worth of writes, of no use to a reader of the latest state.
    """
    return {name: value for name, value in doc.items() if name != "outbox"}


def _copy_motion(motion: dict[str, Any] | None) -> dict[str, Any] | None:
    """A working copy of ``motion``: ``bridge.trips`` updates its documents in place."""
    if motion is None:
        return None
    trip, stop = motion.get("trip"), motion.get("stop")
    return motion | {
        "trip": None if trip is None else dict(trip),
        "stop": None if stop is None else dict(stop),
    }


def _version(stored: Any) -> tuple[int, Version | None]:
    """The version of a stored ``version`` field, and the field itself if it is damaged."""
    if stored is None:
        return 0, None
    if type(stored) is int:
        return stored, None
    if isinstance(stored, int | float | str):  # a bool is an int
        try:
            return int(float(stored)), stored
        except (ValueError, OverflowError):
            return 0, stored
    # A structure: expected as stored too, so the next write heals it.
    return 0, stored


# Fields stored as {"lat", "lon"} documents.
_POSITIONS = frozenset({"location", "destination_location", "source_location"})
# Fields ``from_doc`` rebuilds itself rather than copying from the document.
_STRUCTURED = frozenset(
    {"ambulance_id", "version", "open_episodes", "crashes", "outbox", "damaged_version"}
)
# The document's fields, in order: every field but ``damaged_version``.
_DOC_FIELDS = tuple(spec.name for spec in fields(AmbulanceState) if spec.name != "damaged_version")
