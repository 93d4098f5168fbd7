"""The embedded document store: one SQLite file, one table per collection.

Every call runs on ONE dedicated thread (see ``storage.threaded``) that owns
the only connection, so the event loop never blocks on disk I/O and SQLite
never sees two writers from this process. ``apply`` writes a whole batch in
one transaction: that is the batching.

Each table holds the document as JSON (see ``storage.codec``) next to the two
columns every read filters and sorts on: ``ambulance_id`` and ``t``, the epoch
seconds of the collection's time field (NULL when a document has none; such
documents sort first, oldest-first, as in MongoDB).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from storage import codec, paging
from storage.base import (
    COLLECTIONS,
    TIME_FIELDS,
    Conflict,
    Document,
    Page,
    Pruned,
    Query,
    StoreUnavailable,
    Write,
    version_matches,
)
from storage.threaded import ThreadedDocumentStore

T = TypeVar("T")

# SQLite reports an unreachable, locked, read-only or failing file as
# OperationalError (and a damaged one as a bare DatabaseError). None of these
# is the caller's fault and none leaves a half-written batch behind (the
# transaction is rolled back), so the caller may retry.
_UNAVAILABLE = (sqlite3.OperationalError,)


def _row_t(collection: str, doc: Document) -> float | None:
    value = doc.get(TIME_FIELDS[collection])
    return codec.epoch_seconds(value) if isinstance(value, datetime) else None


class SQLiteDocumentStore(ThreadedDocumentStore[sqlite3.Connection]):
    """A ``DocumentStore`` in one SQLite file (WAL mode, fully synchronous commits)."""

    name = "SQLite"
    thread_name = "aoc-sqlite"

    def __init__(
        self, path: Path, *, busy_timeout: float = 5.0, logger: logging.Logger | None = None
    ) -> None:
        """``busy_timeout``: seconds a write waits for another process's lock before failing."""
        super().__init__()
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._log = logger or logging.getLogger(__name__)
        self._conn: sqlite3.Connection | None = None  # touched only on the executor's thread
        self._created = False  # after the first open, never create a missing file again

    # -- plumbing -----------------------------------------------------------

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._connection()
            try:
                return fn(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, _UNAVAILABLE) and type(exc) is not sqlite3.DatabaseError:
                raise  # IntegrityError, DataError...: a bug or bad input, retrying will not help
            self._drop_connection_after(exc)
            raise StoreUnavailable(f"SQLite {self._path}: {exc}") from exc

    def _drop_connection_after(self, exc: sqlite3.DatabaseError) -> None:
        # A busy/locked database is another process's transaction: keep the
        # connection. Anything else (read-only, I/O error, file replaced) may
        # have left this connection unusable, so reconnect on the next call.
        message = str(exc).lower()
        if "locked" in message or "busy" in message:
            return
        # DEBUG: the caller gets StoreUnavailable with this reason and logs the
        # outage once; a line per retry here would repeat it every backoff step.
        self._log.debug("SQLite error, reconnecting on next use: %s", exc)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # After the first open, "rw": if the file vanished, fail (retryably)
        # rather than silently starting an empty database in its place.
        mode = "rw" if self._created else "rwc"
        if not self._created:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"{self._path.resolve().as_uri()}?mode={mode}"
        conn = sqlite3.connect(
            uri, uri=True, timeout=self._busy_timeout, isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL, not NORMAL: in WAL mode NORMAL skips the fsync of the WAL at
            # commit, so a power cut can lose the last batches. The bridge
            # acknowledges MQTT messages as soon as apply() returns, so an
            # acknowledged batch must already be on stable storage.
            conn.execute("PRAGMA synchronous = FULL")
            self._create_tables(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._created = True
        return conn

    @staticmethod
    def _create_tables(conn: sqlite3.Connection) -> None:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        wanted = {f"{c}{suffix}" for c in COLLECTIONS for suffix in ("", "_aid_t", "_t")}
        if wanted <= names:
            return  # a reader (the API) opening a live database takes no write lock
        conn.execute("BEGIN IMMEDIATE")
        for name in COLLECTIONS:
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{name}" ('
                "_id TEXT PRIMARY KEY, ambulance_id TEXT, t REAL, doc TEXT NOT NULL)"
            )
            conn.execute(
                f'CREATE INDEX IF NOT EXISTS "{name}_aid_t" ON "{name}" (ambulance_id, t, _id)'
            )
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}_t" ON "{name}" (t, _id)')
        conn.execute("COMMIT")

    # -- lifecycle ----------------------------------------------------------

    async def _connect(self) -> None:
        """Create the file (and its directory), tables and indexes if needed."""
        await self._run(lambda conn: None)
        self._log.debug("SQLite document store open at %s", self._path)

    def _disconnect(self) -> Callable[[], None]:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        return close

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the file can be read."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- writes -------------------------------------------------------------

    async def apply(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order in one durable transaction (``Conflict``: none of them)."""
        checked = codec.check_writes(writes)
        if not checked:
            return
        # Encode on the caller's side: a value JSON cannot hold fails before
        # anything is written, with the offending error (not StoreUnavailable).
        rows = [
            (
                "INSERT OR IGNORE" if w.kind == "insert" else "INSERT OR REPLACE",
                w.collection,
                w.expect,
                (
                    w.doc["_id"],
                    aid if isinstance(aid := w.doc.get("ambulance_id"), str) else None,
                    _row_t(w.collection, w.doc),
                    codec.encode(w.doc),
                ),
            )
            for w in checked
        ]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conflicts: list[str] = []
            # Consecutive rows of one statement go in one executemany (in order):
            # a batch is mostly a run of history inserts.
            run: list[tuple[str, str | None, float | None, str]] = []
            run_sql = ""
            for verb, table, expect, params in rows:
                if expect is not None:
                    if run:  # the check must see the writes before it
                        conn.executemany(run_sql, run)
                        run = []
                    # Checked inside the write transaction: no other writer
                    # can move the version between this check and the COMMIT.
                    row = conn.execute(
                        "SELECT json_type(doc, '$.version'), json_extract(doc, '$.version')"
                        f' FROM "{table}" WHERE _id = ?',
                        (params[0],),
                    ).fetchone()
                    if not version_matches(_version(row), expect):
                        conflicts.append(params[0])
                        continue
                sql = f'{verb} INTO "{table}" (_id, ambulance_id, t, doc) VALUES (?, ?, ?, ?)'
                if sql != run_sql and run:
                    conn.executemany(run_sql, run)
                    run = []
                run_sql = sql
                run.append(params)
            if run:
                conn.executemany(run_sql, run)
            if conflicts:
                conn.rollback()  # a Conflict stores nothing of the batch
                raise Conflict(conflicts)
            conn.execute("COMMIT")

        await self._run(write)

    async def prune(
        self, collection: str, *, before: datetime | None = None, keep: int | None = None
    ) -> Pruned:
        """Delete by age, then by count, in one transaction (both walk the (t, _id) index)."""
        table = codec.check_collection(collection)
        if keep is not None and keep < 0:
            raise ValueError("keep must be at least 0")
        cutoff = None if before is None else codec.epoch_seconds(before)

        def delete(conn: sqlite3.Connection) -> Pruned:
            conn.execute("BEGIN IMMEDIATE")
            by_age = by_count = 0
            if cutoff is not None:
                by_age = conn.execute(f'DELETE FROM "{table}" WHERE t < ?', (cutoff,)).rowcount
            if keep is not None:
                # NULL sorts lowest, so DESC puts the documents without a time last.
                by_count = conn.execute(
                    f'DELETE FROM "{table}" WHERE _id IN (SELECT _id FROM "{table}"'
                    " ORDER BY t DESC, _id DESC LIMIT -1 OFFSET ?)",
                    (keep,),
                ).rowcount
            conn.execute("COMMIT")
            return Pruned(by_age=by_age, by_count=by_count)

        return await self._run(delete)

    async def expire(self, collection: str, before: datetime, *, limit: int) -> list[Document]:
        """Delete the ``limit`` oldest rows before ``before`` in one short transaction.

        One ``DELETE ... RETURNING`` on the (t, _id) index: the bridge's next
        batch waits at most this one statement on the store's thread.
        """
        table = codec.check_collection(collection)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cutoff = codec.epoch_seconds(before)

        def delete(conn: sqlite3.Connection) -> list[str]:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                f'DELETE FROM "{table}" WHERE _id IN (SELECT _id FROM "{table}"'
                " WHERE t < ? ORDER BY t, _id LIMIT ?) RETURNING t, _id, doc",
                (cutoff, limit),
            ).fetchall()
            conn.execute("COMMIT")
            # RETURNING promises no order: put them back in the index's.
            return [doc for _, _, doc in sorted(rows, key=lambda row: (row[0], row[1]))]

        return [codec.decode(doc) for doc in await self._run(delete)]

    # -- reads --------------------------------------------------------------

    async def get(self, collection: str, doc_id: str) -> Document | None:
        """One document by ``_id``."""
        table = codec.check_collection(collection)
        row = await self._run(
            lambda conn: conn.execute(
                f'SELECT doc FROM "{table}" WHERE _id = ?', (doc_id,)
            ).fetchone()
        )
        return None if row is None else codec.decode(row[0])

    async def get_many(self, collection: str, ids: Sequence[str]) -> dict[str, Document]:
        """The stored documents among ``ids``, by ``_id``: one query per slice of ids."""
        rows = await self._select_ids(
            collection, ids, lambda conn, table, chunk: conn.execute(
                f'SELECT _id, doc FROM "{table}" WHERE _id IN ({_marks(chunk)})', tuple(chunk)
            )
        )
        # Decoded here, off the store's thread: it is the bridge's only writer.
        return {doc_id: codec.decode(doc) for doc_id, doc in rows}

    async def existing_ids(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already stored in ``collection``."""
        rows = await self._select_ids(
            collection, ids, lambda conn, table, chunk: conn.execute(
                f'SELECT _id FROM "{table}" WHERE _id IN ({_marks(chunk)})', tuple(chunk)
            )
        )
        return {doc_id for (doc_id,) in rows}

    async def find(self, query: Query) -> Page:
        """Documents matching ``query`` ordered by (time, ``_id``), one page at a time."""
        sql, params = _select(query, paging.after(query))
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return paging.page(query, [codec.decode(doc) for (doc,) in rows])


def _version(row: tuple[str | None, Any] | None) -> Any:
    """The stored ``version`` of a (json_type, json_extract) row, as MongoDB would return it.

    JSON booleans as bools; objects and arrays (which json_extract returns as
    text) decoded, so that a damaged structure can be expected as stored.
    """
    if row is None:
        return None
    kind, value = row
    if kind in ("object", "array"):
        return json.loads(value)
    return {"true": True, "false": False}.get(kind or "", value)


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _select(query: Query, after: paging.Position | None) -> tuple[str, tuple[Any, ...]]:
    """The SQL (and its parameters) reading one page of ``query``, after ``after``."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.ambulance_id is not None:
        clauses.append("ambulance_id = ?")
        params.append(query.ambulance_id)
    if query.since is not None:
        clauses.append("t >= ?")
        params.append(codec.epoch_seconds(query.since))
    if query.until is not None:
        clauses.append("t < ?")
        params.append(codec.epoch_seconds(query.until))
    for name, value in query.where.items():
        clause, values = _where(name, value)
        clauses.append(clause)
        params.extend(values)
    if after is not None:
        clause, values = _after(after, query.newest_first)
        clauses.append(clause)
        params.extend(values)
    order = "DESC" if query.newest_first else "ASC"
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f'SELECT doc FROM "{query.collection}" {where} '
        f"ORDER BY t {order}, _id {order} LIMIT ?"
    )
    params.append(paging.fetch_limit(query))
    return sql, tuple(params)


def _where(name: str, value: Any) -> tuple[str, list[Any]]:
    """An equality test on a top-level field with MongoDB's typing (true is not 1)."""
    path = f'$."{name}"'
    if value is None:  # as in MongoDB: null or missing
        return "json_extract(doc, ?) IS NULL", [path]
    if isinstance(value, bool):
        return "json_type(doc, ?) = ?", [path, "true" if value else "false"]
    if isinstance(value, int | float):
        return "(json_type(doc, ?) IN ('integer', 'real') AND json_extract(doc, ?) = ?)", [
            path, path, value,
        ]
    if isinstance(value, datetime):
        date_path = f'{path}."$date"'
        return "json_extract(doc, ?) = ?", [date_path, codec.format_datetime(value)]
    return "(json_type(doc, ?) = 'text' AND json_extract(doc, ?) = ?)", [path, path, value]


def _after(position: paging.Position, newest_first: bool) -> tuple[str, list[Any]]:
    """The keyset condition for rows after ``position``'s (t, _id) in the query's order."""
    last_id = position.id
    last_t = None if position.time is None else codec.epoch_seconds(position.time)
    # NULL times sort before every time (ASC) and after every time (DESC).
    if not newest_first:
        if last_t is None:
            return "((t IS NULL AND _id > ?) OR t IS NOT NULL)", [last_id]
        return "(t > ? OR (t = ? AND _id > ?))", [last_t, last_t, last_id]
    if last_t is None:
        return "(t IS NULL AND _id < ?)", [last_id]
    return "(t < ? OR (t = ? AND _id < ?) OR t IS NULL)", [last_t, last_t, last_id]
