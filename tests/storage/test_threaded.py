"""The threaded stores' shared lifecycle (SQLite, MongoDB): their own threads, open and close."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from storage.base import AMBULANCES, DocumentStore, Query, StoreUnavailable, Write
from storage.threaded import ThreadedDocumentStore

T0 = datetime(2026, 11, 29, 4, 33, 12, tzinfo=UTC)
STATE = {"_id": "a1", "ambulance_id": "a1", "last_seen": T0}


def threaded(store: DocumentStore) -> ThreadedDocumentStore[object]:
    assert isinstance(store, ThreadedDocumentStore)
    return store


async def test_driver_calls_run_on_the_store_threads(doc_store: DocumentStore) -> None:
    """Test that the driver is called on the store's named threads, never the event loop's."""
    store = threaded(doc_store)
    name = await store._run(lambda _: threading.current_thread().name)
    assert name.startswith(store.thread_name)
    assert name != threading.current_thread().name


async def test_closed_store_is_unavailable_and_reopens_with_its_data(
    doc_store: DocumentStore,
) -> None:
    """Test that after close() every call is StoreUnavailable, and open() brings it all back."""
    await doc_store.apply([Write(AMBULANCES, "upsert", STATE)])
    await doc_store.close()
    await doc_store.close()  # idempotent
    for call in (
        doc_store.ping(),
        doc_store.get(AMBULANCES, "a1"),
        doc_store.find(Query(AMBULANCES)),
        doc_store.apply([Write(AMBULANCES, "upsert", STATE)]),
    ):
        with pytest.raises(StoreUnavailable, match="not open"):
            await call
    await doc_store.open()
    assert await doc_store.get(AMBULANCES, "a1") == STATE
    assert [doc async for doc in doc_store.scan(AMBULANCES)] == [STATE]


async def test_close_lets_the_calls_already_queued_finish(doc_store: DocumentStore) -> None:
    """Test that close() runs after the calls queued before it, which all succeed."""
    store = threaded(doc_store)
    await store.apply([Write(AMBULANCES, "upsert", STATE)])
    gate = threading.Event()

    def held(_: object) -> None:
        gate.wait(timeout=30)  # released below; the bound only ends a broken run

    # The holders take every thread; the reads queue behind them, close() last.
    holders = [asyncio.ensure_future(store._run(held)) for _ in range(store.threads)]
    queued = [asyncio.ensure_future(store.get(AMBULANCES, "a1")) for _ in range(3 * store.threads)]
    await asyncio.sleep(0)  # every call is submitted to the store's threads
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*holders, closing)
    assert [await call for call in queued] == [STATE] * len(queued)
