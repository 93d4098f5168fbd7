"""The document store contract: every backend (SQLite, mongomock, real MongoDB) passes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import mongomock
import pymongo
import pytest

from bridge import late
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    SPEED_VIOLATIONS,
    TRACKINGS,
    Conflict,
    DocumentStore,
    Query,
    StoreUnavailable,
    Version,
    Write,
)
from storage.mongo import MongoDocumentStore
from storage.sqlite import SQLiteDocumentStore

T0 = datetime(2026, 11, 29, 4, 33, 12, 345000, tzinfo=UTC)


def tracking(
    n: int, *, aid: str = "332", seconds: float | None = None, **extra: Any
) -> dict[str, Any]:
    at = T0 + timedelta(seconds=n if seconds is None else seconds)
    return {
        "_id": f"{aid}:{n:04d}",
        "ambulance_id": aid,
        "location": {"lat": 13.75 + n / 1000, "lon": 100.5},
        "speed": 40.0 + n,
        "count_datetime": at,
        **extra,
    }


def ins(doc: dict[str, Any], collection: str = TRACKINGS) -> Write:
    return Write(collection, "insert", doc)


def ups(doc: dict[str, Any], collection: str = TRACKINGS) -> Write:
    return Write(collection, "upsert", doc)


async def all_docs(store: DocumentStore, query: Query) -> list[dict[str, Any]]:
    """Every document ``query`` matches, following cursors page by page."""
    docs: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        page = await store.find(
            Query(**{**{f: getattr(query, f) for f in query.__slots__}, "cursor": cursor})
        )
        docs.extend(page.items)
        if page.next_cursor is None:
            return docs
        cursor = page.next_cursor
    raise AssertionError("paging never ended")


async def test_insert_is_idempotent_and_first_wins(doc_store: DocumentStore) -> None:
    """Test that inserting the same _id twice stores it once, keeping the first version."""
    first = tracking(1)
    second = {**tracking(1), "speed": 99.0}
    await doc_store.apply([ins(first)])
    await doc_store.apply([ins(second), ins(first)])  # a redelivered batch
    stored = await doc_store.get(TRACKINGS, first["_id"])
    assert stored == first
    page = await doc_store.find(Query(TRACKINGS))
    assert [d["_id"] for d in page.items] == [first["_id"]]


async def test_upsert_replaces_the_whole_document(doc_store: DocumentStore) -> None:
    """Test that an upsert creates, then replaces (fields it lacks are gone)."""
    state = {"_id": "332", "ambulance_id": "332", "last_seen": T0, "speed": 10.0, "old": True}
    await doc_store.apply([ups(state, AMBULANCES)])
    newer = {"_id": "332", "ambulance_id": "332", "last_seen": T0 + timedelta(seconds=5),
             "speed": 20.0}
    await doc_store.apply([ups(newer, AMBULANCES)])
    assert await doc_store.get(AMBULANCES, "332") == newer


async def test_apply_mixed_batch_in_order(doc_store: DocumentStore) -> None:
    """Test that one batch of inserts and upserts over collections applies in order."""
    episode = {"_id": "sv:332:1", "ambulance_id": "332", "started_at": T0, "closed": False}
    closed = {**episode, "closed": True, "ended_at": T0 + timedelta(seconds=9)}
    crash = {"_id": "crash:332:1", "ambulance_id": "332", "count_datetime": T0, "speed": 70}
    batch = [
        ins(tracking(1)),
        ups(episode, SPEED_VIOLATIONS),
        ins(tracking(2)),
        ups(closed, SPEED_VIOLATIONS),   # a later upsert of the same _id wins
        ins(episode, SPEED_VIOLATIONS),  # an insert after it changes nothing
        ins(crash, CRASHES),
    ]
    await doc_store.apply(batch)
    await doc_store.apply(batch)  # replaying the batch is harmless
    assert await doc_store.get(SPEED_VIOLATIONS, "sv:332:1") == closed
    assert await doc_store.get(CRASHES, "crash:332:1") == crash
    assert [d["_id"] for d in (await doc_store.find(Query(TRACKINGS))).items] == [
        "332:0001", "332:0002",
    ]
    await doc_store.apply([])  # an empty batch is a no-op


async def test_get_and_existing_ids(doc_store: DocumentStore) -> None:
    """Test that get finds one document by _id and existing_ids reports the stored ones."""
    await doc_store.apply([ins(tracking(n)) for n in range(3)])
    assert await doc_store.get(TRACKINGS, "332:0001") == tracking(1)
    assert await doc_store.get(TRACKINGS, "332:9999") is None
    assert await doc_store.get(CRASHES, "332:0001") is None  # another collection
    ids = ["332:0000", "332:0002", "nope", "332:0002"]
    assert await doc_store.existing_ids(TRACKINGS, ids) == {"332:0000", "332:0002"}
    assert await doc_store.existing_ids(TRACKINGS, []) == set()
    many = [f"x{i}" for i in range(1200)] + ["332:0001"]  # more than one IN (...) chunk
    assert await doc_store.existing_ids(TRACKINGS, many) == {"332:0001"}


async def test_get_many_returns_the_stored_documents_by_id(doc_store: DocumentStore) -> None:
    """Test that get_many returns each stored document once, by _id, and leaves out the rest."""
    await doc_store.apply([ins(tracking(n)) for n in range(3)])
    ids = ["332:0002", "nope", "332:0000", "332:0002"]
    assert await doc_store.get_many(TRACKINGS, ids) == {
        "332:0000": tracking(0), "332:0002": tracking(2),
    }
    assert await doc_store.get_many(TRACKINGS, []) == {}
    assert await doc_store.get_many(CRASHES, ids) == {}  # another collection
    many = [f"x{i}" for i in range(1200)] + ["332:0001"]  # more than one IN (...) chunk
    assert await doc_store.get_many(TRACKINGS, many) == {"332:0001": tracking(1)}
    with pytest.raises(ValueError, match="unknown collection"):
        await doc_store.get_many("users", ["x"])


def dead_letter(n: int, *, at: datetime | None = None) -> dict[str, Any]:
    return {"_id": f"dl{n:04d}", "topic": "aoc/332/tracking", "reason": "bad",
            "received_at": at if at is not None else T0 + timedelta(seconds=n)}


async def dead_letter_ids(store: DocumentStore) -> list[str]:
    return [d["_id"] for d in await all_docs(store, Query(DEAD_LETTERS, limit=500))]


async def test_prune_by_age_deletes_what_is_older_than_the_cutoff(
    doc_store: DocumentStore,
) -> None:
    """Test that prune(before=) deletes the documents older than the cutoff, and only them."""
    await doc_store.apply([ins(dead_letter(n), DEAD_LETTERS) for n in range(5)])
    await doc_store.apply([ins(tracking(0))])  # another collection is left alone
    pruned = await doc_store.prune(DEAD_LETTERS, before=T0 + timedelta(seconds=3))
    assert (pruned.by_age, pruned.by_count) == (3, 0)
    assert await dead_letter_ids(doc_store) == ["dl0003", "dl0004"]
    assert (await doc_store.prune(DEAD_LETTERS, before=T0 + timedelta(seconds=3))).by_age == 0
    assert await doc_store.get(TRACKINGS, "332:0000") == tracking(0)


async def test_prune_by_count_keeps_the_newest(doc_store: DocumentStore) -> None:
    """Test that prune(keep=) keeps the newest documents, and drops untimed ones first."""
    docs = [dead_letter(n) for n in range(1, 6)]
    untimed = {"_id": "dl9999", "topic": "t", "reason": "old record without a time"}
    await doc_store.apply([ins(d, DEAD_LETTERS) for d in [*docs, untimed]])
    pruned = await doc_store.prune(DEAD_LETTERS, keep=5)
    assert (pruned.by_age, pruned.by_count) == (0, 1)
    assert await dead_letter_ids(doc_store) == [d["_id"] for d in docs]
    pruned = await doc_store.prune(DEAD_LETTERS, keep=2)
    assert pruned.by_count == 3
    assert await dead_letter_ids(doc_store) == ["dl0004", "dl0005"]
    assert (await doc_store.prune(DEAD_LETTERS, keep=2)).by_count == 0
    assert (await doc_store.prune(DEAD_LETTERS, keep=0)).by_count == 2
    assert await dead_letter_ids(doc_store) == []


async def test_prune_by_age_then_count(doc_store: DocumentStore) -> None:
    """Test that both bounds apply in one call, age first, over more than one id slice."""
    same_instant = [dead_letter(n, at=T0 + timedelta(hours=1)) for n in range(1, 1201)]
    await doc_store.apply([ins(d, DEAD_LETTERS) for d in [dead_letter(0, at=T0), *same_instant]])
    await doc_store.apply([ins(dead_letter(5000, at=T0 - timedelta(days=1)), DEAD_LETTERS)])
    pruned = await doc_store.prune(DEAD_LETTERS, before=T0 + timedelta(minutes=1), keep=100)
    assert (pruned.by_age, pruned.by_count) == (2, 1100)
    # Among documents of one instant, the higher _ids count as newer.
    assert await dead_letter_ids(doc_store) == [f"dl{n:04d}" for n in range(1101, 1201)]
    with pytest.raises(ValueError, match="keep"):
        await doc_store.prune(DEAD_LETTERS, keep=-1)
    with pytest.raises(ValueError, match="unknown collection"):
        await doc_store.prune("users", keep=1)


async def test_find_by_ambulance_and_time_range(doc_store: DocumentStore) -> None:
    """Test that find filters by ambulance, with `since` inclusive and `until` exclusive."""
    await doc_store.apply(
        [ins(tracking(n)) for n in range(10)] + [ins(tracking(n, aid="77")) for n in range(10)]
    )
    query = Query(TRACKINGS, ambulance_id="332", since=T0 + timedelta(seconds=2),
                  until=T0 + timedelta(seconds=5))
    page = await doc_store.find(query)
    assert [d["_id"] for d in page.items] == ["332:0002", "332:0003", "332:0004"]
    assert page.next_cursor is None
    everyone = await doc_store.find(Query(TRACKINGS, since=T0 + timedelta(seconds=9)))
    assert sorted(d["_id"] for d in everyone.items) == ["332:0009", "77:0009"]
    # A bound given in another time zone means the same instant.
    bangkok = timezone(timedelta(hours=7))
    local = await doc_store.find(
        Query(TRACKINGS, ambulance_id="77", until=(T0 + timedelta(seconds=1)).astimezone(bangkok))
    )
    assert [d["_id"] for d in local.items] == ["77:0000"]


async def test_find_newest_first_and_limit(doc_store: DocumentStore) -> None:
    """Test that newest_first reverses the order and limit cuts the page."""
    await doc_store.apply([ins(tracking(n)) for n in range(5)])
    page = await doc_store.find(Query(TRACKINGS, ambulance_id="332", newest_first=True, limit=3))
    assert [d["_id"] for d in page.items] == ["332:0004", "332:0003", "332:0002"]
    assert page.next_cursor is not None


async def test_find_where_filters_on_top_level_fields(doc_store: DocumentStore) -> None:
    """Test that `where` is an equality filter on bools, strings, numbers, null and dates."""
    docs = [
        {"_id": "sv1", "ambulance_id": "332", "started_at": T0, "closed": False,
         "level": "80", "peak": 95},
        {"_id": "sv2", "ambulance_id": "332", "started_at": T0 + timedelta(seconds=1),
         "closed": True, "level": "120", "peak": 130.5, "ended_at": T0},
        {"_id": "sv3", "ambulance_id": "77", "started_at": T0 + timedelta(seconds=2),
         "closed": False, "level": "120", "peak": 125, "ended_at": None},
    ]
    await doc_store.apply([ins(d, SPEED_VIOLATIONS) for d in docs])

    async def ids(**where: Any) -> list[str]:
        page = await doc_store.find(Query(SPEED_VIOLATIONS, where=where))
        return [d["_id"] for d in page.items]

    assert await ids(closed=False) == ["sv1", "sv3"]
    assert await ids(closed=True) == ["sv2"]
    assert await ids(level="120", closed=False) == ["sv3"]
    assert await ids(peak=130.5) == ["sv2"]
    assert await ids(peak=95) == ["sv1"]
    assert await ids(ended_at=None) == ["sv1", "sv3"]  # null or missing, as in MongoDB
    assert await ids(ended_at=T0) == ["sv2"]
    assert await ids(level="nope") == []
    query = Query(SPEED_VIOLATIONS, ambulance_id="332", where={"closed": False})
    page = await doc_store.find(query)
    assert [d["_id"] for d in page.items] == ["sv1"]


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest_first", "newest_first"])
async def test_paging_returns_every_document_once_in_order(
    doc_store: DocumentStore, newest_first: bool
) -> None:
    """Test that following cursors returns every document exactly once, in (time, _id) order."""
    # Equal times (ties broken by _id) and documents without a time (sorted first).
    docs = [tracking(n, seconds=n // 3) for n in range(23)]
    docs += [{"_id": f"332:untimed{n}", "ambulance_id": "332"} for n in range(3)]
    await doc_store.apply([ins(d) for d in reversed(docs)])
    expected = [d["_id"] for d in docs[-3:]] + [d["_id"] for d in docs[:-3]]
    if newest_first:
        expected.reverse()
    for limit in (1, 4, 26, 100):
        got = await all_docs(
            doc_store, Query(TRACKINGS, ambulance_id="332", newest_first=newest_first, limit=limit)
        )
        assert [d["_id"] for d in got] == expected, f"limit={limit}"
    ranged = await all_docs(
        doc_store,
        Query(TRACKINGS, since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=6),
              newest_first=newest_first, limit=2),
    )
    in_range = [d["_id"] for d in docs[6:18]]
    assert [d["_id"] for d in ranged] == (in_range[::-1] if newest_first else in_range)


async def test_datetimes_round_trip_as_aware_utc(doc_store: DocumentStore) -> None:
    """Test that datetimes come back tz-aware UTC, nested too, at millisecond precision."""
    bangkok = timezone(timedelta(hours=7))
    local = datetime(2026, 11, 29, 11, 33, 12, 345678, tzinfo=bangkok)
    doc = {
        "_id": "crash:332:1",
        "ambulance_id": "332",
        "count_datetime": local,
        "location_detail": {"seen": [local, {"at": local}], "text": "ถนน สุขุมวิท"},
        "naive": datetime(2026, 1, 2, 3, 4, 5),  # taken as UTC
    }
    await doc_store.apply([ins(doc, CRASHES)])
    for stored in (
        await doc_store.get(CRASHES, "crash:332:1"),
        (await doc_store.find(Query(CRASHES, ambulance_id="332"))).items[0],
    ):
        assert stored is not None
        expected = datetime(2026, 11, 29, 4, 33, 12, 345000, tzinfo=UTC)
        assert stored["count_datetime"] == expected
        assert stored["count_datetime"].utcoffset() == timedelta(0)
        seen = stored["location_detail"]["seen"]
        assert seen == [expected, {"at": expected}]
        assert all(v.tzinfo is not None for v in (seen[0], seen[1]["at"]))
        assert stored["naive"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert stored["location_detail"]["text"] == "ถนน สุขุมวิท"


async def test_collections_without_ambulance_id(doc_store: DocumentStore) -> None:
    """Test that dead letters (no ambulance_id) are stored and found by time."""
    letters = [
        {"_id": f"dl:{n}", "topic": "aoc/???/tracking", "reason": "bad topic",
         "payload": "\u0000\ufffd", "received_at": T0 + timedelta(seconds=n)}
        for n in range(3)
    ]
    await doc_store.apply([ins(d, DEAD_LETTERS) for d in letters])
    page = await doc_store.find(Query(DEAD_LETTERS, since=T0 + timedelta(seconds=1)))
    assert page.items == letters[1:]
    assert (await doc_store.find(Query(DEAD_LETTERS, ambulance_id="332"))).items == []


async def test_open_twice_is_harmless(doc_store: DocumentStore) -> None:
    """Test that open() on an open store keeps it working with its data."""
    await doc_store.apply([ins(tracking(1))])
    await doc_store.open()
    await doc_store.ping()
    assert await doc_store.get(TRACKINGS, "332:0001") == tracking(1)


async def test_bad_requests_raise_value_error(doc_store: DocumentStore) -> None:
    """Test that unknown collections, bad ids, cursors, limits and filters are clear errors."""
    with pytest.raises(ValueError, match="unknown collection"):
        await doc_store.apply([Write("users", "insert", {"_id": "x"})])
    with pytest.raises(ValueError, match="_id"):
        await doc_store.apply([ins({"ambulance_id": "332"})])
    with pytest.raises(ValueError, match="_id"):
        await doc_store.apply([ins({"_id": 5})])
    with pytest.raises(ValueError, match="unknown collection"):
        await doc_store.get("users", "x")
    with pytest.raises(ValueError, match="cursor"):
        await doc_store.find(Query(TRACKINGS, cursor="not a cursor!"))
    with pytest.raises(ValueError, match="limit"):
        await doc_store.find(Query(TRACKINGS, limit=0))
    with pytest.raises(ValueError, match="where"):
        await doc_store.find(Query(TRACKINGS, where={"location.lat": 1}))
    with pytest.raises(ValueError, match="where"):
        await doc_store.find(Query(TRACKINGS, where={"$where": "1"}))
    with pytest.raises(ValueError, match="where"):
        await doc_store.find(Query(TRACKINGS, where={"location": {"lat": 1}}))
    # Nothing was written by the refused batches, and the store still works.
    await doc_store.apply([ins(tracking(1))])
    assert (await doc_store.find(Query(TRACKINGS))).items == [tracking(1)]


def state(aid: str, version: int | None, **extra: Any) -> dict[str, Any]:
    doc = {"_id": aid, "ambulance_id": aid, "last_seen": T0, **extra}
    return doc if version is None else {**doc, "version": version}


def cond(doc: dict[str, Any], expect: Version) -> Write:
    return Write(AMBULANCES, "upsert", doc, expect=expect)


async def test_conditional_upsert_applies_only_on_the_expected_version(
    doc_store: DocumentStore,
) -> None:
    """Test that expect matches the stored version (missing: 0) and Conflict names the rest."""
    await doc_store.apply([cond(state("332", 1), expect=0)])  # missing counts as version 0
    await doc_store.apply([cond(state("332", 2, speed=5.0), expect=1)])
    assert await doc_store.get(AMBULANCES, "332") == state("332", 2, speed=5.0)

    with pytest.raises(Conflict) as stale:
        await doc_store.apply([cond(state("332", 2, speed=9.0), expect=1)])
    assert stale.value.ids == ("332",)
    with pytest.raises(Conflict) as exists:  # expected new, but it exists
        await doc_store.apply([cond(state("332", 1, speed=9.0), expect=0)])
    assert exists.value.ids == ("332",)
    assert await doc_store.get(AMBULANCES, "332") == state("332", 2, speed=5.0)

    # A document stored without a version (an older bridge's) is version 0.
    await doc_store.apply([ups(state("77", None), AMBULANCES)])
    await doc_store.apply([cond(state("77", 1), expect=0)])
    assert await doc_store.get(AMBULANCES, "77") == state("77", 1)
    # Two versions of one document in one batch: each checked after the one before.
    await doc_store.apply([cond(state("77", 2), expect=1), cond(state("77", 3), expect=2)])
    assert await doc_store.get(AMBULANCES, "77") == state("77", 3)
    with pytest.raises(ValueError, match="upsert"):
        Write(TRACKINGS, "insert", tracking(1), expect=0)


async def test_a_conflict_stores_nothing_after_it(doc_store: DocumentStore) -> None:
    """Test that writes after a conflicting one are never stored (on SQLite, none at all)."""
    await doc_store.apply([cond(state("77", 4), expect=0)])
    batch = [
        ins(tracking(1)),
        cond(state("332", 1), expect=0),
        cond(state("77", 9), expect=3),  # stale: 77 is at version 4
        ins(tracking(2)),
        ups(state("5", None), AMBULANCES),
    ]
    with pytest.raises(Conflict) as conflict:
        await doc_store.apply(batch)
    assert conflict.value.ids == ("77",)
    assert await doc_store.get(TRACKINGS, "332:0002") is None
    assert await doc_store.get(AMBULANCES, "5") is None
    assert await doc_store.get(AMBULANCES, "77") == state("77", 4)
    if isinstance(doc_store, SQLiteDocumentStore):  # one transaction
        assert await doc_store.get(TRACKINGS, "332:0001") is None
        assert await doc_store.get(AMBULANCES, "332") is None


async def test_a_conditional_write_creates_only_what_it_expects_new(
    doc_store: DocumentStore,
) -> None:
    """Test that expecting version n > 0 of a missing (deleted) document stores nothing."""
    with pytest.raises(Conflict) as missing:
        await doc_store.apply([cond(state("332", 4), expect=3), ins(tracking(1))])
    assert missing.value.ids == ("332",)
    assert await doc_store.get(AMBULANCES, "332") is None
    assert await doc_store.get(TRACKINGS, "332:0001") is None
    # Among other conditional writes (MongoDB: one bulk, the others may be
    # stored, each a commit point of its own), and before unconditional ones.
    with pytest.raises(Conflict) as among:
        await doc_store.apply([cond(state("77", 1), expect=0), cond(state("332", 4), expect=3),
                               cond(state("5", 1), expect=0), ins(tracking(2))])
    assert among.value.ids == ("332",)
    assert await doc_store.get(AMBULANCES, "332") is None
    assert await doc_store.get(TRACKINGS, "332:0002") is None
    await doc_store.apply([cond(state("332", 1), expect=0)])  # version 0: created
    assert await doc_store.get(AMBULANCES, "332") == state("332", 1)
    # Followed by a stale write: still not created (MongoDB: its bulk failed after it).
    with pytest.raises(Conflict):
        await doc_store.apply([cond(state("9", 4), expect=3), cond(state("332", 2), expect=0)])
    assert await doc_store.get(AMBULANCES, "9") is None


@pytest.mark.parametrize(
    ("damaged", "wrong"),
    # (Not true against 1: mongomock compares as Python does, MongoDB never.)
    [("3", [3, 0, "4"]), (2.5, [2, 3, "2.5"]), (True, ["true", 2]),
     # (Not 3 against [3]: MongoDB matches an array holding it.)
     ({"v": 3}, [3, 0, {"v": 4}]), ([3], [4, [4]])],
)
async def test_a_damaged_version_is_matched_as_stored(
    doc_store: DocumentStore, damaged: Any, wrong: list[Any]
) -> None:
    """Test that a version of another type matches only itself, so a write can heal it."""
    await doc_store.apply([ups(state("332", None) | {"version": damaged}, AMBULANCES)])
    for expect in wrong:
        with pytest.raises(Conflict):
            await doc_store.apply([cond(state("332", 9), expect=expect)])
    await doc_store.apply([cond(state("332", 4), expect=damaged)])
    assert await doc_store.get(AMBULANCES, "332") == state("332", 4)


class BulkWritesFail:
    """Fault injection for mongomock: the ``fail_at``-th ``bulk_write`` raises, and stores nothing.

    It records each call's collection and ids, in order.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        original = mongomock.collection.Collection.bulk_write
        faults = self

        def bulk_write(collection: Any, requests: list[Any], *args: Any, **kwargs: Any) -> Any:
            ids = [request._filter["_id"] for request in requests]
            faults.calls.append((collection.name, ids))
            if len(faults.calls) == fail_at:
                raise pymongo.errors.AutoReconnect("fault injected: connection lost")
            return original(collection, requests, *args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", bulk_write)


async def test_mongo_applies_writes_in_order_one_bulk_per_run(
    monkeypatch: pytest.MonkeyPatch, mongomock_client: Any
) -> None:
    """Test that a failing bulk write never leaves a later write stored without an earlier one."""
    faults = BulkWritesFail(monkeypatch, fail_at=2)
    batch = [
        cond(state("a1", 1), expect=0),
        ins(tracking(1)),
        cond(state("a2", 1), expect=0),
        ins(tracking(2)),
    ]
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_order") as store:
        with pytest.raises(StoreUnavailable):
            await store.apply(batch)
        assert faults.calls == [
            (AMBULANCES, ["a1"]),
            (TRACKINGS, ["332:0001"]),
        ]
        assert await store.get(AMBULANCES, "a1") == state("a1", 1)
        # Grouped by collection, a2 went with a1, before the failing tracking write.
        assert await store.get(AMBULANCES, "a2") is None
        await store.apply(batch[1:])  # the retry of what was not stored
        assert [call[0] for call in faults.calls[2:]] == [TRACKINGS, AMBULANCES, TRACKINGS]
        assert await store.get(TRACKINGS, "332:0002") == tracking(2)


async def test_mongo_writes_a_batchs_states_in_one_bulk(
    monkeypatch: pytest.MonkeyPatch, mongomock_client: Any
) -> None:
    """Test that consecutive conditional writes share one round trip, not one each."""
    faults = BulkWritesFail(monkeypatch, fail_at=None)
    states = [cond(state(aid, 1), expect=0) for aid in ("a1", "a2", "a3")]
    async with MongoDocumentStore(lambda: mongomock_client, database="aoc_runs") as store:
        await store.apply([*states, ins(tracking(1)), ins(tracking(2))])
        assert faults.calls == [
            (AMBULANCES, ["a1", "a2", "a3"]),
            (TRACKINGS, ["332:0001", "332:0002"]),
        ]
        # The same run stops at a stale one: a duplicate key on its upsert.
        with pytest.raises(Conflict) as stale:
            await store.apply([cond(state("a1", 2), expect=1), cond(state("a2", 2), expect=0),
                               cond(state("a3", 2), expect=1), ins(tracking(3))])
        assert stale.value.ids == ("a2",)
        assert [(await store.get(AMBULANCES, a) or {}).get("version") for a in ("a1", "a2", "a3")] \
            == [2, 1, 1]
        assert await store.get(TRACKINGS, "332:0003") is None


async def test_the_stored_neighbours_of_late_points(
    doc_store: DocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test the reads ``bridge.late`` places late points with, on the (ambulance, time) index.

    The last point before a time (exclusive, newest first, one), then every
    point from it on, page by page, to the first after the late ones; another
    ambulance's points and a second point of the same instant (ordered by id).
    """
    monkeypatch.setattr(late, "NEAR", 2)  # the newest two do not reach back: the range reads
    monkeypatch.setattr(late, "PAGE", 2)  # several pages
    docs = [tracking(n) for n in range(10)] + [tracking(n, aid="999") for n in range(10)]
    docs.append(tracking(44, seconds=4))  # "332:0044", at the instant of "332:0004"
    await doc_store.apply([ins(doc) for doc in docs])
    around = await late.stored_around(
        doc_store, "332", T0 + timedelta(seconds=3), T0 + timedelta(seconds=5.5)
    )
    # The page holding the first point after them is read whole (here with 0007).
    assert [p.id for p in around] == [
        "332:0002", "332:0003", "332:0004", "332:0044", "332:0005", "332:0006", "332:0007",
    ]  # fmt: skip
    assert around[0].ts == T0 + timedelta(seconds=2)
    assert around[0].position.lat == pytest.approx(13.752)
    # Nothing before the first point: the reads start at it.
    first = await late.stored_around(doc_store, "332", T0, T0)
    assert [p.id for p in first] == ["332:0000", "332:0001"]
    # The newest points reach back past the late ones: that one read is all.
    monkeypatch.setattr(late, "NEAR", 4)
    near = await late.stored_around(
        doc_store, "332", T0 + timedelta(seconds=7), T0 + timedelta(seconds=7.5)
    )
    assert [p.id for p in near] == ["332:0009", "332:0008", "332:0007", "332:0006"]
