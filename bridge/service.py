"""The bridge's consume loop: MQTT in, durable store, acknowledgement, fan-out.

Two lanes, so that one client's large snapshots never hold back tracking
points and crash alerts:

- The **snapshot lane** takes ``aoc/+/snap`` messages (and the legacy shim's
  ``legacy/+/snap``). Up to ``snap_workers`` of them at once are parsed
  (JSON, base64) and hashed in worker processes (``bridge.decode``: on a
  thread they would still hold the GIL), and their images stored in object
  storage (``Processor.upload``); the snapshot then joins the main lane as a
  light message: keys and id, no image bytes.
  The raw payloads it holds, from receipt to acknowledgement, are bounded by
  ``snap_buffer_bytes``; past it the lane stops taking messages (backpressure:
  nothing is dropped, the broker keeps the rest).
- The **main lane** takes everything else, and the snapshots the snapshot lane
  finished, in batches of at most ``batch_size`` messages and about
  ``batch_max_bytes`` of payload; it holds at most four batches' worth of
  payload bytes before it stops reading. A batch is what is queued when the
  lane is ready for it (natural batching): under load the next batch
  accumulates while one is stored, and a lone message never waits for
  company (``batch_wait``, 0 by default, adds such a wait). For each batch, in
  this order:

  1. parse every message (never raises: bad input becomes a dead letter);
  2. plan the batch, retrying while storage is down (the processor plans one
     batch at a time, from each ambulance's versioned state: ``bridge.state``);
  3. apply the planned writes to the document store, retrying while it is down.
     A ``Conflict`` (another bridge moved one of the ambulances first) plans
     the batch again from the store. Any other error, in planning or writing
     (a bug, a record the store refuses for good), sends the batch through
     again one message at a time, each planned and applied before the next,
     and the culprit is dead-lettered, durably: its dead letter is all that
     is left of it. Then write the batch's other dead letters, once and best
     effort (``bridge.deadletters``): junk never holds good messages, not
     even on a full disk;
  4. acknowledge the batch to the broker: only now may Mosquitto forget it;
  5. queue the fan-out: Redis cache, Socket.IO rooms, MQTT ``state``/``alert``
     topics, the live stream's feed (``bridge.live``), each sent by a task of
     its own (``bridge.fanout``), so that a hanging destination never holds
     the next batch.

As it is received, a tracking point or snapshot over its ambulance's rate
(``bridge.ratelimit``) becomes a dead letter there and then: it goes down its
lane without being parsed, decoded or uploaded, and is acknowledged with its
batch. Crash alerts and statuses are never limited.

Every message is thus acknowledged only once durably stored, snapshots
included (their image bytes before their records); acknowledgements may go out
of receipt order, which Mosquitto accepts. Fan-out is best effort by design:
dashboards resync from the read API, and the cache is rebuilt from the store
whenever an update of it failed or was dropped.
A crash anywhere before step 4 makes the broker redeliver, and the store's
idempotent ids (and the images' deterministic keys) keep each message single.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, TypeVar

from aoc import metrics
from bridge import address
from bridge.contract import DISPATCH_PREFIX, LIVE_STATE_FEED, Kind, device_kind
from bridge.deadletters import DeadLetters
from bridge.decode import Decoded, DecoderDied, Decoders, NoDecoder
from bridge.dispatch_tasks import OfflineSweep, PlaceWatch
from bridge.fanout import Breaker, Channel, is_alert
from bridge.live import feed as live_feed
from bridge.live import feed_count as live_feed_count
from bridge.messages import Check, Crash, Parsed, Plan, Publish, Rejected, Snap
from bridge.processor import Processor
from bridge.ratelimit import DeviceLimiter
from bridge.snapshots import KeysExhausted
from bridge.state import cache_view
from bridge.subscriptions import MAIN_KINDS, SNAP_KINDS, subscriptions
from bridge.validate import Limits, parse
from broker.client import Message, MqttClient
from storage.base import (
    AMBULANCES,
    DEAD_LETTERS,
    Conflict,
    Document,
    DocumentStore,
    StoreUnavailable,
    Write,
)
from storage.cache import StateCache

T = TypeVar("T")

# What a light (already uploaded) snapshot counts for in a batch's bytes.
_LIGHT_SNAP_BYTES = 1024

# Conflicts in a row after which a batch is stored message by message instead.
MAX_CONFLICTS = 20

# The main lane's connection, and the snapshot lane's own: Mosquitto sends
# each connection its messages in order, so on one connection a tracking point
# waited behind every byte of the snapshots before it. Each kind on both roots,
# the devices' and the legacy shim's (``bridge.contract``): the shim's
# snapshots are snapshots too. The client subscribes at every connection, so
# a persistent session of an older version, subscribed to ``aoc/...`` only,
# gains the ``legacy/...`` filters at its first reconnection, and keeps what
# the broker queued for it meanwhile. These are one bridge's; several share
# the stream with ``bridge.subscriptions.subscriptions(kinds, group)``.
MAIN_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = subscriptions(MAIN_KINDS)
SNAP_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = subscriptions(SNAP_KINDS)
SUBSCRIPTIONS = MAIN_SUBSCRIPTIONS + SNAP_SUBSCRIPTIONS


class Emitter(Protocol):
    """What the bridge needs of Socket.IO: an AsyncServer or a write-only manager."""

    async def emit(self, event: str, data: str, *, room: str) -> None: ...


class Backoff:
    """Jittered, capped exponential delays for retrying an outage."""

    def __init__(self, *, first: float = 0.1, cap: float = 10.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def reset(self) -> None:
        self._next = self._first

    def delay(self) -> float:
        """The next delay, each about twice the last, jittered, up to the cap."""
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._next * 2, self._cap)
        return delay

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay())


class _Abandoned(Exception):
    """A batch left unacknowledged because the bridge is stopping during an outage."""


@dataclass(slots=True)
class _Item:
    """A received message on its way through the lanes."""

    message: Message
    client: MqttClient  # the connection it came on, and must be acknowledged on
    received_at: datetime
    parsed: Parsed | None = None  # set by the snapshot lane
    budget: ByteBudget | None = None  # holds ``held`` bytes until acknowledged
    held: int = 0

    @property
    def weight(self) -> int:
        """What the message counts for in a batch's byte bound."""
        if isinstance(self.parsed, Snap):
            return _LIGHT_SNAP_BYTES
        return len(self.message.payload)


class ByteBudget:
    """A bound on bytes held at once; ``take`` waits until they fit.

    A single message larger than the whole budget still passes, alone, so a
    budget smaller than the largest accepted payload slows but never blocks.
    One task takes; any number give back.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a byte budget needs a limit of at least 1")
        self._limit = limit
        self._used = 0
        self._freed = asyncio.Event()

    @property
    def used(self) -> int:
        return self._used

    async def take(self, size: int) -> None:
        while self._used and self._used + size > self._limit:
            self._freed.clear()
            await self._freed.wait()
        self._used += size

    def give(self, size: int) -> None:
        self._used -= size
        self._freed.set()


def _now_ms() -> datetime:
    """Now, cut to the millisecond: as stored, so the processor need not copy each message."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _is_snap(topic: str) -> bool:
    return device_kind(topic) == Kind.SNAP


class Bridge:
    """Consumes device messages from MQTT and turns them into stored records and fan-out."""

    def __init__(
        self,
        *,
        mqtt: MqttClient,
        publisher: MqttClient,
        snap_mqtt: MqttClient | None = None,
        processor: Processor,
        store: DocumentStore,
        limits: Limits,
        cache: StateCache | None = None,
        emitter: Emitter | None = None,
        live: Emitter | None = None,
        dead_letters: DeadLetters | None = None,
        device_limit: DeviceLimiter | None = None,
        batch_size: int = 200,
        batch_wait: float = 0.0,
        batch_max_bytes: int = 1024 * 1024,
        snap_workers: int = 2,
        snap_buffer_bytes: int = 160 * 1024 * 1024,
        fan_out_queue: int = 100,
        fan_out_timeout: float = 2.0,
        fan_out_failures: int = 5,
        fan_out_cooldown: float = 15.0,
        fan_out_drain: float = 3.0,
        places_every: float | None = None,
        offline_after: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``dead_letters``: their bounds (default: ``DeadLetters``'s defaults on ``store``).

        ``live``: where the live stream's feed goes (``bridge.live``): the
        process's ``api.live.LiveStream``, or the Redis manager; None: nowhere.

        ``device_limit``: the per-ambulance rate limit (``bridge.ratelimit``),
        checked as each message is received; None: no limit.

        Fan-out (``bridge.fanout``), per channel: ``fan_out_queue`` plans wait
        at most, and crash alerts besides (never dropped, sent first); each
        call has ``fan_out_timeout`` seconds; after ``fan_out_failures``
        failures in a row the channel is skipped for ``fan_out_cooldown``
        seconds at a time; on stop, what is queued is sent within
        ``fan_out_drain`` seconds, alerts first.

        ``places_every``: read the places again this often (``bridge.dispatch_tasks``);
        ``offline_after``: sweep for ambulances silent this long. None: neither.
        """
        self._mqtt = mqtt
        # Snapshots' own connection (``SNAP_SUBSCRIPTIONS``); None: all on ``mqtt``.
        self._snap_mqtt = snap_mqtt
        # Outbound state/alert messages go on a connection of their own: the
        # consumer stops reading its socket while its inbound queue is full (a
        # backlog after a restart), and a PUBACK stuck behind that backlog made
        # every batch wait out the publish timeout.
        self._publisher = publisher
        self._processor = processor
        self._store = store
        self._limits = limits
        self._cache = cache
        self._emitter = emitter
        self._live = live
        self._dead_letters = dead_letters or DeadLetters(store=store)
        self._device_limit = device_limit
        self._batch_size = batch_size
        self._batch_wait = batch_wait
        self._batch_max_bytes = batch_max_bytes
        self._snap_workers = snap_workers
        self._log = logger or logging.getLogger(__name__)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=batch_size * 4)
        # Snapshots waiting for a worker; their number is bounded by the budget.
        self._snaps: asyncio.Queue[_Item] = asyncio.Queue()
        self._snap_budget = ByteBudget(snap_buffer_bytes)
        # The main lane's payloads, taken but not yet acknowledged: a few batches.
        self._main_budget = ByteBudget(batch_max_bytes * 4)
        self._stopping = asyncio.Event()
        # Set when Redis may have lost the cache; ``_heal_cache`` rebuilds it.
        self._cache_stale = asyncio.Event()
        # A rebuild reads the store then replaces the cache: no set_many may
        # land in between, or a batch's newer states would be overwritten.
        self._cache_lock = asyncio.Lock()
        # The latest state per ambulance that did not reach Redis while it was
        # stale, written over the rebuild: its read of the store may have
        # passed an ambulance before that ambulance's newer state was stored.
        self._cache_missed: dict[str, Document] = {}
        # Whether this bridge has seen a built cache: an empty one before that
        # is a first start (or another bridge's fresh Redis), not a loss.
        self._cache_seen_built = False
        self.counts: dict[str, int] = {}
        self._chores: list[PlaceWatch | OfflineSweep] = []
        self._place_watch: PlaceWatch | None = None
        if places_every is not None:
            dispatch = processor.dispatch
            watch = PlaceWatch(store, dispatch, every=places_every, logger=self._log)
            self._chores.append(watch)
            self._place_watch = watch
        if offline_after is not None:
            sweep = OfflineSweep(store, self._check, after=offline_after, logger=self._log)
            self._chores.append(sweep)

        def channel(
            name: str,
            send: Callable[[Plan], Awaitable[None]],
            sends: Callable[[Plan], int],
            on_drop: Callable[[Plan], None] | None = None,
        ) -> Channel:
            breaker = Breaker(
                name, threshold=fan_out_failures, cooldown=fan_out_cooldown, logger=self._log
            )
            return Channel(
                name,
                send,
                sends=sends,
                depth=fan_out_queue,
                timeout=fan_out_timeout,
                breaker=breaker,
                drain_timeout=fan_out_drain,
                on_drop=on_drop,
                logger=self._log,
            )

        self._cache_channel = channel(
            "cache", self._update_cache, lambda plan: len(plan.states), self._cache_dropped
        )
        self._socketio_channel = channel("socketio", self._emit, lambda plan: len(plan.emits))
        self._mqtt_channel = channel("mqtt", self._publish, lambda plan: len(plan.publishes))
        self._live_channel = channel(
            "live", self._send_live, lambda plan: live_feed_count(plan.publishes)
        )
        self._channels = [
            channel
            for channel, used in (
                (self._cache_channel, cache is not None),
                (self._socketio_channel, emitter is not None),
                (self._mqtt_channel, True),
                (self._live_channel, live is not None),
            )
            if used
        ]

    def stop(self) -> None:
        """Stop taking new batches; the batch in hand is finished and acknowledged."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop()``; the lifecycle of the bridge's own tasks."""
        async with (
            Decoders(workers=self._snap_workers, limits=self._limits) as decoders,
            asyncio.TaskGroup() as group,
        ):
            clients = [self._mqtt] if self._snap_mqtt is None else [self._mqtt, self._snap_mqtt]
            helpers = [
                *(
                    group.create_task(self._pump(client), name=f"bridge-pump-{n}")
                    for n, client in enumerate(clients)
                ),
                group.create_task(self._heal_cache(), name="bridge-cache-heal"),
                *(
                    group.create_task(self._snap_lane(decoders), name=f"bridge-snap-{n}")
                    for n in range(self._snap_workers)
                ),
            ]
            helpers.append(group.create_task(asyncio.to_thread(address.warm_up), name="geocode"))
            helpers.extend(
                group.create_task(chore.run(), name=f"bridge-{type(chore).__name__}")
                for chore in self._chores
            )
            for channel in self._channels:
                group.create_task(channel.run(), name=f"bridge-fanout-{channel.name}")
            group.create_task(self._consume(*helpers), name="bridge-consume")

    async def _check(self, check: Check) -> None:
        """Queue the offline sweep's question, to be planned in turn like a message."""
        topic = f"{DISPATCH_PREFIX}/{check.ambulance_id}/check"
        # QoS 0: nothing to acknowledge to the broker (``MqttClient.ack`` does nothing).
        message = Message(topic, b"", qos=0, retain=False, mid=0, dup=False)
        item = _Item(message, self._mqtt, check.received_at, parsed=check)
        await self._queue.put(item)

    async def drain_fan_out(self) -> None:
        """Wait until the fan-out of every batch handled so far is sent (or dropped)."""
        for channel in self._channels:
            await channel.drain()

    async def _pump(self, client: MqttClient) -> None:
        # A separate task feeds the lanes, so that batching can wait with a
        # timeout without ever cancelling the client's message iterator.
        async for message in client.messages():
            item = _Item(message, client, _now_ms(), held=len(message.payload))
            self._limit(item)
            if _is_snap(message.topic):
                item.budget = self._snap_budget
                await item.budget.take(item.held)
                self._snaps.put_nowait(item)
            else:
                # Bounded by bytes too, or oversized payloads (refused by
                # length, but held until acknowledged) could pile up here.
                item.budget = self._main_budget
                await item.budget.take(item.held)
                await self._queue.put(item)
            self._observe_depth()

    def _limit(self, item: _Item) -> None:
        """Dead-letter a message over its ambulance's rate, before any parsing or decoding.

        It still goes down its lane, to be acknowledged in its batch's turn.
        """
        if self._device_limit is None:
            return
        reason = self._device_limit.check(item.message.topic)
        if reason is not None:
            message = item.message
            item.parsed = Rejected(message.topic, reason, message.payload, item.received_at)

    def _observe_depth(self) -> None:
        metrics.QUEUE_DEPTH.set(self._queue.qsize() + self._snaps.qsize())

    async def _snap_lane(self, decoders: Decoders) -> None:
        """Parse a snapshot and store its images, then hand it to the main lane."""
        while True:
            item = await self._snaps.get()
            if item.parsed is not None:  # over its rate: nothing to decode or upload
                await self._queue.put(item)
                continue
            try:
                parsed = await self._decode(item, decoders)
                if isinstance(parsed, Decoded):
                    item.parsed = await self._upload(item, parsed)
                else:
                    item.parsed = parsed
            except _Abandoned:
                return  # stopping during an outage: the broker redelivers it
            except Exception as exc:  # a bug must not stop the lane (nor the bridge)
                self._log.exception("snapshot on %s dead-lettered", item.message.topic)
                reason = f"processing error: {exc!r}"
                item.parsed = Rejected(
                    item.message.topic, reason, item.message.payload, item.received_at
                )
            await self._queue.put(item)

    async def _decode(self, item: _Item, decoders: Decoders) -> Decoded | Rejected:
        message = item.message
        if message.retain:
            # A replayed retained snapshot: refused by parse before any decoding.
            parsed = self._parse(message, item.received_at)
            if isinstance(parsed, Rejected):
                return parsed
        deaths = 0
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                # Not on a thread: decoding 70 MB of JSON and base64 holds the
                # GIL, which froze the event loop (tracking and crashes) as much.
                decoded = await decoders.decode(message.topic, message.payload, item.received_at)
                break
            except NoDecoder as exc:
                # Not this message's doing: it waits (unacknowledged) for a decoder.
                self._log.warning("snapshot on %s waits for a decoder: %s", message.topic, exc)
                await backoff.sleep()
            except DecoderDied as exc:
                deaths += 1
                if deaths == 1:  # killed from outside, maybe: once more, on a new one
                    self._log.warning("retrying a snapshot on %s: %s", message.topic, exc)
                    continue
                # Twice: this payload kills decoders (out of memory?); stop feeding it.
                self._log.error("snapshot on %s dead-lettered: %s", message.topic, exc)
                reason = f"processing error: {exc}"
                return Rejected(message.topic, reason, message.payload, item.received_at)
        if isinstance(decoded.parsed, Rejected):
            return decoded.parsed
        return decoded

    async def _upload(self, item: _Item, decoded: Decoded) -> Parsed:
        snap = decoded.parsed
        if not isinstance(snap, Snap):
            return snap

        async def attempt() -> Parsed:
            try:
                return await self._processor.upload(
                    snap, digests=decoded.digests, history_id=decoded.snap_id
                )
            except (StoreUnavailable, KeysExhausted):
                raise
            except Exception as exc:
                # Object storage failing as it should not (a refused request, a
                # client too old for conditional puts): the images are not stored,
                # so the snapshot waits unacknowledged, as in an outage; never lost.
                raise StoreUnavailable(f"object storage: {exc!r}") from exc

        try:
            return await self._retry("storage", attempt)
        except KeysExhausted as exc:  # every key this image may take holds other bytes
            self._log.error("snapshot on %s dead-lettered: %s", item.message.topic, exc)
            reason = f"processing error: {exc}"
            return Rejected(item.message.topic, reason, item.message.payload, item.received_at)

    async def _consume(self, *helpers: asyncio.Task[None]) -> None:
        stop = asyncio.create_task(self._stopping.wait(), name="bridge-stop-wait")
        try:
            if self._place_watch is not None:
                # Planned against no places, an ambulance inside one would leave it and
                # enter again, and one parked at a station would be reported offline.
                loaded = asyncio.create_task(self._place_watch.loaded.wait())
                await asyncio.wait({loaded, stop}, return_when=asyncio.FIRST_COMPLETED)
                loaded.cancel()
            while not self._stopping.is_set():
                first = asyncio.create_task(self._queue.get(), name="bridge-next")
                done, _ = await asyncio.wait({first, stop}, return_when=asyncio.FIRST_COMPLETED)
                if first not in done:
                    first.cancel()
                    break
                batch = await self._fill([first.result()])
                try:
                    await self.handle(batch)
                except _Abandoned as exc:
                    self._log.warning(
                        "stopping with %d messages unacknowledged (%s unavailable);"
                        " the broker redelivers them",
                        len(batch),
                        exc,
                    )
                    break
        finally:
            stop.cancel()
            for helper in helpers:
                helper.cancel()
            for channel in self._channels:
                channel.close()  # each sends what is queued, within fan_out_drain

    async def _fill(self, batch: list[_Item]) -> list[_Item]:
        deadline = time.monotonic() + self._batch_wait
        size = sum(item.weight for item in batch)
        while len(batch) < self._batch_size and size < self._batch_max_bytes:
            try:
                batch.append(self._queue.get_nowait())
                size += batch[-1].weight
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
            size += batch[-1].weight
        return batch

    async def handle(self, batch: Sequence[_Item]) -> Plan:
        """Store and acknowledge one batch, and queue its fan-out (steps 1-5 of the module doc).

        The fan-out is sent by the channels' tasks that ``run`` starts: see ``drain_fan_out``.
        """
        started = time.monotonic()
        self._observe_depth()
        # Only small payloads come this way unparsed: tracking, crash and status
        # payloads over their bound are refused by length before any decoding.
        parsed = [
            item.parsed if item.parsed is not None else self._parse(item.message, item.received_at)
            for item in batch
        ]
        plan = await self._store_batch(batch, parsed)
        await self._dead_letters.write([w for w in plan.writes if w.collection == DEAD_LETTERS])
        for item in batch:
            item.client.ack(item.message)
            if item.budget is not None:
                item.budget.give(item.held)
        metrics.observe_batch(
            # The offline sweep's checks are the bridge's own, not messages received.
            (item.message.topic for item in batch if not isinstance(item.parsed, Check)),
            parsed,
            plan,
            seconds=time.monotonic() - started,
            acked_at=datetime.now(UTC),
        )
        for kind, number in plan.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + number
        for channel in self._channels:
            channel.put(plan)  # never waits: a full queue drops its oldest plan
        await self._dead_letters.prune()  # due once a minute: a clock read per batch
        return plan

    def _parse(self, message: Message, received_at: datetime) -> Parsed:
        try:
            parsed = parse(
                message.topic, message.payload, received_at, self._limits, retained=message.retain
            )
        except Exception as exc:  # parse promises not to raise; a bug must not stop the loop
            self._log.exception("parse failed on %s", message.topic)
            return Rejected(message.topic, f"internal error: {exc!r}", message.payload, received_at)
        if isinstance(parsed, Crash) and message.dup:
            parsed = replace(parsed, redelivered=True)
        return parsed

    async def _store_batch(self, batch: Sequence[_Item], parsed: list[Parsed]) -> Plan:
        """Plan ``parsed`` and apply its writes, falling back to one message at a time.

        Any error but an outage (which is retried) means some message of the
        batch cannot be planned or stored: a bug, a MongoDB DocumentTooLarge, an
        SQLite IntegrityError, a value the codec cannot encode. Raised here it
        would kill the bridge before the acknowledgement, and the broker would
        redeliver the same batch to crash it again.
        """
        try:
            return await self._plan_and_apply(parsed)
        except _Abandoned:
            raise
        except Exception:
            # The processor's memory is untouched: only an applied plan enters it.
            self._log.exception("storing a batch failed; retrying message by message")
        return await self._one_by_one(batch, parsed)

    async def _plan_and_apply(self, parsed: Sequence[Parsed]) -> Plan:
        """Plan ``parsed`` and durably store its writes (not its dead letters), retrying outages.

        On a ``Conflict`` another bridge moved some of its ambulances first:
        ``parsed`` is planned again, its ambulances loaded from the store
        (whose outboxes say which messages it holds). After ``MAX_CONFLICTS``
        of them in a row, it gives up with a ``RuntimeError`` (not an outage:
        ``_store_batch`` then stores the messages one by one): a state that
        conflicts whatever is planned is damaged, not contended.
        """
        conflicts = 0
        while True:
            plan = await self._retry("storage", partial(self._processor.plan, parsed))
            good = [w for w in plan.writes if w.collection != DEAD_LETTERS]
            try:
                await self._retry("store", partial(self._store.apply, good))
            except Conflict as exc:
                conflicts += 1
                metrics.BATCH_CONFLICTS.inc()
                if conflicts >= MAX_CONFLICTS:
                    raise RuntimeError(
                        f"{conflicts} version conflicts in a row, the last on {', '.join(exc.ids)}"
                    ) from exc
                self._log.debug("planning again: %s", exc)
                continue
            self._processor.applied(plan)
            return plan

    async def _one_by_one(self, batch: Sequence[_Item], parsed: list[Parsed]) -> Plan:
        """Store each message on its own; dead-letter those that fail.

        Each message is planned and applied before the next is planned: one
        plan of several messages groups its writes by collection (states
        before history, see ``bridge.processor``), and merging single plans
        would break that order, which the store's crash window relies on.
        The plan returned only records what was done (its writes are already
        stored, but for the dead letters), for the acknowledgement and fan-out.
        """
        done = Plan()
        for entry, item in zip(batch, parsed, strict=True):
            message = entry.message
            try:
                single = await self._plan_and_apply([item])
            except _Abandoned:
                raise
            except Exception as exc:
                self._log.exception(
                    "message on %s dead-lettered after a processing error", message.topic
                )
                reason = f"processing error: {exc!r}"
                rejected = Rejected(message.topic, reason, message.payload, entry.received_at)
                single = await self._retry("storage", partial(self._processor.plan, [rejected]))
                await self._retry("store", partial(self._store_culprit, single.writes))
                self._processor.applied(single)
            done.extend(single)
        return done

    async def _store_culprit(self, writes: Sequence[Write]) -> None:
        """Durably store the dead letter of a message that failed processing.

        Not best effort like junk's: the broker accepted the message and a
        fault of ours refused it, so its record is all that is left of it. A
        store that refuses even that is failing as a whole, not on this
        message: the batch is held as in an outage, never acknowledged unrecorded.
        (``handle`` writes it once more, best effort: an insert of the same id.)
        """
        try:
            await self._store.apply(writes)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"dead letter of a failed message refused: {exc!r}") from exc

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        backoff = Backoff()
        failing_since: float | None = None
        while True:
            try:
                result = await attempt()
            except StoreUnavailable as exc:
                if self._stopping.is_set():
                    # Shutting down mid-outage: leave the batch unacknowledged;
                    # the broker redelivers it to the next bridge.
                    raise _Abandoned(what) from exc
                metrics.STORE_RETRIES.labels(what).inc()
                if failing_since is None:
                    failing_since = time.monotonic()
                    metrics.STORE_OUTAGES.labels(what).inc()
                    metrics.STORE_AVAILABLE.labels(what).set(0)
                    self._log.warning(
                        "%s unavailable, holding the batch and retrying: %s", what, exc
                    )
                # Wait out the backoff, but wake at once for a stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.delay()):
                        await self._stopping.wait()
                continue
            metrics.STORE_AVAILABLE.labels(what).set(1)
            if failing_since is not None:
                self._log.warning(
                    "%s available again after %.1fs", what, time.monotonic() - failing_since
                )
            return result

    async def _emit(self, plan: Plan) -> None:
        """Send a plan's Socket.IO emissions, in order (the ``socketio`` channel)."""
        assert self._emitter is not None
        channel, emitter = self._socketio_channel, self._emitter
        emits, loop = plan.emits, asyncio.get_running_loop()
        n = 0
        # Each emission has the channel's timeout, as with ``Channel.call``, but
        # one timeout scope serves them all, moved on before each: a scope per
        # emission (two per tracking point) was a sixth of sending it (issue 11).
        # When it fires, the emission in hand counts as failed and a new scope
        # takes the rest.
        while n < len(emits):
            try:
                async with asyncio.timeout(None) as scope:
                    while n < len(emits):
                        emit = emits[n]
                        # A crash alert is tried even while the breaker is open: it
                        # costs at most one timeout, on this channel's own task, and
                        # may get through.
                        if not is_alert(emit) and not channel.breaker.allow(len(emits) - n):
                            return  # the rest of the plan is skipped (and counted) too
                        n += 1
                        scope.reschedule(loop.time() + channel.timeout)
                        try:
                            await emitter.emit(emit.event, emit.data, room=emit.room)
                        except Exception as exc:  # best effort: nothing may stop ingestion
                            channel.settled(exc)
                            continue
                        channel.settled(None)
                        kind = metrics.emit_kind(emit.room)
                        metrics.MESSAGES_REEMITTED.labels("socketio", kind).inc()
            except TimeoutError as exc:
                channel.settled(exc)  # emission n - 1 ran out of time

    async def _send_live(self, plan: Plan) -> None:
        """Send a plan's live-stream feed (the ``live`` channel): its states, then its alerts."""
        assert self._live is not None
        channel, live = self._live_channel, self._live
        emits = live_feed(plan.publishes)
        alerts = all(map(is_alert, plan.publishes))  # alerts come in plans of their own
        if not alerts and not channel.breaker.allow(len(emits)):
            return
        for emit in emits:
            if await channel.call(partial(live.emit, emit.event, emit.data, room=emit.room)):
                kind = Kind.STATE if emit.room == LIVE_STATE_FEED else Kind.ALERT
                metrics.MESSAGES_REEMITTED.labels("live", kind).inc()

    async def _publish(self, plan: Plan) -> None:
        """Publish a plan's MQTT state and alert messages (the ``mqtt`` channel)."""
        channel = self._mqtt_channel
        # Alerts come in plans of their own (``bridge.fanout``): tried even while open.
        alerts = all(map(is_alert, plan.publishes))
        if not alerts and not channel.breaker.allow(len(plan.publishes)):
            return
        if self._publisher.connected:
            sent = await self._publish_at_once(plan.publishes)
        else:  # each waits for the connection, within its timeout
            sent = await asyncio.gather(
                *(
                    channel.call(
                        partial(
                            self._publisher.publish, p.topic, p.payload, qos=p.qos, retain=p.retain
                        )
                    )
                    for p in plan.publishes
                )
            )
        for publish, ok in zip(plan.publishes, sent, strict=True):
            if ok:
                kind = publish.topic.rsplit("/", 1)[-1]
                metrics.MESSAGES_REEMITTED.labels("mqtt", kind).inc()

    async def _publish_at_once(self, publishes: Sequence[Publish]) -> list[bool]:
        """Send ``publishes`` at once and wait for their acknowledgements, all within one timeout.

        Each counts for the breaker as a ``Channel.call`` would: one state per
        ambulance per batch made a task and two timeouts per publication most
        of the cost of sending it (issue 11).
        """
        channel = self._mqtt_channel
        futures: list[asyncio.Future[None] | None] = []
        for p in publishes:
            try:
                futures.append(
                    self._publisher.publish_started(p.topic, p.payload, qos=p.qos, retain=p.retain)
                )
            except Exception as exc:  # not connected any more, a refused topic...
                channel.settled(exc)
                futures.append(None)
        waiting = [f for f in futures if f is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=channel.timeout)
        late = [f for f in waiting if not f.done()]
        if late:
            self._publisher.forget(late)
        sent: list[bool] = []
        for future in futures:
            if future is None:
                sent.append(False)
                continue
            if not future.done():
                future.cancel()
                error: BaseException | None = TimeoutError("no acknowledgement in time")
            else:
                error = future.exception()
            channel.settled(error)
            sent.append(error is None)
        return sent

    async def _update_cache(self, plan: Plan) -> None:
        """Write a plan's latest states to Redis (the ``cache`` channel)."""
        assert self._cache is not None
        if self._cache_stale.is_set():
            self._cache_missed.update(plan.states)  # written after the rebuild
            return
        channel, cache = self._cache_channel, self._cache
        if not channel.breaker.allow(len(plan.states)):
            self._cache_dropped(plan)
            return
        built = True

        async def write() -> None:
            nonlocal built
            built = await cache.set_many(plan.states)

        async with self._cache_lock:
            written = await channel.call(write)
        metrics.STORE_AVAILABLE.labels("redis").set(1 if written else 0)
        if not written:
            self._stale(plan, f"Redis did not take a state update: {channel.last_error!r}")
        elif built:
            self._cache_seen_built = True
        elif self._cache_seen_built:
            # Back empty without any call failing: the other ambulances' states
            # are missing until rebuilt from the store.
            self._stale(plan, "Redis lost the cache")
        else:
            self._stale(plan, "it is empty (first use)", level=logging.INFO)

    def _cache_dropped(self, plan: Plan) -> None:
        """A plan's states never reach Redis: the cache is stale until rebuilt."""
        self._stale(plan, "state updates dropped")

    def _stale(self, plan: Plan, why: str, *, level: int = logging.WARNING) -> None:
        self._cache_missed.update(plan.states)
        if not self._cache_stale.is_set():
            self._log.log(level, "latest-state cache is stale, rebuilding it from the store: %s",
                          why)
            self._cache_stale.set()

    async def _heal_cache(self) -> None:
        """Rebuild the cache as soon as Redis answers again (a ping), with or without traffic."""
        if self._cache is None:
            return
        backoff = Backoff(first=0.5, cap=5.0)
        while True:
            await self._cache_stale.wait()
            try:
                # Scanning the store is the costly part: not while Redis is still down.
                await self._cache.ping()
                async with self._cache_lock:
                    await self._rebuild_cache()  # clears the stale flag when done
            except StoreUnavailable:
                await backoff.sleep()
                continue
            except Exception:  # a bug here must not stop the bridge: the cache is best effort
                self._log.exception("rebuilding the redis cache failed")
                await backoff.sleep()
                continue
            backoff.reset()
            metrics.STORE_AVAILABLE.labels("redis").set(1)
            self._cache_channel.breaker.success()  # Redis answers: no need to wait the cool-down

    async def _rebuild_cache(self) -> None:
        """Refill Redis from the store after an outage (it may have lost everything).

        Then write over it the states that missed Redis during the read, and
        only then clear the stale flag.
        """
        assert self._cache is not None
        # Every state missed so far was stored before it was fanned out: the
        # read below sees it, or a newer one.
        self._cache_missed.clear()
        states = {doc["_id"]: cache_view(doc) async for doc in self._store.scan(AMBULANCES)}
        await self._cache.rebuild(states)
        while self._cache_missed:
            missed = dict(self._cache_missed)
            if not await self._cache.set_many(missed):
                raise StoreUnavailable("Redis lost the cache again during its rebuild")
            for ambulance_id, state in missed.items():
                if self._cache_missed.get(ambulance_id) is state:
                    del self._cache_missed[ambulance_id]
        # No await since the last look at what was missed: nothing can slip in.
        self._cache_stale.clear()
        self._cache_seen_built = True
        self._log.info("redis cache rebuilt from the store (%d ambulances)", len(states))
