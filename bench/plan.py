"""``bench plan``: the bridge's processor and SQLite store alone, new ids against known ids.

No broker, cache or fan-out: each run plans and applies M tracking points in
batches, as ``Bridge.handle`` does, first from N ambulance ids the processor has
never seen (their states are looked up in the store), then again from the
same N ids (now in its memory). Both halves run back to back, so their ratio
holds even on a busy machine.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.stats import median
from bridge import contract
from bridge.contract import Kind
from bridge.messages import Parsed
from bridge.processor import Processor
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from storage.base import DocumentStore
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore

_LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)


def _batches(
    prefix: str, ambulances: int, messages: int, size: int, base_ms: int
) -> list[list[Parsed]]:
    received = datetime.now(UTC)
    items = []
    for seq in range(messages):
        body = {"lat": 13.7 + seq * 1e-6, "lon": 100.5, "speed": 45.5, "ts": base_ms + seq}
        topic = contract.topic(f"{prefix}{seq % ambulances:06d}", Kind.TRACKING)
        items.append(parse(topic, json.dumps(body).encode(), received, _LIMITS))
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _timed(processor: Processor, store: DocumentStore, batches: list[list[Parsed]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        plan = await processor.plan(batch)
        await store.apply(plan.writes)
        processor.applied(plan)
    return time.perf_counter() - started


async def plan_bench(*, ambulances: int, messages: int, runs: int, batch_size: int) -> None:
    """Print stored msg/s for new and for known ids, per run and as medians."""
    new_rates, known_rates = [], []
    with tempfile.TemporaryDirectory(prefix="aoc-bench-plan-") as tmp:
        async with (
            SQLiteDocumentStore(Path(tmp) / "aoc.sqlite3") as store,
            LocalObjectStore(Path(tmp) / "objects") as objects,
        ):
            for number in range(1, runs + 1):
                processor = Processor(
                    store=store,
                    objects=objects,
                    rules=SpeedRules(),
                    crash_dedup_s=60,
                    maps_key=None,
                    dead_letter_payload_bytes=4096,
                )
                prefix = f"P{uuid.uuid4().hex[:6]}-"
                base = int(time.time() * 1000) - 2 * messages - 1000
                first = _batches(prefix, ambulances, messages, batch_size, base)
                again = _batches(prefix, ambulances, messages, batch_size, base + messages)
                new_s = await _timed(processor, store, first)
                known_s = await _timed(processor, store, again)
                new_rates.append(messages / new_s)
                known_rates.append(messages / known_s)
                print(
                    f"run {number}: new ids {new_rates[-1]:7.0f} msg/s, known ids"
                    f" {known_rates[-1]:7.0f} msg/s; new ids take x{new_s / known_s:.2f} the time",
                    flush=True,
                )
    ratios = [k / n for n, k in zip(new_rates, known_rates, strict=True)]
    print(
        f"median of {runs} runs ({messages} points from {ambulances} ids, batches of"
        f" {batch_size}): new ids {median(new_rates):.0f} msg/s, known ids"
        f" {median(known_rates):.0f} msg/s; new ids take x{median(ratios):.2f} the time",
        flush=True,
    )


def run(*, ambulances: int, messages: int, runs: int, batch_size: int) -> None:
    asyncio.run(
        plan_bench(ambulances=ambulances, messages=messages, runs=runs, batch_size=batch_size)
    )
