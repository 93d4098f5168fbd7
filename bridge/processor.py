"""The bridge's domain logic: a batch of parsed messages in, a ``Plan`` out.

``Processor.plan`` decides every store write, cache update, Socket.IO emission
and MQTT publication for a batch. It keeps each ambulance's latest state in a
bounded in-memory cache (loaded from the store on first sight, so a restarted
bridge continues where the store left off) and works on copies of it: the
cache changes only when a whole batch has been planned, so a batch that fails
midway (e.g. the object store is down) can be planned again from scratch.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from aoc.logs import LineBudget
from bridge import contract, snapshots
from bridge.crash import repeat_of, static_map_url
from bridge.geo import eta_s, haversine_m, position_doc, position_from_doc
from bridge.ids import crash_id, dead_letter_id, snap_id, tracking_id
from bridge.jsjson import dumps
from bridge.messages import (
    Crash,
    Emit,
    Parsed,
    Plan,
    Publish,
    Rejected,
    Snap,
    Status,
    Tracking,
)
from bridge.snapshots import Digits, image_digest, store_images
from bridge.speed import THRESHOLDS, Episode, SpeedRules, advance, classify
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    IMAGE_HISTORIES,
    IMAGES,
    SPEED_VIOLATIONS,
    TRACKINGS,
    Document,
    DocumentStore,
    ObjectStore,
    Write,
)
from storage.codec import utc

# State upserts are written before history inserts, in this order. A MongoDB
# bulk write is not one transaction: if the process dies between the two
# groups, the broker redelivers the batch, and since its history ids are not
# stored yet it is not seen as a duplicate. Its ts now equals the latest one
# already stored, so it is stored as a late point, in history only, and its
# distance is not counted twice. AMBULANCES comes last of the upserts because
# it is what the next plan starts from: if only the episode/image upserts got
# through, the redelivered message recomputes them from the old state and
# rewrites the same documents.
_UPSERT_ORDER = (SPEED_VIOLATIONS, IMAGES, AMBULANCES)

# The fields of the retained ``aoc/<id>/state`` message.
_STATE_FIELDS = (
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
)


def new_ambulance(ambulance_id: str) -> Document:
    """The ``AMBULANCES`` document of an ambulance never seen before."""
    return {
        "_id": ambulance_id,
        "ambulance_id": ambulance_id,
        "location": None,
        "speed": None,
        "heading": None,
        "state": None,
        "last_seen": None,  # device ts of the latest in-order point
        "last_point_id": None,  # and its id, to tell a redelivery from a same-instant point
        "received_at": None,
        "online": False,
        "covered_distance": 0.0,
        "avg_speed": 0.0,
        "speed_sum": 0.0,
        "speed_count": 0,
        "estimated_time": None,
        "destination_location": None,
        "source_location": None,
        # Threshold name -> the open episode's document, so a restart continues it.
        "open_episodes": {},
        # The recent broadcast crashes, oldest first: [{"at": ts, "id": record id}],
        # the anchors of crash deduplication (see _remember_crash).
        "crashes": [],
        # The current images: the snap (history) id, its time, and what it replaced.
        "images_id": None,
        "images_at": None,
        "images_replaced_id": None,
    }


def state_message(state: Document) -> Document:
    """The public latest-state view published on ``aoc/<id>/state``."""
    return {name: state.get(name) for name in _STATE_FIELDS}


def dead_letter_doc(item: Rejected, *, limit: int) -> Document:
    """The ``DEAD_LETTERS`` record of a rejected message, its payload cut to ``limit`` bytes."""
    payload = item.payload
    truncated = len(payload) > limit
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        stored = base64.b64encode(payload[:limit]).decode("ascii")
        is_base64 = True
    else:
        # Cut on a character boundary so the stored text stays valid.
        stored = text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
        is_base64 = False
    return {
        "_id": dead_letter_id(item.topic, payload),
        "topic": item.topic,
        "ambulance_id": contract.topic_ambulance_id(item.topic),
        "reason": item.reason,
        "received_at": item.received_at,
        "payload": stored,
        "payload_base64": is_base64,
        "payload_size": len(payload),
        "truncated": truncated,
    }


def _at_store_precision(item: Parsed) -> Parsed:
    """``item`` with its times cut to what the store keeps (UTC milliseconds).

    Without this, a point at 12:00:00.000400 would be newer than the 12:00:00.000
    a restarted bridge reads back, and a redelivery would count its distance twice.
    """
    if isinstance(item, Tracking | Crash | Snap):
        device_ts = None if item.device_ts is None else utc(item.device_ts)
        return replace(
            item, ts=utc(item.ts), received_at=utc(item.received_at), device_ts=device_ts
        )
    return replace(item, received_at=utc(item.received_at))


def _key(item: Parsed) -> tuple[str, str] | None:
    """The history collection and idempotency id of a message (None: no id)."""
    if isinstance(item, Tracking):
        return TRACKINGS, tracking_id(item.ambulance_id, item.id_ts, item.seq)
    if isinstance(item, Crash):
        return CRASHES, crash_id(item.ambulance_id, item.id_ts)
    if isinstance(item, Snap):
        return IMAGE_HISTORIES, snap_id(item)
    if isinstance(item, Rejected):
        return DEAD_LETTERS, dead_letter_id(item.topic, item.payload)
    return None


def _clock_ahead(item: Tracking | Crash) -> Document:
    """The device's own time, on a record whose ts was clamped because its clock ran ahead."""
    return {} if item.device_ts is None else {"device_ts": item.device_ts}


# Broadcast crashes remembered per ambulance for deduplication: enough for any
# realistic burst, and older than this they no longer matter.
_CRASHES_KEPT = 32
_CRASHES_HORIZON = timedelta(hours=1)


def _remember_crash(state: Document, ts: datetime, record_id: str) -> None:
    """Add a broadcast crash to ``state["crashes"]``, oldest first, bounded."""
    crashes: list[Document] = [*state["crashes"], {"at": ts, "id": record_id}]
    crashes.sort(key=lambda crash: crash["at"])
    newest: datetime = crashes[-1]["at"]
    crashes = [crash for crash in crashes if newest - crash["at"] <= _CRASHES_HORIZON]
    state["crashes"] = crashes[-_CRASHES_KEPT:]


def _upgraded(state: Document) -> Document:
    """``state`` as this version keeps it, from a document an older version stored."""
    # Older versions anchored crash dedup on one crash: keep it as the first
    # window, or the first crash after an upgrade would alert a second time.
    last_at, last_id = state.pop("last_crash_at", None), state.pop("last_crash_id", None)
    if last_at is not None and last_id is not None and not state["crashes"]:
        state["crashes"] = [{"at": last_at, "id": last_id}]
    return state


@dataclass
class _Draft:
    """A plan being built, over working copies of the ambulances' states."""

    states: dict[str, Document]
    upserts: dict[tuple[str, str], Document] = field(default_factory=dict)
    inserts: list[Write] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)  # state documents to write
    moved: set[str] = field(default_factory=set)  # latest state to fan out
    emits: list[Emit] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    def count(self, kind: str, number: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + number

    def upsert(self, collection: str, doc: Document) -> None:
        # One upsert per document per batch: the last version wins.
        self.upserts[(collection, doc["_id"])] = doc

    def insert(self, collection: str, doc: Document) -> None:
        self.inserts.append(Write(collection, "insert", doc))

    def emit(self, room: str, value: Any) -> None:
        self.emits.append(Emit(room=room, data=dumps(value)))

    def to_plan(self) -> Plan:
        for aid in sorted(self.dirty):
            self.upsert(AMBULANCES, copy.deepcopy(self.states[aid]))
        writes = [
            Write(collection, "upsert", doc)
            for wanted in _UPSERT_ORDER
            for (collection, _), doc in self.upserts.items()
            if collection == wanted
        ]
        writes.extend(self.inserts)
        plan = Plan(writes=writes, emits=self.emits, counts=self.counts)
        for aid in sorted(self.moved):
            state = copy.deepcopy(self.states[aid])
            plan.states[aid] = state
            payload = dumps(state_message(state)).encode("utf-8")
            topic = contract.topic(aid, contract.Kind.STATE)
            plan.publishes.append(Publish(topic, payload, retain=True, qos=1))
        plan.publishes.extend(self.publishes)
        return plan


class Processor:
    """Turns batches of parsed messages into plans; keeps per-ambulance latest state."""

    def __init__(
        self,
        *,
        store: DocumentStore,
        objects: ObjectStore,
        rules: SpeedRules,
        crash_dedup_s: float,
        maps_key: str | None,
        dead_letter_payload_bytes: int,
        cache_size: int = 100_000,
        dead_letter_log: LineBudget | None = None,
        key_digits: Digits = snapshots.key_digits,
        logger: logging.Logger | None = None,
    ) -> None:
        """``dead_letter_log``: how many dead-letter WARNING lines per window (10 a minute).

        ``key_digits``: the 4-digit draws of image keys (tests force collisions with it).
        """
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._store = store
        self._objects = objects
        self._rules = rules
        self._crash_dedup_s = crash_dedup_s
        self._maps_key = maps_key
        self._dl_bytes = dead_letter_payload_bytes
        self._cache_size = cache_size
        self._key_digits = key_digits  # injectable: tests force key collisions
        self._log = logger or logging.getLogger(__name__)
        # Ambulance ids come from devices: the cache is an LRU so it cannot grow
        # without bound; an evicted ambulance is simply reloaded from the store.
        self._cache: OrderedDict[str, Document] = OrderedDict()
        # Any client can send junk at will: its log lines are bounded like its records.
        self._dl_log = dead_letter_log or LineBudget(lines=10, seconds=60.0)

    @property
    def cached(self) -> int:
        """How many ambulances' states are held in memory."""
        return len(self._cache)

    async def plan(self, batch: Sequence[Parsed]) -> Plan:
        """Plan one batch: writes (object bytes are already stored) and fan-out.

        Raises ``StoreUnavailable`` when the document or object store is down;
        the in-memory state is then unchanged and the batch may be planned again.
        Not re-entrant: the caller plans one batch at a time, and applies its
        writes before planning the next (duplicates are detected from the store).
        """
        fresh = await self._fresh([_at_store_precision(item) for item in batch])
        ambulance_ids = {
            item.ambulance_id for item in fresh if not isinstance(item, Rejected)
        }
        draft = _Draft(states=await self._load(ambulance_ids))
        if len(fresh) < len(batch):
            draft.count("duplicate", len(batch) - len(fresh))
        for item in fresh:
            if isinstance(item, Tracking):
                self._tracking(item, draft)
            elif isinstance(item, Crash):
                self._crash(item, draft)
            elif isinstance(item, Snap):
                await self._snap(item, draft)
            elif isinstance(item, Status):
                self._status(item, draft)
            else:
                self._rejected(item, draft)
        plan = draft.to_plan()
        self._commit(draft.states)
        # Logged only once the plan is whole: a plan that fails midway (storage
        # down, or a bug) is planned again, and would log its dead letters twice.
        self._log_dead_letters(draft.rejected)
        return plan

    def _log_dead_letters(self, rejected: Sequence[Rejected]) -> None:
        # The summary of a window comes with the next batch: an idle bridge owes
        # it until then, and aoc_messages_dead_lettered_total counts them all.
        held = self._dl_log.held_back()
        if held:
            self._log.warning(
                "%d more dead letters not logged (at most %d lines per %.0f s)",
                held, self._dl_log.lines, self._dl_log.seconds,
            )
        for item in rejected:
            if self._dl_log.take():
                self._log.warning("dead letter from %s: %s", item.topic, item.reason)

    async def _fresh(self, batch: Sequence[Parsed]) -> list[Parsed]:
        """The messages of ``batch`` that are neither stored already nor repeated in it."""
        keys = [_key(item) for item in batch]
        wanted: dict[str, list[str]] = {}
        for key in keys:
            if key is not None:
                wanted.setdefault(key[0], []).append(key[1])
        seen: set[tuple[str, str]] = set()
        for collection, ids in wanted.items():
            stored = await self._store.existing_ids(collection, list(dict.fromkeys(ids)))
            seen.update((collection, doc_id) for doc_id in stored)
        fresh: list[Parsed] = []
        for item, key in zip(batch, keys, strict=True):
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            fresh.append(item)
        return fresh

    async def _load(self, ambulance_ids: set[str]) -> dict[str, Document]:
        """Working copies of the ambulances' states, from memory or else the store."""
        # One read for all the unknown ids: one per id made a batch of new
        # ambulances several times slower than a batch of known ones.
        unknown = sorted(aid for aid in ambulance_ids if aid not in self._cache)
        stored = await self._store.get_many(AMBULANCES, unknown) if unknown else {}
        states: dict[str, Document] = {}
        for aid in sorted(ambulance_ids):
            cached = self._cache.get(aid)
            if cached is None:
                # Merge over the defaults so documents from older versions gain new fields.
                cached = _upgraded(new_ambulance(aid) | stored.get(aid, {}))
            states[aid] = copy.deepcopy(cached)
        return states

    def _commit(self, states: dict[str, Document]) -> None:
        for aid, state in states.items():
            self._cache[aid] = state
            self._cache.move_to_end(aid)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self) -> None:
        """Drop the in-memory states; they reload from the store on next use.

        For a caller that planned items whose writes it then discarded.
        """
        self._cache.clear()

    def _tracking(self, item: Tracking, draft: _Draft) -> None:
        aid = item.ambulance_id
        state = draft.states[aid]
        last_seen: datetime | None = state["last_seen"]
        point_id = tracking_id(aid, item.id_ts, item.seq)
        # The latest point itself, redelivered after a partial write (its state
        # stored, its history not). Another point of the same instant (another
        # seq) is a new point. States stored before ids were kept have None.
        redelivered = item.ts == last_seen and state.get("last_point_id") in (None, point_id)
        late = last_seen is not None and (item.ts < last_seen or redelivered)
        refs: dict[str, str | None] = dict.fromkeys(THRESHOLDS)
        if not late:
            self._advance(item, state, refs, draft)
            state["last_point_id"] = point_id
            draft.dirty.add(aid)
            draft.moved.add(aid)
        elif redelivered:
            # Its state was stored but never fanned out, so publish it (again).
            draft.moved.add(aid)
        draft.count("late" if late else "tracking")
        destination = position_doc(item.destination) or state["destination_location"]
        draft.insert(
            TRACKINGS,
            {
                "_id": point_id,
                "ambulance_id": aid,
                "location": position_doc(item.position),
                "source_location": state["source_location"],
                "destination_location": destination,
                "speed": item.speed_kmh,
                # A late point carries the aggregates as known when it arrived.
                "avg_speed": state["avg_speed"],
                "heading": item.heading,
                "count_datetime": item.ts,
                "state": classify(item.speed_kmh, self._rules),
                "covered_distance": state["covered_distance"],
                "estimated_time": state["estimated_time"],
                "speed_above_80": refs["speed_above_80"],
                "speed_above_120": refs["speed_above_120"],
                "received_at": item.received_at,
                "seq": item.seq,
                "accuracy": item.accuracy,
                "altitude": item.altitude,
                "late": late,
            }
            | _clock_ahead(item),
        )
        # Late points are re-emitted too: the legacy server emitted every body, and
        # a redelivery after a partial write has not been emitted yet.
        # ``body`` is already the legacy-room body (shaped by bridge.validate).
        draft.emit(contract.ambulance_room(aid), item.body)
        draft.emit(contract.TRACKING_ROOM, item.body)

    def _advance(
        self, item: Tracking, state: Document, refs: dict[str, str | None], draft: _Draft
    ) -> None:
        """Move the latest state forward by one in-order point."""
        previous = position_from_doc(state["location"])
        if previous is not None:
            state["covered_distance"] += haversine_m(previous, item.position)
        state["speed_sum"] += item.speed_kmh
        state["speed_count"] += 1
        state["avg_speed"] = state["speed_sum"] / state["speed_count"]
        if state["source_location"] is None:
            state["source_location"] = position_doc(item.position)
        if item.destination is not None:
            state["destination_location"] = position_doc(item.destination)
        episodes: dict[str, Document] = state["open_episodes"]
        for threshold in THRESHOLDS:
            current = episodes.get(threshold)
            episode = advance(
                Episode.from_doc(current) if current is not None else None,
                ambulance_id=item.ambulance_id,
                threshold=threshold,
                rules=self._rules,
                speed_kmh=item.speed_kmh,
                position=item.position,
                ts=item.ts,
            )
            if episode is None:
                continue
            draft.upsert(SPEED_VIOLATIONS, episode.to_doc())
            if episode.closed:
                del episodes[threshold]
            else:
                episodes[threshold] = episode.to_doc()
                refs[threshold] = episode.id
        destination = position_from_doc(state["destination_location"])
        eta = None if destination is None else eta_s(item.position, destination, state["avg_speed"])
        state.update(
            location=position_doc(item.position),
            speed=item.speed_kmh,
            heading=item.heading,
            state=classify(item.speed_kmh, self._rules),
            last_seen=item.ts,
            received_at=item.received_at,
            # Only a connected device can publish (its Last Will says otherwise later).
            online=True,
            estimated_time=None if eta is None else round(eta, 1),
        )

    def _crash(self, item: Crash, draft: _Draft) -> None:
        aid = item.ambulance_id
        state = draft.states[aid]
        record_id = crash_id(aid, item.id_ts)
        broadcast = [(crash["at"], crash["id"]) for crash in state["crashes"]]
        # A crash already among the broadcast ones is a redelivery after a partial
        # write: it was never broadcast, since fan-out follows the writes.
        known = any(crash == record_id for _, crash in broadcast)
        window_s = self._crash_dedup_s
        duplicate_of = None if known else repeat_of(broadcast, item.ts, window_s=window_s)
        record: Document = {
            "_id": record_id,
            "ambulance_id": aid,
            "location": position_doc(item.position),
            "speed": item.speed_kmh,
            "heading": item.heading,
            "count_datetime": item.ts,
            "state": classify(item.speed_kmh, self._rules),
            "location_detail": {
                "address": None,
                "image": static_map_url(item.position.lat, item.position.lon, key=self._maps_key),
            },
            "received_at": item.received_at,
            # How long after the crash the alert arrived: a dispatcher reads an
            # alert delayed in a dead zone for what it is, not as a new crash.
            "delay_s": round(max(0.0, (item.received_at - item.ts).total_seconds()), 3),
            "duplicate_of": duplicate_of,
        } | _clock_ahead(item)
        draft.insert(CRASHES, record)
        if duplicate_of is not None:
            draft.count("crash_repeat")
            return
        draft.count("crash")
        if not known:
            _remember_crash(state, item.ts, record_id)
            draft.dirty.add(aid)
        draft.emit(contract.crash_notify_room(aid), record)
        draft.emit(contract.CRASH_ROOM, item.body)
        draft.publishes.append(
            Publish(
                contract.topic(aid, contract.Kind.ALERT),
                dumps(record).encode("utf-8"),
                retain=False,
                qos=1,
            )
        )

    async def upload(
        self,
        item: Snap,
        *,
        digests: Sequence[bytes] | None = None,
        history_id: str | None = None,
    ) -> Snap:
        """``item`` with its images stored, their keys and its id set, and its bytes dropped.

        For the bridge's snapshot lane, which runs this beside ``plan``: it
        touches no state of the processor. ``digests`` (the images' SHA-256)
        and ``history_id`` (``snap_id``) are computed here unless given.
        Raises ``StoreUnavailable``.
        """
        if digests is None:
            digests = await asyncio.to_thread(lambda: [image_digest(i.data) for i in item.images])
        keys = await store_images(self._objects, item, digests=digests, digits=self._key_digits)
        if history_id is None:
            history_id = await asyncio.to_thread(snap_id, item)
        light = tuple(replace(image, data=b"") for image in item.images)
        return replace(item, images=light, stored=keys, id=history_id)

    async def _snap(self, item: Snap, draft: _Draft) -> None:
        aid = item.ambulance_id
        state = draft.states[aid]
        history_id = snap_id(item)
        keys = item.stored or await store_images(self._objects, item, digits=self._key_digits)
        images = {f"image{index}": key for index, key in enumerate(keys)}
        draft.count("snap")
        draft.count("image", len(images))
        draft.insert(
            IMAGE_HISTORIES,
            {"_id": history_id, "ambulance_id": aid, "images": images, "createdAt": item.ts},
        )
        current_at: datetime | None = state["images_at"]
        if current_at is None or item.ts > current_at:
            state.update(
                images_id=history_id, images_at=item.ts, images_replaced_id=state["images_id"]
            )
            draft.dirty.add(aid)
        # The same snap as the current one is written again: a redelivery after a
        # partial write must still reach the IMAGES document.
        if state["images_id"] == history_id:
            draft.upsert(
                IMAGES,
                {
                    "_id": aid,
                    "ambulance_id": aid,
                    "images": images,
                    "createdAt": item.ts,
                    "ambulance_image_histories_id": state["images_replaced_id"],
                },
            )
        # ``body`` is the legacy form fields, or {"ambulance_id": id} (bridge.validate).
        draft.emit(contract.SNAP_ROOM, {"body": item.body, "imagesObj": images})

    def _status(self, item: Status, draft: _Draft) -> None:
        state = draft.states[item.ambulance_id]
        draft.count("status")
        if state["online"] != item.online:
            state["online"] = item.online
            draft.dirty.add(item.ambulance_id)
        # Published even when unchanged: statuses are rare (retained, one per
        # connection), and a bridge that died after storing one never published it.
        draft.moved.add(item.ambulance_id)

    def _rejected(self, item: Rejected, draft: _Draft) -> None:
        doc = dead_letter_doc(item, limit=self._dl_bytes)
        draft.insert(DEAD_LETTERS, doc)
        draft.count("dead_letter")
        draft.rejected.append(item)
