"""S3 misconfiguration is not ready; an S3 outage is (while the spool takes the snapshots).

Against real SeaweedFS: the suite's own (which accepts any credentials) for
no such bucket and no credentials, and one started here with identities
(``-s3.config``) for access denied and an unknown access key. A wrong
endpoint (nothing listens) is an outage, not a misconfiguration.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from aoc import metrics
from storage.base import StoreMisconfigured
from storage.s3 import S3ObjectStore
from storage.spool import SpoolingObjectStore
from tests import services
from tests.storage.conftest import open_s3, s3_store, unique_bucket
from tests.storage.test_objects import JPEG
from tests.storage.test_spool import key
from tests.test_startup import environment

pytestmark = pytest.mark.s3

ADMIN = ("aoc-admin", "admin-secret-0123456789")
READER = ("aoc-reader", "reader-secret-0123456789")
# Where boto3 would look for credentials of its own: nowhere, in these tests.
NO_AMBIENT_CREDENTIALS = {
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in NO_AMBIENT_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def spooled(tmp_path: Path) -> AsyncIterator[list[SpoolingObjectStore]]:
    """Spools made by the test (append them), closed at its end."""
    made: list[SpoolingObjectStore] = []
    yield made
    for spool in made:
        await spool.close()


async def spooling(
    inner: S3ObjectStore, spool_dir: Path, made: list[SpoolingObjectStore]
) -> SpoolingObjectStore:
    spool = SpoolingObjectStore(inner, spool_dir=spool_dir, max_bytes=1 << 20, retry_interval=0.2)
    made.append(spool)
    await spool.open()
    return spool


async def refusal(spool: SpoolingObjectStore, within: float = 30.0) -> str:
    """The ``StoreMisconfigured`` message ``ping`` raises, once it does."""
    deadline = time.monotonic() + within
    while True:
        try:
            await spool.ping()
        except StoreMisconfigured as exc:
            return str(exc)
        assert time.monotonic() < deadline, "the spool's ping never reported a misconfiguration"
        await asyncio.sleep(0.1)


@pytest.mark.usefixtures("no_ambient_credentials")
async def test_no_credentials_is_not_ready_and_says_so(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, ambulance_id: str,
    spooled: list[SpoolingObjectStore],
) -> None:
    """Test that a bucket without credentials spools, is not ready, and the fill is exported."""
    inner = S3ObjectStore(
        s3_bucket, endpoint_url=s3_endpoint, region="us-east-1", access_key=None, secret_key=None
    )
    spool = await spooling(inner, tmp_path / "spool", spooled)
    metrics.watch_spool(spool)
    await spool.put(key(ambulance_id, 1), JPEG, "image/jpeg")  # kept, not lost
    assert spool.pending == 1
    message = await refusal(spool)
    assert "misconfigured: no credentials" in message
    assert f"bucket {s3_bucket}" in message
    assert "1 objects" in message
    assert metrics.REGISTRY.get_sample_value("aoc_object_spool_items") == 1
    assert metrics.REGISTRY.get_sample_value("aoc_object_spool_bytes") == spool.spooled_bytes
    assert spool.spooled_bytes > len(JPEG)


async def test_a_deleted_bucket_is_a_misconfiguration_and_the_spool_keeps_what_comes(
    s3_endpoint: str, tmp_path: Path, ambulance_id: str, spooled: list[SpoolingObjectStore]
) -> None:
    """Test that a bucket deleted under a running store is not ready, and nothing put is lost.

    The drain back into a bucket (the same code as after an outage) is tested
    by the object-outage fault test. Not here: SeaweedFS may refuse a bucket
    recreated under a just-deleted name for minutes on a busy machine.
    """
    bucket = unique_bucket()
    admin = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key=secrets.token_hex(16),
    )
    plain = s3_store(s3_endpoint, bucket)
    await open_s3(plain)  # creates the bucket
    spool = await spooling(s3_store(s3_endpoint, bucket), tmp_path / "spool", spooled)
    await spool.ping()
    admin.delete_bucket(Bucket=bucket)
    try:
        with pytest.raises(StoreMisconfigured, match="misconfigured: no such bucket"):
            await plain.ping()
        assert "misconfigured: no such bucket" in await refusal(spool)
        await spool.put(key(ambulance_id, 1), JPEG, "image/jpeg")
        # AWS answers this put NoSuchBucket; SeaweedFS answers AccessDenied.
        assert re.search(r"misconfigured: (no such bucket|access denied)", await refusal(spool))
        assert spool.pending == 1
        assert await spool.get(key(ambulance_id, 1)) == JPEG  # served from the spool meanwhile
    finally:
        await plain.close()


async def test_a_wrong_endpoint_is_an_outage_and_stays_ready(
    tmp_path: Path, ambulance_id: str, spooled: list[SpoolingObjectStore]
) -> None:
    """Test that nothing listening at the endpoint spools and stays ready (an outage)."""
    endpoint = f"http://127.0.0.1:{services.free_port()}"
    spool = await spooling(s3_store(endpoint, "aoc-images"), tmp_path / "spool", spooled)
    await spool.put(key(ambulance_id, 1), JPEG, "image/jpeg")
    await spool.ping()  # ready: the spool takes the snapshots until the store is back
    assert spool.pending == 1
    assert spool.degraded is not None


@pytest.fixture(scope="module")
def seaweedfs_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS whose S3 gateway knows two accounts: an admin, and a reader; its endpoint."""
    workdir = tmp_path_factory.mktemp("seaweedfs-auth")
    config = workdir / "s3.json"
    identities = [
        {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader", "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
         "actions": ["Read", "List"]},
    ]
    config.write_text(json.dumps({"identities": identities}))
    service = services.seaweedfs(workdir)
    service.argv = [*service.argv, f"-s3.config={config}"]
    with services.running(service):
        yield f"http://127.0.0.1:{service.port}"


@pytest.fixture(scope="module")
def auth_s3(seaweedfs_auth: str) -> tuple[str, str]:
    """The authenticating SeaweedFS's endpoint and a bucket of the admin's on it."""
    admin = boto3.client(
        "s3", endpoint_url=seaweedfs_auth, region_name="us-east-1",
        aws_access_key_id=ADMIN[0], aws_secret_access_key=ADMIN[1],
    )
    bucket = unique_bucket()
    deadline = time.monotonic() + 90
    while True:  # the gateway answers a while after its port opens
        try:
            admin.create_bucket(Bucket=bucket)
            return seaweedfs_auth, bucket
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _store(endpoint: str, bucket: str, access_key: str, secret_key: str) -> S3ObjectStore:
    return S3ObjectStore(
        bucket, endpoint_url=endpoint, region="us-east-1", access_key=access_key,
        secret_key=secret_key,
    )


@pytest.mark.parametrize(
    "credentials",
    [READER, (ADMIN[0], "not-the-secret-key"), ("nobody", "no-secret")],
    ids=["read-only-account", "wrong-secret", "unknown-key"],
)
async def test_access_denied_is_not_ready(
    auth_s3: tuple[str, str], credentials: tuple[str, str], tmp_path: Path,
    ambulance_id: str, spooled: list[SpoolingObjectStore],
) -> None:
    """Test that credentials the server refuses spool the snapshot and are not ready."""
    inner = _store(*auth_s3, *credentials)
    spool = await spooling(inner, tmp_path / "spool", spooled)
    await spool.put(key(ambulance_id, 1), JPEG, "image/jpeg")
    assert spool.pending == 1
    message = await refusal(spool)
    assert "misconfigured: " in message
    wrong = message.split("misconfigured: ", 1)[1]
    assert wrong.startswith(("access denied", "unknown access key", "wrong secret key")), message


async def test_the_right_credentials_are_ready(
    auth_s3: tuple[str, str], tmp_path: Path, ambulance_id: str,
    spooled: list[SpoolingObjectStore],
) -> None:
    """Test the control case: the admin's credentials store directly and are ready."""
    spool = await spooling(_store(*auth_s3, *ADMIN), tmp_path / "s", spooled)
    await spool.put(key(ambulance_id, 1), JPEG, "image/jpeg")
    assert spool.pending == 0
    await spool.ping()


def test_serve_with_an_s3_bucket_and_no_credentials_is_not_ready(tmp_path: Path) -> None:
    """Test the reported case: `aoc serve` with AOC_OBJECTS_URL=s3://bucket alone.

    /readyz says why objects are not ready (no broker runs either: only the
    objects component is checked), and /metrics exports the spool's fill.
    """
    http_port = services.free_port()
    env = environment(
        AOC_DATA_DIR=str(tmp_path), AOC_OBJECTS_URL="s3://aoc-images",
        AOC_HTTP_PORT=str(http_port), AOC_SOCKETIO_PORT=str(services.free_port()),
        AOC_MQTT_PORT=str(services.free_port()),
        AOC_REDIS_URL=f"redis://127.0.0.1:{services.free_port()}/0",
        **NO_AMBIENT_CREDENTIALS,
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aoc.cli", "serve"], stdout=out, stderr=subprocess.STDOUT,
            env=env, cwd=tmp_path,
        )
    try:
        services.wait_for_port(http_port, 30, proc)
        base = f"http://127.0.0.1:{http_port}"
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=10)
            raise AssertionError("/readyz answered 200")
        except urllib.error.HTTPError as refused:
            assert refused.code == 503
            report = json.load(refused)
        assert report["objects"].startswith("S3 open: misconfigured: no credentials "), report
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as got:
            scraped = got.read().decode()
        assert "\naoc_object_spool_items 0.0\n" in scraped
        assert "\naoc_object_spool_bytes 0.0\n" in scraped
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text
    # Misconfigured, said first: not "unavailable", which reads as an outage to wait out.
    started = [line for line in text.splitlines() if "object store" in line]
    assert len(started) == 1, text
    assert (
        " WARNING serve storage.spool: object store misconfigured at start-up (snapshots are "
        "spooled until it is fixed): S3 open: misconfigured: no credentials (bucket aoc-images)"
    ) in started[0], text
