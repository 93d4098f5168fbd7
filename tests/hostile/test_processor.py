"""Hostile messages mixed with good ones through ``Processor.plan`` and a real SQLite store.

Each example is one batch: hostile messages of every kind (hostile topics,
ids, payloads) around good ones. The batch is parsed, planned and applied to
a fresh SQLite store and local object store in its own data directory. Then:
every refused message is a dead letter, every good one is stored, nothing was
raised, and nothing was written outside the data directory.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.messages import Outcome, Parsed, Rejected
from bridge.processor import Processor
from bridge.snapshots import sniff
from bridge.speed import SpeedRules
from bridge.validate import parse
from storage.base import AMBULANCES, CRASHES, DEAD_LETTERS, IMAGES, TRACKINGS, Query
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests.hostile.strategies import (
    HOSTILE_IDS,
    KINDS,
    LIMITS,
    RECEIVED,
    bounded,
    encode,
    hostile_topics,
    payloads_for,
    snap_bodies,
)
from tests.hostile.tree import Watch
from tests.images import TINY_JPEG

GOOD = "hostile-ok"

Message = tuple[str, bytes]


def good_messages(count: int) -> list[Message]:
    """One good message of each kind from ambulance ``GOOD``, plus ``count`` tracking points."""
    t0 = RECEIVED - timedelta(minutes=10)
    points = [
        (
            f"aoc/{GOOD}/tracking",
            encode({"lat": 13.7 + i / 1000, "lon": 100.5, "speed": 40, "seq": i,
                    "ts": (t0 + timedelta(seconds=i)).isoformat()}),
        )
        for i in range(count)
    ]
    return [
        *points,
        (f"aoc/{GOOD}/crash", encode({"lat": 13.8, "lon": 100.6, "speed": 80,
                                      "ts": (t0 + timedelta(seconds=30)).isoformat()})),
        (f"aoc/{GOOD}/snap", TINY_JPEG),
        (f"aoc/{GOOD}/status", b"online"),
    ]


def _deliverable(topic: str) -> bool:
    """Whether a broker could deliver ``topic``: MQTT topics are UTF-8 without NUL.

    Mosquitto refuses any other topic, so the bridge never sees one. (A topic
    holding a lone surrogate would make its dead letter's SQLite write raise
    UnicodeEncodeError: bridge.processor.dead_letter_doc stores the topic as it
    is. Not reachable through a broker, so not tested here.)
    """
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in topic


@st.composite
def hostile_messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(KINDS))
    topic = draw(hostile_topics(kind).filter(_deliverable))
    return topic, draw(payloads_for(kind))


@st.composite
def batches(draw: st.DrawFn) -> list[Message]:
    """Good messages with hostile ones drawn in between (the good ones keep their order)."""
    batch = good_messages(draw(st.integers(1, 4)))
    for _ in range(draw(st.integers(1, 8))):
        batch.insert(draw(st.integers(0, len(batch))), draw(hostile_messages()))
    return batch


async def _run(data_dir: Path, batch: list[Message]) -> None:
    async with (
        SQLiteDocumentStore(data_dir / "aoc.sqlite3") as store,
        LocalObjectStore(data_dir / "objects") as objects,
    ):
        processor = Processor(
            store=store, objects=objects, rules=SpeedRules(), crash_dedup_s=60.0,
            maps_key=None, dead_letter_payload_bytes=64,
        )
        parsed: list[Parsed] = [parse(topic, payload, RECEIVED, LIMITS) for topic, payload in batch]
        plan = await processor.plan(parsed)
        await store.apply(plan.writes)
        processor.applied(plan)

        seen = set()
        for item, outcome in zip(parsed, plan.outcomes, strict=True):
            assert (outcome == Outcome.DEAD_LETTER) == (
                isinstance(item, Rejected) and (item.topic, item.payload) not in seen
            ), (item, outcome)
            if isinstance(item, Rejected):
                # One record per distinct message: a repeat in the batch is a duplicate.
                assert outcome in (Outcome.DEAD_LETTER, Outcome.DUPLICATE)
                seen.add((item.topic, item.payload))
        refused = {(item.topic, item.payload) for item in parsed if isinstance(item, Rejected)}
        letters = await store.find(Query(DEAD_LETTERS, limit=1000))
        assert len(letters.items) == len(refused)
        assert {doc["topic"] for doc in letters.items} == {topic for topic, _ in refused}

        # The good messages around the hostile ones are all processed.
        good_points = sum(topic == f"aoc/{GOOD}/tracking" for topic, _ in batch)
        points = await store.find(Query(TRACKINGS, ambulance_id=GOOD, limit=1000))
        assert len(points.items) == good_points
        crashes = await store.find(Query(CRASHES, ambulance_id=GOOD, limit=1000))
        assert len(crashes.items) == 1
        current = await store.get(IMAGES, GOOD)
        assert current is not None
        for key in current["images"].values():
            assert sniff(await objects.get(key)) is not None
        state = await store.get(AMBULANCES, GOOD)
        assert state is not None
        assert state["online"] is True


# Each example works in a directory of its own under tmp_path (never reused).
@settings(parent=bounded(25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_hostile_messages_are_dead_lettered_and_good_ones_stored(
    batch: list[Message], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    data_dir = root / "data"
    watch = Watch(data_dir, test_dir=tmp_path, base_dir=tmp_path_factory.getbasetemp())
    asyncio.run(_run(data_dir, batch))
    assert watch.escaped() == []
    shutil.rmtree(root)  # keeps the watched tree small over many examples


@pytest.mark.parametrize(
    "aid", [aid for aid in HOSTILE_IDS if "/" not in aid and _deliverable(f"aoc/{aid}/snap")]
)
def test_a_snap_under_a_hostile_id_writes_no_file(
    aid: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The id is the one part of an object key a device chooses.
    data_dir = tmp_path / "data"
    watch = Watch(data_dir, test_dir=tmp_path, base_dir=tmp_path_factory.getbasetemp())
    batch = [(f"aoc/{aid}/snap", TINY_JPEG), *good_messages(1)]
    asyncio.run(_run(data_dir, batch))
    assert watch.escaped() == []


@settings(parent=bounded(20), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=snap_bodies())
def test_hostile_image_names_write_no_file(
    body: dict[str, object], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    data_dir = root / "data"
    watch = Watch(data_dir, test_dir=tmp_path, base_dir=tmp_path_factory.getbasetemp())
    batch = [(f"aoc/{GOOD}/snap", encode(body)), *good_messages(1)]
    asyncio.run(_run(data_dir, batch))
    assert watch.escaped() == []
    shutil.rmtree(root)


def test_the_watch_sees_a_file_written_outside_the_data_directory(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The check every test above relies on can fail.
    data_dir = tmp_path / "data"
    watch = Watch(data_dir, test_dir=tmp_path, base_dir=tmp_path_factory.getbasetemp())
    (data_dir / "objects").mkdir(parents=True)
    (data_dir / "objects" / "inside.jpg").write_bytes(TINY_JPEG)
    assert watch.escaped() == []
    (tmp_path / "escaped.jpg").write_bytes(TINY_JPEG)
    assert watch.escaped() == [tmp_path / "escaped.jpg"]
