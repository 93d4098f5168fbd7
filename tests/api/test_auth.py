"""Who may call what over HTTP: tokens, signed image URLs, legacy mode and /metrics.

The real app over real SQLite, files, Redis and Mosquitto (``conftest``); the
in-process client's address is 127.0.0.1, so the network rules are tested by
configuring networks that exclude loopback.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import socketio
from pydantic import SecretStr

from api import ApiDeps, SocketGate, create_app
from api.realtime import create_realtime_app, create_sio
from api.routes.health import create_probe_app
from api.signing import secret_key
from api.tokens import create_token, revoke_token, token_hash, verify_token
from storage import open_object_store
from storage.base import AMBULANCES, API_TOKENS, AUDIT, IMAGES, Query, Write
from storage.localfs import LocalObjectStore
from storage.s3 import S3ObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.api.conftest import client_for
from tests.images import TINY_JPEG
from tests.storage.conftest import open_s3, unique_bucket

TRACKING = "/api/tracking/postAmbulanceTracking"
KEY_OF = "ambulance_images/{aid}/2026/03/01/04_33/33_12_0001.jpg"


def with_settings(deps: ApiDeps, **changes: Any) -> ApiDeps:
    return dataclasses.replace(deps, settings=deps.settings.model_copy(update=changes))


def anonymous(app: Any) -> httpx.AsyncClient:
    """A client of ``app`` from 127.0.0.1 sending no credentials at all."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def seed(store: SQLiteDocumentStore, objects: LocalObjectStore, *aids: str) -> None:
    """A state and a current image for each ambulance."""
    at = datetime(2026, 3, 1, 4, 33, 12, tzinfo=UTC)
    writes = []
    for aid in aids:
        key = KEY_OF.format(aid=aid)
        await objects.put(key, TINY_JPEG, "image/jpeg")
        writes += [
            Write(AMBULANCES, "insert", {
                "_id": aid, "ambulance_id": aid, "location": {"lat": 13.7, "lon": 100.5},
                "speed": 10.0, "state": "GREEN", "last_seen": at, "online": True,
            }),
            Write(IMAGES, "insert", {
                "_id": aid, "ambulance_id": aid, "createdAt": at, "images": {"image0": key},
            }),
        ]
    await store.apply(writes)


async def test_read_api_needs_a_token(deps: ApiDeps) -> None:
    """Test that no token and a wrong token are 401 with WWW-Authenticate, and ?token= works."""
    token = await create_token(deps.store, "reader", None, actor="tests")
    async with anonymous(create_app(deps)) as http:
        missing = await http.get("/api/v1/ambulances")
        wrong = await http.get("/api/v1/ambulances", headers={"Authorization": "Bearer aoc_x"})
        not_ours = await http.get("/api/v1/dead-letters", params={"token": "fake-token"})
        bearer = {"Authorization": f"Bearer {token}"}
        by_header = await http.get("/api/v1/ambulances", headers=bearer)
        by_query = await http.get("/api/v1/crashes", params={"token": token})
    for refused in (missing, wrong, not_ours):
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["detail"]
    assert "aoc token add" in missing.json()["detail"]
    assert wrong.json()["detail"] == "invalid or revoked token"
    assert by_header.status_code == 200, by_header.text
    assert by_query.status_code == 200, by_query.text


async def test_a_revoked_token_is_refused_at_once(deps: ApiDeps) -> None:
    """Test that the request right after a revocation is refused, on the same running app."""
    token = await create_token(deps.store, "to-revoke", None, actor="tests")
    async with client_for(deps, token) as http:
        before = await http.get("/api/v1/ambulances")
        await revoke_token(deps.store, "to-revoke", actor="tests")
        after = await http.get("/api/v1/ambulances")
    assert before.status_code == 200
    assert after.status_code == 401
    assert after.json()["detail"] == "invalid or revoked token"


async def test_a_limited_token_reads_its_ambulances_only(
    deps: ApiDeps, store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a room-limited token gets its ambulances and a 403 for the others."""
    await seed(store, objects, "mine-1", "mine-2", "theirs")
    token = await create_token(store, "kiosk", ["mine-1", "mine-2"], actor="tests")
    async with client_for(deps, token) as http:
        own = await http.get("/api/v1/ambulances/mine-1")
        other = await http.get("/api/v1/ambulances/theirs")
        other_track = await http.get("/api/v1/ambulances/theirs/track")
        other_snaps = await http.get("/api/v1/ambulances/theirs/snapshots")
        fleet = await http.get("/api/v1/ambulances")
        own_crashes = await http.get("/api/v1/crashes", params={"ambulance_id": "mine-2"})
        all_crashes = await http.get("/api/v1/crashes")
        dead_letters = await http.get("/api/v1/dead-letters")
        own_file = await http.get("/files/" + KEY_OF.format(aid="mine-1"))
        other_file = await http.get("/files/" + KEY_OF.format(aid="theirs"))
    assert own.status_code == 200
    assert own.json()["ambulance_id"] == "mine-1"
    for refused in (other, other_track, other_snaps, all_crashes, dead_letters, other_file):
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"]
    assert fleet.status_code == 200
    assert sorted(i["ambulance_id"] for i in fleet.json()["items"]) == ["mine-1", "mine-2"]
    assert fleet.json()["next_cursor"] is None
    assert own_crashes.status_code == 200
    assert own_file.status_code == 200
    assert own_file.content == TINY_JPEG


async def test_image_links_are_signed_and_work_without_a_header(
    deps: ApiDeps, store: SQLiteDocumentStore, objects: LocalObjectStore, api_token: str
) -> None:
    """Test that a snapshot's link loads with a plain GET, and an altered one does not."""
    await seed(store, objects, "signed-1", "signed-2")
    app = create_app(deps)
    async with client_for(deps, api_token) as http:
        body = (await http.get("/api/v1/ambulances/signed-1/snapshots")).json()
    url = body["current"]["images"][0]["url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path == "/files/" + KEY_OF.format(aid="signed-1")
    assert set(query) == {"expires", "sig"}
    assert int(query["expires"]) - time.time() == pytest.approx(
        deps.settings.image_url_ttl_seconds, abs=60
    )
    other_path = "/files/" + KEY_OF.format(aid="signed-2")
    async with anonymous(app) as browser:  # an <img> tag: no header, no token
        fetched = await browser.get(url)
        flipped = query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1")
        tampered_sig = await browser.get(parts.path, params={**query, "sig": flipped})
        other_key = await browser.get(other_path, params=query)
        longer = await browser.get(
            parts.path, params={**query, "expires": str(int(query["expires"]) + 3600)}
        )
        unsigned = await browser.get(parts.path)
        # Not hex at all: a refusal like any other wrong signature, not a 500.
        non_ascii = await browser.get(parts.path, params={**query, "sig": "\u00e9" * 64})
    assert fetched.status_code == 200, fetched.text
    assert fetched.content == TINY_JPEG
    assert fetched.headers["content-type"] == "image/jpeg"
    for refused in (tampered_sig, other_key, longer, non_ascii):
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"] == "this link is expired or its signature is wrong"
    assert unsigned.status_code == 401


async def test_an_expired_image_link_is_refused(
    deps: ApiDeps, store: SQLiteDocumentStore, objects: LocalObjectStore
) -> None:
    """Test that a link signed with the right key but past its expiry is a 403."""
    await seed(store, objects, "expired-1")
    key = KEY_OF.format(aid="expired-1")
    signer = deps.signer
    expired_at, expired_sig = signer.sign(key, now=time.time() - signer.ttl - 5)
    valid_at, valid_sig = signer.sign(key)
    async with anonymous(create_app(deps)) as browser:
        expired = await browser.get(
            f"/files/{key}", params={"expires": expired_at, "sig": expired_sig}
        )
        valid = await browser.get(f"/files/{key}", params={"expires": valid_at, "sig": valid_sig})
    assert expired.status_code == 403
    assert valid.status_code == 200


def test_the_development_secret_is_made_once_with_mode_0600(deps: ApiDeps) -> None:
    """Test that without AOC_SECRET_KEY a key file is made (0600) and reused; the setting wins."""
    first = secret_key(deps.settings)
    path = deps.settings.data_dir / "secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secret_key(deps.settings) == first
    assert len(first) == 64
    configured = deps.settings.model_copy(update={"secret_key": SecretStr("from-env")})
    assert secret_key(configured) == b"from-env"


async def test_legacy_endpoints_are_off_outside_legacy_mode(
    deps: ApiDeps, ambulance_id: str
) -> None:
    """Test that legacy POSTs are 403 (saying how to enable them) without legacy mode."""
    body = {"ambulance_id": ambulance_id, "tracking_latitude": 13.7, "tracking_longitude": 100.5}
    async with anonymous(create_app(with_settings(deps, legacy_mode=False))) as device:
        refused = await device.post(TRACKING, json=body)
        home = await device.get("/")
    assert refused.status_code == 403
    detail = refused.json()["detail"]
    assert "AOC_LEGACY_MODE=1" in detail
    assert "MQTT" in detail
    assert home.status_code == 200  # the status page stays open


async def test_legacy_mode_serves_only_its_networks(
    deps: ApiDeps, ambulance_id: str, subscriber: Any
) -> None:
    """Test that legacy mode refuses a client outside AOC_LEGACY_NETWORKS and publishes nothing."""
    body = {"ambulance_id": ambulance_id, "tracking_latitude": 13.7, "tracking_longitude": 100.5,
            "tracking_speed": 40}
    elsewhere = with_settings(deps, legacy_mode=True, legacy_networks="10.0.0.0/8")
    async with anonymous(create_app(elsewhere)) as device:
        refused = await device.post(TRACKING, json=body)
    assert refused.status_code == 403
    assert "AOC_LEGACY_NETWORKS" in refused.json()["detail"]
    await subscriber.nothing(0.3)
    async with anonymous(create_app(with_settings(deps, legacy_mode=True))) as device:
        served = await device.post(TRACKING, json=body)
    assert served.status_code == 200, served.text
    topic, _ = await subscriber.next()
    assert topic.endswith(f"{ambulance_id}/tracking")


def test_a_bad_network_setting_fails_the_start(deps: ApiDeps) -> None:
    """Test that a malformed CIDR is a ValueError naming the variable when the app is built."""
    with pytest.raises(ValueError, match="AOC_LEGACY_NETWORKS"):
        create_app(with_settings(deps, legacy_networks="10.0.0.0/33"))
    with pytest.raises(ValueError, match="AOC_METRICS_NETWORKS"):
        create_app(with_settings(deps, metrics_networks="not-a-network"))


def metrics_apps(deps: ApiDeps) -> dict[str, Any]:
    """The three faces that serve /metrics: the API, the bridge's probes, the Socket.IO port."""
    sio = create_sio(SocketGate(deps.settings, deps.store))
    return {
        "api": create_app(deps),
        "probes": create_probe_app(deps),
        "realtime": create_realtime_app(sio, deps.settings),
    }


@pytest.mark.parametrize("face", ["api", "probes", "realtime"])
async def test_metrics_need_their_token_or_network(deps: ApiDeps, face: str) -> None:
    """Test the /metrics guard on each app: loopback by default, else the metrics token."""
    async with anonymous(metrics_apps(deps)[face]) as scraper:
        default = await scraper.get("/metrics")
    outside = with_settings(deps, metrics_networks="10.0.0.0/8")
    async with anonymous(metrics_apps(outside)[face]) as scraper:
        elsewhere = await scraper.get("/metrics")
    tokened = with_settings(deps, metrics_token=SecretStr("m-secret"))
    async with anonymous(metrics_apps(tokened)[face]) as scraper:
        no_token = await scraper.get("/metrics")
        wrong = await scraper.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await scraper.get("/metrics", headers={"Authorization": "Bearer m-secret"})
    assert default.status_code == 200
    assert "aoc_socketio_clients" in default.text
    assert elsewhere.status_code == 403
    assert "AOC_METRICS_NETWORKS" in elsewhere.json()["detail"]
    assert no_token.status_code == 401
    assert wrong.status_code == 401
    assert no_token.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    assert "aoc_socketio_clients" in right.text


async def test_probes_and_the_description_stay_open(deps: ApiDeps) -> None:
    """Test that probes, /docs and /openapi.json need no token, and the API declares bearer auth."""
    async with anonymous(create_app(deps)) as http:
        answers = {path: await http.get(path) for path in ("/healthz", "/readyz", "/docs")}
        description = (await http.get("/openapi.json")).json()
    assert {path: r.status_code for path, r in answers.items()} == {
        "/healthz": 200, "/readyz": 200, "/docs": 200,
    }
    schemes = description["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `aoc token add` (`aoc_...`)",
    }
    track = description["paths"]["/api/v1/ambulances/{ambulance_id}/track"]["get"]
    assert {"HTTPBearer": []} in track["security"]
    assert {"401", "403"} <= set(track["responses"])


async def test_token_changes_are_audited(store: SQLiteDocumentStore) -> None:
    """Test that adding and revoking record who did what to which token, without the secret."""
    token = await create_token(store, "audited", ["amb-1"], actor="os:alice")
    await revoke_token(store, "audited", actor="ops-lead")
    records = (await store.find(Query(AUDIT, limit=10))).items
    assert [(r["actor"], r["action"], r["target"]) for r in records] == [
        ("os:alice", "token.add", "audited"),
        ("ops-lead", "token.revoke", "audited"),
    ]
    assert records[0]["details"] == {"rooms": ["amb-1"], "dispatch": False}
    assert token not in repr(records)


async def test_aoc_serve_starts_with_every_guard_on(
    tmp_path: Path, mosquitto: services.Service, redis_server: services.Service
) -> None:
    """Test a real `aoc serve` without legacy mode: legacy 403; reads and Socket.IO need a token."""
    process = services.aoc(
        "serve", tmp_path, mqtt_port=mosquitto.port, redis_port=redis_server.port, legacy=False
    )
    with process:
        sio_url = f"http://127.0.0.1:{process.env['AOC_SOCKETIO_PORT']}"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{process.port}") as http:
            legacy = await http.post(TRACKING, json={"ambulance_id": "P-1"})
            anonymous_read = await http.get("/api/v1/ambulances")
            read = await http.get("/api/v1/ambulances", params={"token": process.token})
        refused = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(sio_url, transports=["websocket"], wait_timeout=5)
        admitted = socketio.AsyncClient(reconnection=False)
        await admitted.connect(
            f"{sio_url}?token={process.token}", transports=["websocket"], wait_timeout=5
        )
        assert admitted.connected
        await admitted.disconnect()
    assert legacy.status_code == 403
    assert anonymous_read.status_code == 401
    assert read.status_code == 200


async def test_s3_image_links_are_presigned_for_the_configured_time(
    deps: ApiDeps, store: SQLiteDocumentStore, api_token: str, seaweedfs: services.Service
) -> None:
    """Test that with S3 the API hands out S3's presigned link, valid for the configured TTL."""
    deps = with_settings(deps, image_url_ttl_seconds=600)  # not S3's usual hour
    bucket = unique_bucket()
    objects = open_object_store(
        f"s3://{bucket}",
        endpoint_url=f"http://127.0.0.1:{seaweedfs.port}",
        access_key="fake-access-key",
        secret_key="fake-secret",
        presign_seconds=deps.settings.image_url_ttl_seconds,
    )
    assert isinstance(objects, S3ObjectStore)
    await open_s3(objects)
    try:
        key = KEY_OF.format(aid="s3-1")
        await objects.put(key, TINY_JPEG, "image/jpeg")
        await store.apply([Write(IMAGES, "insert", {
            "_id": "s3-1", "ambulance_id": "s3-1", "createdAt": datetime.now(UTC),
            "images": {"image0": key},
        })])
        async with client_for(dataclasses.replace(deps, objects=objects), api_token) as http:
            body = (await http.get("/api/v1/ambulances/s3-1/snapshots")).json()
        url = body["current"]["images"][0]["url"]
        assert f"X-Amz-Expires={deps.settings.image_url_ttl_seconds}" in url
        async with httpx.AsyncClient() as browser:
            fetched = await browser.get(url)  # the test SeaweedFS has no auth: this proves
        assert fetched.status_code == 200  # the link names the object, not that S3 checks it
        assert fetched.content == TINY_JPEG
    finally:
        await objects.close()


async def test_a_token_stored_before_the_dispatch_permission_is_read_only(
    store: SQLiteDocumentStore,
) -> None:
    """Test that a stored token without the ``dispatch`` field (an older one) may not dispatch."""
    token = await create_token(store, "older", None, actor="tests", dispatch=True)
    doc = await store.get(API_TOKENS, token_hash(token))
    assert doc is not None
    del doc["dispatch"]
    await store.apply([Write(API_TOKENS, "upsert", doc)])
    info = await verify_token(store, token)
    assert info is not None
    assert info.dispatch is False
    assert info.as_json()["dispatch"] is False
