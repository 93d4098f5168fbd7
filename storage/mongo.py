"""The MongoDB document store: the legacy database ``aoc_v2`` and its collections.

Design decision: this uses pymongo's SYNCHRONOUS ``MongoClient``, called from a
small dedicated thread pool (``storage.threaded``), not the async client.
mongomock imitates only the synchronous client, so the code the contract suite
runs against mongomock (the stand-in for a server, which cannot run in CI) is
exactly the code that runs in production against a real server. A pool of a
few threads is plenty: the bridge writes one batch at a time and pymongo pools
its sockets.

Documents keep the legacy field shapes; datetimes are BSON dates (millisecond
precision) and come back tz-aware UTC whatever the driver returns.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pymongo
from pymongo import ReplaceOne, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WTimeoutError,
)

from storage import codec, paging
from storage.base import (
    COLLECTIONS,
    IMAGE_HISTORIES,
    IMAGES,
    TIME_FIELDS,
    Conflict,
    Document,
    Page,
    Pruned,
    Query,
    StoreUnavailable,
    Write,
)
from storage.threaded import ThreadedDocumentStore

T = TypeVar("T")
MongoDoc = dict[str, Any]

# Two concurrent upserts of one new _id: the loser may retry. On a conditional
# upsert (``Write.expect``) it means a version conflict instead (see ``apply``).
_DUPLICATE_KEY = 11000
# The TTL index on a collection's time field that enforces its retention.
RETENTION_INDEX = "retention"
# Snapshot records name image objects: MongoDB's TTL monitor would delete the
# records and leave their images in object storage forever, unreachable. The
# retention sweep (``bridge.retention``) expires them instead, images first.
NO_TTL = frozenset({IMAGES, IMAGE_HISTORIES})
SERVER_SELECTION_TIMEOUT_MS = 5000  # fail fast when MongoDB is unreachable


def _transient(exc: PyMongoError) -> bool:
    """Whether ``exc`` means "try again later" rather than "this request is wrong"."""
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WriteConcernError | WTimeoutError):
        return True
    if exc.has_error_label("RetryableWriteError") or exc.has_error_label(
        "TransientTransactionError"
    ):
        return True
    if isinstance(exc, BulkWriteError):
        details = exc.details or {}
        errors = details.get("writeErrors", [])
        return bool(details.get("writeConcernErrors")) or (
            bool(errors) and all(e.get("code") == _DUPLICATE_KEY for e in errors)
        )
    return isinstance(exc, OperationFailure) and exc.code == _DUPLICATE_KEY


def _short(exc: PyMongoError) -> str:
    """``exc`` without the topology description and timeouts pymongo appends.

    A server that cannot be selected reads "127.0.0.1:1: [Errno 111] Connection
    refused" rather than a 1 KB line; the whole message is in the traceback.
    """
    if isinstance(exc, ServerSelectionTimeoutError):
        head = str(exc).split(", Timeout: ", 1)[0]
        return re.sub(r" \(configured timeouts: [^)]*\)", "", head)
    return str(exc)


class MongoDocumentStore(ThreadedDocumentStore[Database[MongoDoc]]):
    """A ``DocumentStore`` on MongoDB through pymongo's synchronous client."""

    name = "MongoDB"
    threads = 4
    thread_name = "aoc-mongo"

    def __init__(
        self,
        client_factory: Callable[[], pymongo.MongoClient[MongoDoc]],
        *,
        database: str = "aoc_v2",
        logger: logging.Logger | None = None,
    ) -> None:
        """``client_factory`` builds the client on ``open()`` (tests pass mongomock's)."""
        super().__init__()
        self._factory = client_factory
        self._database_name = database
        self._log = logger or logging.getLogger(__name__)
        self._client: pymongo.MongoClient[MongoDoc] | None = None
        self._db: Database[MongoDoc] | None = None
        self._indexed = False

    @classmethod
    def from_url(
        cls, url: str, *, database: str = "aoc_v2", logger: logging.Logger | None = None
    ) -> MongoDocumentStore:
        """A store on the server at ``url`` (``mongodb://`` or ``mongodb+srv://``).

        Timeouts default to failing fast; options written in the URL win.
        Writes are acknowledged only once journaled on a majority of the
        replica set (``w=majority``, ``journal=true``): the bridge acknowledges
        MQTT messages right after ``apply``, and a standalone ``mongod`` with
        its default write concern answers before its journal is on disk, so a
        crash of ``mongod`` lost batches already acknowledged. A standalone
        server is its own majority.
        """
        defaults: dict[str, Any] = {
            "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
            "connectTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
            "socketTimeoutMS": 30_000,
            "retryWrites": True,
            "appname": "aoc",
            "w": "majority",
            "journal": True,
        }
        in_url = "&" + url.partition("?")[2].lower()
        options = {k: v for k, v in defaults.items() if f"&{k.lower()}=" not in in_url}
        factory = functools.partial(pymongo.MongoClient, url, tz_aware=True, **options)
        return cls(factory, database=database, logger=logger)

    # -- plumbing -----------------------------------------------------------

    def _call(self, fn: Callable[[Database[MongoDoc]], T]) -> T:
        db = self._db
        if db is None:  # open() could not build the client, or close() came first
            raise self._not_open()
        try:
            return fn(db)
        except PyMongoError as exc:
            if _transient(exc):
                raise StoreUnavailable(f"MongoDB: {_short(exc)}") from exc
            raise

    # -- lifecycle ----------------------------------------------------------

    async def _connect(self) -> None:
        """Build the client and create the (ambulance_id, time, _id) indexes."""
        if self._client is None:
            self._client = self._factory()
            self._db = self._client[self._database_name]
        if not self._indexed:
            await self._run(self._create_indexes)
            self._indexed = True
        self._log.debug("MongoDB document store open (database %s)", self._database_name)

    @staticmethod
    def _create_indexes(db: Database[MongoDoc]) -> None:
        for name in COLLECTIONS:
            db[name].create_index(
                [("ambulance_id", pymongo.ASCENDING), (TIME_FIELDS[name], pymongo.ASCENDING),
                 ("_id", pymongo.ASCENDING)],
                name="ambulance_time_id",
            )
            db[name].create_index(
                [(TIME_FIELDS[name], pymongo.ASCENDING), ("_id", pymongo.ASCENDING)],
                name="time_id",
            )

    def _disconnect(self) -> Callable[[], None] | None:
        client = self._client
        if client is None:
            return None

        def disconnect() -> None:
            # Forgotten only here, after the calls queued before close(): they
            # read ``_db`` when they run, and must find it.
            self._client = self._db = None
            self._indexed = False
            client.close()

        return disconnect

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the server answers."""
        await self._run(lambda db: db.client.admin.command("ping"))

    # -- writes -------------------------------------------------------------

    async def apply(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order: one ordered ``bulk_write`` per run of one collection.

        Not per collection: grouping reordered the writes across collections,
        so a failure could store a later write without an earlier one.
        Conditional writes (``Write.expect``) make runs of their own, each an
        ordered bulk of upserts filtered on ``_id`` and version: one whose
        document holds another version fails as a duplicate key, which stops
        the bulk (``Conflict``). An upsert that created a document it expected
        at a version above 0 (deleted meanwhile) is removed again and is a
        ``Conflict`` too, as on SQLite, though the conditional writes after it
        in its run are stored by then (each is a commit point of its own).
        One round trip per run, not per ambulance.
        """
        runs: list[tuple[str, list[Write], list[UpdateOne | ReplaceOne[MongoDoc]]]] = []
        for write in codec.check_writes(writes):
            last = runs[-1] if runs else None
            if (
                last is None
                or last[0] != write.collection
                or (last[1][0].expect is None) != (write.expect is None)
            ):
                runs.append((write.collection, [], []))
            runs[-1][1].append(write)
            runs[-1][2].append(_operation(write))

        def write_all(db: Database[MongoDoc]) -> None:
            for name, run, ops in runs:
                try:
                    result = db[name].bulk_write(ops, ordered=True)
                except BulkWriteError as exc:
                    # Ordered: the bulk stopped at its first error. On a
                    # conditional upsert, a duplicate key means the filter (this
                    # _id at that version) matched nothing while the _id exists:
                    # another version is stored.
                    details = exc.details or {}
                    errors = details.get("writeErrors", [])
                    failed = run[errors[0]["index"]] if errors else None
                    if (
                        failed is not None
                        and failed.expect is not None
                        and errors[0].get("code") == _DUPLICATE_KEY
                    ):
                        created = _undo_created(db[name], run, details.get("upserted", []))
                        raise Conflict([*created, failed.doc["_id"]]) from exc
                    raise
                if run[0].expect is not None:
                    upserted = [{"index": i} for i in result.upserted_ids or {}]
                    if created := _undo_created(db[name], run, upserted):
                        raise Conflict(created)

        if runs:
            await self._run(write_all)

    async def prune(
        self, collection: str, *, before: datetime | None = None, keep: int | None = None
    ) -> Pruned:
        """Delete by age, then by count (both on the (time, _id) index)."""
        if keep is not None and keep < 0:
            raise ValueError("keep must be at least 0")
        time_field = TIME_FIELDS[codec.check_collection(collection)]

        def delete(db: Database[MongoDoc]) -> Pruned:
            coll = db[collection]
            by_age = by_count = 0
            if before is not None:
                by_age = coll.delete_many({time_field: {"$lt": codec.utc(before)}}).deleted_count
            if keep is not None and coll.count_documents({}) > keep:
                # Null and missing times sort lowest, so last when newest first.
                order = [(time_field, pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
                excess = [d["_id"] for d in coll.find({}, {"_id": 1}).sort(order).skip(keep)]
                for chunk in codec.chunks(excess):
                    by_count += coll.delete_many({"_id": {"$in": list(chunk)}}).deleted_count
            return Pruned(by_age=by_age, by_count=by_count)

        return await self._run(delete)

    async def expire(self, collection: str, before: datetime, *, limit: int) -> list[Document]:
        """Read the ``limit`` oldest documents before ``before``, then delete them by ``_id``.

        The delete repeats the time bound, so a document whose time moved
        meanwhile (an upsert) stays; it may still be among those returned.
        """
        time_field = TIME_FIELDS[codec.check_collection(collection)]
        if limit < 1:
            raise ValueError("limit must be at least 1")
        old = {time_field: {"$lt": codec.utc(before)}}

        def delete(db: Database[MongoDoc]) -> list[MongoDoc]:
            order = [(time_field, pymongo.ASCENDING), ("_id", pymongo.ASCENDING)]
            docs = list(db[collection].find(old).sort(order).limit(limit))
            if docs:
                db[collection].delete_many({"_id": {"$in": [d["_id"] for d in docs]}, **old})
            return docs

        return [codec.normalize(doc) for doc in await self._run(delete)]

    async def set_retention(self, bounds: Mapping[str, timedelta | None]) -> frozenset[str]:
        """Create, change (``collMod``) or drop each collection's TTL index to match ``bounds``.

        MongoDB's TTL monitor then deletes what is older, about once a minute
        (in its own batches). The snapshot collections (``NO_TTL``) get no TTL
        index, and lose any they had (by hand too): the sweep deletes them with their images.
        Collections not named in ``bounds`` are left as they are. The store
        must be open.
        """
        wanted: dict[str, int | None] = {}
        for collection, bound in bounds.items():
            codec.check_collection(collection)
            seconds = None if bound is None else max(1, int(bound.total_seconds()))
            wanted[collection] = None if collection in NO_TTL else seconds

        def apply(db: Database[MongoDoc]) -> frozenset[str]:
            enforced = set()
            for name, seconds in wanted.items():
                try:
                    self._set_ttl(db, name, seconds)
                except OperationFailure as exc:
                    if _transient(exc):
                        raise
                    # Refused here (e.g. IndexOptionsConflict, code 85): the others still
                    # get theirs, and the sweep deletes this one's records itself.
                    self._log.error("MongoDB TTL index on %s not set (the retention sweep "
                                    "expires it instead): %s", name, _short(exc))
                    continue
                if seconds is not None:
                    enforced.add(name)
            return frozenset(enforced)

        return await self._run(apply)

    def _set_ttl(self, db: Database[MongoDoc], name: str, seconds: int | None) -> None:
        """Bring the TTL indexes of collection ``name`` to ``seconds`` (None: none)."""
        field = TIME_FIELDS[name]
        indexes = db[name].index_information()
        for change, index in ttl_steps(indexes, field, seconds, any_ttl=name in NO_TTL):
            if change == "drop":
                db[name].drop_index(index)
            elif change == "create":
                db[name].create_index(
                    [(field, pymongo.ASCENDING)], name=index, expireAfterSeconds=seconds
                )
            else:
                db.command({"collMod": name,
                            "index": {"name": index, "expireAfterSeconds": seconds}})
            # An index made by hand (not ours by name) is worth a warning: someone meant it.
            level = logging.INFO if index == RETENTION_INDEX else logging.WARNING
            self._log.log(level, "MongoDB TTL index %s on %s.%s: %s (retention %s s)",
                          index, name, field, change, seconds)

    # -- reads --------------------------------------------------------------

    async def get(self, collection: str, doc_id: str) -> Document | None:
        """One document by ``_id``."""
        name = codec.check_collection(collection)
        doc = await self._run(lambda db: db[name].find_one({"_id": doc_id}))
        return None if doc is None else codec.normalize(doc)

    async def get_many(self, collection: str, ids: Sequence[str]) -> dict[str, Document]:
        """The stored documents among ``ids``, by ``_id``: one query per slice of ids."""
        docs = await self._select_ids(
            collection, ids, lambda db, name, chunk: db[name].find({"_id": {"$in": list(chunk)}})
        )
        return {doc["_id"]: codec.normalize(doc) for doc in docs}

    async def existing_ids(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already stored in ``collection``."""
        docs = await self._select_ids(
            collection, ids,
            lambda db, name, chunk: db[name].find({"_id": {"$in": list(chunk)}}, {"_id": 1}),
        )
        return {doc["_id"] for doc in docs}

    async def find(self, query: Query) -> Page:
        """Documents matching ``query`` ordered by (time, ``_id``), one page at a time."""
        after = paging.after(query)
        time_field = TIME_FIELDS[query.collection]
        selector = _selector(query, time_field, after)
        direction = pymongo.DESCENDING if query.newest_first else pymongo.ASCENDING

        def select(db: Database[MongoDoc]) -> list[MongoDoc]:
            cursor = (
                db[query.collection]
                .find(selector)
                .sort([(time_field, direction), ("_id", direction)])
                .limit(paging.fetch_limit(query))
            )
            return list(cursor)

        return paging.page(query, [codec.normalize(d) for d in await self._run(select)])


def ttl_steps(
    indexes: Mapping[str, Mapping[str, Any]], field: str, seconds: int | None, *,
    any_ttl: bool = False,
) -> list[tuple[str, str]]:
    """What turns ``indexes`` (``index_information()``) into the TTL index wanted on ``field``.

    ``seconds``: its ``expireAfterSeconds`` (None: no TTL index on ``field``).
    Steps ("drop" | "create" | "modify", index name), in order; none when right.
    Whatever its name, an index keyed on ``field`` alone is the one: MongoDB
    refuses a second index on the same key (IndexOptionsConflict). A TTL one is
    kept and changed in place ("modify": ``collMod``, no rebuild), a plain one
    replaced; others with a TTL on it go. ``any_ttl`` (``NO_TTL`` collections):
    every TTL index goes, on any key, since the server would orphan images.
    """
    if any_ttl:
        return [("drop", name) for name, info in indexes.items() if "expireAfterSeconds" in info]
    steps = []
    ours = indexes.get(RETENTION_INDEX)
    if ours is not None and not _on(ours, field):
        steps.append(("drop", RETENTION_INDEX))  # ours, on another field
    same = sorted(
        (name for name, info in indexes.items() if _on(info, field)),
        key=lambda name: name != RETENTION_INDEX,  # ours first
    )
    ttl = [name for name in same if "expireAfterSeconds" in indexes[name]]
    if seconds is None:
        return steps + [("drop", name) for name in ttl]
    if not ttl:
        return [*steps, *(("drop", name) for name in same), ("create", RETENTION_INDEX)]
    keep = ttl[0]
    steps += [("drop", name) for name in ttl[1:]]
    if indexes[keep]["expireAfterSeconds"] != seconds:
        steps.append(("modify", keep))
    return steps


def _on(index: Mapping[str, Any], field: str) -> bool:
    """Whether ``index`` is keyed on ``field`` ascending, alone."""
    return [tuple(key) for key in index.get("key", [])] == [(field, 1)]


def _operation(write: Write) -> UpdateOne | ReplaceOne[MongoDoc]:
    """The bulk operation of one write."""
    doc_id = write.doc["_id"]
    if write.kind == "insert":
        # $setOnInsert: a replayed insert matches and changes nothing.
        fields = {k: v for k, v in write.doc.items() if k != "_id"} or {"_id": doc_id}
        return UpdateOne({"_id": doc_id}, {"$setOnInsert": fields}, upsert=True)
    if write.expect is None:
        return ReplaceOne({"_id": doc_id}, dict(write.doc), upsert=True)
    # Version 0 also means "no version field" (null matches missing too), and
    # "no document". An upsert either way: on another stored version it fails
    # as a duplicate key, which stops an ordered bulk (see ``apply``).
    version: Any = {"$in": [0, None]} if _expects_new(write) else write.expect
    return ReplaceOne({"_id": doc_id, "version": version}, dict(write.doc), upsert=True)


def _undo_created(
    collection: Collection[MongoDoc], run: Sequence[Write], upserted: Sequence[MongoDoc]
) -> list[str]:
    """Remove what conditional upserts created though they expected a version above 0.

    Their document was deleted meanwhile: a conflict, as on SQLite. The ids removed.
    """
    created = [run[entry["index"]] for entry in upserted]
    created = [write for write in created if write.expect is not None and not _expects_new(write)]
    for write in created:
        collection.delete_one({"_id": write.doc["_id"], "version": write.doc["version"]})
    return [write.doc["_id"] for write in created]


def _expects_new(write: Write) -> bool:
    """Whether a conditional write expects version 0: the one that may create its document."""
    return write.expect == 0 and type(write.expect) is int


def _selector(query: Query, time_field: str, after: paging.Position | None) -> MongoDoc:
    clauses: list[MongoDoc] = []
    if query.ambulance_id is not None:
        clauses.append({"ambulance_id": query.ambulance_id})
    time_range: MongoDoc = {}
    if query.since is not None:
        time_range["$gte"] = codec.utc(query.since)
    if query.until is not None:
        time_range["$lt"] = codec.utc(query.until)
    if time_range:
        clauses.append({time_field: time_range})
    for name, value in query.where.items():
        clauses.append({name: codec.utc(value) if isinstance(value, datetime) else value})
    if after is not None:
        clauses.append(_after(after, time_field, query.newest_first))
    return {"$and": clauses} if clauses else {}


def _after(position: paging.Position, time_field: str, newest_first: bool) -> MongoDoc:
    """Documents after ``position``'s (time, _id) in the query's order (null times sort first)."""
    last_t, last_id = position.time, position.id
    if not newest_first:
        if last_t is None:
            return {"$or": [{time_field: None, "_id": {"$gt": last_id}},
                            {time_field: {"$ne": None}}]}
        return {"$or": [{time_field: {"$gt": last_t}},
                        {time_field: last_t, "_id": {"$gt": last_id}}]}
    if last_t is None:
        return {time_field: None, "_id": {"$lt": last_id}}
    return {"$or": [{time_field: {"$lt": last_t}},
                    {time_field: last_t, "_id": {"$lt": last_id}},
                    {time_field: None}]}
