"""The object spool against real backends: a local directory made unavailable, and SeaweedFS.

A local store is taken down by replacing its root directory with a file (tests
run as root, so permissions would not stop a write); SeaweedFS by killing it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest

from storage.base import StoreUnavailable
from storage.localfs import LocalObjectStore
from storage.spool import SpoolingObjectStore, SpoolInUse
from tests import services
from tests.images import TINY_JPEG
from tests.storage.conftest import open_s3, s3_store, unique_bucket
from tests.storage.test_objects import HOSTILE_KEYS, JPEG

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 20


def key(ambulance_id: str, n: int) -> str:
    return f"ambulance_images/{ambulance_id}/2026/11/29/04_33/33_12_{n:04d}.jpg"


async def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


def names(spool_dir: Path) -> list[str]:
    return sorted(p.name for p in spool_dir.iterdir())


def entries(spool_dir: Path) -> list[str]:
    return [name for name in names(spool_dir) if name.endswith(".spool")]


class Outage:
    """Takes a local object store down by putting a file where its root directory was."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def start(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.write_bytes(b"not a directory")

    def end(self) -> None:
        self.root.unlink()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
async def spooled(root: Path, spool_dir: Path) -> AsyncIterator[SpoolingObjectStore]:
    store = SpoolingObjectStore(
        LocalObjectStore(root), spool_dir=spool_dir, max_bytes=1 << 20, retry_interval=0.05
    )
    async with store:
        yield store


async def test_put_goes_straight_to_an_available_store(
    spooled: SpoolingObjectStore, root: Path, spool_dir: Path, ambulance_id: str
) -> None:
    """Test that while the store works, put writes to it and nothing is spooled."""
    await spooled.put(key(ambulance_id, 1), JPEG, "image/jpeg")
    assert (root / key(ambulance_id, 1)).read_bytes() == JPEG
    assert entries(spool_dir) == []
    assert spooled.pending == 0
    assert spooled.degraded is None
    await spooled.ping()
    assert await spooled.get(key(ambulance_id, 1)) == JPEG
    assert await spooled.exists(key(ambulance_id, 1))
    assert not await spooled.exists(key(ambulance_id, 2))
    with pytest.raises(KeyError):
        await spooled.get(key(ambulance_id, 2))


async def test_hostile_keys_are_refused_even_during_an_outage(
    spooled: SpoolingObjectStore, root: Path, spool_dir: Path
) -> None:
    """Test that the spool refuses the keys every backend refuses, so none reaches its files."""
    Outage(root).start()
    for bad in HOSTILE_KEYS:
        with pytest.raises(ValueError):
            await spooled.put(bad, JPEG, "image/jpeg")
        with pytest.raises(ValueError):
            await spooled.get(bad)
        with pytest.raises(ValueError):
            spooled.url(bad)
    assert entries(spool_dir) == []


async def test_outage_spools_puts_and_drains_them_in_order_on_recovery(
    spooled: SpoolingObjectStore,
    root: Path,
    spool_dir: Path,
    ambulance_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that puts during an outage succeed, are readable, and are uploaded byte-identical."""
    caplog.set_level(logging.INFO, logger="storage.spool")
    outage = Outage(root)
    outage.start()
    blobs = {key(ambulance_id, n): JPEG + bytes([n]) * n for n in range(5)}
    for k, data in blobs.items():
        await spooled.put(k, data, "image/jpeg")
    assert spooled.pending == 5
    assert len(entries(spool_dir)) == 5
    degraded = spooled.degraded
    assert degraded is not None and degraded.startswith("degraded, accepting: 5 objects")
    await spooled.ping()  # accepting: /readyz stays ok
    for k, data in blobs.items():
        assert await spooled.get(k) == data
        assert await spooled.exists(k)
        assert spooled.url(k) is None  # the API serves it through get until uploaded
    assert not await spooled.exists(key(ambulance_id, 99))

    # Upload order is put order: record the order files appear in the store.
    seen: list[str] = []

    def progress() -> bool:
        for k in blobs:
            if k not in seen and (root / k).is_file():
                seen.append(k)
        return spooled.pending == 0

    outage.end()
    await wait_for(progress)
    assert seen == list(blobs)
    for k, data in blobs.items():
        assert (root / k).read_bytes() == data
        assert await spooled.get(k) == data
    assert entries(spool_dir) == []
    assert spooled.spooled_bytes == 0
    assert spooled.degraded is None
    messages = [r.getMessage() for r in caplog.records if r.name == "storage.spool"]
    assert len([m for m in messages if m.startswith("object store unavailable")]) == 1
    assert [m for m in messages if m.startswith("object store back")] == [
        "object store back: uploaded 5 spooled objects"
    ]
    # Healthy again: the next put goes straight through.
    await spooled.put(key(ambulance_id, 7), PNG, "image/png")
    assert (root / key(ambulance_id, 7)).read_bytes() == PNG
    assert entries(spool_dir) == []


async def test_a_later_put_of_the_same_key_wins(
    spooled: SpoolingObjectStore, root: Path, spool_dir: Path, ambulance_id: str
) -> None:
    """Test that a key put twice during an outage is spooled once, uploaded with the last bytes."""
    outage = Outage(root)
    outage.start()
    await spooled.put(key(ambulance_id, 1), JPEG, "image/jpeg")
    await spooled.put(key(ambulance_id, 1), PNG, "image/png")
    assert spooled.pending == 1
    assert len(entries(spool_dir)) == 1
    assert await spooled.get(key(ambulance_id, 1)) == PNG
    outage.end()
    await wait_for(lambda: spooled.pending == 0)
    assert (root / key(ambulance_id, 1)).read_bytes() == PNG


async def test_a_full_spool_refuses_puts_until_the_store_returns(
    root: Path, spool_dir: Path, ambulance_id: str
) -> None:
    """Test that a full spool raises StoreUnavailable (backpressure) and accepts once drained."""
    outage = Outage(root)
    store = SpoolingObjectStore(
        LocalObjectStore(root), spool_dir=spool_dir, max_bytes=3 * len(JPEG) + 600,
        retry_interval=0.05,
    )
    async with store:
        outage.start()
        for n in range(3):
            await store.put(key(ambulance_id, n), JPEG, "image/jpeg")
        with pytest.raises(StoreUnavailable, match="spool full"):
            await store.put(key(ambulance_id, 3), JPEG, "image/jpeg")
        with pytest.raises(StoreUnavailable, match="spool full"):
            await store.ping()
        assert store.pending == 3
        assert not await store.exists(key(ambulance_id, 3))
        assert store.spooled_bytes <= 3 * len(JPEG) + 600
        outage.end()
        await wait_for(lambda: store.pending == 0)
        await store.ping()
        await store.put(key(ambulance_id, 3), JPEG, "image/jpeg")
        for n in range(4):
            assert (root / key(ambulance_id, n)).read_bytes() == JPEG


async def test_a_spool_left_by_a_stopped_process_is_drained_by_the_next(
    root: Path, spool_dir: Path, ambulance_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that spooled objects survive a restart, even one while the store is still down."""
    caplog.set_level(logging.INFO, logger="storage.spool")
    outage = Outage(root)
    outage.start()
    first = SpoolingObjectStore(
        LocalObjectStore(root), spool_dir=spool_dir, max_bytes=1 << 20, retry_interval=0.05
    )
    async with first:  # the store is down at start-up: it opens anyway
        await first.put(key(ambulance_id, 1), JPEG, "image/jpeg")
        await first.put(key(ambulance_id, 2), PNG, "image/png")
    assert len(entries(spool_dir)) == 2
    # A crash mid-write leaves a temporary file: the next run removes it.
    (spool_dir / ".tmp-torn").write_bytes(b"half an entry")

    second = SpoolingObjectStore(
        LocalObjectStore(root), spool_dir=spool_dir, max_bytes=1 << 20, retry_interval=0.05
    )
    async with second:
        assert second.pending == 2
        assert await second.get(key(ambulance_id, 2)) == PNG
        await second.put(key(ambulance_id, 3), JPEG[::-1], "image/jpeg")
        assert second.pending == 3
        outage.end()
        await wait_for(lambda: second.pending == 0)
    assert (root / key(ambulance_id, 1)).read_bytes() == JPEG
    assert (root / key(ambulance_id, 2)).read_bytes() == PNG
    assert (root / key(ambulance_id, 3)).read_bytes() == JPEG[::-1]
    assert names(spool_dir) == ["lock"]
    messages = [r.getMessage() for r in caplog.records if r.name == "storage.spool"]
    assert "found 2 spooled objects" in "\n".join(messages)
    assert "object store back: uploaded 3 spooled objects" in messages


async def test_an_unreadable_entry_is_set_aside_not_lost_or_retried_forever(
    root: Path, spool_dir: Path, ambulance_id: str
) -> None:
    """Test that a corrupt spool entry is renamed .bad and the others still drain."""
    outage = Outage(root)
    outage.start()
    async with SpoolingObjectStore(
        LocalObjectStore(root), spool_dir=spool_dir, max_bytes=1 << 20
    ) as first:
        await first.put(key(ambulance_id, 1), JPEG, "image/jpeg")
    (spool_dir / "0000000000000000.spool").write_bytes(b"no header line at all")
    outage.end()
    async with SpoolingObjectStore(
        LocalObjectStore(root), spool_dir=spool_dir, max_bytes=1 << 20, retry_interval=0.05
    ) as second:
        assert isinstance(second, SpoolingObjectStore)
        await wait_for(lambda: second.pending == 0)
    assert (root / key(ambulance_id, 1)).read_bytes() == JPEG
    assert (spool_dir / "0000000000000000.spool.bad").read_bytes() == b"no header line at all"


async def test_two_stores_cannot_share_a_spool(
    spooled: SpoolingObjectStore, tmp_path: Path, spool_dir: Path
) -> None:
    """Test that a second process on the same spool directory fails to open, instead of racing."""
    other = SpoolingObjectStore(
        LocalObjectStore(tmp_path / "other"), spool_dir=spool_dir, max_bytes=1 << 20
    )
    with pytest.raises(SpoolInUse, match="used by another process"):
        await other.open()
    await spooled.ping()


async def test_drain_task_is_named_and_stopped_on_close(root: Path, spool_dir: Path) -> None:
    """Test that open starts one named drain task and close ends it."""
    store = SpoolingObjectStore(LocalObjectStore(root), spool_dir=spool_dir, max_bytes=1 << 20)
    await store.open()
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert names.count("object-spool-drain") == 1
    await store.close()
    assert "object-spool-drain" not in [t.get_name() for t in asyncio.all_tasks()]


@pytest.mark.s3
async def test_an_available_s3_store_is_written_directly(
    s3_endpoint: str, s3_bucket: str, spool_dir: Path, ambulance_id: str
) -> None:
    """Test that with SeaweedFS up, puts go to the bucket and links are S3 links."""
    inner = s3_store(s3_endpoint, s3_bucket)
    plain = s3_store(s3_endpoint, s3_bucket)
    async with SpoolingObjectStore(inner, spool_dir=spool_dir, max_bytes=1 << 20) as store:
        await store.put(key(ambulance_id, 1), JPEG, "image/jpeg")
        assert entries(spool_dir) == []
        assert await plain.get(key(ambulance_id, 1)) == JPEG
        url = store.url(key(ambulance_id, 1))
        assert url is not None and url.startswith(s3_endpoint)
        await store.ping()
    await plain.close()


@pytest.mark.s3
async def test_seaweedfs_outage_and_restart_lose_nothing(
    tmp_path: Path, spool_dir: Path, ambulance_id: str
) -> None:
    """Test that puts during a SeaweedFS outage are spooled, survive a restart, and are uploaded."""
    weed = services.seaweedfs(tmp_path / "weed").start()
    try:
        endpoint = f"http://127.0.0.1:{weed.port}"
        bucket = unique_bucket()
        await open_s3(s3_store(endpoint, bucket), within=60)
        first = SpoolingObjectStore(
            s3_store(endpoint, bucket), spool_dir=spool_dir, max_bytes=1 << 20,
            retry_interval=0.2,
        )
        async with first:
            await first.put(key(ambulance_id, 0), JPEG, "image/jpeg")
            assert first.pending == 0
            weed.kill()
            await first.put(key(ambulance_id, 1), JPEG + b"1", "image/jpeg")
            await first.put(key(ambulance_id, 2), PNG, "image/png")
            assert first.pending == 2
            assert await first.get(key(ambulance_id, 2)) == PNG
            assert await first.exists(key(ambulance_id, 1))
            assert first.url(key(ambulance_id, 1)) is None
            await first.ping()
        # Restarted while SeaweedFS is still down: it opens, keeps the spool, accepts more.
        second = SpoolingObjectStore(
            s3_store(endpoint, bucket), spool_dir=spool_dir, max_bytes=1 << 20,
            retry_interval=0.2,
        )
        async with second:
            assert second.pending == 2
            await second.put(key(ambulance_id, 3), JPEG[::-1], "image/jpeg")
            assert second.pending == 3
            weed.start()
            await wait_for(lambda: second.pending == 0, timeout=90)
            assert second.url(key(ambulance_id, 3)) is not None
        plain = s3_store(endpoint, bucket)
        assert await plain.get(key(ambulance_id, 0)) == JPEG
        assert await plain.get(key(ambulance_id, 1)) == JPEG + b"1"
        assert await plain.get(key(ambulance_id, 2)) == PNG
        assert await plain.get(key(ambulance_id, 3)) == JPEG[::-1]
        await plain.close()
        assert entries(spool_dir) == []
    finally:
        weed.kill()


async def wait_http(
    http: httpx.AsyncClient, path: str, condition: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """GET ``path`` until ``condition`` holds for the response; fail after a minute."""
    deadline = time.monotonic() + 60
    while True:
        response = await http.get(path)
        if condition(response):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {response.status_code} {response.text[-2000:]}")
        await asyncio.sleep(0.1)


def snaps_stored(response: httpx.Response) -> bool:
    return 'aoc_messages_stored_total{kind="snap"} 1.0' in response.text


@pytest.mark.e2e
async def test_the_bridge_acknowledges_snaps_while_object_storage_is_down(
    tmp_path: Path,
    mosquitto: services.Service,
    redis_server: services.Service,
    ambulance_id: str,
) -> None:
    """Test that `aoc bridge` stores a snap while its object store is down, then uploads it."""
    workdir = tmp_path / "bridge"
    outage = Outage(workdir / "data" / "objects")
    outage.start()  # down from start-up on
    service = services.aoc(
        "bridge", workdir, mqtt_port=mosquitto.port, redis_port=redis_server.port,
        env={"AOC_MQTT_CLIENT_ID": f"spool-{ambulance_id}"},
    )
    with service:
        port = service.env["AOC_BRIDGE_HTTP_PORT"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as device:
                await device.publish(f"aoc/{ambulance_id}/snap", TINY_JPEG, qos=1)
            # Stored and acknowledged although the objects directory is unusable.
            await wait_http(http, "/metrics", snaps_stored)
            spool_dir = workdir / "data" / "spool"
            assert len(entries(spool_dir)) == 1
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["objects"] == "ok"
            outage.end()
            await wait_for(lambda: entries(spool_dir) == [])
    stored = list((workdir / "data" / "objects" / "ambulance_images" / ambulance_id).rglob("*.*"))
    assert [p.read_bytes() for p in stored] == [TINY_JPEG]
    log = service.log_path.read_text()
    assert log.count("object store unavailable at start-up, spooling") == 1
    assert log.count("object store back: uploaded 1 spooled objects") == 1


async def test_put_new_sees_spooled_and_stored_objects(
    spooled: SpoolingObjectStore, root: Path, ambulance_id: str
) -> None:
    """Test that put_new refuses other bytes under a key held in the spool or in the store."""
    stored, spooled_key = key(ambulance_id, 1), key(ambulance_id, 2)
    assert await spooled.put_new(stored, JPEG, "image/jpeg")
    outage = Outage(root)
    outage.start()
    assert await spooled.put_new(spooled_key, JPEG, "image/jpeg")
    assert spooled.pending == 1
    assert not await spooled.put_new(spooled_key, PNG, "image/png")
    assert await spooled.put_new(spooled_key, JPEG, "image/jpeg")  # a redelivery
    assert spooled.pending == 1
    outage.end()
    await LocalObjectStore(root).put(stored, JPEG, "image/jpeg")  # creates the root again
    # The store answers reads again while the spool still drains: both are checked.
    assert not await spooled.put_new(stored, PNG, "image/png")
    await wait_for(lambda: spooled.pending == 0)
    assert not await spooled.put_new(spooled_key, PNG, "image/png")
    assert await spooled.get(spooled_key) == JPEG


async def test_delete_drops_a_spooled_copy_so_it_is_never_uploaded(
    spooled: SpoolingObjectStore, root: Path, spool_dir: Path, ambulance_id: str
) -> None:
    """Test that deleting a key waiting in the spool removes it there and in the store."""
    await spooled.put(key(ambulance_id, 1), JPEG, "image/jpeg")  # stored directly
    await spooled.delete(key(ambulance_id, 1))
    assert not (root / key(ambulance_id, 1)).exists()
    outage = Outage(root)
    outage.start()
    await spooled.put(key(ambulance_id, 2), JPEG, "image/jpeg")
    await spooled.put(key(ambulance_id, 3), PNG, "image/png")
    assert spooled.pending == 2
    await spooled.delete(key(ambulance_id, 2))  # the store's root is a file: nothing there
    assert spooled.pending == 1
    assert len(entries(spool_dir)) == 1
    assert not await spooled.exists(key(ambulance_id, 2))
    outage.end()
    await wait_for(lambda: spooled.pending == 0)
    assert (root / key(ambulance_id, 3)).read_bytes() == PNG
    assert not (root / key(ambulance_id, 2)).exists()
    with pytest.raises(ValueError):
        await spooled.delete("../outside.jpg")
