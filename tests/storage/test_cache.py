"""The latest-state cache against a real Redis."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from storage import codec
from storage.base import StoreUnavailable
from storage.cache import StateCache
from tests import services

T0 = datetime(2026, 11, 29, 4, 33, 12, 345000, tzinfo=UTC)


def state(aid: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "_id": aid,
        "ambulance_id": aid,
        "location": {"lat": 13.75, "lon": 100.5},
        "state": "GREEN",
        "last_seen": T0 + timedelta(seconds=seconds),
        "online": True,
        **extra,
    }


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix of this test only, on the shared Redis."""
    return f"aoc-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def cache(redis_url: str, unique_prefix: str) -> AsyncIterator[StateCache]:
    cache = StateCache(redis_url, prefix=unique_prefix)
    await cache.open()
    try:
        yield cache
    finally:
        await cache.close()


async def test_set_get_and_get_all(cache: StateCache) -> None:
    """Test that states come back as stored, datetimes included, one per ambulance."""
    states = {"332": state("332", 0), "77": state("77", 1, speed=45.5)}
    await cache.set_many(states)
    assert await cache.get("332") == states["332"]
    assert (await cache.get("77") or {})["last_seen"].tzinfo is not None
    assert await cache.get("nope") is None
    assert await cache.get_all() == states
    await cache.set_many({})  # nothing to do
    await cache.ping()


async def test_older_state_does_not_overwrite_newer(cache: StateCache) -> None:
    """Test that a state with an earlier last_seen never replaces a later one."""
    await cache.set_many({"332": state("332", 10, state="RED")})
    await cache.set_many({"332": state("332", 5, state="GREEN"), "77": state("77", 1)})
    assert (await cache.get("332") or {})["state"] == "RED"
    assert await cache.get("77") == state("77", 1)  # the other entry of the batch was written
    await cache.set_many({"332": state("332", 10, state="ORANGE")})  # same time: last write wins
    assert (await cache.get("332") or {})["state"] == "ORANGE"
    await cache.set_many({"332": state("332", 10.001, state="GREEN")})  # a millisecond later
    assert (await cache.get("332") or {})["state"] == "GREEN"
    # ISO 8601 strings are ordered by instant, not by text: "11:33+07:00" is 04:33 UTC.
    bangkok = timezone(timedelta(hours=7))
    newer = (T0 + timedelta(seconds=20)).astimezone(bangkok).isoformat()
    await cache.set_many({"332": {**state("332", 0, state="ORANGE"), "last_seen": newer}})
    assert (await cache.get("332") or {})["state"] == "ORANGE"
    older = (T0 + timedelta(seconds=15)).isoformat().replace("+00:00", "Z")
    await cache.set_many({"332": {**state("332", 0, state="RED"), "last_seen": older}})
    assert (await cache.get("332") or {})["state"] == "ORANGE"


async def test_racing_writers_leave_the_newest_state(cache: StateCache) -> None:
    """Test that concurrent writers of old and new states always leave the newest."""
    for _ in range(5):
        await asyncio.gather(
            *(cache.set_many({"332": state("332", s, seq=s)}) for s in (3, 9, 1, 7, 5))
        )
        assert (await cache.get("332") or {})["seq"] == 9


async def test_state_without_last_seen_always_overwrites(cache: StateCache) -> None:
    """Test that a state that cannot be ordered is written (documented behaviour)."""
    await cache.set_many({"332": state("332", 10)})
    await cache.set_many({"332": {"_id": "332", "online": False}})
    assert await cache.get("332") == {"_id": "332", "online": False}


async def test_the_store_version_orders_states_of_the_same_last_seen(cache: StateCache) -> None:
    """Test that a lower version never replaces a higher one, whatever last_seen says.

    Two bridges commit versions 5 then 6 of one ambulance with the same
    last_seen (the second batch held only late points, or a status change),
    and their cache writes arrive in the other order.
    """
    await cache.set_many({"332": state("332", 10, version=6, online=False)})
    await cache.set_many({"332": state("332", 10, version=5, online=True)})
    assert await cache.get("332") == state("332", 10, version=6, online=False)
    # A later last_seen does not make an older version newer either.
    await cache.set_many({"332": state("332", 11, version=4)})
    assert (await cache.get("332") or {})["version"] == 6
    # The same version again (a rebuild's missed state): written; a higher one: written.
    await cache.set_many({"332": state("332", 10, version=6, seq=1)})
    assert (await cache.get("332") or {})["seq"] == 1
    await cache.set_many({"332": state("332", 9, version=7)})  # an earlier last_seen: late points
    assert (await cache.get("332") or {})["version"] == 7
    # A state without a version is older than one with (a damaged version counts as none).
    await cache.set_many({"332": state("332", 20)})
    await cache.set_many({"332": state("332", 20, version="8")})
    assert (await cache.get("332") or {})["version"] == 7


async def test_racing_writers_leave_the_highest_version(cache: StateCache) -> None:
    """Test that concurrent writers of one last_seen and several versions leave the highest."""
    for _ in range(5):
        await asyncio.gather(
            *(cache.set_many({"332": state("332", 1, version=v)}) for v in (3, 9, 1, 7, 5))
        )
        assert (await cache.get("332") or {})["version"] == 9


async def test_an_entry_of_the_previous_code_is_older_than_a_versioned_state(
    cache: StateCache, redis_url: str, unique_prefix: str
) -> None:
    """Test upgrading: an entry written without the version hash is replaced by any version.

    The previous code kept last_seen only; its entries have no version beside them.
    """
    await cache.rebuild({})
    old = state("332", 30, version=12)
    client = aioredis.Redis.from_url(redis_url)
    try:  # as the previous code's script wrote it
        await client.hset(f"{unique_prefix}:latest", "332", codec.encode(old))
        seen = codec.format_datetime(old["last_seen"])
        await client.hset(f"{unique_prefix}:latest:seen", "332", seen)
        await client.zadd(f"{unique_prefix}:latest:ids", {"332": 0})
    finally:
        await client.connection_pool.disconnect()
    await cache.set_many({"332": state("332", 25, version=13)})
    assert await cache.get("332") == state("332", 25, version=13)
    await cache.set_many({"332": state("332", 40, version=12)})
    assert (await cache.get("332") or {})["version"] == 13


async def test_rebuild_keeps_the_versions(cache: StateCache) -> None:
    """Test that a rebuilt entry is ordered by its version as a written one."""
    await cache.rebuild({"332": state("332", 10, version=4)})
    assert await cache.set_many({"332": state("332", 10, version=3)})
    assert (await cache.get("332") or {})["version"] == 4
    await cache.rebuild({})
    await cache.set_many({"332": state("332", 10, version=3)})
    assert (await cache.get("332") or {})["version"] == 3


async def test_rebuild_replaces_everything(cache: StateCache) -> None:
    """Test that rebuild leaves exactly the given states, even older ones."""
    await cache.set_many({"332": state("332", 10), "77": state("77", 10)})
    await cache.rebuild({"332": state("332", 1), "5": state("5", 2)})
    assert await cache.get_all() == {"332": state("332", 1), "5": state("5", 2)}
    await cache.rebuild({})
    assert await cache.get_all() == {}


async def test_undecodable_entries_are_skipped(
    cache: StateCache, redis_url: str, unique_prefix: str
) -> None:
    """Test that a foreign value in the hash is ignored instead of breaking reads and writes."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.hset(f"{unique_prefix}:latest", mapping={"bad": "not json", "list": "[1]"})
    finally:
        await client.connection_pool.disconnect()
    await cache.set_many({"bad": state("bad", 1), "332": state("332", 1)})
    assert await cache.get("bad") == state("bad", 1)
    assert await cache.get("list") is None
    assert set(await cache.get_all()) == {"bad", "332"}


async def test_stopped_redis_raises_store_unavailable_then_recovers(tmp_path: Path) -> None:
    """Test that every call fails with StoreUnavailable while Redis is down, and works after."""
    server = services.redis(tmp_path / "redis").start()
    try:
        cache = StateCache(f"redis://127.0.0.1:{server.port}/0")
        await cache.open()
        await cache.set_many({"332": state("332", 1)})
        server.stop()
        async with asyncio.timeout(20):  # fails fast: no hanging on a dead server
            with pytest.raises(StoreUnavailable):
                await cache.ping()
            with pytest.raises(StoreUnavailable):
                await cache.set_many({"332": state("332", 2)})
            with pytest.raises(StoreUnavailable):
                await cache.get("332")
            with pytest.raises(StoreUnavailable):
                await cache.get_all()
            with pytest.raises(StoreUnavailable):
                await cache.rebuild({})
        server.start()  # same port, empty: the caller rebuilds from the store
        await cache.rebuild({"332": state("332", 3)})
        assert await cache.get_all() == {"332": state("332", 3)}
        await cache.close()
    finally:
        server.stop()


async def test_open_against_stopped_redis_then_recovers(tmp_path: Path) -> None:
    """Test that open() fails retryably with no Redis, close() is safe, and calls recover."""
    port = services.free_port()
    cache = StateCache(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(StoreUnavailable):
        await cache.open()
    with services.redis(tmp_path / "redis", port=port):
        await cache.set_many({"332": state("332", 1)})  # the client reconnects by itself
        assert await cache.get("332") == state("332", 1)
        await cache.close()
        await cache.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        await cache.get("332")


async def _all_pages(cache: StateCache, limit: int) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        states, after = await cache.page(after=after, limit=limit)
        ids += [s["ambulance_id"] for s in states]
        if after is None:
            return ids


async def test_page_lists_the_fleet_in_id_order(cache: StateCache) -> None:
    """Test that pages follow each other in id order, each id once, from set_many and rebuild."""
    assert await cache.page(after=None, limit=10) == ([], None)
    await cache.rebuild({f"A{i:02d}": state(f"A{i:02d}", i) for i in range(7)})
    await cache.set_many({f"B{i}": state(f"B{i}", i) for i in range(3)})
    first, after = await cache.page(after=None, limit=4)
    assert [s["ambulance_id"] for s in first] == ["A00", "A01", "A02", "A03"]
    assert after == "A03"
    assert first[1] == state("A01", 1)
    expected = [f"A{i:02d}" for i in range(7)] + ["B0", "B1", "B2"]
    assert await _all_pages(cache, 4) == expected
    assert await _all_pages(cache, 10) == expected  # an exact fit says no more
    assert await cache.page(after="B2", limit=5) == ([], None)


async def test_pages_stay_consistent_while_states_are_written(cache: StateCache) -> None:
    """Test that writes between pages (updates, new ids) never repeat nor skip an id."""
    await cache.rebuild({f"M{i:02d}": state(f"M{i:02d}", 0) for i in range(20)})
    seen: list[str] = []
    after = None
    step = 0
    while True:
        states, after = await cache.page(after=after, limit=3)
        seen += [s["ambulance_id"] for s in states]
        step += 1
        # Every listed and unlisted id moves on; new ids appear before and after the cursor.
        await cache.set_many({f"M{i:02d}": state(f"M{i:02d}", step) for i in range(20)})
        await cache.set_many({f"A{step}": state(f"A{step}", 0), f"Z{step}": state(f"Z{step}", 0)})
        if after is None:
            break
    originals = [f"M{i:02d}" for i in range(20)]
    assert len(seen) == len(set(seen))
    assert [aid for aid in seen if aid.startswith("M")] == originals
    assert not any(aid.startswith("A") for aid in seen)  # added behind the cursor


async def test_states_without_an_index_ask_for_a_rebuild(
    cache: StateCache, redis_url: str, unique_prefix: str
) -> None:
    """Test that a cache written before the id index existed is rebuilt, not paged partially."""
    await cache.rebuild({})
    client = aioredis.Redis.from_url(redis_url)
    try:  # as an older version left it: states and the marker, no index
        await client.hset(f"{unique_prefix}:latest", "old", '{"ambulance_id":"old"}')
    finally:
        await client.connection_pool.disconnect()
    assert await cache.set_many({"332": state("332", 1)}) is False


async def test_a_large_rebuild_encodes_off_the_event_loop(
    cache: StateCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that while a large rebuild encodes its states, the event loop keeps running."""
    gate, waiting = threading.Event(), threading.Event()
    real = codec.encode

    def gated(doc: Any) -> str:
        waiting.set()
        # On the event loop this would block the very loop that opens the gate.
        assert gate.wait(10), "the rebuild encoded on the event loop"
        return real(doc)

    monkeypatch.setattr(codec, "encode", gated)

    async def open_gate() -> None:
        if await asyncio.to_thread(waiting.wait, 10):
            gate.set()

    opener = asyncio.create_task(open_gate())
    states = {f"R{i:04d}": state(f"R{i:04d}", i) for i in range(500)}
    await cache.rebuild(states)
    await opener
    monkeypatch.undo()
    assert (await cache.page(after=None, limit=1000))[0] == list(states.values())


async def test_a_redis_that_refuses_is_unavailable_not_an_error(
    cache: StateCache, redis_url: str, unique_prefix: str
) -> None:
    """Test that Redis refusing a command (here WRONGTYPE) is StoreUnavailable, like an outage.

    OOM, READONLY after a failover, or a key of another type came out as a
    ResponseError, which escaped the bridge's fan-out after the acknowledgement
    and stopped `aoc serve` once per batch.
    """
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{unique_prefix}:latest", "not a hash")
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            await cache.set_many({"332": state("332", 1)})
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            await cache.get("332")
        await cache.rebuild({"332": state("332", 1)})  # the healer's cure
        assert (await cache.get("332") or {})["ambulance_id"] == "332"
    finally:
        await client.aclose()


async def test_a_page_of_undecodable_states_does_not_end_the_listing(
    cache: StateCache, redis_url: str, unique_prefix: str
) -> None:
    """Test that the listing goes on past states something else wrote in the hash.

    The cursor came from the last decoded state: a page where none decoded had
    no cursor, and the fleet list ended there without saying so.
    """
    await cache.rebuild({aid: state(aid, 0) for aid in ("A", "B", "C", "D")})
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.hset(f"{unique_prefix}:latest", mapping={"A": "{garbage", "B": "[]"})
    finally:
        await client.aclose()
    states, after = await cache.page(after=None, limit=2)
    assert (states, after) == ([], "B")
    assert await _all_pages(cache, 2) == ["C", "D"]
