"""Scenario 7: SeaweedFS (S3) is killed while snapshots flow, and comes back.

The bridge spools images locally (``storage.spool``) instead of holding its
batches, so tracking keeps being stored during the outage; once S3 returns
every snapshot's images are in the bucket, byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time

import aiomqtt
import pytest

from storage.base import IMAGE_HISTORIES, TRACKINGS
from tests import services
from tests.faults.conftest import Rig
from tests.faults.devices import T0_MS, Fleet, until_async, wait_until
from tests.images import TINY_JPEG
from tests.storage.conftest import open_s3, s3_store, unique_bucket

pytestmark = [pytest.mark.faults, pytest.mark.s3]

CAMERAS = [f"W{n}" for n in range(4)]
SNAPS = 15


def image(aid: str, i: int) -> bytes:
    """A distinct JPEG per snapshot (bytes after the end marker are still a JPEG)."""
    return TINY_JPEG + f"{aid}-{i}".encode()


async def camera(port: int, aid: str, sent: list[tuple[str, int]]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, timeout=10) as client:
        for i in range(SNAPS):
            data = base64.b64encode(image(aid, i)).decode()
            body = {"images": [{"name": "front.jpg", "data": data}], "ts": T0_MS + i * 1000}
            await client.publish(f"aoc/{aid}/snap", json.dumps(body), qos=1, timeout=10)
            sent.append((aid, i))
            await asyncio.sleep(0.15)


async def test_s3_outage_spools_snapshots_and_uploads_them_all(rig: Rig) -> None:
    """Test that snapshots sent while S3 is dead all reach the bucket once it is back."""
    weed = services.seaweedfs(rig.workdir / "weed")
    rig.started.append(weed)
    await asyncio.to_thread(weed.start)
    endpoint, bucket = f"http://127.0.0.1:{weed.port}", unique_bucket()
    check = s3_store(endpoint, bucket)
    await open_s3(check, within=60)  # creates the bucket once the gateway is up
    bridge = rig.aoc(
        "bridge",
        AOC_OBJECTS_URL=f"s3://{bucket}",
        AOC_S3_ENDPOINT_URL=endpoint,
        # SeaweedFS here accepts any credentials: made up per run.
        AOC_S3_ACCESS_KEY=f"test-{secrets.token_hex(4)}",
        AOC_S3_SECRET_KEY=secrets.token_hex(16),
    )
    await asyncio.to_thread(bridge.start)
    sent: list[tuple[str, int]] = []
    fleet = Fleet(rig.mosquitto.port)
    cameras = asyncio.gather(*(camera(rig.mosquitto.port, aid, sent) for aid in CAMERAS))
    await wait_until(lambda: rig.count(IMAGE_HISTORIES) >= 12, timeout=30, what="12 snaps")
    weed.kill()
    killed = time.monotonic()
    # Tracking is not held behind the dead object store.
    await fleet.run(CAMERAS, 20)
    await wait_until(lambda: rig.count(TRACKINGS) >= 80, timeout=20, what="tracking stored")
    tracking_during = time.monotonic() - killed
    await asyncio.wait_for(cameras, 60)
    await wait_until(
        lambda: rig.count(IMAGE_HISTORIES) >= len(sent), timeout=30, what="snaps recorded"
    )
    await asyncio.to_thread(weed.start)
    back = time.monotonic()
    histories = await rig.documents(IMAGE_HISTORIES)
    keys = {doc["images"]["image0"]: (doc["ambulance_id"], doc["createdAt"]) for doc in histories}

    def expected(key: str) -> bytes:
        aid, created = keys[key]
        return image(aid, (int(created.timestamp() * 1000) - T0_MS) // 1000)

    async def all_uploaded() -> bool:
        # A restarted SeaweedFS lists objects before its volumes answer: read them back.
        try:
            return all([await check.get(key) == expected(key) for key in keys])
        except Exception:
            return False

    uploaded = await until_async(all_uploaded, timeout=90, interval=1.0, what="all in S3")
    await check.close()
    print(
        f"scenario 7: {len(sent)} snapshots sent, {len(histories)} recorded, {len(keys)} images"
        f" in S3 ({len(sent) - len(keys)} missing); tracking stored {tracking_during:.1f}s"
        f" into the outage; S3 back in {back - killed:.1f}s, all uploaded {uploaded:.1f}s later"
    )
    assert len(histories) == len(sent) == len(CAMERAS) * SNAPS
    assert len(keys) == len(sent)
