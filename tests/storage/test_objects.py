"""The object store contract: local directory and S3 (a real SeaweedFS) pass it alike."""

from __future__ import annotations

import asyncio
import os
import secrets
import urllib.request
from pathlib import Path

import boto3
import pytest

from storage.base import ObjectStore, StoreMisconfigured, StoreUnavailable
from storage.localfs import LocalObjectStore
from storage.s3 import S3ObjectStore
from tests.services import free_port
from tests.storage.conftest import open_s3, s3_store, unique_bucket


def image_key(ambulance_id: str) -> str:
    return f"ambulance_images/{ambulance_id}/2026/11/29/04_33/33_12_0042.jpg"

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"

HOSTILE_KEYS = [
    "",
    "/etc/passwd",
    "../outside.jpg",
    "ambulance_images/../../outside.jpg",
    "ambulance_images/./332.jpg",
    "ambulance_images//332.jpg",
    "ambulance_images/332/",
    "ambulance_images\\332.jpg",
    "ambulance_images/332\x00.jpg",
    "ambulance_images/332\n.jpg",
    "ambulance_images/.tmp-abc",
    "a/" + "x" * 300,
    "x/" * 600,
]


async def test_put_get_exists_and_overwrite(object_store: ObjectStore, ambulance_id: str) -> None:
    """Test that put stores bytes, exists sees them, and a second put overwrites."""
    key = image_key(ambulance_id)
    assert not await object_store.exists(key)
    with pytest.raises(KeyError):
        await object_store.get(key)
    await object_store.put(key, JPEG, "image/jpeg")
    assert await object_store.exists(key)
    assert await object_store.get(key) == JPEG
    await object_store.put(key, b"\x89PNG\r\n\x1a\nnew", "image/png")
    assert await object_store.get(key) == b"\x89PNG\r\n\x1a\nnew"
    await object_store.put(key, JPEG, "image/jpeg")  # a redelivered snap: same bytes again
    assert await object_store.get(key) == JPEG
    # A "directory" of the layout is not an object.
    assert not await object_store.exists(f"ambulance_images/{ambulance_id}")
    with pytest.raises(KeyError):
        await object_store.get(f"ambulance_images/{ambulance_id}")
    await object_store.ping()


async def test_binary_integrity(object_store: ObjectStore, ambulance_id: str) -> None:
    """Test that arbitrary bytes (every byte value, 2 MB of noise, empty) come back identical."""
    blobs = {
        f"bin/{ambulance_id}/all-bytes.bin": bytes(range(256)) * 16,
        f"bin/{ambulance_id}/noise.bin": os.urandom(2 * 1024 * 1024),
        f"bin/{ambulance_id}/empty.bin": b"",
        f"bin/{ambulance_id}/ünïcode name.jpg": b"\xff\xd8\xff\x00\r\n\x1a",
    }
    await asyncio.gather(*(object_store.put(k, v, "application/octet-stream")
                           for k, v in blobs.items()))
    for key, data in blobs.items():
        assert await object_store.get(key) == data, key


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
async def test_hostile_keys_are_rejected(object_store: ObjectStore, key: str) -> None:
    """Test that keys that could escape the root or mean something else are ValueErrors."""
    with pytest.raises(ValueError, match="object key"):
        await object_store.put(key, JPEG, "image/jpeg")
    with pytest.raises(ValueError, match="object key"):
        await object_store.get(key)
    with pytest.raises(ValueError, match="object key"):
        await object_store.exists(key)
    with pytest.raises(ValueError, match="object key"):
        object_store.url(key)


async def test_url_behaviour(object_store: ObjectStore, ambulance_id: str) -> None:
    """Test that local objects have no URL and S3 objects have a presigned URL that serves them."""
    key = image_key(ambulance_id)
    await object_store.put(key, JPEG, "image/jpeg")
    url = object_store.url(key)
    if isinstance(object_store, LocalObjectStore):
        assert url is None
        return
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url

    def fetch() -> tuple[bytes, str]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read(), response.headers.get("Content-Type", "")

    body, content_type = await asyncio.to_thread(fetch)
    assert body == JPEG
    assert content_type == "image/jpeg"


async def test_localfs_layout_is_browsable_and_leaves_no_temp_files(tmp_path: Path) -> None:
    """Test that a key is the file's path under the root and writes leave no temp files."""
    key = image_key("332")
    store = LocalObjectStore(tmp_path / "objects")
    await store.open()
    await store.open()
    await store.put(key, JPEG, "image/jpeg")
    await store.put(key, JPEG[::-1], "image/jpeg")
    assert (tmp_path / "objects" / key).read_bytes() == JPEG[::-1]
    files = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert files == [tmp_path / "objects" / key]
    assert not (tmp_path / "outside.jpg").exists()


async def test_localfs_unwritable_root_raises_store_unavailable(tmp_path: Path) -> None:
    """Test that a root that cannot hold files (here: it is a file) fails retryably."""
    key = image_key("332")
    root = tmp_path / "objects"
    root.write_bytes(b"not a directory")
    store = LocalObjectStore(root)
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.put(key, JPEG, "image/jpeg")
    root.unlink()
    await store.open()
    await store.put(key, JPEG, "image/jpeg")
    assert await store.get(key) == JPEG


@pytest.mark.s3
async def test_s3_open_creates_a_missing_bucket(s3_endpoint: str, s3_bucket: str) -> None:
    """Test that open() creates a missing bucket, and opening it again is harmless."""
    bucket = unique_bucket()
    store = s3_store(s3_endpoint, bucket)
    await open_s3(store)
    await store.open()
    await store.ping()
    missing = s3_store(s3_endpoint, unique_bucket())
    # ping does not create anything: a missing bucket is a misconfiguration
    with pytest.raises(StoreMisconfigured, match="misconfigured: no such bucket"):
        await missing.ping()
    # Nothing is written to it: each SeaweedFS bucket takes volumes from a small pool.
    cleanup = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key=secrets.token_hex(8))
    await asyncio.to_thread(cleanup.delete_bucket, Bucket=bucket)
    await store.close()
    await missing.close()


@pytest.mark.s3
async def test_s3_public_url_is_a_plain_link(
    s3_endpoint: str, s3_bucket: str, ambulance_id: str
) -> None:
    """Test that with a public URL configured, url() is that base plus the quoted key."""
    key = image_key(ambulance_id)
    store = s3_store(s3_endpoint, s3_bucket, public_url="https://cdn.example.test/images/")
    await store.open()
    await store.put(key, JPEG, "image/jpeg")
    assert store.url(key) == f"https://cdn.example.test/images/{key}"
    assert store.url("a/b c.jpg") == "https://cdn.example.test/images/a/b%20c.jpg"
    other = s3_store(s3_endpoint, s3_bucket)  # another process on the same bucket
    await other.open()
    assert await other.get(key) == JPEG
    await store.close()
    await other.close()


@pytest.mark.s3
async def test_s3_unreachable_raises_store_unavailable() -> None:
    """Test that an S3 endpoint nobody listens on fails fast with StoreUnavailable."""
    store = S3ObjectStore(
        "aoc-test", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
        access_key="test", secret_key=os.urandom(8).hex(),
    )
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.put(image_key("332"), JPEG, "image/jpeg")
    with pytest.raises(StoreUnavailable):
        await store.get(image_key("332"))
    await store.close()


async def test_put_new_never_overwrites_other_bytes(
    object_store: ObjectStore, ambulance_id: str
) -> None:
    """Test that put_new stores a free key, accepts the same bytes again, refuses others."""
    key = image_key(ambulance_id)
    other = b"\x89PNG\r\n\x1a\nsecond snap, same key"
    assert await object_store.put_new(key, JPEG, "image/jpeg")
    assert await object_store.put_new(key, JPEG, "image/jpeg")  # a redelivery
    assert not await object_store.put_new(key, other, "image/png")
    assert await object_store.get(key) == JPEG


async def test_put_new_races_leave_one_winner(object_store: ObjectStore, ambulance_id: str) -> None:
    """Test that of concurrent put_new calls with different bytes exactly one wins the key."""
    key = image_key(ambulance_id)
    blobs = [JPEG + bytes([n]) for n in range(8)]
    won = await asyncio.gather(*(object_store.put_new(key, b, "image/jpeg") for b in blobs))
    assert sum(won) == 1
    assert await object_store.get(key) == blobs[won.index(True)]


async def test_delete_removes_the_key_and_tolerates_absent_ones(
    object_store: ObjectStore, ambulance_id: str
) -> None:
    """Test that delete removes one object, leaves its neighbours, and is safe to repeat."""
    key, neighbour = image_key(ambulance_id), image_key(ambulance_id).replace("0042", "0043")
    await object_store.put(key, JPEG, "image/jpeg")
    await object_store.put(neighbour, JPEG, "image/jpeg")
    await object_store.delete(key)
    assert not await object_store.exists(key)
    with pytest.raises(KeyError):
        await object_store.get(key)
    assert await object_store.get(neighbour) == JPEG
    await object_store.delete(key)  # a retried sweep: already gone
    await object_store.delete(f"ambulance_images/{ambulance_id}/never/stored.jpg")
    await object_store.delete(f"ambulance_images/{ambulance_id}")  # a "directory": no object
    assert await object_store.get(neighbour) == JPEG
    await object_store.put(key, JPEG, "image/jpeg")  # the key can be used again
    assert await object_store.get(key) == JPEG


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
async def test_delete_refuses_hostile_keys(object_store: ObjectStore, key: str) -> None:
    """Test that delete refuses the keys put refuses, so it cannot reach outside the store."""
    with pytest.raises(ValueError, match="object key"):
        await object_store.delete(key)
