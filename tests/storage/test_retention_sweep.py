"""The retention sweep end to end: records and image objects, with a fixed ``now``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from aoc import metrics
from bridge.retention import KINDS, RetentionSweep, bounds
from storage.base import (
    ALARMS,
    AMBULANCES,
    AUDIT,
    CRASHES,
    EVENTS,
    IMAGE_HISTORIES,
    IMAGES,
    STOPS,
    TIME_FIELDS,
    TRACKINGS,
    TRIPS,
    DocumentStore,
    ObjectStore,
    Query,
    Write,
)
from storage.localfs import LocalObjectStore
from storage.mongo import MongoDocumentStore
from storage.sqlite import SQLiteDocumentStore
from tests.storage.test_documents import T0, all_docs
from tests.storage.test_objects import JPEG

DAYS = dict.fromkeys(KINDS, 30.0)
NOW = T0 + timedelta(days=40)
BOUND = NOW - timedelta(days=30)  # T0 + 10 days
OLD, AT_BOUND, NEW = T0, BOUND, T0 + timedelta(days=20)


def key(aid: str, at: datetime, n: int) -> str:
    return f"ambulance_images/{aid}/{at:%Y/%m/%d/%H_%M/%M_%S}_{n:04d}.jpg"


def doc(collection: str, doc_id: str, at: datetime, aid: str = "332", **extra: Any) -> Write:
    body = {"_id": doc_id, "ambulance_id": aid, TIME_FIELDS[collection]: at, **extra}
    return Write(collection, "upsert", body)


async def ids(store: DocumentStore, collection: str) -> list[str]:
    return sorted(d["_id"] for d in await all_docs(store, Query(collection, limit=1000)))


async def fill(store: DocumentStore, objects: ObjectStore, aid: str) -> dict[str, list[str]]:
    """Old, at-the-bound and new records of every kind; the snapshots' images. Their keys."""
    old_keys = [key(aid, OLD, n) for n in range(3)]
    bound_keys = [key(aid, AT_BOUND, 0)]
    new_keys = [key(aid, NEW, 0)]
    for k in old_keys + bound_keys + new_keys:
        await objects.put(k, JPEG, "image/jpeg")
    images = {f"image{n}": k for n, k in enumerate(old_keys[:2])}
    writes = [
        *(doc(TRACKINGS, f"t-old-{n}", OLD + timedelta(seconds=n)) for n in range(5)),
        doc(TRACKINGS, "t-bound", AT_BOUND),
        doc(TRACKINGS, "t-new", NEW),
        doc(IMAGE_HISTORIES, "s-old", OLD, images=images),
        doc(IMAGE_HISTORIES, "s-old-2", OLD + timedelta(seconds=1),
            images={"image0": old_keys[2]}),
        doc(IMAGE_HISTORIES, "s-bound", AT_BOUND, images={"image0": bound_keys[0]}),
        doc(IMAGE_HISTORIES, "s-new", NEW, images={"image0": new_keys[0]}),
        # The current images of an ambulance last heard of long ago, and of one seen lately.
        doc(IMAGES, "gone-aid", OLD, aid="gone-aid", images=images),
        doc(IMAGES, aid, NEW, aid=aid, images={"image0": new_keys[0]}),
        doc(CRASHES, "c-old", OLD), doc(CRASHES, "c-new", NEW),
        doc(AUDIT, "a-old", OLD), doc(AUDIT, "a-new", NEW),
        doc(TRIPS, "trip-old", OLD), doc(TRIPS, "trip-new", NEW),
        doc(STOPS, "stop-old", OLD), doc(EVENTS, "e-old", OLD),
        # Never expired: alarms (an old one may be open) and ambulance states.
        doc(ALARMS, "alarm-old", OLD, state="open"), doc(AMBULANCES, "state-old", OLD),
    ]
    await store.apply(writes)
    return {"old": old_keys, "kept": bound_keys + new_keys}


def deleted_metric(kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value("aoc_retention_deleted_total", {"kind": kind})
    return value or 0.0


async def test_sweep_deletes_exactly_what_is_older_with_its_images(
    object_store: ObjectStore, tmp_path: Path, ambulance_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test a sweep on SQLite and object storage (local, SeaweedFS) in steps of 2 records."""
    caplog.set_level(logging.INFO, logger="bridge.retention")
    async with SQLiteDocumentStore(tmp_path / "store.db") as store:
        keys = await fill(store, object_store, ambulance_id)
        before = {kind: deleted_metric(kind) for kind in ("tracking", "images", "reports")}
        sweep = RetentionSweep(
            store=store, objects=object_store, days=DAYS, batch=2, pause=0, now=lambda: NOW
        )
        deleted = await sweep.sweep()
        assert deleted == {"tracking": 5, "snapshots": 3, "images": 3, "crashes": 1, "audit": 1,
                           "reports": 3}
        assert await ids(store, TRACKINGS) == ["t-bound", "t-new"]
        assert await ids(store, IMAGE_HISTORIES) == ["s-bound", "s-new"]
        assert await ids(store, IMAGES) == [ambulance_id]
        assert await ids(store, CRASHES) == ["c-new"]
        assert await ids(store, AUDIT) == ["a-new"]
        assert await ids(store, TRIPS) == ["trip-new"]
        assert await ids(store, STOPS) == await ids(store, EVENTS) == []
        assert await ids(store, ALARMS) == ["alarm-old"]
        assert await ids(store, AMBULANCES) == ["state-old"]
        for k in keys["old"]:
            assert not await object_store.exists(k), k
        for k in keys["kept"]:
            assert await object_store.get(k) == JPEG, k
        assert deleted_metric("tracking") - before["tracking"] == 5
        assert deleted_metric("images") - before["images"] == 3
        assert deleted_metric("reports") - before["reports"] == 3
        lines = [r.getMessage() for r in caplog.records if r.name == "bridge.retention"]
        assert lines == ["retention: deleted 5 tracking, 3 snapshots, 3 images, 1 crashes,"
                         " 1 audit, 3 reports"]
        # Nothing left to delete: an empty result and no line.
        assert await sweep.sweep() == {}
        assert len([r for r in caplog.records if r.name == "bridge.retention"]) == 1


async def test_nothing_is_deleted_unless_configured(tmp_path: Path, ambulance_id: str) -> None:
    """Test that the default (0 days for every kind) keeps every record and image."""
    objects = LocalObjectStore(tmp_path / "objects")
    async with SQLiteDocumentStore(tmp_path / "store.db") as store, objects:
        keys = await fill(store, objects, ambulance_id)
        sweep = RetentionSweep(store=store, objects=objects, days=dict.fromkeys(KINDS, 0.0),
                               now=lambda: NOW)
        assert await sweep.sweep() == {}
        assert len(await ids(store, TRACKINGS)) == 7
        for k in keys["old"]:
            assert await objects.exists(k)


async def test_each_kind_has_its_own_bound(tmp_path: Path, ambulance_id: str) -> None:
    """Test that reports may outlive the points they came from."""
    objects = LocalObjectStore(tmp_path / "objects")
    async with SQLiteDocumentStore(tmp_path / "store.db") as store, objects:
        await fill(store, objects, ambulance_id)
        days = {**dict.fromkeys(KINDS, 0.0), "tracking": 30.0, "reports": 365.0}
        sweep = RetentionSweep(store=store, objects=objects, days=days, now=lambda: NOW)
        assert await sweep.sweep() == {"tracking": 5}
        assert await ids(store, TRIPS) == ["trip-new", "trip-old"]
        assert await ids(store, IMAGE_HISTORIES) == ["s-bound", "s-new", "s-old", "s-old-2"]
    with pytest.raises(ValueError, match="unknown retention kinds"):
        RetentionSweep(store=store, objects=objects, days={"points": 1.0})
    assert bounds({"tracking": 2.0})[TRACKINGS] == timedelta(days=2)
    assert bounds({"tracking": 2.0})[TRIPS] is None


async def test_mongomock_ttl_collections_are_left_to_the_server_snapshots_swept(
    mongomock_client: Any, tmp_path: Path, ambulance_id: str
) -> None:
    """Test (on mongomock) that the sweep skips what TTL indexes expire, and sweeps snapshots.

    mongomock's TTL runs on the real clock: the records, a few weeks old at
    most, are not yet expired by it, so the sweep's fixed ``now`` shows the split.
    """
    objects = LocalObjectStore(tmp_path / "objects")
    store = MongoDocumentStore(lambda: mongomock_client, database="aoc_test")
    async with store, objects:
        keys = await fill(store, objects, ambulance_id)
        sweep = RetentionSweep(store=store, objects=objects, days=DAYS, now=lambda: NOW)
        assert await sweep.sweep() == {"snapshots": 3, "images": 3}
        assert "retention" in mongomock_client["aoc_test"][TRACKINGS].index_information()
        assert await ids(store, IMAGE_HISTORIES) == ["s-bound", "s-new"]
        for k in keys["old"]:
            assert not await objects.exists(k)
        for k in keys["kept"]:
            assert await objects.exists(k)


async def test_run_sweeps_at_once_and_stops(tmp_path: Path, ambulance_id: str) -> None:
    """Test the loop `aoc serve` and `aoc bridge` run: a sweep at start, then until stop."""
    objects = LocalObjectStore(tmp_path / "objects")
    async with SQLiteDocumentStore(tmp_path / "store.db") as store, objects:
        await fill(store, objects, ambulance_id)
        sweep = RetentionSweep(store=store, objects=objects, days=DAYS, every=3600,
                               now=lambda: NOW)
        swept = asyncio.Event()
        once = sweep.sweep

        async def sweep_and_tell() -> dict[str, int]:
            deleted = await once()
            swept.set()
            return deleted

        sweep.sweep = sweep_and_tell  # type: ignore[method-assign]
        task = asyncio.create_task(sweep.run())
        await asyncio.wait_for(swept.wait(), timeout=30)
        assert await ids(store, TRACKINGS) == ["t-bound", "t-new"]
        sweep.stop()
        await asyncio.wait_for(task, timeout=30)  # not an hour: stop wakes it


async def test_run_survives_an_outage_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a store that cannot be reached skips sweeps with one warning, not one each."""
    store = SQLiteDocumentStore(tmp_path / "store.db")  # never opened: every call is an outage
    objects = LocalObjectStore(tmp_path / "objects")
    sweep = RetentionSweep(store=store, objects=objects, days=DAYS, every=0.01, now=lambda: NOW)
    tried = 0
    three = asyncio.Event()
    once = sweep.sweep

    async def counted() -> dict[str, int]:
        nonlocal tried
        tried += 1
        if tried == 3:
            three.set()
        return await once()

    sweep.sweep = counted  # type: ignore[method-assign]
    task = asyncio.create_task(sweep.run())
    await asyncio.wait_for(three.wait(), timeout=30)
    sweep.stop()
    await asyncio.wait_for(task, timeout=30)
    warnings = [r.getMessage() for r in caplog.records if r.name == "bridge.retention"]
    assert len(warnings) == 1
    assert warnings[0].startswith("retention sweep failed, retrying every 0 s: ")


class RefusingStore(SQLiteDocumentStore):
    """A store whose backend refuses its expiry, as MongoDB refuses a conflicting index."""

    refused = 0

    async def set_retention(self, bounds: Mapping[str, timedelta | None]) -> frozenset[str]:
        self.refused += 1
        raise OperationFailure("Index already exists with a different name", code=85)


async def test_a_store_refusing_its_expiry_is_swept_instead_and_asked_again(
    tmp_path: Path, ambulance_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that set_retention failing (OperationFailure, code 85) does not stop expiry."""
    objects = LocalObjectStore(tmp_path / "objects")
    async with RefusingStore(tmp_path / "store.db") as store, objects:
        await fill(store, objects, ambulance_id)
        sweep = RetentionSweep(store=store, objects=objects, days=DAYS, now=lambda: NOW)
        deleted = await sweep.sweep()
        assert deleted["tracking"] == 5
        assert await ids(store, TRACKINGS) == ["t-bound", "t-new"]
        await sweep.sweep()
        assert store.refused == 2  # asked again on the next sweep
    errors = [r for r in caplog.records if r.name == "bridge.retention"]
    assert errors and all(r.levelno == logging.ERROR and r.exc_info for r in errors)


async def test_run_goes_on_after_an_unexpected_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a sweep failing with anything but an outage is logged; the next one runs."""
    objects = LocalObjectStore(tmp_path / "objects")
    async with SQLiteDocumentStore(tmp_path / "store.db") as store, objects:
        sweep = RetentionSweep(store=store, objects=objects, days=DAYS, every=0.01,
                               now=lambda: NOW)
        tried = 0
        again = asyncio.Event()

        async def failing_once() -> dict[str, int]:
            nonlocal tried
            tried += 1
            if tried == 1:
                raise OperationFailure("Index already exists with a different name", code=85)
            again.set()
            return {}

        sweep.sweep = failing_once  # type: ignore[method-assign]
        task = asyncio.create_task(sweep.run())
        await asyncio.wait_for(again.wait(), timeout=30)
        assert not task.done()
        sweep.stop()
        await asyncio.wait_for(task, timeout=30)
    messages = [r.getMessage() for r in caplog.records if r.name == "bridge.retention"]
    assert messages[0] == "retention sweep failed, retrying in 0 s"
    assert messages[1] == "retention sweep works again"
