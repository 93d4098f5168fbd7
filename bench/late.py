"""``bench late``: what late points cost the processor (and SQLite), against in-order ones.

No broker, cache or fan-out. Each run plans and applies the same M tracking
points of N ambulances (round robin, one ambulance's points one second
apart) in batches, twice on fresh stores, back to back: once in order, and
once with every K-th point of each ambulance swapped with the one after it,
so that the later one is stored first and the earlier one arrives late, in
a later batch. A late point costs the store read around it (``bridge.late``:
one ``find`` per ambulance per batch, the newest points, here enough) and a
conditional state write. The
two orders alternate which goes first, so their ratio holds on a busy machine.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.share import new_processor
from bench.stats import median
from bridge import contract
from bridge.contract import Kind
from bridge.messages import Parsed
from bridge.validate import Limits, parse
from storage.base import AMBULANCES
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore

_LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
_BASE_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def _items(ambulances: int, messages: int) -> list[Parsed]:
    received = datetime.now(UTC)
    items = []
    for seq in range(messages):
        n = seq // ambulances  # the ambulance's own point number
        lat = 13.7 + n * 1e-4
        lon = 100.5 + (1e-4 if n % 2 else 0.0)  # a zigzag: order changes the path
        body = {"lat": lat, "lon": lon, "speed": 45.5, "ts": _BASE_MS + n * 1000}
        topic = contract.topic(f"L{seq % ambulances:06d}", Kind.TRACKING)
        items.append(parse(topic, json.dumps(body).encode(), received, _LIMITS))
    return items


def _reordered(items: list[Parsed], ambulances: int, every: int) -> list[Parsed]:
    """Every ``every``-th point of each ambulance swapped with its next one."""
    out = list(items)
    for j in range(0, len(out) - ambulances):
        if (j // ambulances) % every == every - 1:
            out[j], out[j + ambulances] = out[j + ambulances], out[j]
    return out


async def _timed(items: list[Parsed], size: int, tmp: Path, name: str) -> tuple[float, float]:
    """Seconds to plan and apply ``items``; and the first ambulance's distance."""
    async with (
        SQLiteDocumentStore(tmp / f"{name}.sqlite3") as store,
        LocalObjectStore(tmp / "objects") as objects,
    ):
        processor = new_processor(store, objects)
        started = time.perf_counter()
        for n in range(0, len(items), size):
            plan = await processor.plan(items[n : n + size])
            await store.apply(plan.writes)
            processor.applied(plan)
        took = time.perf_counter() - started
        state = await store.get(AMBULANCES, "L000000") or {}
    return took, float(state.get("covered_distance", 0.0))


async def late_bench(
    *, ambulances: int, messages: int, every: int, runs: int, batch_size: int
) -> None:
    items = _items(ambulances, messages)
    shuffled = _reordered(items, ambulances, every)
    late = sum(1 for j in range(len(items) - ambulances) if (j // ambulances) % every == every - 1)
    in_order_rates, late_rates = [], []
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="aoc-bench-late-") as tmp:
            order = [("in order", items), ("late", shuffled)]
            if run % 2:
                order.reverse()
            took: dict[str, tuple[float, float]] = {}
            for name, stream in order:
                took[name] = await _timed(stream, batch_size, Path(tmp), name.replace(" ", "-"))
        in_order_rates.append(messages / took["in order"][0])
        late_rates.append(messages / took["late"][0])
        same = abs(took["in order"][1] - took["late"][1]) < 1e-6
        print(
            f"run {run + 1}: in order {in_order_rates[-1]:,.0f} msg/s,"
            f" with {late} late ({late / messages:.0%}) {late_rates[-1]:,.0f} msg/s;"
            f" same distance: {'yes' if same else 'NO'}",
            flush=True,
        )
    a, b = median(in_order_rates), median(late_rates)
    print(
        f"median of {runs}: in order {a:,.0f} msg/s, with late points {b:,.0f} msg/s"
        f" ({b / a:.0%}); {messages} points of {ambulances} ambulances, batches of {batch_size}",
        flush=True,
    )


def run(*, ambulances: int, messages: int, every: int, runs: int, batch_size: int) -> None:
    asyncio.run(
        late_bench(
            ambulances=ambulances,
            messages=messages,
            every=every,
            runs=runs,
            batch_size=batch_size,
        )
    )
