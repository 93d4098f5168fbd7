"""``python -m bench.reports``: a 30-day fleet summary from stored trips, against the raw points.

Seeds a temporary SQLite store with N ambulances x D days of trips and stops
(``--per-day`` of each a day, as ``bridge.trips`` writes them), then times
the summary of those D days through the API's own code
(``api.routes.reports.summarize``: keyset pages of 1,000, one pass), median
of ``--runs``.

The alternative, a summary from the raw points, is estimated: a store of
``--points`` tracking points is scanned the same way (keyset pages of 1,000
over the time range, each point's speed and distance looked at), and the
time per point is multiplied by the points the fleet would have stored over
the range at one point every ``--interval`` seconds (1,000 ambulances, 30
days, 5 s: 518.4 million). The scan grows with the rows read, so the
estimate is linear; a real summary from points would do more per point.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from api import reports
from api.routes.reports import READ_PAGE, summarize
from bench.stats import median
from storage.base import STOPS, TRACKINGS, TRIPS, DocumentStore, Query, Write
from storage.sqlite import SQLiteDocumentStore

START = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 10_000  # writes per transaction while seeding
HERE = {"lat": 13.75, "lon": 100.5}


def _history(aid: str, day: int, per_day: int) -> list[Write]:
    """One ambulance's day: ``per_day`` trips, each followed by a stop."""
    writes = []
    slot = timedelta(days=1) / per_day
    for n in range(per_day):
        start = START + timedelta(days=day) + slot * n
        ms = int(start.timestamp() * 1000)
        drive = slot.total_seconds() / 2
        writes.append(Write(TRIPS, "upsert", {
            "_id": f"{aid}.trip.{ms}", "ambulance_id": aid, "started_at": start,
            "ended_at": start + timedelta(seconds=drive), "start_location": HERE,
            "end_location": HERE, "start_place": "Depot", "end_place": "Siriraj Hospital",
            "distance_m": 8000.0 + n, "duration_s": drive, "max_speed": 90.0 + n,
            "avg_speed": 8000.0 / drive * 3.6, "overspeed_s": 30.0 * (n % 2),
            "overspeed_episodes": n % 2, "points": int(drive // 5), "crashes": 0,
            "snapshots": 1, "open": False,
        }))
        stopped = start + timedelta(seconds=drive)
        writes.append(Write(STOPS, "upsert", {
            "_id": f"{aid}.stop.{int(stopped.timestamp() * 1000)}", "ambulance_id": aid,
            "started_at": stopped, "ended_at": stopped + timedelta(seconds=drive),
            "location": HERE, "place_id": "siriraj", "place": "Siriraj Hospital",
            "duration_s": drive, "crashes": 0, "snapshots": 0, "open": False,
        }))
    return writes


def _point(aid: str, at: datetime, n: int) -> dict[str, Any]:
    return {
        "_id": f"{aid}-{n}", "ambulance_id": aid, "location": HERE, "speed": 45.5,
        "heading": 90.0, "count_datetime": at, "received_at": at, "state": "GREEN",
        "covered_distance": 63.2 * n, "avg_speed": 45.5, "estimated_time": None, "seq": n,
    }


async def _apply(store: DocumentStore, writes: list[Write]) -> None:
    for i in range(0, len(writes), BATCH):
        await store.apply(writes[i : i + BATCH])


async def _seed_history(store: DocumentStore, ambulances: int, days: int,
                        per_day: int) -> int:
    stored = 0
    for a in range(ambulances):
        writes = [w for day in range(days) for w in _history(f"R{a:05d}", day, per_day)]
        await _apply(store, writes)
        stored += len(writes)
    return stored


async def _seed_points(store: DocumentStore, points: int, ambulances: int,
                       interval: float) -> None:
    writes = []
    for n in range(points):
        at = START + timedelta(seconds=interval * (n // ambulances))
        writes.append(Write(TRACKINGS, "insert", _point(f"R{n % ambulances:05d}", at, n)))
        if len(writes) == BATCH:
            await _apply(store, writes)
            writes = []
    await _apply(store, writes)


async def _scan_points(store: DocumentStore, until: datetime) -> int:
    """What a summary from points would read: every point of the range, a page at a time."""
    seen = 0
    top: dict[str, float] = {}
    covered: dict[str, float] = {}
    query = Query(TRACKINGS, since=START, until=until, limit=READ_PAGE)
    while True:
        page = await store.find(query)
        for doc in page.items:
            seen += 1
            aid, speed = doc["ambulance_id"], doc.get("speed") or 0.0
            top[aid] = max(top.get(aid, 0.0), speed)
            covered[aid] = doc.get("covered_distance") or 0.0
        if page.next_cursor is None:
            return seen
        query = Query(TRACKINGS, since=START, until=until, limit=READ_PAGE,
                      cursor=page.next_cursor)


async def bench(*, ambulances: int, days: int, per_day: int, runs: int, points: int,
                interval: float, folder: Path) -> None:
    async with SQLiteDocumentStore(folder / "history.sqlite3") as store:
        began = time.perf_counter()
        stored = await _seed_history(store, ambulances, days, per_day)
        print(f"seeded {stored:,} trips and stops ({ambulances:,} ambulances x {days} days x "
              f"{per_day}+{per_day} a day) in {time.perf_counter() - began:.1f} s")
        end = (START + timedelta(days=days - 1)).date().isoformat()
        span = reports.resolve(START.date().isoformat(), end, "UTC")
        took = []
        for _ in range(runs):
            began = time.perf_counter()
            summary = await summarize(store, span)
            took.append(time.perf_counter() - began)
        total = summary.total()
        assert total["trips"] == ambulances * days * per_day, total
        summary_s = median(took)
        print(f"summary of {days} days, {len(summary.ambulances):,} ambulances, "
              f"{stored:,} documents: {summary_s:.2f} s (median of {runs}: "
              f"{', '.join(f'{t:.2f}' for t in took)})")
    async with SQLiteDocumentStore(folder / "points.sqlite3") as store:
        await _seed_points(store, points, ambulances, interval)
        took = []
        for _ in range(runs):
            began = time.perf_counter()
            seen = await _scan_points(store, START + timedelta(days=days))
            took.append(time.perf_counter() - began)
        assert seen == points, seen
        per_point = median(took) / points
        fleet_points = int(ambulances * days * 86400 / interval)
        raw_s = per_point * fleet_points
        print(f"raw points: scanned {points:,} in {median(took):.2f} s "
              f"({per_point * 1e6:.2f} µs a point, median of {runs}); "
              f"{ambulances:,} ambulances x {days} days at 1 point / {interval:g} s = "
              f"{fleet_points:,} points: about {raw_s:,.0f} s ({raw_s / 3600:.1f} h)")
        print(f"stored trips and stops answer about {raw_s / summary_s:,.0f} times faster")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__)
    parser.add_argument("--ambulances", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=8, help="trips (and stops) a day each")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (the median is printed)")
    parser.add_argument("--points", type=int, default=200_000, help="raw points scanned")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between points")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aoc-bench-reports-") as tmp:
        asyncio.run(bench(
            ambulances=args.ambulances, days=args.days, per_day=args.per_day, runs=args.runs,
            points=args.points, interval=args.interval, folder=Path(tmp),
        ))


if __name__ == "__main__":
    main()
