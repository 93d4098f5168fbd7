"""The document store contract for whole-collection scans and cursors (every backend)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storage import codec
from storage.base import AMBULANCES, DEAD_LETTERS, TRACKINGS, DocumentStore, Page, Query, Write

T0 = datetime(2026, 11, 29, 4, 33, 12, 345000, tzinfo=UTC)


def state(n: int, *, seconds: int | None = None) -> dict[str, Any]:
    """An ambulance state; ``seconds=None`` leaves out ``last_seen`` (the time field)."""
    doc: dict[str, Any] = {"_id": f"a{n:03d}", "ambulance_id": f"a{n:03d}", "speed": n}
    if seconds is not None:
        doc["last_seen"] = T0 + timedelta(seconds=seconds)
    return doc


def fleet(timed: int, untimed: int) -> list[dict[str, Any]]:
    """States in ``find``'s order: untimed first (by _id), then by time, ties by _id."""
    docs = [state(n) for n in range(untimed)]
    return docs + [state(untimed + n, seconds=n // 2) for n in range(timed)]


async def store_all(store: DocumentStore, docs: list[dict[str, Any]], collection: str) -> None:
    await store.apply([Write(collection, "upsert", doc) for doc in reversed(docs)])


def spy_on_find(store: DocumentStore, monkeypatch: pytest.MonkeyPatch) -> list[Page]:
    """The pages ``store.find`` returns from now on (the real find still answers)."""
    pages: list[Page] = []
    real_find = store.find

    async def find(query: Query) -> Page:
        page = await real_find(query)
        pages.append(page)
        return page

    monkeypatch.setattr(store, "find", find)
    return pages


@pytest.mark.parametrize("page_size", [1, 4, 5, 6, 1000])
async def test_scan_returns_every_document_once_in_order(
    doc_store: DocumentStore, monkeypatch: pytest.MonkeyPatch, page_size: int
) -> None:
    """Test that scan reads a whole collection in find's order, page_size per read.

    Ten documents: 5 and 10 are page boundaries, 4 and 6 fall on either side of
    one, 1 and 1000 are the extremes. Two have no time field (they come first)
    and times repeat (ties go by _id).
    """
    docs = fleet(timed=8, untimed=2)
    await store_all(doc_store, docs, AMBULANCES)
    await store_all(doc_store, [{"_id": "dl1", "received_at": T0}], DEAD_LETTERS)
    pages = spy_on_find(doc_store, monkeypatch)
    scanned = [doc async for doc in doc_store.scan(AMBULANCES, page_size=page_size)]
    assert scanned == docs
    # One read per page and none more: a full last page says there is no next one.
    assert [len(page.items) for page in pages] == [
        min(page_size, len(docs) - start) for start in range(0, len(docs), page_size)
    ]
    assert pages[-1].next_cursor is None


async def test_scan_of_untimed_documents_only(doc_store: DocumentStore) -> None:
    """Test that documents without the time field are all scanned, across pages, by _id."""
    docs = fleet(timed=0, untimed=7)
    await store_all(doc_store, docs, AMBULANCES)
    assert [doc async for doc in doc_store.scan(AMBULANCES, page_size=3)] == docs


async def test_scan_of_an_empty_collection(
    doc_store: DocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that scanning an empty collection yields nothing, in one read."""
    await store_all(doc_store, fleet(timed=3, untimed=1), AMBULANCES)
    pages = spy_on_find(doc_store, monkeypatch)
    assert [doc async for doc in doc_store.scan(TRACKINGS)] == []
    assert len(pages) == 1


async def test_scan_refuses_bad_arguments(doc_store: DocumentStore) -> None:
    """Test that a page size below 1 and an unknown collection are ValueErrors."""
    with pytest.raises(ValueError, match="page_size"):
        async for _ in doc_store.scan(AMBULANCES, page_size=0):
            pass
    with pytest.raises(ValueError, match="unknown collection"):
        async for _ in doc_store.scan("users"):
            pass


@pytest.mark.parametrize(
    ("cursor", "message"),
    [
        ("not a cursor!", codec.INVALID_CURSOR),
        (codec.encode_cursor(["cache", "a001"]), codec.INVALID_CURSOR),  # a fleet listing's
        (codec.encode_cursor(["store", codec.encode_cursor([None, "a"])]), codec.INVALID_CURSOR),
        (codec.encode_cursor(["2026-13-45T00:00:00Z", "a001"]), codec.INVALID_CURSOR),
        (codec.encode_cursor([10**30, "a001"]), codec.INVALID_CURSOR),
        (codec.encode_cursor([1.5]), codec.INVALID_CURSOR),
        (codec.encode_cursor([None, "a001", "x"]), codec.INVALID_CURSOR),
        (codec.encode_cursor([None, 7]), codec.INVALID_CURSOR),
        (codec.encode_cursor([True, "a001"]), "invalid cursor: holds a bool value"),
    ],
    ids=["garbage", "fleet-cursor", "nested-cursor", "bad-date", "huge-epoch", "short", "long",
         "numeric-id", "bool"],
)
async def test_foreign_cursor_is_refused_alike_by_every_backend(
    doc_store: DocumentStore, cursor: str, message: str
) -> None:
    """Test that a token find never gave is a ValueError with the same message everywhere."""
    await store_all(doc_store, fleet(timed=3, untimed=1), AMBULANCES)
    with pytest.raises(ValueError) as refused:
        await doc_store.find(Query(AMBULANCES, cursor=cursor))
    assert str(refused.value) == message


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest_first", "newest_first"])
async def test_epoch_seconds_cursor_continues_where_it_left_off(
    doc_store: DocumentStore, newest_first: bool
) -> None:
    """Test that a cursor holding epoch seconds (SQLite's before it shared its paging) still works.

    Every backend reads every backend's cursors, so a listing begun before an
    upgrade, or against another backend, goes on at the same document.
    """
    docs = fleet(timed=6, untimed=2)
    await store_all(doc_store, docs, AMBULANCES)
    if newest_first:
        docs.reverse()
    for limit in (1, 3, 5):  # ends on an untimed document (1 oldest first) and timed ones
        first = await doc_store.find(Query(AMBULANCES, limit=limit, newest_first=newest_first))
        assert first.next_cursor is not None
        time, last_id = codec.decode_cursor(first.next_cursor)
        epoch = None if time is None else codec.parse_datetime(time).timestamp()
        old_style = codec.encode_cursor([epoch, last_id])
        rest = await doc_store.find(
            Query(AMBULANCES, limit=100, newest_first=newest_first, cursor=old_style)
        )
        assert first.items + rest.items == docs, f"limit={limit}"
