"""Helpers shared by the backends: the JSON document codec, cursors and input checks.

Datetimes are kept to millisecond precision everywhere, because that is all
BSON (MongoDB) stores: truncating in the embedded backends too makes every
backend return identical documents and answer range queries identically.

``encode`` and ``decode`` run on every stored document (the bridge's hot
path), so they use orjson, a few times faster than the standard library, for
the documents it treats exactly as ``json`` does: plain dicts, lists, strings,
64-bit integers, finite floats, booleans, None and datetimes. Anything else
(NaN, a UUID, an enum, a number too long for 64 bits, a stored text orjson
refuses) takes the standard library's path, whose results and errors are
the contract. Floats are written in their shortest form by both, though
orjson spells small exponents differently (``1e-7`` for ``json``'s ``1e-07``;
large ones are ``1e+16`` in both): the same value.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from storage.base import COLLECTIONS, TIME_FIELDS, Document, Query, Write

_DATE = "$date"
# Where-filters and keys of documents are plain identifiers: a dot or "$" would
# mean a nested path or an operator to MongoDB and a JSON path to SQLite.
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_KEY_BYTES = 1024  # the S3 limit
MAX_SEGMENT_BYTES = 255  # the usual file-name limit
ID_CHUNK = 500  # ids per IN (...) query: well under every backend's parameter limit
INVALID_CURSOR = "invalid cursor: not a next_cursor of this API"


def utc(value: datetime) -> datetime:
    """``value`` as tz-aware UTC truncated to milliseconds (naive values are taken as UTC)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def format_datetime(value: datetime) -> str:
    """Fixed-width ISO 8601 (``YYYY-MM-DDTHH:MM:SS.mmmZ``): sorts as text in time order."""
    if value.tzinfo is UTC and value.year >= 1000:
        # isoformat truncates to the millisecond, as utc() does, at a third of
        # strftime's cost; strftime writes years before 1000 without padding.
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"
    value = utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_datetime(text: str) -> datetime:
    """The inverse of ``format_datetime`` (accepts any ISO 8601 with an offset or ``Z``)."""
    return utc(datetime.fromisoformat(text))


def epoch_seconds(value: datetime) -> float:
    """Epoch seconds of ``value`` at the stored (millisecond) precision."""
    if value.tzinfo is UTC and value.microsecond % 1000 == 0:
        return value.timestamp()  # at that precision already: no copy
    return utc(value).timestamp()


def _default(value: object) -> object:
    if type(value) is datetime and value.tzinfo is UTC and value.year >= 1000:
        # format_datetime's fast case, inlined: called for every stored time.
        return {_DATE: value.isoformat(timespec="milliseconds")[:-6] + "Z"}
    if isinstance(value, datetime):
        return {_DATE: format_datetime(value)}
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get(_DATE), str):
        try:
            return parse_datetime(obj[_DATE])
        except ValueError:
            return obj
    return obj


def encode(doc: Mapping[str, Any]) -> str:
    """``doc`` as compact JSON with datetimes as ``{"$date": "<iso>"}`` (any depth).

    Raises ``TypeError`` for values JSON cannot hold and ``ValueError`` for NaN
    or infinities (SQLite's JSON functions reject them).
    """
    if type(doc) is dict and _plain(doc):
        try:
            return orjson.dumps(doc, default=_default, option=_ORJSON_DUMPS).decode()
        except (orjson.JSONEncodeError, UnicodeDecodeError):
            pass  # a key that is not a str, a lone surrogate, an int over 64 bits
    return json.dumps(doc, default=_default, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)


def decode(text: str | bytes) -> Document:
    """The inverse of ``encode``: ``{"$date": ...}`` objects become tz-aware UTC datetimes."""
    # orjson reads an integer past 64 bits as a float; json keeps it an int.
    if not _long_digits(text):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # json decides: what it accepts (lone surrogates), or its error
        else:
            if type(value) is dict and not _is_date(value):
                return _dates(value)
    doc = json.loads(text, object_hook=_object_hook)
    if not isinstance(doc, dict):
        raise ValueError("stored value is not a JSON object")
    return doc


_ORJSON_DUMPS = orjson.OPT_PASSTHROUGH_DATETIME  # datetimes through _default: {"$date": ...}
# Types orjson writes exactly as json does (datetimes through _default).
_SCALARS = frozenset({str, int, bool, type(None), datetime})
_CONTAINERS = frozenset({dict, list, tuple})
# 19 digits in a row may be an integer orjson cannot hold exactly (past -2**63 or 2**64).
_LONG_DIGITS = re.compile("[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(b"[0-9]{19}")


def _long_digits(text: str | bytes) -> bool:
    if isinstance(text, str):
        return _LONG_DIGITS.search(text) is not None
    return _LONG_DIGITS_BYTES.search(text) is not None


def _plain(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` holds only values orjson writes as json would, and no NaN or infinity."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is float:
                if not math.isfinite(value):
                    return False
            elif kind in _CONTAINERS:
                stack.append(value)
            elif kind not in _SCALARS:
                return False  # a subclass, an enum, a UUID...: json's path, json's answer
    return True


def _is_date(value: dict[str, Any]) -> bool:
    return len(value) == 1 and isinstance(value.get(_DATE), str)


def _dates(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with ``{"$date": ...}`` objects replaced, in place, as ``_object_hook`` does."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        for key, value in node.items() if type(node) is dict else enumerate(node):
            if type(value) is dict:
                if _is_date(value):
                    node[key] = _object_hook(value)
                else:
                    stack.append(value)
            elif type(value) is list:
                stack.append(value)
    return doc


def normalize(value: Any) -> Any:
    """``value`` with every nested datetime made tz-aware UTC (for drivers that return naive)."""
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def check_collection(collection: str) -> str:
    """``collection`` if it is one of ``COLLECTIONS``, else ``ValueError``."""
    if collection not in TIME_FIELDS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")
    return collection


def check_writes(writes: Iterable[Write]) -> list[Write]:
    """``writes`` as a list, each with a known collection, kind and a string ``_id``."""
    checked = []
    for write in writes:
        check_collection(write.collection)
        if write.kind not in ("insert", "upsert"):
            raise ValueError(f"unknown write kind {write.kind!r}")
        doc_id = write.doc.get("_id")
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"a document needs a non-empty string _id, got {doc_id!r}")
        checked.append(write)
    return checked


def check_query(query: Query) -> None:
    """``ValueError`` unless ``query`` can be answered the same way by every backend."""
    check_collection(query.collection)
    if query.limit < 1:
        raise ValueError(f"limit must be at least 1, got {query.limit}")
    for name, value in query.where.items():
        if not _FIELD_RE.match(name):
            raise ValueError(f"where: {name!r} is not a plain top-level field name")
        if not (value is None or isinstance(value, str | int | float | bool | datetime)):
            raise ValueError(f"where: {name!r} must be compared with a scalar or a datetime")


def chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    """``ids`` in slices small enough for one ``IN (...)`` query."""
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start : start + ID_CHUNK]


def encode_cursor(position: Sequence[Any]) -> str:
    """An opaque, URL-safe token for a keyset position (JSON-serialisable values)."""
    raw = json.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """The position in a token from ``encode_cursor``; ``ValueError`` if it is not one.

    A position holds only what ``encode_cursor`` is given: strings, finite
    numbers and nulls. Anything else (``true``, a nested list, ``NaN``) is a
    forged token, refused here so no backend binds it (Python's bool is an int).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw, parse_constant=_no_constant)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(INVALID_CURSOR) from exc
    if not isinstance(position, list):
        raise ValueError(INVALID_CURSOR)
    for value in position:
        if isinstance(value, bool) or not (value is None or isinstance(value, str | int | float)):
            raise ValueError(f"invalid cursor: holds a {type(value).__name__} value")
    return position


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def validate_key(key: str) -> str:
    """``key`` if it is a safe relative object key, else ``ValueError``.

    Keys become file paths and URLs, so anything that could escape the root or
    mean something else on some system is refused: absolute keys, backslashes,
    NUL and other control characters, empty, ``.`` or ``..`` segments, and
    segments starting with a dot (the local store's temporary files).
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"object key longer than {MAX_KEY_BYTES} bytes")
    if "\\" in key:
        raise ValueError(f"object key {key!r} contains a backslash")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise ValueError(f"object key {key!r} contains a control character")
    if key.startswith("/"):
        raise ValueError(f"object key {key!r} is absolute")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"object key {key!r} has an empty segment")
        if segment.startswith("."):
            raise ValueError(f"object key {key!r} has a segment starting with a dot")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise ValueError(
                f"object key {key!r} has a segment longer than {MAX_SEGMENT_BYTES} bytes"
            )
        try:
            segment.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"object key {key!r} is not valid UTF-8 text") from exc
    return key
