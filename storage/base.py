"""The storage interfaces: one small document store and one object store.

Backends live one per module (``sqlite``, ``mongo``, ``localfs``, ``s3``) and are
chosen by URL in ``storage.open_document_store`` / ``storage.open_object_store``.
Every backend passes the same contract suite in ``tests/storage``.

Documents are plain dicts with a string ``_id``. Datetimes are timezone-aware
UTC ``datetime`` objects on the way in and on the way out, whatever the backend
stores underneath, kept to millisecond precision (BSON's) by every backend so
they all return identical documents. Each collection has an "owner" field (``ambulance_id``) and a
time field (see ``TIME_FIELDS``) that every backend indexes together, because
every read the system makes is "this ambulance (or all), in this time range".
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

Document = dict[str, Any]
# What a conditional write expects (``Write.expect``): an int, or a damaged
# stored value as it is (any JSON value; a bool is an int too).
Version = int | float | str | dict[str, Any] | list[Any]

# Collection names: the legacy MongoDB names (database ``aoc_v2``) plus our own.
TRACKINGS = "ambulance_trackings"
SPEED_VIOLATIONS = "ambulance_speed_violations"
IMAGES = "ambulance_images"
IMAGE_HISTORIES = "ambulance_image_histories"
CRASHES = "ambulance_crashes"
AMBULANCES = "ambulances"
DEAD_LETTERS = "dead_letters"
# Who changed which account or token, when (``aoc.audit``).
AUDIT = "audit"
# HTTP and Socket.IO tokens, by the hash of the secret (never the secret).
API_TOKENS = "api_tokens"
# Dispatch (``bridge.places``, ``bridge.dispatch``): named areas, what ambulances
# did at them (enter, exit, arrival), and alarms with their lifecycle.
PLACES = "places"
EVENTS = "events"
ALARMS = "alarms"
# History (``bridge.trips``): what the points mean, kept as they arrive for reports.
TRIPS = "trips"
STOPS = "stops"

# The time field each collection is indexed and range-queried on.
TIME_FIELDS: Mapping[str, str] = {
    TRACKINGS: "count_datetime",
    SPEED_VIOLATIONS: "started_at",
    IMAGES: "createdAt",
    IMAGE_HISTORIES: "createdAt",
    CRASHES: "count_datetime",
    AMBULANCES: "last_seen",
    DEAD_LETTERS: "received_at",
    AUDIT: "at",
    API_TOKENS: "created_at",
    PLACES: "updated_at",
    EVENTS: "at",
    ALARMS: "opened_at",
    TRIPS: "started_at",
    STOPS: "started_at",
}
COLLECTIONS: tuple[str, ...] = tuple(TIME_FIELDS)
SCAN_PAGE = 1000  # documents per read of a whole-collection scan


class StoreUnavailable(Exception):
    """The backend cannot be reached or written right now; the caller may retry."""


class StoreMisconfigured(StoreUnavailable):
    """The backend answers but refuses us: no credentials, access denied, no such bucket.

    Still a ``StoreUnavailable``, so callers keep what they hold (the object
    spool keeps snapshots) and retry: an operator fixes it without a restart.
    Unlike an outage, readiness reports it (``/readyz``): waiting will not cure it.
    """


class Conflict(Exception):
    """A conditional write found another version than it expected (see ``Write.expect``).

    ``ids`` are the ``_id`` of the documents whose version did not match. Not a
    ``StoreUnavailable``: retrying the same writes cannot succeed; the caller
    reads the documents again and plans new writes from them.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids: tuple[str, ...] = tuple(ids)
        super().__init__(f"version conflict on {', '.join(self.ids)}")


@dataclass(frozen=True, slots=True)
class Write:
    """One idempotent write.

    ``insert``: store ``doc`` if no document with its ``_id`` exists, else do nothing
    (a redelivered message is stored once). ``upsert``: replace the document with
    that ``_id``, or create it.

    ``expect`` (upserts only): replace the document only if its stored
    ``version`` field equals ``expect`` (``version_matches``); a missing
    document, or one without a ``version``, counts as version 0, and only an
    existing document can match any other version: a conditional upsert
    creates a document only when it expects version 0. Otherwise ``apply``
    raises ``Conflict``. Such a write is not idempotent: once stored, the same
    write conflicts.

    ``expect`` is the integer the bridge wrote, or, for a ``version`` damaged
    outside it ("3", 2.5, true), that value as stored: matched by type and
    value, so that the write replaces it with a sound one.
    """

    collection: str
    kind: Literal["insert", "upsert"]
    doc: Document
    expect: Version | None = None

    def __post_init__(self) -> None:
        if self.expect is not None and self.kind != "upsert":
            raise ValueError("only an upsert can expect a version")


def version_matches(stored: Any, expect: Version) -> bool:
    """Whether a stored ``version`` (None: missing) is the one a write expects.

    As MongoDB compares: numbers by value whatever their type (2 is 2.0),
    booleans only with booleans (true is not 1), strings only with strings.
    """
    if stored is None:
        stored = 0
    if isinstance(stored, bool) or isinstance(expect, bool):
        return type(stored) is type(expect) and stored == expect
    return bool(stored == expect)


@dataclass(frozen=True, slots=True)
class Pruned:
    """How many documents one ``prune`` deleted, by the bound that deleted them."""

    by_age: int = 0
    by_count: int = 0


@dataclass(frozen=True, slots=True)
class Page:
    """A page of documents, oldest first unless asked otherwise."""

    items: list[Document]
    # Opaque keyset cursor for the next page, or None when this was the last one.
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """A range read on one collection's (ambulance_id, time field) index."""

    collection: str
    ambulance_id: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    newest_first: bool = False
    limit: int = 100
    cursor: str | None = None  # from a previous Page.next_cursor
    # Extra equality filters on top-level fields (e.g. {"closed": False}): plain
    # field names, scalar or datetime values; None matches null or missing.
    where: Mapping[str, Any] = field(default_factory=dict)


class DocumentStore(abc.ABC):
    """An async document store holding the legacy collections."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create tables/indexes; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release resources."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot serve requests."""

    @abc.abstractmethod
    async def apply(self, writes: Sequence[Write]) -> None:
        """Apply the writes durably, IN THE GIVEN ORDER; raise ``StoreUnavailable`` on failure.

        When this returns, every write has been persisted (the caller acknowledges
        the source messages right after). Writes without ``expect`` are safe to
        apply again; a retry after a failure may meet a conditional write that
        the failed attempt stored, and then raises ``Conflict``.

        ``Conflict`` (with the ids whose version did not match): a write's
        ``expect`` failed, checked against the store as the writes before it in
        ``writes`` left it. No write without ``expect`` after the conflicting
        one is stored.

        Atomicity differs by backend; callers must not rely on more than this:

        - SQLite: one transaction. On ``Conflict`` or any failure nothing of
          ``writes`` is stored.
        - MongoDB: one ordered ``bulk_write`` per run of consecutive writes to
          the same collection (conditional and plain writes in runs of their
          own); no multi-document transaction (a standalone server has none).
          A failure or a ``Conflict`` may leave any prefix of ``writes``
          stored, and, within a run of conditional writes, others of that run
          too; so may a crash of the caller mid-call: the crash window is
          between any two writes. Callers put their commit points (the
          conditional writes) first, each self-sufficient, and make the rest
          recoverable from them (``bridge.state``'s outbox).
        """

    @abc.abstractmethod
    async def get(self, collection: str, doc_id: str) -> Document | None:
        """One document by ``_id``."""

    @abc.abstractmethod
    async def get_many(self, collection: str, ids: Sequence[str]) -> dict[str, Document]:
        """The stored documents among ``ids``, keyed by ``_id`` (absent ids are left out).

        One read per slice of ids, however many there are: the bridge loads the
        states of a batch's unknown ambulances with it.
        """

    @abc.abstractmethod
    async def existing_ids(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already stored in ``collection``."""

    @abc.abstractmethod
    async def find(self, query: Query) -> Page:
        """Documents matching ``query``, ordered by (time field, ``_id``).

        Documents without the time field sort first (last when newest first).
        ``ValueError`` for an unknown collection, a bad filter or a foreign cursor.
        """

    async def scan(
        self, collection: str, *, page_size: int = SCAN_PAGE
    ) -> AsyncIterator[Document]:
        """Every document of ``collection`` in ``find``'s order, read ``page_size`` at a time.

        Each page is one ``find`` after the last document of the previous one,
        so the scan holds no lock or server cursor between pages: a document
        written meanwhile behind the scan's position is not seen, and one whose
        time moved ahead of it (an upserted state) may be seen twice, newer last.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        cursor: str | None = None
        while True:
            page = await self.find(Query(collection, limit=page_size, cursor=cursor))
            for doc in page.items:
                yield doc
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    @abc.abstractmethod
    async def prune(
        self, collection: str, *, before: datetime | None = None, keep: int | None = None
    ) -> Pruned:
        """Delete what is older than ``before``, then all but the ``keep`` newest documents.

        Age and order are the collection's time field (then ``_id``); documents
        without it are never too old, but are the first to go by count. For
        bounded collections (dead letters); safe to call again.
        """

    @abc.abstractmethod
    async def expire(self, collection: str, before: datetime, *, limit: int) -> list[Document]:
        """Delete at most ``limit`` of the oldest documents whose time is before ``before``.

        The documents deleted, oldest first (by time field, then ``_id``); a
        document exactly at ``before`` stays, one without a time is never
        expired. One short write per call: the retention sweep
        (``bridge.retention``) calls it again and again, pausing between
        calls, so ingestion never waits long behind it.
        """

    async def set_retention(self, bounds: Mapping[str, timedelta | None]) -> frozenset[str]:
        """Let the store enforce retention itself; the collections it now expires on its own.

        ``bounds``: the age past which each collection's documents go (None:
        kept forever). A backend without such a mechanism (SQLite) enforces
        nothing and returns an empty set: the sweep calls ``expire`` instead.
        """
        return frozenset()

    async def __aenter__(self) -> DocumentStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ObjectStore(abc.ABC):
    """An async store of image bytes under the legacy key layout."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create the bucket or directory if needed; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if objects cannot be stored right now."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` durably (overwrite is allowed and idempotent)."""

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        """Store ``data`` under ``key`` unless ``key`` already holds other bytes.

        True when ``key`` now holds exactly ``data`` (stored now, or already
        there: a redelivery); False when it holds different bytes, which are
        left untouched. Backends override this with a conditional write; this
        fallback checks then puts, which two concurrent writers could race.
        """
        try:
            return await self.get(key) == data
        except KeyError:
            pass
        await self.put(key, data, content_type)
        return True

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``KeyError`` if absent."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete ``key``; nothing happens if it is absent (the retention sweep may retry)."""

    @abc.abstractmethod
    def url(self, key: str) -> str | None:
        """A URL a browser can open, or None when the HTTP API must serve the bytes."""

    async def __aenter__(self) -> ObjectStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
