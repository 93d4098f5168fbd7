"""Prometheus metrics of every AOC process, in one module-level registry.

Served at ``/metrics`` by the HTTP API (``aoc serve``, ``aoc api``), by the
bridge's own small HTTP server (``aoc bridge``) and by the Socket.IO port
(``aoc realtime``). Labels are low-cardinality by rule: a message kind, a
fan-out channel or a component name, never an ambulance id or a topic.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from bridge import contract
from bridge.messages import Crash, Parsed, Plan, Snap, Tracking
from storage.base import DEAD_LETTERS

if TYPE_CHECKING:
    from storage.spool import SpoolingObjectStore

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

# The device topics' last level; anything else (never subscribed) is "other".
KINDS = contract.DEVICE_KINDS
# Processor counts -> the kind of message they were stored as (late points
# and repeated crashes are stored too, in history).
_STORED_AS = {
    "tracking": "tracking",
    "late": "tracking",
    "crash": "crash",
    "crash_repeat": "crash",
    "snap": "snap",
    "status": "status",
    # Dispatch commands (their state records them): named by their topic's kind.
    "destination": "destination",
    "alarm_action": "alarm",
}

# The kinds whose messages carry a device timestamp.
_TIMED: dict[type, str] = {Tracking: "tracking", Crash: "crash", Snap: "snap"}

MESSAGES_RECEIVED = Counter(
    "aoc_messages_received", "Device messages taken from the broker", ["kind"], registry=REGISTRY
)
MESSAGES_STORED = Counter(
    "aoc_messages_stored", "Device messages stored (history or state)", ["kind"], registry=REGISTRY
)
MESSAGES_DEAD_LETTERED = Counter(
    "aoc_messages_dead_lettered",
    "Device messages stored as dead letters",
    ["kind"],
    registry=REGISTRY,
)
# Cut by the bridge's per-ambulance rate limit (``bridge.ratelimit``); also
# counted as dead letters. Crash and status are never limited: always 0.
MESSAGES_RATE_LIMITED = Counter(
    "aoc_messages_rate_limited",
    "Device messages dead-lettered because their ambulance was over AOC_DEVICE_RATE",
    ["kind"],
    registry=REGISTRY,
)
# Another bridge of the share group moved one of the batch's ambulances first.
BATCH_CONFLICTS = Counter(
    "aoc_batch_conflicts",
    "Batches planned again after a version conflict with another bridge",
    registry=REGISTRY,
)
MESSAGES_DUPLICATE = Counter(
    "aoc_messages_duplicate",
    "Redelivered or repeated device messages that were already stored",
    ["kind"],
    registry=REGISTRY,
)
MESSAGES_REEMITTED = Counter(
    "aoc_messages_reemitted",
    "Fan-out sent: Socket.IO emissions (kind tracking/crash/snap) and MQTT publications "
    "(kind state/alert)",
    ["channel", "kind"],
    registry=REGISTRY,
)
# Why a dead-letter record was not kept: over the bridge's write rate, pruned
# by age or by count, or its write failed (the batch was acknowledged anyway).
DEAD_LETTER_DROP_REASONS = ("rate", "pruned_age", "pruned_count", "write_failed")
DEAD_LETTERS_DROPPED = Counter(
    "aoc_dead_letters_dropped",
    "Dead-letter records not kept (reason: rate, pruned_age, pruned_count, write_failed)",
    ["reason"],
    registry=REGISTRY,
)
# Deleted by the retention sweep (``bridge.retention``), by kind of record, and
# "images" for the objects of expired snapshots. What MongoDB's TTL indexes
# delete is not counted: the server does it.
RETENTION_KINDS = ("tracking", "snapshots", "images", "crashes", "audit", "reports")
RETENTION_DELETED = Counter(
    "aoc_retention_deleted",
    "Records (by kind) and image objects (kind images) deleted by the retention sweep",
    ["kind"],
    registry=REGISTRY,
)
FANOUT_FAILURES = Counter(
    "aoc_fanout_failures",
    "Fan-out sends that failed (best effort)",
    ["channel"],
    registry=REGISTRY,
)
# Fan-out sends never attempted: the channel's queue was full (its oldest
# plan dropped, never a crash alert), its breaker was open, or the bridge
# stopped before sending them (unsent alerts are also logged at ERROR).
FANOUT_CHANNELS = ("cache", "socketio", "mqtt")
FANOUT_DROP_REASONS = ("queue_full", "breaker_open", "shutdown")
FANOUT_DROPPED = Counter(
    "aoc_fanout_dropped",
    "Fan-out sends never attempted (reason: queue_full, breaker_open, shutdown);"
    " cache sends count ambulance states",
    ["channel", "reason"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "aoc_batch_seconds",
    "Time from taking a batch to acknowledging it (parse, plan, store)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
MESSAGE_AGE_SECONDS = Histogram(
    "aoc_message_age_seconds",
    "Acknowledgement time minus the device's timestamp",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "aoc_batch_size",
    "Messages per acknowledged batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "aoc_bridge_queue_depth",
    "Messages received from the broker and waiting for a batch (the bridge's lag)",
    registry=REGISTRY,
)
STORE_RETRIES = Counter(
    "aoc_store_retries",
    "Failed storage attempts that were retried",
    ["component"],
    registry=REGISTRY,
)
STORE_OUTAGES = Counter(
    "aoc_store_outages",
    "Storage outages seen by the bridge (one per outage)",
    ["component"],
    registry=REGISTRY,
)
STORE_AVAILABLE = Gauge(
    "aoc_store_available",
    "1 while the component answers the bridge, 0 during an outage",
    ["component"],
    registry=REGISTRY,
)
SOCKETIO_CLIENTS = Gauge(
    "aoc_socketio_clients", "Socket.IO clients connected to this process", registry=REGISTRY
)
# The object spool (``storage.spool``) of `aoc serve` and `aoc bridge`: what
# waits on local disk for the object store. 0 where there is no spool.
SPOOL_BYTES = Gauge(
    "aoc_object_spool_bytes",
    "Bytes of snapshots waiting in the local object spool (bounded by AOC_SPOOL_MAX_BYTES)",
    registry=REGISTRY,
)
SPOOL_ITEMS = Gauge(
    "aoc_object_spool_items",
    "Snapshots waiting in the local object spool for the object store",
    registry=REGISTRY,
)
PROCESS_RESTARTS = Gauge(
    "aoc_process_restarts",
    "Times `aoc up` restarted this process (AOC_RESTART_COUNT)",
    registry=REGISTRY,
)
# The parts of this process (`aoc serve`: bridge, http, socketio), each restarted alone.
PART_RESTARTS = Counter(
    "aoc_part_restarts",
    "Times a part of this process failed (or ended) and was restarted in the process",
    ["part"],
    registry=REGISTRY,
)
PART_UP = Gauge(
    "aoc_part_up",
    "1 while the part runs, 0 while it starts, waits to restart or has stopped",
    ["part"],
    registry=REGISTRY,
)

# Every kind shows from the start (at 0), so rates work from the first sample.
for _kind in KINDS:
    for _counter in (
        MESSAGES_RECEIVED,
        MESSAGES_STORED,
        MESSAGES_DEAD_LETTERED,
        MESSAGES_RATE_LIMITED,
        MESSAGES_DUPLICATE,
    ):
        _counter.labels(_kind)
for _reason in DEAD_LETTER_DROP_REASONS:
    DEAD_LETTERS_DROPPED.labels(_reason)
for _retained in RETENTION_KINDS:
    RETENTION_DELETED.labels(_retained)
for _channel in FANOUT_CHANNELS:
    for _reason in FANOUT_DROP_REASONS:
        FANOUT_DROPPED.labels(_channel, _reason)


def watch_spool(spool: SpoolingObjectStore) -> None:
    """Export ``spool``'s fill, read at each scrape."""
    SPOOL_BYTES.set_function(lambda: spool.spooled_bytes)
    SPOOL_ITEMS.set_function(lambda: spool.pending)


def kind_of(topic: str) -> str:
    """The message kind of a device topic ``aoc/<id>/<kind>``."""
    kind = contract.device_kind(topic)
    return "other" if kind is None else kind


def emit_kind(room: str) -> str:
    """The message kind behind a legacy Socket.IO emission, from its room."""
    return contract.room_kind(room)


def observe_batch(
    topics: Iterable[str],
    parsed: Iterable[Parsed],
    plan: Plan,
    *,
    seconds: float,
    acked_at: datetime,
) -> None:
    """Count an acknowledged batch: what came in, what was stored, how long it took.

    Each message is stored, dead-lettered or a duplicate, so duplicates per kind
    are what is left of the received ones.
    """
    received = Tally(kind_of(topic) for topic in topics)
    stored: Tally[str] = Tally()
    for name, number in plan.counts.items():
        if name in _STORED_AS:
            stored[_STORED_AS[name]] += number
    dead = Tally(
        kind_of(str(write.doc.get("topic", "")))
        for write in plan.writes
        if write.collection == DEAD_LETTERS
    )
    for kind, number in received.items():
        MESSAGES_RECEIVED.labels(kind).inc(number)
        MESSAGES_DUPLICATE.labels(kind).inc(max(number - stored[kind] - dead[kind], 0))
    for kind, number in stored.items():
        MESSAGES_STORED.labels(kind).inc(number)
    for kind, number in dead.items():
        MESSAGES_DEAD_LETTERED.labels(kind).inc(number)
    BATCH_SIZE.observe(received.total())
    BATCH_SECONDS.observe(seconds)
    for item in parsed:
        if isinstance(item, Tracking | Crash | Snap):
            age = (acked_at - item.ts).total_seconds()
            # A device clock ahead of ours would give a negative age: count it as none.
            MESSAGE_AGE_SECONDS.labels(_TIMED[type(item)]).observe(max(age, 0.0))
