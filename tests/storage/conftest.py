"""Fixtures for the storage contract suites: one store per backend, fresh per test."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import boto3
import mongomock
import pymongo
import pytest
from botocore.exceptions import BotoCoreError, ClientError
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
def mongomock_client(monkeypatch: pytest.MonkeyPatch) -> Any:
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
            admin: pymongo.MongoClient[dict[str, Any]]
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


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    """One bucket for the session's S3 tests.

    Every SeaweedFS bucket takes volumes of its own from a small shared pool, so
    tests share this one and keep apart by key (see ``ambulance_id``).
    """
    bucket = unique_bucket()
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key=secrets.token_hex(16),
    )
    deadline = time.monotonic() + 30
    while True:  # the S3 gateway may answer a moment after its port opens
        try:
            client.create_bucket(Bucket=bucket)
            return bucket
        except (ClientError, BotoCoreError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def ambulance_id() -> str:
    """An ambulance id of this test only: keys built from it do not collide across tests."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["localfs", pytest.param("s3", marks=pytest.mark.s3)])
async def object_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ObjectStore]:
    """An open object store: a local directory, or a bucket on a real SeaweedFS."""
    store: ObjectStore
    if request.param == "localfs":
        store = LocalObjectStore(tmp_path / "objects")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        store = s3_store(request.getfixturevalue("s3_endpoint"), bucket)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
