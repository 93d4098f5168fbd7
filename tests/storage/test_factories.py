"""Backends named by URL, and the shared codec helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import storage
from storage import codec, open_document_store, open_object_store
from storage.localfs import LocalObjectStore
from storage.mongo import MongoDocumentStore
from storage.s3 import S3ObjectStore
from storage.sqlite import SQLiteDocumentStore


async def test_sqlite_urls_absolute_and_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that sqlite:////abs and sqlite:///relative name the files SQLAlchemy would."""
    absolute = open_document_store(f"sqlite:///{tmp_path / 'abs.db'}")
    assert isinstance(absolute, SQLiteDocumentStore)
    async with absolute:
        pass
    assert (tmp_path / "abs.db").is_file()
    monkeypatch.chdir(tmp_path)
    async with open_document_store("sqlite:///rel/relative.db"):
        pass
    assert (tmp_path / "rel" / "relative.db").is_file()


def test_mongodb_urls() -> None:
    """Test that mongodb:// and mongodb+srv:// URLs build a MongoDB store (without connecting)."""
    for url in ("mongodb://127.0.0.1:27017", "mongodb+srv://cluster.example.test/?tls=true"):
        assert isinstance(open_document_store(url, database="aoc_v2"), MongoDocumentStore)


def test_object_store_urls(tmp_path: Path) -> None:
    """Test that file:///dir builds a local store and s3://bucket an S3 store."""
    assert isinstance(open_object_store(f"file://{tmp_path}"), LocalObjectStore)
    s3 = open_object_store(
        "s3://aoc-images", endpoint_url="http://127.0.0.1:9", public_url="https://cdn.test/x"
    )
    assert isinstance(s3, S3ObjectStore)
    assert s3.url("a/b.jpg") == "https://cdn.test/x/a/b.jpg"


@pytest.mark.parametrize(
    "url",
    ["", "postgres://db/aoc", "sqlite://", "sqlite:///", "sqlite:///:memory:", "redis://x",
     "mongodb", "mysql://user:hunter2@db/aoc"],
)
def test_unknown_document_urls_are_clear_errors(url: str) -> None:
    """Test that an unusable document store URL is a ValueError that hides passwords."""
    with pytest.raises(ValueError) as info:
        open_document_store(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["", "/data/objects", "file://relative/dir", "s3://", "s3://bucket/prefix", "gs://b"]
)
def test_unknown_object_urls_are_clear_errors(url: str) -> None:
    """Test that an unusable object store URL is a ValueError."""
    with pytest.raises(ValueError, match="URL"):
        open_object_store(url)


def test_package_exports() -> None:
    """Test that every name in storage.__all__ resolves (backends are imported lazily)."""
    for name in storage.__all__:
        assert getattr(storage, name) is not None, name
    with pytest.raises(AttributeError):
        _ = storage.NoSuchThing


def test_codec_round_trip_and_format() -> None:
    """Test that the codec keeps nested datetimes (as aware UTC, to the ms) and plain JSON."""
    local = datetime(2026, 11, 29, 11, 33, 12, 345999, tzinfo=timezone(timedelta(hours=7)))
    doc = {"_id": "x", "at": local, "nested": [{"at": local}], "n": 1.5, "s": "ถนน"}
    text = codec.encode(doc)
    assert '"$date":"2026-11-29T04:33:12.345Z"' in text
    assert "ถนน" in text
    utc = datetime(2026, 11, 29, 4, 33, 12, 345000, tzinfo=UTC)
    assert codec.decode(text) == {**doc, "at": utc, "nested": [{"at": utc}]}
    # A look-alike that is not a date stays what it was.
    assert codec.decode('{"a":{"$date":"yesterday"}}') == {"a": {"$date": "yesterday"}}
    with pytest.raises(ValueError):
        codec.decode("[1, 2]")
    with pytest.raises(TypeError):
        codec.encode({"b": b"bytes"})


def test_cursor_tampering_is_a_value_error() -> None:
    """Test that a cursor that is not one of ours is refused clearly."""
    assert codec.decode_cursor(codec.encode_cursor([1.5, "id"])) == [1.5, "id"]
    # Not base64; base64 of "not json"; base64 of a JSON object instead of a list.
    for bad in ("%%%", "bm90IGpzb24", "eyJhIjoxfQ"):
        with pytest.raises(ValueError, match="cursor"):
            codec.decode_cursor(bad)


@pytest.mark.parametrize(
    "key",
    [
        "ambulance_images/332/2026/11/29/04_33/33_12_0042.jpg",
        "ambulance_images/AMB-7_x/2026/01/02/00_00/00_00_9999.png",
        "a",
        "images/ünïcode name (1).jpg",
    ],
)
def test_validate_key_accepts_the_legacy_layout(key: str) -> None:
    """Test that ordinary keys, the legacy layout included, are accepted unchanged."""
    assert codec.validate_key(key) == key
