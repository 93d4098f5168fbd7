"""Storage: a document store, an object store and the latest-state cache.

Backends are named by URL; the factories only construct them (await ``open()``
or use ``async with``). Backend modules are imported on first use, so a process
that needs no MongoDB or S3 driver does not load one.

- documents: ``sqlite:///relative.db``, ``sqlite:////absolute/path.db`` (as
  SQLAlchemy writes them), ``mongodb://...``, ``mongodb+srv://...``
- objects: ``file:///absolute/dir``, ``s3://bucket``
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from storage.base import (
    ALARMS,
    AMBULANCES,
    API_TOKENS,
    AUDIT,
    COLLECTIONS,
    CRASHES,
    DEAD_LETTERS,
    EVENTS,
    IMAGE_HISTORIES,
    IMAGES,
    PLACES,
    SPEED_VIOLATIONS,
    STOPS,
    TIME_FIELDS,
    TRACKINGS,
    TRIPS,
    Document,
    DocumentStore,
    ObjectStore,
    Page,
    Query,
    StoreUnavailable,
    Write,
)
from storage.codec import validate_key

if TYPE_CHECKING:
    from storage.cache import StateCache
    from storage.localfs import LocalObjectStore
    from storage.mongo import MongoDocumentStore
    from storage.s3 import S3ObjectStore
    from storage.sqlite import SQLiteDocumentStore

__all__ = [
    "ALARMS",
    "AMBULANCES",
    "API_TOKENS",
    "AUDIT",
    "COLLECTIONS",
    "CRASHES",
    "DEAD_LETTERS",
    "EVENTS",
    "IMAGES",
    "IMAGE_HISTORIES",
    "PLACES",
    "SPEED_VIOLATIONS",
    "STOPS",
    "TIME_FIELDS",
    "TRACKINGS",
    "TRIPS",
    "Document",
    "DocumentStore",
    "LocalObjectStore",
    "MongoDocumentStore",
    "ObjectStore",
    "Page",
    "Query",
    "S3ObjectStore",
    "SQLiteDocumentStore",
    "StateCache",
    "StoreUnavailable",
    "Write",
    "document_url_problem",
    "object_url_problem",
    "open_document_store",
    "open_object_store",
    "redact",
    "validate_key",
]

_LAZY = {
    "StateCache": "storage.cache",
    "LocalObjectStore": "storage.localfs",
    "MongoDocumentStore": "storage.mongo",
    "S3ObjectStore": "storage.s3",
    "SQLiteDocumentStore": "storage.sqlite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


# What each factory accepts, for error messages (the settings name it too).
DOCUMENT_URLS = (
    "sqlite:///relative.db, sqlite:////absolute/path.db, mongodb://... or mongodb+srv://..."
)
OBJECT_URLS = "file:///absolute/directory or s3://bucket"


def document_url_problem(url: str) -> str | None:
    """Why ``url`` names no document store ``open_document_store`` can open, or None."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.lower().startswith(prefix) or len(url) == len(prefix):
            return f"not a SQLite file: expected {DOCUMENT_URLS}"
        if _sqlite_path(url) == ":memory:":
            return "an in-memory SQLite store would lose every acknowledged write"
        return None
    if scheme == "mongodb":
        return _mongodb_problem(url)
    if scheme == "mongodb+srv":  # parsing it would look its hosts up in DNS
        return None
    return f"unknown scheme: expected {DOCUMENT_URLS}"


def _mongodb_problem(url: str) -> str | None:
    """What pymongo finds wrong in a ``mongodb://`` URL (hosts, ports, options), or None."""
    from pymongo.errors import ConfigurationError, InvalidURI  # noqa: PLC0415  (only for MongoDB)
    from pymongo.uri_parser import parse_uri  # noqa: PLC0415

    try:
        parse_uri(url)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        return f"not a MongoDB URL pymongo accepts: {exc}"
    return None


def _sqlite_path(url: str) -> str:
    return unquote(url[len("sqlite:///") :].split("?", 1)[0])


def open_document_store(
    url: str, *, database: str = "aoc_v2", logger: logging.Logger | None = None
) -> DocumentStore:
    """The document store named by ``url`` (not yet opened); ``ValueError`` if unknown."""
    problem = document_url_problem(url)
    if problem is not None:
        raise ValueError(f"document store URL {redact(url)!r}: {problem}")
    if url.lower().startswith("sqlite"):
        from storage.sqlite import SQLiteDocumentStore  # noqa: PLC0415 (lazy driver)

        return SQLiteDocumentStore(Path(_sqlite_path(url)), logger=logger)
    from storage.mongo import MongoDocumentStore  # noqa: PLC0415 (lazy driver)

    return MongoDocumentStore.from_url(url, database=database, logger=logger)


def object_url_problem(url: str) -> str | None:
    """Why ``url`` names no object store ``open_object_store`` can open, or None."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return "not an absolute directory: expected file:///absolute/directory"
        return None
    if scheme == "s3":
        if not parts.netloc or parts.path.strip("/"):
            return "not a bucket: expected s3://bucket (no key prefix)"
        return None
    return f"unknown scheme: expected {OBJECT_URLS}"


def open_object_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
    public_url: str | None = None,
    presign_seconds: int | None = None,
    logger: logging.Logger | None = None,
) -> ObjectStore:
    """The object store named by ``url`` (not yet opened); ``ValueError`` if unknown."""
    problem = object_url_problem(url)
    if problem is not None:
        raise ValueError(f"object store URL {redact(url)!r}: {problem}")
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        from storage.localfs import LocalObjectStore  # noqa: PLC0415 (lazy driver)

        return LocalObjectStore(Path(unquote(parts.path)), logger=logger)
    from storage.s3 import S3ObjectStore  # noqa: PLC0415 (lazy driver)

    return S3ObjectStore(
        parts.netloc,
        endpoint_url=endpoint_url,
        region=region,
        access_key=access_key,
        secret_key=secret_key,
        public_url=public_url,
        logger=logger,
        **({} if presign_seconds is None else {"presign_seconds": presign_seconds}),
    )


def redact(url: str) -> str:
    """``url`` for a log line: the password of its user info and a ``password=`` masked."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    if parts.password is None and query == parts.query:
        return url
    return parts._replace(query=query).geturl()
