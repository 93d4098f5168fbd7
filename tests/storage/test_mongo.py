"""MongoDB-specific behaviour: indexes, driver quirks and unreachable servers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import mongomock
import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    InvalidOperation,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from storage.base import COLLECTIONS, TIME_FIELDS, TRACKINGS, Query, StoreUnavailable, Write
from storage.mongo import MongoDocumentStore, _transient
from tests.services import free_port


async def test_mongomock_indexes_cover_ambulance_time_and_id(
    mongomock_client: Any,
) -> None:
    """Test that open() creates the (ambulance_id, time field, _id) index on every collection."""
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_v2"):
        pass
    db = mongomock_client["aoc_v2"]
    for name in COLLECTIONS:
        keys = {tuple(k for k, _ in spec["key"]) for spec in db[name].index_information().values()}
        assert ("ambulance_id", TIME_FIELDS[name], "_id") in keys, name
        assert (TIME_FIELDS[name], "_id") in keys, name


async def test_mongomock_naive_datetimes_are_returned_as_utc(
    monkeypatch: pytest.MonkeyPatch, mongomock_client: Any
) -> None:
    """Test that a driver returning naive datetimes (tz_aware=False) still yields aware UTC."""
    naive_client: Any = mongomock.MongoClient()  # the fixture installed the bulk_write shim
    at = datetime(2026, 11, 29, 4, 33, 12, 345000, tzinfo=UTC)
    doc = {"_id": "a", "ambulance_id": "332", "count_datetime": at, "n": [{"at": at}]}
    async with MongoDocumentStore(lambda: naive_client) as store:
        await store.apply([Write(TRACKINGS, "insert", doc)])
        raw = naive_client["aoc_v2"][TRACKINGS].find_one({"_id": "a"})
        assert raw is not None and raw["count_datetime"].tzinfo is None  # what the driver gives
        assert await store.get(TRACKINGS, "a") == doc
        found = (await store.find(Query(TRACKINGS))).items[0]
        assert found["n"][0]["at"].tzinfo is not None


async def test_unreachable_server_raises_store_unavailable_fast() -> None:
    """Test that a real pymongo client with no server behind it fails fast and retryably."""
    url = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    store = MongoDocumentStore.from_url(url, database="aoc_test")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="MongoDB"):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.apply([Write(TRACKINGS, "insert", {"_id": "x"})])
    assert time.monotonic() - started < 10
    await store.close()
    await store.close()


def test_transient_errors_are_classified() -> None:
    """Test that connection, timeout and write-concern errors are retryable, others are not."""
    retryable: tuple[PyMongoError, ...] = (
        AutoReconnect("reset"),
        NetworkTimeout("slow"),
        NotPrimaryError("stepped down"),
        ServerSelectionTimeoutError("no server"),
        WriteConcernError("w:majority timed out", 64, {}),
        OperationFailure("dup", code=11000),
        BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}),
        BulkWriteError({"writeErrors": [{"code": 11000}], "writeConcernErrors": []}),
    )
    for exc in retryable:
        assert _transient(exc), exc
    for exc in (
        InvalidOperation("cannot use a closed client"),
        OperationFailure("bad query", code=2),
        BulkWriteError({"writeErrors": [{"code": 2}], "writeConcernErrors": []}),
    ):
        assert not _transient(exc), exc


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"w": "majority", "j": True}),
        ("?w=1&journal=false", {"w": 1, "j": False}),
        ("?replicaSet=rs0&w=2", {"w": 2, "j": True}),
    ],
)
def test_writes_wait_for_the_journal_by_default(query: str, expected: dict[str, Any]) -> None:
    """Test the write concern the store's collections really use, and that the URL overrides it.

    With none set, a standalone mongod acknowledged writes before its journal
    was flushed: the bridge then acknowledged batches that a crash of mongod lost.
    """
    store = MongoDocumentStore.from_url(f"mongodb://127.0.0.1:{free_port()}/{query}")
    client = store._factory()  # no connection is made until a command runs
    try:
        assert client["aoc_v2"][TRACKINGS].write_concern.document == expected
    finally:
        client.close()
