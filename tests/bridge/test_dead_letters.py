"""Dead letters are best effort and bounded: rate, age, count, log lines, a full disk.

Against the real SQLite store; the bridge test runs a real ``Bridge`` on the
session's Mosquitto. Clocks are injected, never slept on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from aoc import metrics
from aoc.logs import LineBudget
from bridge.deadletters import DeadLetters, TokenBucket
from bridge.messages import Rejected
from bridge.processor import Processor, dead_letter_doc
from bridge.service import Bridge
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from broker.client import MqttClient
from storage.base import DEAD_LETTERS, TRACKINGS, Query, Write
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T_MS = int(NOW.timestamp() * 1000) - 3_600_000
LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dropped(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("aoc_dead_letters_dropped_total", {"reason": reason})
    return value or 0.0


def letter(n: int, *, at: datetime = NOW, size: int = 100) -> Write:
    item = Rejected(f"aoc/junk{n}/tracking", "not JSON", b"x" * size + str(n).encode(), at)
    return Write(DEAD_LETTERS, "insert", dead_letter_doc(item, limit=4096))


async def letters(store: SQLiteDocumentStore) -> int:
    return len((await store.find(Query(DEAD_LETTERS, limit=10_000))).items)


async def until(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Wait until ``predicate`` holds: a guard against a hang, not a timed assertion."""
    async with asyncio.timeout(within):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.05)


def test_token_bucket_grants_the_burst_then_the_rate() -> None:
    """Test that the bucket starts full, refills at its rate and never holds more than a burst."""
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=5, clock=clock)
    assert bucket.take(8) == 5
    assert bucket.take(1) == 0
    clock.now += 1.25
    assert bucket.take(8) == 2  # 2.5 tokens: whole ones only, the half is kept
    clock.now += 0.25
    assert bucket.take(1) == 1
    clock.now += 3600
    assert bucket.take(100) == 5


async def test_dead_letters_over_the_rate_are_dropped_and_counted(
    store: SQLiteDocumentStore,
) -> None:
    """Test that a flood writes only the burst, then the rate; the rest is counted as dropped."""
    clock = Clock()
    sink = DeadLetters(store=store, rate=1.0, burst=5, clock=clock)
    before = dropped("rate")
    assert await sink.write([letter(n) for n in range(20)]) == 5
    assert await letters(store) == 5
    clock.now += 3
    assert await sink.write([letter(n) for n in range(20, 40)]) == 3
    assert await letters(store) == 8
    assert dropped("rate") - before == 32


async def test_prune_bounds_age_and_count_once_per_interval(store: SQLiteDocumentStore) -> None:
    """Test that pruning deletes by age and by count, counts both, and waits out its interval."""
    clock = Clock()
    sink = DeadLetters(
        store=store,
        rate=1000,
        burst=1000,
        max_count=10,
        max_age=timedelta(days=7),
        prune_every=60,
        clock=clock,
        now=lambda: NOW,
    )
    old = [letter(n, at=NOW - timedelta(days=8)) for n in range(3)]
    recent = [letter(n, at=NOW - timedelta(seconds=n)) for n in range(3, 18)]
    await store.apply([*old, *recent])
    age, count = dropped("pruned_age"), dropped("pruned_count")
    await sink.prune()
    assert (dropped("pruned_age") - age, dropped("pruned_count") - count) == (3, 5)
    kept = (await store.find(Query(DEAD_LETTERS, limit=100))).items
    assert sorted(d["topic"] for d in kept) == sorted(f"aoc/junk{n}/tracking" for n in range(3, 13))
    await store.apply([letter(n, at=NOW - timedelta(days=30)) for n in range(100, 105)])
    clock.now += 59
    await sink.prune()  # not due yet: no store call at all
    assert await letters(store) == 15
    clock.now += 1
    await sink.prune()
    assert await letters(store) == 10


class FullSQLiteStore(SQLiteDocumentStore):
    """The real SQLite store on a database that cannot grow past ``max_pages`` pages.

    ``PRAGMA max_page_count`` makes SQLite fail with SQLITE_FULL ("database or
    disk is full") exactly as a full disk does. It is per connection, so it is
    set again on each connection the store opens (it reconnects after an error).
    """

    max_pages = 0

    def _connection(self) -> sqlite3.Connection:
        conn = super()._connection()
        if self.max_pages:
            conn.execute(f"PRAGMA max_page_count = {self.max_pages}")
        return conn


async def fill_up(store: FullSQLiteStore, spare_pages: int) -> None:
    pages = await store._run(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    store.max_pages = pages + spare_pages
    await store.close()  # the limit applies to each connection from now on
    await store.open()


async def test_a_failed_dead_letter_write_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that dead letters on a full database are dropped: counted, one WARNING, no raise."""
    store = FullSQLiteStore(tmp_path / "full.sqlite3")
    async with store:
        await fill_up(store, spare_pages=8)
        sink = DeadLetters(store=store)
        before = dropped("write_failed")
        with caplog.at_level(logging.WARNING, logger="bridge.deadletters"):
            for batch in range(3):
                big = [letter(n, size=4000) for n in range(batch * 50, batch * 50 + 50)]
                assert await sink.write(big) == 0
        assert dropped("write_failed") - before == 150
        assert ["disk is full" in r.getMessage() for r in caplog.records] == [True]
        assert await letters(store) == 0
        store.max_pages = 0
        await store.close()
        await store.open()
        with caplog.at_level(logging.WARNING, logger="bridge.deadletters"):
            assert await sink.write([letter(1000)]) == 1
        assert caplog.records[-1].getMessage() == "dead letters stored again"


async def test_dead_letter_log_lines_are_bounded_per_window(
    store: SQLiteDocumentStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a flood logs the first lines of a window, then one summary line."""
    clock = Clock()
    async with LocalObjectStore(tmp_path / "objects") as objects:
        processor = Processor(
            store=store,
            objects=objects,
            rules=SpeedRules(),
            crash_dedup_s=60,
            maps_key=None,
            dead_letter_payload_bytes=64,
            dead_letter_log=LineBudget(lines=3, seconds=60, clock=clock),
        )
        junk = [parse(f"aoc/j{n}/tracking", b"{nope", NOW, LIMITS) for n in range(50)]
        with caplog.at_level(logging.WARNING, logger="bridge.processor"):
            plan = await processor.plan(junk)
            processor.applied(plan)  # logged once applied (its dead letters are not written)
            assert plan.counts["dead_letter"] == 50
            assert len(caplog.records) == 3
            clock.now += 61
            processor.applied(
                await processor.plan([parse("aoc/j99/tracking", b"{nope", NOW, LIMITS)])
            )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[3] == "47 more dead letters not logged (at most 3 lines per 60 s)"
    assert lines[4].startswith("dead letter from aoc/j99/tracking:")
    assert len(lines) == 5


async def test_a_full_disk_does_not_hold_good_messages(
    tmp_path: Path, mosquitto: services.Service
) -> None:
    """Test that junk whose dead letters cannot be written (SQLite full for real) holds nothing.

    Good points in the same batch are stored and the batch acknowledged: the
    bridge goes on to the next batch, whose point is stored too.
    """
    prefix = f"dl{uuid.uuid4().hex[:8]}"
    store = FullSQLiteStore(tmp_path / "full.sqlite3")
    async with store, LocalObjectStore(tmp_path / "objects") as objects:
        await fill_up(store, spare_pages=40)  # ~160 KB: good points fit, 200 KB of junk not
        processor = Processor(
            store=store,
            objects=objects,
            rules=SpeedRules(),
            crash_dedup_s=60,
            maps_key=None,
            dead_letter_payload_bytes=4096,
        )
        consumer = MqttClient(
            host="127.0.0.1",
            port=mosquitto.port,
            client_id=f"{prefix}-bridge",
            clean_session=True,
            subscriptions=[("aoc/+/tracking", 1)],
        )
        publisher = MqttClient(
            host="127.0.0.1",
            port=mosquitto.port,
            client_id=f"{prefix}-pub",
            clean_session=True,
            manual_ack=False,
        )
        async with consumer, publisher:
            bridge = Bridge(
                mqtt=consumer,
                publisher=publisher,
                processor=processor,
                store=store,
                limits=LIMITS,
                batch_size=200,
                batch_wait=0.5,
            )
            before = dropped("write_failed")
            running = asyncio.create_task(bridge.run())
            try:
                async with aiomqtt.Client("127.0.0.1", mosquitto.port) as device:
                    for n in range(60):
                        if n % 10 == 0:
                            body = {"lat": 13.7, "lon": 100.5, "speed": 40, "ts": T_MS + n}
                            await device.publish(f"aoc/{prefix}a/tracking", json.dumps(body), qos=1)
                        junk = b"{" + b"j" * 4000 + str(n).encode()
                        await device.publish(f"aoc/{prefix}b/tracking", junk, qos=1)
                    # Before dead letters were best effort, the bridge retried this batch forever.
                    await until(lambda: bridge.counts.get("tracking", 0) == 6)
                    last = {"lat": 13.8, "lon": 100.5, "speed": 40, "ts": T_MS + 1000}
                    await device.publish(f"aoc/{prefix}a/tracking", json.dumps(last), qos=1)
                    await until(lambda: bridge.counts.get("tracking", 0) == 7)
            finally:
                bridge.stop()
                await asyncio.wait_for(running, 30)
        points = (await store.find(Query(TRACKINGS, ambulance_id=f"{prefix}a"))).items
        assert len(points) == 7
        assert bridge.counts["dead_letter"] == 60
        assert dropped("write_failed") - before > 0
        assert await letters(store) < 60
