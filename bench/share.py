"""``bench share``: two processors on one ambulance's stream end as one processor does.

No broker: one ambulance's points (speeds drawn to cross 80 and 120 km/h, so
overspeed episodes open and close across batches) and crashes are cut into
batches; one processor plans and applies them all in order, for the
reference. Then two processors, each with its own memory, share the same
stream on a fresh store: at each step a random one takes the next batch, and
half the time both plan before either applies, so the second is planned from
a version the first then moves past. Its ``apply`` raises ``Conflict``; it
plans again, from the store, as ``bridge.service`` does. The figures
printed compare what each run leaves in the store.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bridge import contract
from bridge.contract import Kind
from bridge.messages import Parsed
from bridge.processor import Processor
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from storage.base import (
    AMBULANCES,
    CRASHES,
    SPEED_VIOLATIONS,
    TRACKINGS,
    Conflict,
    DocumentStore,
    ObjectStore,
)
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore

_LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
_AID = "SHARE1"
_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _stream(points: int, batch_size: int, rng: random.Random) -> list[list[Parsed]]:
    """Points one second apart, a crash now and then, cut into batches of 1..batch_size."""
    received = _T0 + timedelta(days=1)
    items: list[Parsed] = []
    speed = 60.0
    for i in range(points):
        speed = min(160.0, max(0.0, speed + rng.uniform(-25, 25)))
        ms = int(_T0.timestamp() * 1000) + i * 1000
        body = {"lat": 13.7 + i * 1e-4, "lon": 100.5, "speed": round(speed, 1), "ts": ms}
        kind = Kind.CRASH if rng.random() < 0.02 else Kind.TRACKING
        topic = contract.topic(_AID, kind)
        items.append(parse(topic, json.dumps(body).encode(), received, _LIMITS))
    batches = []
    while items:
        size = rng.randint(1, batch_size)
        batches.append(items[:size])
        items = items[size:]
    return batches


def new_processor(store: DocumentStore, objects: ObjectStore) -> Processor:
    """A processor with the default rules, as the benchmarks drive it (no broker)."""
    return Processor(
        store=store,
        objects=objects,
        rules=SpeedRules(),
        crash_dedup_s=60,
        maps_key=None,
        dead_letter_payload_bytes=4096,
    )


async def _left(store: DocumentStore) -> dict[str, Any]:
    """What a run leaves: the state (its version apart), episodes, history."""
    state = await store.get(AMBULANCES, _AID) or {}
    return {
        "state": {k: v for k, v in state.items() if k not in ("version", "outbox")},
        **{c: [d async for d in store.scan(c)] for c in (SPEED_VIOLATIONS, TRACKINGS, CRASHES)},
    }


async def _alone(
    store: DocumentStore, objects: ObjectStore, batches: Sequence[list[Parsed]]
) -> dict[str, Any]:
    processor = new_processor(store, objects)
    for batch in batches:
        plan = await processor.plan(batch)
        await store.apply(plan.writes)
        processor.applied(plan)
    return await _left(store)


async def _shared(
    store: DocumentStore,
    objects: ObjectStore,
    batches: Sequence[list[Parsed]],
    rng: random.Random,
) -> tuple[dict[str, Any], int]:
    """Two processors taking batches in a random order, often planned at once."""
    processors = [new_processor(store, objects), new_processor(store, objects)]
    conflicts = 0

    async def store_batch(processor: Processor, batch: list[Parsed], plan: Any = None) -> None:
        # The conflict loop of bridge.service.Bridge._plan_and_apply, without its retries.
        nonlocal conflicts
        while True:
            plan = plan or await processor.plan(batch)
            try:
                await store.apply(plan.writes)
            except Conflict:
                conflicts += 1
                plan = None
                continue
            processor.applied(plan)
            return

    n = 0
    while n < len(batches):
        first = rng.randrange(2)
        if n + 1 < len(batches) and rng.random() < 0.5:
            # Both plan from the same stored version; the second applies after the first.
            a, b = processors[first], processors[1 - first]
            plan_a, plan_b = await a.plan(batches[n]), await b.plan(batches[n + 1])
            await store_batch(a, batches[n], plan_a)
            await store_batch(b, batches[n + 1], plan_b)
            n += 2
        else:
            await store_batch(processors[first], batches[n])
            n += 1
    return await _left(store), conflicts


async def share_bench(*, points: int, batch_size: int, seed: int) -> bool:
    rng = random.Random(seed)
    batches = _stream(points, batch_size, rng)
    with tempfile.TemporaryDirectory(prefix="aoc-bench-share-") as tmp:
        async with (
            SQLiteDocumentStore(Path(tmp) / "alone.sqlite3") as alone_store,
            SQLiteDocumentStore(Path(tmp) / "shared.sqlite3") as shared_store,
            LocalObjectStore(Path(tmp) / "objects") as objects,
        ):
            alone = await _alone(alone_store, objects, batches)
            shared, conflicts = await _shared(shared_store, objects, batches, rng)
    for name, run in (("one processor", alone), ("two processors", shared)):
        state = run["state"]
        closed = sum(1 for e in run[SPEED_VIOLATIONS] if e.get("closed"))
        print(
            f"{name:>14}: distance {state['covered_distance']:.3f} m,"
            f" points counted {state['speed_count']}, avg speed {state['avg_speed']:.4f} km/h,"
            f" episodes {len(run[SPEED_VIOLATIONS])} ({closed} closed),"
            f" trackings {len(run[TRACKINGS])} ({sum(d['late'] for d in run[TRACKINGS])} late),"
            f" crashes {len(run[CRASHES])}"
            f" ({sum(d['duplicate_of'] is not None for d in run[CRASHES])} repeats)",
            flush=True,
        )
    same = alone == shared
    print(
        f"{points} messages in {len(batches)} batches (seed {seed}); {conflicts} conflicts"
        f" re-planned; every document identical: {'yes' if same else 'NO'}",
        flush=True,
    )
    return same


def run(*, points: int, batch_size: int, seed: int) -> bool:
    return asyncio.run(share_bench(points=points, batch_size=batch_size, seed=seed))
