"""Retention in the document stores: ``expire`` on every backend, MongoDB's TTL indexes."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta
from typing import Any

import mongomock
import pymongo
import pytest
from pymongo.errors import OperationFailure

from storage.base import (
    AUDIT,
    IMAGE_HISTORIES,
    IMAGES,
    TRACKINGS,
    TRIPS,
    DocumentStore,
    Query,
    Write,
)
from storage.mongo import RETENTION_INDEX, MongoDocumentStore, ttl_steps
from tests.storage.conftest import MONGODB_URI_ENV
from tests.storage.test_documents import T0, all_docs, ins, tracking


async def ids(store: DocumentStore, collection: str = TRACKINGS) -> list[str]:
    return [d["_id"] for d in await all_docs(store, Query(collection, limit=1000))]


async def test_expire_removes_exactly_what_is_older_than_the_bound(
    doc_store: DocumentStore,
) -> None:
    """Test that expire deletes the documents before the bound, keeps one exactly at it."""
    await doc_store.apply([ins(tracking(n)) for n in range(6)])
    untimed = {"_id": "332:untimed", "ambulance_id": "332", "speed": 1.0}
    await doc_store.apply([ins(untimed), ins({**tracking(0), "_id": "other"}, AUDIT)])
    bound = T0 + timedelta(seconds=3)  # tracking(3) is exactly at it
    gone = await doc_store.expire(TRACKINGS, bound, limit=100)
    assert gone == [tracking(0), tracking(1), tracking(2)]  # whole documents, oldest first
    assert await ids(doc_store) == ["332:untimed", "332:0003", "332:0004", "332:0005"]
    assert await doc_store.expire(TRACKINGS, bound, limit=100) == []
    # A millisecond past the bound goes; another collection is left alone.
    assert await doc_store.expire(TRACKINGS, bound + timedelta(milliseconds=1), limit=9) == [
        tracking(3)
    ]
    assert await ids(doc_store, AUDIT) == ["other"]


async def test_expire_works_in_limited_steps(doc_store: DocumentStore) -> None:
    """Test that each call deletes at most ``limit``, the oldest first, until none is left."""
    docs = [tracking(n, aid=aid) for n in range(4) for aid in ("332", "77")]
    await doc_store.apply([ins(d) for d in docs])
    bound = T0 + timedelta(seconds=3, milliseconds=500)  # every one is older
    steps = []
    while batch := await doc_store.expire(TRACKINGS, bound, limit=3):
        steps.append([d["_id"] for d in batch])
    assert steps == [
        ["332:0000", "77:0000", "332:0001"],
        ["77:0001", "332:0002", "77:0002"],
        ["332:0003", "77:0003"],
    ]
    assert await ids(doc_store) == []
    with pytest.raises(ValueError, match="limit"):
        await doc_store.expire(TRACKINGS, bound, limit=0)
    with pytest.raises(ValueError, match="unknown collection"):
        await doc_store.expire("users", bound, limit=1)


async def test_expire_reads_the_time_field_of_each_collection(doc_store: DocumentStore) -> None:
    """Test that a trip is aged by its start (``started_at``), not by any other date in it."""
    old = {"_id": "332.trip.1", "ambulance_id": "332", "started_at": T0,
           "ended_at": T0 + timedelta(days=30)}
    new = {**old, "_id": "332.trip.2", "started_at": T0 + timedelta(days=2)}
    await doc_store.apply([Write(TRIPS, "upsert", old), Write(TRIPS, "upsert", new)])
    gone = await doc_store.expire(TRIPS, T0 + timedelta(days=1), limit=10)
    assert [d["_id"] for d in gone] == ["332.trip.1"]
    assert await ids(doc_store, TRIPS) == ["332.trip.2"]


async def test_set_retention_names_what_the_backend_expires_itself(
    doc_store: DocumentStore,
) -> None:
    """Test that set_retention names the collections the backend expires on its own."""
    enforced = await doc_store.set_retention(
        {TRACKINGS: timedelta(days=30), IMAGE_HISTORIES: timedelta(days=30), AUDIT: None}
    )
    if isinstance(doc_store, MongoDocumentStore):
        assert enforced == {TRACKINGS}  # snapshots are the sweep's: their images go first
    else:
        assert enforced == frozenset()


def retention_index(db: Any, collection: str) -> Any:
    return db[collection].index_information().get(RETENTION_INDEX)


async def test_mongomock_ttl_indexes_follow_the_bounds(mongomock_client: Any) -> None:
    """Test (on mongomock) that set_retention creates TTL indexes, skips snapshots, drops at 0."""
    db = mongomock_client["aoc_test"]
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_test") as store:
        enforced = await store.set_retention({
            TRACKINGS: timedelta(days=30), TRIPS: timedelta(days=400),
            IMAGE_HISTORIES: timedelta(days=30), IMAGES: timedelta(days=30), AUDIT: None,
        })
        assert enforced == {TRACKINGS, TRIPS}
        index = retention_index(db, TRACKINGS)
        assert index["key"] == [("count_datetime", 1)]
        assert index["expireAfterSeconds"] == 30 * 86_400
        assert retention_index(db, TRIPS)["expireAfterSeconds"] == 400 * 86_400
        assert retention_index(db, TRIPS)["key"] == [("started_at", 1)]
        for collection in (IMAGE_HISTORIES, IMAGES, AUDIT):
            assert retention_index(db, collection) is None
        # Retention set back to 0 (None): the index goes; unnamed collections stay as they are.
        assert await store.set_retention({TRACKINGS: None}) == frozenset()
        assert retention_index(db, TRACKINGS) is None
        assert retention_index(db, TRIPS) is not None


async def test_mongomock_snapshot_ttl_index_left_by_hand_is_dropped(mongomock_client: Any) -> None:
    """Test that a TTL index on snapshot records (which would orphan images) is removed."""
    db = mongomock_client["aoc_test"]
    db[IMAGE_HISTORIES].create_index(
        [("createdAt", 1)], name=RETENTION_INDEX, expireAfterSeconds=60
    )
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_test") as store:
        assert await store.set_retention({IMAGE_HISTORIES: timedelta(days=1)}) == frozenset()
    assert retention_index(db, IMAGE_HISTORIES) is None


def test_ttl_index_spec_changes() -> None:
    """Test the steps the code plans: which turn the indexes into the wanted TTL index.

    mongomock has no ``collMod``: the "modify" steps run against a real
    server only (``test_real_mongodb_ttl_index_is_modified_in_place``).
    """
    day = 86_400
    key: list[tuple[str, Any]] = [("count_datetime", 1)]
    ttl: dict[str, Any] = {"key": key, "expireAfterSeconds": day}
    plain: dict[str, dict[str, Any]] = {
        "_id_": {"key": [("_id", 1)]}, "time_id": {"key": [*key, ("_id", 1)]},
    }
    ours = {**plain, RETENTION_INDEX: ttl}
    assert ttl_steps(plain, "count_datetime", day) == [("create", RETENTION_INDEX)]
    assert ttl_steps(ours, "count_datetime", day) == []
    assert ttl_steps(ours, "count_datetime", 2 * day) == [("modify", RETENTION_INDEX)]
    elsewhere = {**plain, RETENTION_INDEX: {**ttl, "key": [("createdAt", 1)]}}
    assert ttl_steps(elsewhere, "count_datetime", day) == [
        ("drop", RETENTION_INDEX), ("create", RETENTION_INDEX),
    ]
    assert ttl_steps(ours, "count_datetime", None) == [("drop", RETENTION_INDEX)]
    assert ttl_steps(plain, "count_datetime", None) == []
    # Made by hand under another name: changed in place, or replaced if not a TTL index.
    by_hand = {**plain, "count_datetime_1": {"key": [("count_datetime", 1.0)],
                                             "expireAfterSeconds": 60}}
    assert ttl_steps(by_hand, "count_datetime", day) == [("modify", "count_datetime_1")]
    assert ttl_steps(by_hand, "count_datetime", None) == [("drop", "count_datetime_1")]
    both = {**ours, **by_hand}
    assert ttl_steps(both, "count_datetime", day) == [("drop", "count_datetime_1")]
    no_ttl = {**plain, "c": {"key": key}}
    assert ttl_steps(no_ttl, "count_datetime", day) == [
        ("drop", "c"), ("create", RETENTION_INDEX),
    ]
    # Snapshot collections: every TTL index goes, whatever its key or name.
    assert ttl_steps({**both, "x": {"key": [("x", -1)], "expireAfterSeconds": 1}},
                     "createdAt", None, any_ttl=True) == [
        ("drop", RETENTION_INDEX), ("drop", "count_datetime_1"), ("drop", "x"),
    ]


@pytest.mark.mongo
async def test_real_mongodb_ttl_index_is_modified_in_place() -> None:
    """Test against a real MongoDB: create, change with collMod, drop; the server expires."""
    uri = os.environ.get(MONGODB_URI_ENV)
    if not uri:
        pytest.skip(f"set {MONGODB_URI_ENV} to test TTL indexes against a real MongoDB")
    database = f"aoc_test_{uuid.uuid4().hex[:12]}"
    store = MongoDocumentStore.from_url(uri, database=database)
    admin: pymongo.MongoClient[dict[str, Any]]
    try:
        async with store:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as admin:
                db = admin[database]
                await store.set_retention({TRACKINGS: timedelta(days=30)})
                assert retention_index(db, TRACKINGS)["expireAfterSeconds"] == 30 * 86_400
                await store.set_retention({TRACKINGS: timedelta(days=7)})
                assert retention_index(db, TRACKINGS)["expireAfterSeconds"] == 7 * 86_400
                await store.set_retention({TRACKINGS: None})
                assert retention_index(db, TRACKINGS) is None
    finally:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as admin:
            admin.drop_database(database)


def ttl_indexes(db: Any, collection: str) -> dict[str, Any]:
    """The TTL indexes of ``collection``, whatever their names: name -> (key, seconds)."""
    return {
        name: (info["key"], info["expireAfterSeconds"])
        for name, info in db[collection].index_information().items()
        if "expireAfterSeconds" in info
    }


async def test_mongomock_an_index_made_by_hand_on_the_time_field_is_reused_not_doubled(
    mongomock_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that an index on the time field under another name is the one set_retention manages.

    A real MongoDB refuses a second index on the same key (IndexOptionsConflict):
    a hand-made TTL index is kept (collMod changes it), a plain one is replaced.
    """
    caplog.set_level(logging.INFO, logger="storage.mongo")
    db = mongomock_client["aoc_test"]
    month = 30 * 86_400
    db[TRACKINGS].create_index([("count_datetime", 1)], expireAfterSeconds=month)
    db[TRIPS].create_index([("started_at", 1)], name="by_start")
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_test") as store:
        enforced = await store.set_retention(
            {TRACKINGS: timedelta(days=30), TRIPS: timedelta(days=400)}
        )
        assert enforced == {TRACKINGS, TRIPS}
        assert ttl_indexes(db, TRACKINGS) == {
            "count_datetime_1": ([("count_datetime", 1)], month)
        }
        assert ttl_indexes(db, TRIPS) == {RETENTION_INDEX: ([("started_at", 1)], 400 * 86_400)}
        assert "by_start" not in db[TRIPS].index_information()
        assert any("by_start" in r.getMessage() for r in caplog.records)
        # Retention 0: the hand-made TTL index goes too (the records are kept forever).
        assert await store.set_retention({TRACKINGS: None}) == frozenset()
        assert ttl_indexes(db, TRACKINGS) == {}


async def test_mongomock_one_collection_refused_leaves_the_others_set(
    mongomock_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that MongoDB refusing one index (code 85) is logged; the others are still set.

    The refused collection is not named as enforced: the sweep deletes its records itself.
    """
    db = mongomock_client["aoc_test"]
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_test") as store:
        create = mongomock.collection.Collection.create_index

        def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.name == TRACKINGS:
                raise OperationFailure("Index already exists with a different name", code=85)
            return create(self, *args, **kwargs)  # type: ignore[no-untyped-call]

        monkeypatch.setattr(mongomock.collection.Collection, "create_index", refuse)
        enforced = await store.set_retention(
            {TRACKINGS: timedelta(days=30), TRIPS: timedelta(days=400)}
        )
    assert enforced == {TRIPS}
    assert ttl_indexes(db, TRIPS) == {RETENTION_INDEX: ([("started_at", 1)], 400 * 86_400)}
    assert ttl_indexes(db, TRACKINGS) == {}
    assert any(TRACKINGS in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_mongomock_snapshot_ttl_index_under_any_name_is_dropped(
    mongomock_client: Any,
) -> None:
    """Test that a hand-made TTL index on snapshot records (``createdAt_1``) is dropped too."""
    db = mongomock_client["aoc_test"]
    db[IMAGE_HISTORIES].create_index([("createdAt", 1)], expireAfterSeconds=60)
    db[IMAGES].create_index([("createdAt", -1)], name="newest", expireAfterSeconds=60)
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_test") as store:
        enforced = await store.set_retention(
            {IMAGE_HISTORIES: timedelta(days=1), IMAGES: None}
        )
    assert enforced == frozenset()
    assert ttl_indexes(db, IMAGE_HISTORIES) == ttl_indexes(db, IMAGES) == {}
