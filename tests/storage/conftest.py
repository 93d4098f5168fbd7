"""Fixtures for the storage contract suites: one store per backend, fresh per test."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import mongomock
import pymongo
import pytest
from botocore.exceptions import ClientError
from mongomock.collection import BulkOperationBuilder

from storage.base import DocumentStore, ObjectStore, StoreUnavailable
from storage.localfs import LocalObjectStore
from storage.mongo import MongoDocumentStore
from storage.s3 import S3ObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services

MONGODB_URI_ENV = "AOC_TEST_MONGODB_URI"


def _drop_sort(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        assert sort is None, "the store never sends a sorted single-document update"
        return method(self, *args, **kwargs)

    return wrapper


@pytest.fixture
def mongomock_client(monkeypatch: pytest.MonkeyPatch) -> mongomock.MongoClient:
    """A mongomock client, the stand-in for a MongoDB server (none can run here).

    pymongo >= 4.11 passes ``sort=`` to the bulk builder, which mongomock 4.3
    predates; the shim drops it (always None for our writes) so the store's
    real ``bulk_write`` code path runs unchanged.
    """
    for name in ("add_update", "add_replace"):
        original = getattr(BulkOperationBuilder, name)
        monkeypatch.setattr(BulkOperationBuilder, name, _drop_sort(original))
    return mongomock.MongoClient(tz_aware=True)


@pytest.fixture(
    params=["sqlite", "mongomock", pytest.param("mongodb", marks=pytest.mark.mongo)]
)
async def doc_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocumentStore]:
    """An open document store: SQLite, MongoDB via mongomock, or a real MongoDB."""
    backend = request.param
    store: DocumentStore
    if backend == "sqlite":
        store = SQLiteDocumentStore(tmp_path / "store.db", busy_timeout=0.2)
        async with store:
            yield store
    elif backend == "mongomock":
        client = request.getfixturevalue("mongomock_client")
        store = MongoDocumentStore(lambda: client, database="aoc_test")
        async with store:
            yield store
    else:
        uri = os.environ.get(MONGODB_URI_ENV)
        if not uri:
            pytest.skip(f"set {MONGODB_URI_ENV} to run the contract suite against a real MongoDB")
        database = f"aoc_test_{uuid.uuid4().hex[:12]}"
        store = MongoDocumentStore.from_url(uri, database=database)
        try:
            async with store:
                yield store
        finally:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as admin:
                admin.drop_database(database)


@pytest.fixture(scope="session")
def s3_endpoint(seaweedfs: services.Service) -> str:
    return f"http://127.0.0.1:{seaweedfs.port}"


def s3_store(endpoint: str, bucket: str, **kwargs: Any) -> S3ObjectStore:
    """An S3 store on the test SeaweedFS, which accepts any credentials: made up here."""
    return S3ObjectStore(
        bucket,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key=f"test-{secrets.token_hex(4)}",
        secret_key=secrets.token_hex(16),
        **kwargs,
    )


async def open_s3(store: S3ObjectStore, within: float = 30.0) -> None:
    """Open ``store``, retrying while SeaweedFS's S3 gateway finishes starting."""
    deadline = time.monotonic() + within
    while True:
        try:
            await store.open()
            return
        except (StoreUnavailable, ClientError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def unique_bucket() -> str:
    return f"aoc-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["localfs", pytest.param("s3", marks=pytest.mark.s3)])
async def object_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ObjectStore]:
    """An open object store: a local directory, or a bucket on a real SeaweedFS."""
    store: ObjectStore
    if request.param == "localfs":
        store = LocalObjectStore(tmp_path / "objects")
        await store.open()
    else:
        s3 = s3_store(request.getfixturevalue("s3_endpoint"), unique_bucket())
        await open_s3(s3)
        store = s3
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def unique_prefix() -> Iterator[str]:
    yield f"aoc-test-{uuid.uuid4().hex[:8]}"
