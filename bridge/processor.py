"""The bridge's domain logic: a batch of parsed messages in, a ``Plan`` out.

``Processor.plan`` decides every store write, cache update, Socket.IO emission
and MQTT publication for a batch. It keeps each ambulance's latest state
(``bridge.state.AmbulanceState``) in a bounded in-memory cache, loaded from
the store on first sight, and works on copies of it. The cache holds what the
store holds: planning a batch takes its ambulances out of it, and only the
caller's ``applied(plan)``, once the plan's writes are stored, puts their new
states in. A batch whose plan fails midway (e.g. the object store is down),
or whose writes fail or conflict, is planned again from the store.

The store, not this cache, holds the truth: several bridges may process one
ambulance. Each plan writes a state conditionally on the version it was
planned from; a caller that gets ``storage.base.Conflict`` from ``apply``
plans the batch again, from the store (``bridge.service``).

The order of a plan's writes is what makes a crash midway harmless (MongoDB
stores them in several bulk writes, see ``DocumentStore.apply``):

1. the ambulances' states, conditional: the commit point. Each carries the
   other writes below for its ambulance (its outbox);
2. the outbox writes of states loaded from the store that are not stored yet
   (a crash cut their batch short), then the episode and current-image upserts;
3. the history inserts.

A state whose outbox is replayed is written again too (a new version, its
outbox carried over): the replay is then as conditional as any write, and one
planned from a state another bridge has since moved past conflicts instead of
writing its older episodes over the newer ones.

A crash before 1 stored nothing, or only history of ambulances whose state does
not move (repeated crashes, older snaps: planned the same again). A late
point moves its state (its aggregates, ``bridge.late``), like an in-order one.
A crash after 1: the redelivered messages are in their state's outbox, so
they are neither counted again nor planned from the advanced state; the
outbox is written, and they are fanned out, since they never were. A crash
after 3, before the fan-out: the redelivered messages are duplicates, but a
crash alert among them whose stored record says it was broadcast is broadcast
again: a redelivered message was never acknowledged, so never surely fanned out.

Known limits with several bridges on one ambulance: a plan that writes no state
(only repeated crashes, older snaps, or a status that changes
nothing) is planned from this bridge's copy, which may be behind the store:
the history record then carries older aggregates, and an unchanged status is
not written over another bridge's newer one. On MongoDB, the post-commit writes
of one bridge still in flight may land after those of the next batch's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aoc.logs import LineBudget
from bridge import contract, snapshots
from bridge import late as _late
from bridge.alarms import alarm_message, alarm_publish, last_event
from bridge.commands import COMMAND_ID, MAX_COMMAND_BYTES
from bridge.contract import ALARMS_ROOM, EVENTS_ROOM
from bridge.crash import repeat_of, static_map_url
from bridge.dispatch import Dispatch, event_message
from bridge.geo import eta_s, haversine_m, position_doc
from bridge.ids import crash_id, dead_letter_id, snap_id, tracking_id
from bridge.jsjson import dumps
from bridge.messages import (
    AlarmAction,
    Check,
    Crash,
    Destination,
    Emit,
    Outcome,
    Parsed,
    Plan,
    Publish,
    Rejected,
    Snap,
    Status,
    Tracking,
)
from bridge.public import public_record
from bridge.snapshots import Digits, image_digest, store_images
from bridge.speed import RED, THRESHOLDS, Episode, SpeedRules, Threshold, advance, classify
from bridge.state import AmbulanceState, cache_view, public_view
from bridge.trips import Trips
from storage.base import (
    ALARMS,
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    EVENTS,
    IMAGE_HISTORIES,
    IMAGES,
    SPEED_VIOLATIONS,
    STOPS,
    TRACKINGS,
    TRIPS,
    Document,
    DocumentStore,
    ObjectStore,
    Write,
)
from storage.codec import utc

# The upserts of a plan after its state upserts (see the module doc).
_UPSERT_ORDER = (SPEED_VIOLATIONS, IMAGES, ALARMS, TRIPS, STOPS)


def state_message(state: AmbulanceState) -> Document:
    """The public latest-state view published on ``aoc/<id>/state`` (measures rounded)."""
    return public_record(state.public())


def alert_message(record: Document) -> Document:
    """The crash record as published on ``aoc/<id>/alert``: ``id``, measures rounded.

    ``type`` is ``crash``: the topic carries alarms too (``bridge.alarms``).
    The ``CRASH_NOTIFY_<id>`` room gets the record as stored instead (the
    legacy contract, with ``_id`` and every digit).
    """
    return {"type": "crash"} | public_record(record)


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


def refused_command(item: Parsed) -> tuple[str | None, str | None]:
    """(ambulance id, command id) of a dispatch command refused as invalid, else Nones.

    The API waits for its command to be applied or refused: a dead letter alone
    would leave it waiting for good.
    """
    if not isinstance(item, Rejected) or not contract.is_dispatch_topic(item.topic):
        return None, None
    aid = contract.topic_ambulance_id(item.topic)
    try:
        body = json.loads(item.payload[:MAX_COMMAND_BYTES])
    except ValueError:
        return None, None
    command_id = body.get("command_id") if isinstance(body, dict) else None
    if aid is None or not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
        return None, None
    return aid, command_id


def _at_store_precision(item: Parsed) -> Parsed:
    """``item`` with its times cut to what the store keeps (UTC milliseconds).

    Without this, a point at 12:00:00.000400 would be newer than the 12:00:00.000
    a restarted bridge reads back, and a redelivery would count its distance twice.
    """
    if isinstance(item, Tracking | Crash | Snap):
        if (
            _at_ms(item.ts)
            and _at_ms(item.received_at)
            and (item.device_ts is None or _at_ms(item.device_ts))
        ):
            return item  # the usual case (the bridge cuts received_at on receipt): no copy
        device_ts = None if item.device_ts is None else utc(item.device_ts)
        return replace(
            item, ts=utc(item.ts), received_at=utc(item.received_at), device_ts=device_ts
        )
    if _at_ms(item.received_at):
        return item
    return replace(item, received_at=utc(item.received_at))


def _at_ms(value: datetime) -> bool:
    """Whether ``value`` is already as the store keeps it: UTC, whole milliseconds."""
    return value.tzinfo is UTC and value.microsecond % 1000 == 0


Key = tuple[str, str]  # (collection, _id)


def _key(item: Parsed) -> Key | None:
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


@dataclass
class _Draft:
    """A plan being built, over working copies of the ambulances' states."""

    states: dict[str, AmbulanceState]
    upserts: dict[Key, Document] = field(default_factory=dict)
    inserts: list[Write] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)  # state documents to write
    moved: set[str] = field(default_factory=set)  # latest state to fan out
    emits: list[Emit] = field(default_factory=list)
    # The dispatch rules' emissions (alarms, events), after the legacy rooms'.
    alerts: list[Emit] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    images: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    # Per ambulance: its late points, and the in-order points they go among (bridge.late).
    late: dict[str, list[_late.Point]] = field(default_factory=dict)
    counted: dict[str, list[_late.Point]] = field(default_factory=dict)

    def upsert(self, collection: str, doc: Document) -> None:
        # One upsert per document per batch: the last version wins.
        self.upserts[(collection, doc["_id"])] = doc

    def insert(self, collection: str, doc: Document) -> None:
        self.inserts.append(Write(collection, "insert", doc))

    def replay(self, pending: _Pending) -> None:
        """Write again what of the loaded states' outboxes is not stored."""
        for write in pending.writes:  # before this batch's: its own upserts win
            if write.kind == "upsert":
                self.upsert(write.collection, write.doc)
            else:
                self.inserts.append(write)
            # Never fanned out either, since fan-out follows the writes.
            if write.collection == ALARMS:
                self.alert(ALARMS_ROOM, alarm_message(write.doc, last_event(write.doc)))
                self.publishes.append(alarm_publish(write.doc, last_event(write.doc)))
            elif write.collection == EVENTS:
                self.alert(EVENTS_ROOM, event_message(write.doc))
        # Only under its state's conditional write (see the module doc).
        self.dirty.update(pending.ambulances)

    def emit(self, room: str, value: Any, *more_rooms: str) -> None:
        data = dumps(value)  # once for every room: the same text
        self.emits.append(Emit(room=room, data=data))
        self.emits.extend(Emit(room=other, data=data) for other in more_rooms)

    def alert(self, room: str, value: Any) -> None:
        self.alerts.append(Emit(room=room, data=dumps(value)))

    def to_plan(self) -> Plan:
        upserts = [
            Write(collection, "upsert", doc)
            for wanted in _UPSERT_ORDER
            for (collection, _), doc in self.upserts.items()
            if collection == wanted
        ]
        rest = upserts + self.inserts
        outboxes: dict[str, list[Write]] = {}
        for write in rest:
            if write.collection != DEAD_LETTERS:
                outboxes.setdefault(write.doc["ambulance_id"], []).append(write)
        writes = [self.states[a].next_version(outboxes.get(a, ())) for a in sorted(self.dirty)]
        written = {write.doc["_id"]: write.doc for write in writes}
        writes.extend(rest)
        emits = self.emits + self.alerts
        plan = Plan(writes=writes, emits=emits, outcomes=self.outcomes, images=self.images)
        for aid in sorted(self.moved):
            # The document just written, less its outbox, is to_doc(outbox=False):
            # one build of it per ambulance, not three.
            doc = written.get(aid)
            state_doc = self.states[aid].to_doc(outbox=False) if doc is None else cache_view(doc)
            plan.states[aid] = state_doc
            payload = dumps(public_record(public_view(state_doc))).encode("utf-8")
            topic = contract.topic(aid, contract.Kind.STATE)
            plan.publishes.append(Publish(topic, payload, retain=True, qos=1))
        plan.publishes.extend(self.publishes)
        return plan


@dataclass
class _Pending:
    """What the loaded states' outboxes hold that the store does not."""

    writes: list[Write] = field(default_factory=list)
    records: dict[Key, Document] = field(default_factory=dict)  # their history records
    ambulances: set[str] = field(default_factory=set)  # whose outboxes they are


@dataclass
class _Planned:
    """A plan whose writes are not known to be stored yet, and what it leaves in memory."""

    plan: Plan
    states: dict[str, AmbulanceState]
    rejected: list[Rejected]


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
        shared: bool = False,
        dead_letter_log: LineBudget | None = None,
        key_digits: Digits = snapshots.key_digits,
        dispatch: Dispatch | None = None,
        trips: Trips | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``dispatch``: the places, destination and alarm rules (default: no places).

        ``trips``: the trips and stops rule (default settings).

        ``dead_letter_log``: how many dead-letter WARNING lines per window (10 a minute).

        ``key_digits``: the 4-digit draws of image keys (tests force collisions with it).

        ``shared``: other bridges move the same ambulances (a share group), so
        states held in memory are usually stale and planning from them would
        make nearly every batch conflict once: each batch reads its states
        from the store instead (one read, as for ambulances not in memory).
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
        self._shared = shared
        self._key_digits = key_digits  # injectable: tests force key collisions
        self.dispatch = dispatch or Dispatch()
        self.trips = trips or Trips()
        self._log = logger or logging.getLogger(__name__)
        # Ambulance ids come from devices: the cache is an LRU so it cannot grow
        # without bound; an evicted ambulance is simply reloaded from the store.
        # Its states have empty outboxes: this bridge applied their batches.
        self._cache: OrderedDict[str, AmbulanceState] = OrderedDict()
        self._planned: _Planned | None = None  # the last plan, until ``applied``
        # Any client can send junk at will: its log lines are bounded like its records.
        self._dl_log = dead_letter_log or LineBudget(lines=10, seconds=60.0)

    @property
    def cached(self) -> int:
        """How many ambulances' states are held in memory."""
        return len(self._cache)

    async def plan(self, batch: Sequence[Parsed]) -> Plan:
        """Plan one batch: writes (object bytes are already stored) and fan-out.

        Raises ``StoreUnavailable`` when the document or object store is down;
        the batch may then be planned again. Not re-entrant: the caller plans
        one batch at a time, applies its writes, and then calls ``applied``,
        before planning the next (duplicates are detected from the store).
        If the writes fail, or raise ``Conflict``, it plans the batch again:
        its ambulances are reloaded from the store.
        """
        self._planned = None  # a plan never applied leaves nothing in memory
        items = [_at_store_precision(item) for item in batch]
        keys = [_key(item) for item in items]
        ambulance_ids = {item.ambulance_id for item in items if not isinstance(item, Rejected)}
        # A refused command is recorded in its ambulance's state, for the API waiting on it.
        ambulance_ids.update(aid for aid, _ in map(refused_command, items) if aid is not None)
        states = await self._load(ambulance_ids)
        await self.dispatch.prepare(self._store, items)
        stored, pending = await self._stored(keys, states)
        draft = _Draft(states=states)
        draft.replay(pending)
        broadcast = await self._broadcast_crashes(items, keys, stored)
        seen = set(stored)
        for item, key in zip(items, keys, strict=True):
            if key is not None and key in seen:
                draft.outcomes.append(Outcome.DUPLICATE)
                record = broadcast.pop(key, None)
                if record is not None and isinstance(item, Crash):
                    self._broadcast_crash(item, record, draft)
                    self.dispatch.resend_crash_alarm(draft.states[item.ambulance_id], record, draft)
                continue
            if key is not None:
                seen.add(key)
            record = pending.records.get(key) if key is not None else None
            if record is not None:
                self._replayed(item, record, draft)
            elif isinstance(item, Tracking):
                self._tracking(item, draft)
            elif isinstance(item, Crash):
                self._crash(item, draft)
            elif isinstance(item, Snap):
                await self._snap(item, draft)
            elif isinstance(item, Status):
                self._status(item, draft)
            elif isinstance(item, Destination | AlarmAction | Check):
                self._dispatch_item(item, draft)
            else:
                self._rejected(item, draft)
        await self._settle_late(draft, pending)
        plan = draft.to_plan()
        # Out of memory until applied: if the writes fail or conflict, the
        # store may hold them, or part of them (see ``DocumentStore.apply``).
        for aid in states:
            self._cache.pop(aid, None)
        self._planned = _Planned(plan, draft.states, draft.rejected)
        return plan

    def applied(self, plan: Plan) -> None:
        """Record that ``plan``, the last one planned, has its writes stored.

        Its ambulances' new states enter memory (else they are loaded from the
        store next time), and its dead letters are logged: once, however many
        times the batch was planned.
        """
        planned = self._planned
        if planned is None or planned.plan is not plan:
            raise ValueError("applied: not the last plan made, or already recorded")
        self._planned = None
        for aid, state in planned.states.items():
            # Applied: nothing of its outbox is left to replay.
            state.outbox = ()
            self._cache[aid] = state
            self._cache.move_to_end(aid)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self._log_dead_letters(planned.rejected)

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

    async def _stored(
        self, keys: Sequence[Key | None], states: dict[str, AmbulanceState]
    ) -> tuple[set[Key], _Pending]:
        """Which of ``keys`` are stored, and what of the states' outboxes is not.

        One ``existing_ids`` per history collection serves both; the outboxes'
        upserts are compared with the stored documents. Only states loaded from
        the store have an outbox (see ``applied``).
        """
        outbox = [write for state in states.values() for write in state.outbox]
        wanted: dict[str, list[str]] = {}
        for key in [*keys, *((w.collection, w.doc["_id"]) for w in outbox if w.kind == "insert")]:
            if key is not None:
                wanted.setdefault(key[0], []).append(key[1])
        stored: set[Key] = set()
        for collection, ids in wanted.items():
            found = await self._store.existing_ids(collection, list(dict.fromkeys(ids)))
            stored.update((collection, doc_id) for doc_id in found)
        pending = _Pending()
        upserted: dict[str, list[str]] = {}
        for write in outbox:
            if write.kind == "upsert":
                upserted.setdefault(write.collection, []).append(write.doc["_id"])
        current: dict[Key, Document] = {}
        for collection, ids in upserted.items():
            docs = await self._store.get_many(collection, ids)
            current.update(((collection, doc_id), doc) for doc_id, doc in docs.items())
        for aid, state in states.items():
            for write in state.outbox:
                key = (write.collection, write.doc["_id"])
                if write.kind == "insert" and key not in stored:
                    pending.records[key] = write.doc
                elif write.kind != "upsert" or current.get(key) == write.doc:
                    continue
                pending.writes.append(write)
                pending.ambulances.add(aid)
        return stored, pending

    async def _broadcast_crashes(
        self, items: Sequence[Parsed], keys: Sequence[Key | None], stored: set[Key]
    ) -> dict[Key, Document]:
        """The stored records of the batch's crashes to broadcast again, by key.

        Only a crash the broker redelivered (``Crash.redelivered``) whose record
        is stored: a bridge died after storing it and before its fan-out. A
        device sending the same crash again is a repeat, never a new alert.
        Read only then, which is rare.
        """
        ids = [
            key[1]
            for item, key in zip(items, keys, strict=True)
            if isinstance(item, Crash) and item.redelivered and key in stored
        ]
        if not ids:
            return {}
        records = await self._store.get_many(CRASHES, list(dict.fromkeys(ids)))
        return {
            (CRASHES, doc_id): record
            for doc_id, record in records.items()
            if record.get("duplicate_of") is None
        }

    async def _load(self, ambulance_ids: set[str]) -> dict[str, AmbulanceState]:
        """Working copies of the ambulances' states, from memory or else the store."""
        # One read for all the unknown ids: one per id made a batch of new
        # ambulances several times slower than a batch of known ones.
        cache = {} if self._shared else self._cache
        unknown = sorted(aid for aid in ambulance_ids if aid not in cache)
        stored = await self._store.get_many(AMBULANCES, unknown) if unknown else {}
        states: dict[str, AmbulanceState] = {}
        for aid in sorted(ambulance_ids):
            cached = cache.get(aid)
            if cached is None:
                cached = AmbulanceState.from_doc(aid, stored.get(aid))
            states[aid] = cached.copy()
        return states

    async def _settle_late(self, draft: _Draft, pending: _Pending) -> None:
        """Count the batch's late points' distance, one store read per ambulance (``bridge.late``).

        Part of the plan: a conflict plans it all again, from the store. The
        ambulances' reads are queued at once (each settles its own state).
        """
        settling = []
        for aid, points in draft.late.items():
            counted = list(draft.counted.get(aid, ()))
            for (collection, _), record in pending.records.items():
                if collection == TRACKINGS and record.get("ambulance_id") == aid:
                    point = _late.point_of(record)
                    if point is not None:
                        counted.append(point)
            settling.append(_late.settle(self._store, draft.states[aid], points, counted))
        # All run to their end, none left behind; the first failure (an outage) is raised.
        for outcome in await asyncio.gather(*settling, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    def _replayed(self, item: Parsed, record: Document, draft: _Draft) -> None:
        """A message of a committed batch whose writes were cut short: fan it out now.

        Its state already counts it and its record is in the outbox written
        again; it was never fanned out, since fan-out follows the writes.
        """
        if isinstance(item, Tracking):
            late = bool(record.get("late"))
            draft.outcomes.append(Outcome.LATE if late else Outcome.TRACKING)
            # Its state counts it, late or not, and was never published.
            draft.moved.add(item.ambulance_id)
            self._emit_tracking(item, draft)
        elif isinstance(item, Crash):
            if record.get("duplicate_of") is not None:
                draft.outcomes.append(Outcome.CRASH_REPEAT)
            else:
                draft.outcomes.append(Outcome.CRASH)
                self._broadcast_crash(item, record, draft)
        elif isinstance(item, Snap):
            draft.outcomes.append(Outcome.SNAP)
            self._emit_snap(item, record["images"], draft)

    @staticmethod
    def _emit_tracking(item: Tracking, draft: _Draft) -> None:
        # Late points are re-emitted too: the legacy server emitted every body.
        # ``body`` is already the legacy-room body (shaped by bridge.validate).
        draft.emit(contract.ambulance_room(item.ambulance_id), item.body, contract.TRACKING_ROOM)

    def _tracking(self, item: Tracking, draft: _Draft) -> None:
        aid = item.ambulance_id
        state = draft.states[aid]
        last_seen = state.last_seen
        point_id = tracking_id(aid, item.id_ts, item.seq)
        # The latest point itself, redelivered after a partial write by a version
        # that kept no outbox (its state stored, its history not). Another point
        # of the same instant (another seq) is a new point. States stored before
        # ids were kept have None.
        redelivered = item.ts == last_seen and state.last_point_id in (None, point_id)
        # Points of one instant count in id order, as the store orders them
        # (``bridge.late``): one with a smaller id than the latest's is late.
        behind = item.ts == last_seen and point_id < (state.last_point_id or point_id)
        late = last_seen is not None and (item.ts < last_seen or redelivered or behind)
        refs: dict[Threshold, str | None] = dict.fromkeys(THRESHOLDS)
        here = _late.Point(item.ts, point_id, item.position)
        if not late:
            self._advance(item, state, refs, draft)
            state.last_point_id = point_id
            draft.counted.setdefault(aid, []).append(here)
            draft.dirty.add(aid)
            draft.moved.add(aid)
        elif not redelivered:
            # Counted too, its distance once the batch is planned (``_settle_late``).
            state.speed_sum += item.speed_kmh
            state.speed_count += 1
            state.avg_speed = state.speed_sum / state.speed_count
            draft.late.setdefault(aid, []).append(here)
            draft.dirty.add(aid)
            draft.moved.add(aid)
        else:
            # Its state was stored but never fanned out, so publish it (again).
            draft.moved.add(aid)
        draft.outcomes.append(Outcome.LATE if late else Outcome.TRACKING)
        destination = position_doc(item.destination) or position_doc(state.destination_location)
        draft.insert(
            TRACKINGS,
            {
                "_id": point_id,
                "ambulance_id": aid,
                "location": position_doc(item.position),
                "source_location": position_doc(state.source_location),
                "destination_location": destination,
                "speed": item.speed_kmh,
                # A late point carries the aggregates as known when it arrived.
                "avg_speed": state.avg_speed,
                "heading": item.heading,
                "count_datetime": item.ts,
                "state": classify(item.speed_kmh, self._rules),
                "covered_distance": state.covered_distance,
                "estimated_time": state.estimated_time,
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
        # A redelivery after a partial write has not been emitted yet either.
        self._emit_tracking(item, draft)

    def _advance(
        self,
        item: Tracking,
        state: AmbulanceState,
        refs: dict[Threshold, str | None],
        draft: _Draft,
    ) -> None:
        """Move the latest state forward by one in-order point."""
        previous_seen = state.last_seen
        # The interval up to this point is overspeed time if it started above the red limit.
        was_red = RED in state.open_episodes
        opened: list[Episode] = []
        closed: list[Episode] = []
        step_m = 0.0
        if state.location is not None:
            step_m = haversine_m(state.location, item.position)
            state.covered_distance += step_m
        state.speed_sum += item.speed_kmh
        state.speed_count += 1
        state.avg_speed = state.speed_sum / state.speed_count
        if state.source_location is None:
            state.source_location = item.position
        if item.destination is not None:
            state.destination_location = item.destination
        for threshold in THRESHOLDS:
            episode = advance(
                state.open_episodes.get(threshold),
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
                del state.open_episodes[threshold]
                closed.append(episode)
            else:
                if threshold not in state.open_episodes:
                    opened.append(episode)
                state.open_episodes[threshold] = episode
                refs[threshold] = episode.id
        destination = state.destination_location
        eta = None if destination is None else eta_s(item.position, destination, state.avg_speed)
        state.location = item.position
        state.speed = item.speed_kmh
        state.heading = item.heading
        state.state = classify(item.speed_kmh, self._rules)
        state.last_seen = item.ts
        state.received_at = item.received_at
        # Only a connected device can publish (its Last Will says otherwise later).
        state.online = True
        state.estimated_time = None if eta is None else round(eta, 1)
        self.dispatch.on_point(
            item, state, draft, previous_seen=previous_seen, opened=opened, closed=closed
        )
        # After dispatch: a stop's place is one of the places it keeps in the state.
        self.trips.on_point(
            item, state, draft,
            previous_seen=previous_seen,
            was_red=was_red,
            step_m=step_m,
            opened_red=any(episode.threshold == RED for episode in opened),
            places=self.dispatch.places,
        )

    def _crash(self, item: Crash, draft: _Draft) -> None:
        aid = item.ambulance_id
        state = draft.states[aid]
        record_id = crash_id(aid, item.id_ts)
        broadcast = [(crash.at, crash.id) for crash in state.crashes]
        # A crash already among the broadcast ones is a redelivery after a partial
        # write (by a version that kept no outbox): it was never broadcast, since
        # fan-out follows the writes.
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
            draft.outcomes.append(Outcome.CRASH_REPEAT)
            return
        draft.outcomes.append(Outcome.CRASH)
        if not known:
            state.remember_crash(item.ts, record_id)
            draft.dirty.add(aid)
        self._broadcast_crash(item, record, draft)
        if not known:
            self.dispatch.on_crash(item, record, state, draft)
            self.trips.count(state, draft, "crashes")

    @staticmethod
    def _broadcast_crash(item: Crash, record: Document, draft: _Draft) -> None:
        aid = item.ambulance_id
        draft.emit(contract.crash_notify_room(aid), record)
        draft.emit(contract.CRASH_ROOM, item.body)
        draft.publishes.append(
            Publish(
                contract.topic(aid, contract.Kind.ALERT),
                dumps(alert_message(record)).encode("utf-8"),
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
        draft.outcomes.append(Outcome.SNAP)
        self.dispatch.heard(state, item.received_at, draft)
        self.trips.count(state, draft, "snapshots")
        draft.insert(
            IMAGE_HISTORIES,
            {"_id": history_id, "ambulance_id": aid, "images": images, "createdAt": item.ts},
        )
        current_at = state.images_at
        if current_at is None or item.ts > current_at:
            state.images_replaced_id = state.images_id
            state.images_id = history_id
            state.images_at = item.ts
            draft.dirty.add(aid)
        # The same snap as the current one is written again: a redelivery after a
        # partial write (by a version that kept no outbox) must still reach IMAGES.
        if state.images_id == history_id:
            draft.upsert(
                IMAGES,
                {
                    "_id": aid,
                    "ambulance_id": aid,
                    "images": images,
                    "createdAt": item.ts,
                    "ambulance_image_histories_id": state.images_replaced_id,
                },
            )
        self._emit_snap(item, images, draft)

    @staticmethod
    def _emit_snap(item: Snap, images: dict[str, str], draft: _Draft) -> None:
        draft.images += len(images)
        # ``body`` is the legacy form fields, or {"ambulance_id": id} (bridge.validate).
        draft.emit(contract.SNAP_ROOM, {"body": item.body, "imagesObj": images})

    def _status(self, item: Status, draft: _Draft) -> None:
        state = draft.states[item.ambulance_id]
        draft.outcomes.append(Outcome.STATUS)
        if state.online != item.online:
            state.online = item.online
            draft.dirty.add(item.ambulance_id)
        if item.online and not item.retained:
            self.dispatch.heard(state, item.received_at, draft)
        # Published even when unchanged: statuses are rare (retained, one per
        # connection), and a bridge that died after storing one never published it.
        draft.moved.add(item.ambulance_id)

    def _dispatch_item(self, item: Destination | AlarmAction | Check, draft: _Draft) -> None:
        """A dispatcher's command, taken once (a redelivered one is a duplicate); a check."""
        state = draft.states[item.ambulance_id]
        if isinstance(item, Check):
            draft.outcomes.append(Outcome.CHECK)
            self.dispatch.on_check(item, state, draft)
            return
        if self.dispatch.seen(state, item.command_id):
            draft.outcomes.append(Outcome.DUPLICATE)
            return
        if isinstance(item, Destination):
            draft.outcomes.append(Outcome.DESTINATION)
            self.dispatch.on_destination(item, state, draft)
        else:
            draft.outcomes.append(Outcome.ALARM_ACTION)
            self.dispatch.on_alarm_action(item, state, draft)

    def _rejected(self, item: Rejected, draft: _Draft) -> None:
        aid, command_id = refused_command(item)
        if aid is not None and command_id is not None:
            state = draft.states[aid]
            if not self.dispatch.seen(state, command_id):
                self.dispatch.refuse(state, command_id, item.reason)
                draft.dirty.add(aid)
        doc = dead_letter_doc(item, limit=self._dl_bytes)
        draft.insert(DEAD_LETTERS, doc)
        draft.outcomes.append(Outcome.DEAD_LETTER)
        draft.rejected.append(item)
