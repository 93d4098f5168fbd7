"""SQLite-specific behaviour: durability, and failures that must surface as StoreUnavailable."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.base import TRACKINGS, DocumentStore, Query, StoreUnavailable, Write
from storage.sqlite import SQLiteDocumentStore

T0 = datetime(2026, 11, 29, 4, 33, 12, tzinfo=UTC)


def doc(n: int) -> dict[str, object]:
    return {"_id": f"332:{n}", "ambulance_id": "332", "count_datetime": T0, "n": n}


async def ids(store: DocumentStore) -> list[str]:
    return [d["_id"] for d in (await store.find(Query(TRACKINGS, limit=1000))).items]


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    """Test that documents written before close() are there after reopening the file."""
    path = tmp_path / "nested" / "aoc.db"
    async with SQLiteDocumentStore(path) as store:
        await store.apply([Write(TRACKINGS, "insert", doc(1))])
    async with SQLiteDocumentStore(path) as store:
        assert await store.get(TRACKINGS, "332:1") == doc(1)
    with sqlite3.connect(path) as conn:  # WAL is a property of the file
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_acknowledged_batch_survives_sigkill(tmp_path: Path) -> None:
    """Test that a batch is on disk once apply() returned, even if the process is killed."""
    path = tmp_path / "aoc.db"
    script = textwrap.dedent(
        f"""
        import asyncio, datetime, os, signal, sys
        from storage.base import Write, TRACKINGS
        from storage.sqlite import SQLiteDocumentStore
        async def main():
            store = SQLiteDocumentStore({str(path)!r})
            await store.open()
            t = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
            writes = [Write(TRACKINGS, "insert", {{"_id": str(i), "count_datetime": t}})
                      for i in range(50)]
            await store.apply(writes)
            os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        _, stderr = await proc.communicate()
    assert proc.returncode == -9, stderr.decode()
    async with SQLiteDocumentStore(path) as store:
        assert len(await ids(store)) == 50


async def test_locked_database_raises_store_unavailable_then_recovers(tmp_path: Path) -> None:
    """Test that a write blocked by another process's exclusive lock fails fast and retryably."""
    path = tmp_path / "aoc.db"
    async with SQLiteDocumentStore(path, busy_timeout=0.2) as store:
        await store.apply([Write(TRACKINGS, "insert", doc(1))])
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.apply([Write(TRACKINGS, "insert", doc(2)),
                                   Write(TRACKINGS, "insert", doc(3))])
            assert time.monotonic() - started < 5
        finally:
            other.execute("ROLLBACK")
            other.close()
        # The same batch succeeds on retry; nothing of the failed attempt was half-applied.
        await store.apply([Write(TRACKINGS, "insert", doc(2)), Write(TRACKINGS, "insert", doc(3))])
        assert await ids(store) == ["332:1", "332:2", "332:3"]


def set_write_version(path: Path, version: int) -> None:
    """Set the SQLite header's "file format write version" byte (offset 18)."""
    with path.open("r+b") as file:
        file.seek(18)
        file.write(bytes([version]))
        file.flush()
        os.fsync(file.fileno())


async def test_readonly_database_raises_store_unavailable_then_recovers(tmp_path: Path) -> None:
    """Test that a read-only database fails fast and retryably, and works once writable again.

    File modes do not stop root (CI runs as root), so the file is made read-only
    with SQLite's own marker: a write version above 2 in its header means "read
    only" to every SQLite library, whoever runs it.
    """
    path = tmp_path / "aoc.db"
    async with SQLiteDocumentStore(path, busy_timeout=0.2) as store:
        await store.apply([Write(TRACKINGS, "insert", doc(1))])
    assert path.read_bytes()[18] == 2  # WAL; close() checkpointed everything into the file
    set_write_version(path, 3)
    store = SQLiteDocumentStore(path, busy_timeout=0.2)
    try:
        await store.open()  # reading a read-only database is fine
        assert await ids(store) == ["332:1"]
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="readonly"):
            await store.apply([Write(TRACKINGS, "insert", doc(2))])
        assert time.monotonic() - started < 5
        set_write_version(path, 2)
        await store.apply([Write(TRACKINGS, "insert", doc(2))])
        assert await ids(store) == ["332:1", "332:2"]
    finally:
        await store.close()


async def test_unencodable_document_fails_the_whole_batch(tmp_path: Path) -> None:
    """Test that a value JSON cannot hold is a clear error and nothing of the batch is written."""
    async with SQLiteDocumentStore(tmp_path / "aoc.db") as store:
        with pytest.raises(TypeError, match="bytes"):
            await store.apply([Write(TRACKINGS, "insert", doc(1)),
                               Write(TRACKINGS, "insert", {**doc(2), "raw": b"\xff"})])
        with pytest.raises(ValueError, match="JSON"):
            await store.apply([Write(TRACKINGS, "insert", {**doc(3), "speed": float("nan")})])
        assert await ids(store) == []


async def test_closed_store_raises_store_unavailable(tmp_path: Path) -> None:
    """Test that using a store after close() is a retryable error, and close() is idempotent."""
    store = SQLiteDocumentStore(tmp_path / "aoc.db")
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_reader_opens_and_reads_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """Test that a second process (the API) can open and read while the bridge is writing."""
    path = tmp_path / "aoc.db"
    async with SQLiteDocumentStore(path) as store:
        await store.apply([Write(TRACKINGS, "insert", doc(1))])
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("DELETE FROM ambulance_trackings")  # not committed: readers still see it
        async with SQLiteDocumentStore(path, busy_timeout=0.2) as reader:
            assert await ids(reader) == ["332:1"]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
