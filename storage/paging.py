"""Keyset paging, shared by the document backends.

``find`` reads a collection in (time field, ``_id``) order, documents without
a time first. A page continues strictly after the last document of the one
before, so a listing neither skips nor repeats a document that stays put,
however many are written meanwhile, and no backend ever counts an offset.

A backend answers a ``Query`` in three steps: ``after(query)`` checks it and
decodes its cursor into a ``Position``; the backend reads ``fetch_limit(query)``
documents after that position (its only backend-specific part: the query);
``page(query, docs)`` cuts the extra document off and makes the next cursor
from the last one kept. The cursor holds that document's time and ``_id``, the
time as ``codec.format_datetime`` text (null for a document without one), so
every backend reads every backend's cursors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage import codec
from storage.base import TIME_FIELDS, Document, Page, Query


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the last document's time (None when it has none) and ``_id``."""

    time: datetime | None
    id: str


def after(query: Query) -> Position | None:
    """The position ``query``'s cursor continues after (None for a first page).

    ``ValueError`` for a query no backend could answer (see ``codec.check_query``)
    and for a cursor that is not a ``next_cursor`` of ``find``, with the same
    message whatever the backend.
    """
    codec.check_query(query)
    if query.cursor is None:
        return None
    position = codec.decode_cursor(query.cursor)
    if len(position) != 2 or not isinstance(position[1], str):
        raise ValueError(codec.INVALID_CURSOR)
    return Position(_time(position[0]), position[1])


def fetch_limit(query: Query) -> int:
    """How many documents to read for one page: one more tells whether another follows."""
    return query.limit + 1


def page(query: Query, docs: Sequence[Document]) -> Page:
    """The page of ``docs`` (read with ``fetch_limit``), with a cursor when more follow."""
    if len(docs) <= query.limit:
        return Page(items=list(docs))
    items = list(docs[: query.limit])
    last = items[-1]
    at = last.get(TIME_FIELDS[query.collection])
    time = codec.format_datetime(at) if isinstance(at, datetime) else None
    return Page(items=items, next_cursor=codec.encode_cursor([time, last["_id"]]))


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, str):
            return codec.parse_datetime(value)
        # Epoch seconds: what the SQLite store's cursors held before the backends
        # shared this module. Still read, so a listing spanning an upgrade goes on.
        return codec.utc(datetime.fromtimestamp(value, UTC))
    except (ValueError, OverflowError, OSError) as exc:  # out of datetime's range
        raise ValueError(codec.INVALID_CURSOR) from exc
