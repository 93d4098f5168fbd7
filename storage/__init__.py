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
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from storage.base import (
    AMBULANCES,
    API_TOKENS,
    AUDIT,
    COLLECTIONS,
    CRASHES,
    DEAD_LETTERS,
    IMAGE_HISTORIES,
    IMAGES,
    SPEED_VIOLATIONS,
    TIME_FIELDS,
    TRACKINGS,
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
    "AMBULANCES",
    "API_TOKENS",
    "AUDIT",
    "COLLECTIONS",
    "CRASHES",
    "DEAD_LETTERS",
    "IMAGES",
    "IMAGE_HISTORIES",
    "SPEED_VIOLATIONS",
    "TIME_FIELDS",
    "TRACKINGS",
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
    "open_document_store",
    "open_object_store",
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


def open_document_store(
    url: str, *, database: str = "aoc_v2", logger: logging.Logger | None = None
) -> DocumentStore:
    """The document store named by ``url`` (not yet opened); ``ValueError`` if unknown."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.lower().startswith(prefix) or len(url) == len(prefix):
            raise ValueError(
                f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        path = unquote(url[len(prefix) :].split("?", 1)[0])
        if path == ":memory:":
            raise ValueError("an in-memory SQLite store would lose every acknowledged write")
        from storage.sqlite import SQLiteDocumentStore  # noqa: PLC0415 (lazy driver)

        return SQLiteDocumentStore(Path(path), logger=logger)
    if scheme in ("mongodb", "mongodb+srv"):
        from storage.mongo import MongoDocumentStore  # noqa: PLC0415 (lazy driver)

        return MongoDocumentStore.from_url(url, database=database, logger=logger)
    raise ValueError(
        f"unknown document store URL {_redact(url)!r}: expected sqlite:///..., mongodb://... "
        "or mongodb+srv://..."
    )


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
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"invalid file URL {url!r}: use file:///absolute/directory")
        from storage.localfs import LocalObjectStore  # noqa: PLC0415 (lazy driver)

        return LocalObjectStore(Path(unquote(parts.path)), logger=logger)
    if scheme == "s3":
        if not parts.netloc or parts.path.strip("/"):
            raise ValueError(f"invalid S3 URL {url!r}: use s3://bucket (no key prefix)")
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
    raise ValueError(
        f"unknown object store URL {_redact(url)!r}: expected file:///... or s3://bucket"
    )


def _redact(url: str) -> str:
    """``url`` without a password, for error messages that end up in logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()
