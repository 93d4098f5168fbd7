"""Observability: /metrics, probes and JSON logs of real `aoc` processes.

Each scenario runs its own Mosquitto, so no retained message of another test
reaches the bridge, and its own `aoc` process, so the counters start at zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from aoc.metrics import (
    MESSAGES_DUPLICATE,
    MESSAGES_RECEIVED,
    MESSAGES_STORED,
    emit_kind,
    kind_of,
    observe_batch,
)
from bridge.messages import Check, Outcome, Plan
from bridge.processor import Processor
from bridge.speed import SpeedRules
from bridge.validate import Limits, parse
from storage.base import StoreUnavailable
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.images import TINY_JPEG

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_metrics(
    http: httpx.AsyncClient, check: Callable[[Samples], bool], timeout: float = 30.0
) -> Samples:
    """Scrape ``/metrics`` until ``check`` holds; fail with the last scrape otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = scrape(response.text)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            interesting = {k: v for k, v in samples.items() if k[0].startswith("aoc_")}
            raise AssertionError(f"metrics not reached within {timeout}s: {interesting}")
        await asyncio.sleep(0.1)


def json_log(service: services.Service) -> list[dict[str, Any]]:
    """Every line the process wrote (stdout and stderr), each parsed as one JSON object."""
    lines = service.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    return entries


def tracking(ts: datetime, seq: int, speed: float = 50.0) -> bytes:
    body = {"lat": 13.75 + seq * 0.001, "lon": 100.5, "speed": speed, "heading": 90}
    return json.dumps(body | {"ts": int(ts.timestamp() * 1000), "seq": seq}).encode()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[services.Service]:
    """A Mosquitto of this test only."""
    with services.mosquitto(tmp_path / "mosquitto") as service:
        yield service


@pytest.fixture
def ids() -> tuple[str, str]:
    """A good ambulance id and the one that sends invalid messages."""
    tag = uuid.uuid4().hex[:8]
    return f"MET-{tag}", f"BAD-{tag}"


@pytest.fixture
async def bridge_http(
    tmp_path: Path, broker: services.Service, redis_server: services.Service
) -> AsyncIterator[tuple[services.Service, httpx.AsyncClient]]:
    """`aoc bridge` alone with JSON logs, and a client of its probes port."""
    service = services.aoc(
        "bridge",
        tmp_path / "bridge",
        mqtt_port=broker.port,
        redis_port=redis_server.port,
        env={"AOC_LOG_FORMAT": "json", "AOC_BATCH_WAIT_MS": "50"},
    )
    with service:
        port = service.env["AOC_BRIDGE_HTTP_PORT"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield service, http
    print(service.log_tail(40))


@pytest.mark.e2e
async def test_bridge_alone_serves_probes_metrics_and_json_logs(
    bridge_http: tuple[services.Service, httpx.AsyncClient],
    broker: services.Service,
    ids: tuple[str, str],
) -> None:
    """Test that `aoc bridge` counts each message once by kind and logs only JSON, quietly."""
    service, http = bridge_http
    good, bad = ids
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"broker": "ok", "store": "ok", "objects": "ok", "redis": "ok"}

    t0 = datetime.now(UTC) - timedelta(seconds=5)
    crash = {"lat": 13.7, "lon": 100.5, "speed": 130, "ts": int(t0.timestamp() * 1000)}
    messages = [
        (f"aoc/{good}/tracking", tracking(t0, 1)),
        (f"aoc/{good}/tracking", tracking(t0 + timedelta(seconds=1), 2)),
        (f"aoc/{good}/tracking", tracking(t0 + timedelta(seconds=2), 3)),
        (f"aoc/{good}/tracking", tracking(t0, 1)),  # QoS 1 redelivery: a duplicate
        (f"aoc/{good}/status", b"online"),
        (f"aoc/{good}/crash", json.dumps(crash).encode()),
        (f"aoc/{good}/snap", TINY_JPEG),
        (f"aoc/{bad}/tracking", b"{not json"),
        (f"aoc/{bad}/crash", b'{"lat": 999, "lon": 0, "speed": 1}'),
    ]
    async with aiomqtt.Client("127.0.0.1", broker.port) as device:
        for topic, payload in messages:
            await device.publish(topic, payload, qos=1)

    expected = {
        ("aoc_messages_received_total", "tracking"): 5,
        ("aoc_messages_received_total", "crash"): 2,
        ("aoc_messages_received_total", "snap"): 1,
        ("aoc_messages_received_total", "status"): 1,
        ("aoc_messages_stored_total", "tracking"): 3,
        ("aoc_messages_stored_total", "crash"): 1,
        ("aoc_messages_stored_total", "snap"): 1,
        ("aoc_messages_stored_total", "status"): 1,
        ("aoc_messages_dead_lettered_total", "tracking"): 1,
        ("aoc_messages_dead_lettered_total", "crash"): 1,
        ("aoc_messages_dead_lettered_total", "snap"): 0,
        ("aoc_messages_duplicate_total", "tracking"): 1,
        ("aoc_messages_duplicate_total", "crash"): 0,
    }

    def counted(samples: Samples) -> bool:
        # Fan-out follows the acknowledgement: wait for the crash alert and its alarm too.
        alert = value(samples, "aoc_messages_reemitted_total", channel="mqtt", kind="alert")
        return alert == 2 and all(
            value(samples, name, kind=kind) == number for (name, kind), number in expected.items()
        )

    samples = await wait_metrics(http, counted)
    # Socket.IO through Redis: each point to its ambulance's room and `tracking`.
    # The crash's alarm goes to the `alarms` room (counted as an alert).
    for kind, number in {"tracking": 6, "crash": 2, "snap": 1, "alert": 1}.items():
        assert value(samples, "aoc_messages_reemitted_total", channel="socketio", kind=kind) == (
            number
        )
    assert value(samples, "aoc_messages_reemitted_total", channel="mqtt", kind="state") >= 1
    assert value(samples, "aoc_fanout_failures_total", channel="socketio") == 0
    batches = value(samples, "aoc_batch_size_count")
    assert batches in range(1, len(messages) + 1)
    assert value(samples, "aoc_batch_size_sum") == len(messages)
    assert value(samples, "aoc_batch_seconds_count") == batches
    # Age at ack = now - device ts: the points were 5, 4, 3 and (again) 5 s old when sent.
    assert value(samples, "aoc_message_age_seconds_count", kind="tracking") == 4
    assert value(samples, "aoc_message_age_seconds_sum", kind="tracking") >= 17
    assert value(samples, "aoc_message_age_seconds_count", kind="crash") == 1
    assert value(samples, "aoc_message_age_seconds_count", kind="snap") == 1
    assert value(samples, "aoc_store_available", component="store") == 1
    assert value(samples, "aoc_store_retries_total", component="store") == 0
    assert value(samples, "aoc_bridge_queue_depth") == 0
    assert value(samples, "aoc_process_restarts") == 0
    assert not [key for key in samples if good in str(key) or bad in str(key)]  # no id labels

    service.stop()
    assert service.proc is not None and service.proc.returncode == 0
    entries = json_log(service)
    messages_logged = [entry["message"] for entry in entries]
    dead = [m for m in messages_logged if m.startswith("dead letter from")]
    assert len(dead) == 2
    assert any(f"aoc/{bad}/tracking" in m and "JSON" in m for m in dead)
    assert any(f"aoc/{bad}/crash" in m and "lat" in m for m in dead)
    # Quiet at INFO: nothing is logged per accepted message.
    assert not [m for m in messages_logged if good in m]
    assert "stopping" in messages_logged
    assert all(entry["level"] in {"info", "warning"} for entry in entries)


@pytest.mark.e2e
async def test_serve_exports_clients_and_counters_on_both_ports(
    tmp_path: Path, broker: services.Service, redis_server: services.Service, ids: tuple[str, str]
) -> None:
    """Test that `aoc serve` exports Socket.IO clients and bridge counters at /metrics."""
    good, bad = ids
    service = services.aoc(
        "serve", tmp_path / "serve", mqtt_port=broker.port, redis_port=redis_server.port
    )
    with service:
        base = f"http://127.0.0.1:{service.port}"
        sio_url = f"http://127.0.0.1:{service.env['AOC_SOCKETIO_PORT']}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert set(ready.json()) == {"broker", "store", "objects", "redis"}
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(sio_url, transports=["websocket"], wait_timeout=10)
            try:
                await wait_metrics(http, lambda s: value(s, "aoc_socketio_clients") == 1)
                async with aiomqtt.Client("127.0.0.1", broker.port) as device:
                    now = datetime.now(UTC)
                    await device.publish(f"aoc/{good}/tracking", tracking(now, 1), qos=1)
                    await device.publish(f"aoc/{bad}/status", b"maybe", qos=1)
                # The bridge takes what is queued (no batch wait): the status may
                # come in a batch after the tracking point's.
                samples = await wait_metrics(
                    http,
                    lambda s: (
                        value(
                            s, "aoc_messages_reemitted_total", channel="socketio", kind="tracking"
                        )
                        == 2
                        and value(s, "aoc_messages_dead_lettered_total", kind="status") == 1
                    ),
                )
            finally:
                await client.disconnect()
            assert value(samples, "aoc_messages_received_total", kind="tracking") == 1
            assert value(samples, "aoc_messages_stored_total", kind="tracking") == 1
            assert value(samples, "aoc_messages_received_total", kind="status") == 1
            assert value(samples, "aoc_messages_dead_lettered_total", kind="status") == 1
            await wait_metrics(http, lambda s: value(s, "aoc_socketio_clients") == 0)
        # The Socket.IO port serves the same registry (what `aoc realtime` alone exposes).
        async with httpx.AsyncClient(base_url=sio_url, timeout=10) as sio_http:
            same = await wait_metrics(sio_http, lambda s: True)
        assert value(same, "aoc_messages_stored_total", kind="tracking") == 1


@pytest.mark.e2e
async def test_storage_outage_is_counted_and_logged_once(
    tmp_path: Path, broker: services.Service, redis_server: services.Service, ids: tuple[str, str]
) -> None:
    """Test that an object-store outage shows as unavailable with retries, each log line once."""
    good, bad = ids
    workdir = tmp_path / "bridge"
    blocker = workdir / "data" / "objects" / "ambulance_images"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a directory")  # every image put fails with an OSError
    service = services.aoc(
        "bridge",
        workdir,
        mqtt_port=broker.port,
        redis_port=redis_server.port,
        # A long batch window keeps the snap and the bad message in one batch;
        # without the object spool, the outage holds the batch.
        env={"AOC_LOG_FORMAT": "json", "AOC_BATCH_WAIT_MS": "1000", "AOC_SPOOL_MAX_BYTES": "0"},
    )
    with service:
        port = service.env["AOC_BRIDGE_HTTP_PORT"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async with aiomqtt.Client("127.0.0.1", broker.port) as device:
                await asyncio.gather(
                    device.publish(f"aoc/{good}/snap", TINY_JPEG, qos=1),
                    device.publish(f"aoc/{bad}/tracking", b"[]", qos=1),
                )
            down = await wait_metrics(
                http,
                lambda s: (
                    value(s, "aoc_store_available", component="storage") == 0
                    and value(s, "aoc_store_retries_total", component="storage") >= 3
                ),
            )
            assert value(down, "aoc_store_outages_total", component="storage") == 1
            assert value(down, "aoc_messages_received_total", kind="snap") == 0  # not acked yet
            blocker.unlink()
            up = await wait_metrics(
                http, lambda s: value(s, "aoc_messages_stored_total", kind="snap") == 1
            )
        assert value(up, "aoc_store_available", component="storage") == 1
        assert value(up, "aoc_store_outages_total", component="storage") == 1
        assert value(up, "aoc_messages_dead_lettered_total", kind="tracking") == 1
    messages = [entry["message"] for entry in json_log(service)]
    assert len([m for m in messages if m.startswith("storage unavailable")]) == 1
    assert len([m for m in messages if m.startswith("storage available again")]) == 1
    # The batch was planned several times; its dead letter is logged once.
    assert len([m for m in messages if m.startswith(f"dead letter from aoc/{bad}/")]) == 1


async def test_dead_letter_logged_once_when_a_plan_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that a batch planned again after an object-store failure logs its dead letter once."""
    received = datetime.now(UTC)
    limits = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
    batch = [
        parse("aoc/A1/tracking", b"{broken", received, limits),
        parse("aoc/A1/snap", TINY_JPEG, received, limits),
    ]
    async with (
        SQLiteDocumentStore(tmp_path / "aoc.sqlite3") as store,
        LocalObjectStore(tmp_path / "objects") as objects,
    ):
        processor = Processor(
            store=store,
            objects=objects,
            rules=SpeedRules(),
            crash_dedup_s=60,
            maps_key=None,
            dead_letter_payload_bytes=64,
        )
        blocker = tmp_path / "objects" / "ambulance_images"
        blocker.write_bytes(b"not a directory")
        with caplog.at_level(logging.WARNING, logger="bridge.processor"):
            for _ in range(3):
                with pytest.raises(StoreUnavailable):
                    await processor.plan(batch)
            assert caplog.records == []
            blocker.unlink()
            plan = await processor.plan(batch)
            processor.applied(plan)
    assert plan.counts["dead_letter"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"dead letter from aoc/A1/tracking: {batch[0].reason}"  # type: ignore[union-attr]
    ]


def test_kinds_are_low_cardinality() -> None:
    """Test that labels come from the topic's kind and the room, never an ambulance id."""
    assert [kind_of(f"aoc/X/{k}") for k in ("tracking", "crash", "snap", "status")] == [
        "tracking",
        "crash",
        "snap",
        "status",
    ]
    assert kind_of("aoc/X/state") == "other"
    assert kind_of("garbage") == "other"
    rooms = ["332", "tracking", "snap", "crash", "CRASH_NOTIFY_332"]
    assert [emit_kind(room) for room in rooms] == ["tracking", "tracking", "snap", "crash", "crash"]


def test_dispatch_commands_count_as_stored_and_checks_not_at_all() -> None:
    """Test that an applied command is counted stored (not a duplicate), a check not received."""
    def value(counter: Any, kind: str) -> float:
        return float(counter.labels(kind)._value.get())

    now = datetime.now(UTC)
    command = parse(
        "dispatch/A1/destination",
        json.dumps({"command_id": "cmd-00000001", "at": now.isoformat(), "by": "desk",
                    "destination": None}).encode(),
        now, Limits(max_image_bytes=1024, max_upload_files=1),
    )
    plan = Plan(outcomes=[Outcome.DESTINATION, Outcome.CHECK])
    before = [value(c, "destination") for c in (MESSAGES_RECEIVED, MESSAGES_STORED,
                                                 MESSAGES_DUPLICATE)]
    other = value(MESSAGES_RECEIVED, "other")
    # The bridge passes the topics of received messages only: a check has none.
    observe_batch(["dispatch/A1/destination"], [command, Check("A1", now)], plan,
                  seconds=0.001, acked_at=now)
    after = [value(c, "destination") for c in (MESSAGES_RECEIVED, MESSAGES_STORED,
                                                MESSAGES_DUPLICATE)]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 0]
    assert value(MESSAGES_RECEIVED, "other") == other


@pytest.mark.e2e
def test_up_passes_the_restart_count_to_the_restarted_child(tmp_path: Path) -> None:
    """Test that after `aoc up` restarts a killed `aoc serve`, its /metrics says 1 restart."""
    ports, env = services.up_settings(tmp_path / "data")
    log = tmp_path / "up.log"
    metrics_url = f"http://127.0.0.1:{ports['http']}/metrics"

    def restarts() -> float | None:
        try:
            response = httpx.get(metrics_url, timeout=2)
        except httpx.HTTPError:
            return None
        return value(scrape(response.text), "aoc_process_restarts")

    def wait(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
            time.sleep(0.2)

    def serve_pids() -> list[int]:
        text = log.read_text(errors="replace")
        return [int(p) for p in re.findall(r"aoc-serve started \(pid (\d+)\)", text)]

    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "aoc.cli", "up"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait(lambda: restarts() == 0, "the first aoc serve")
        wait(lambda: len(serve_pids()) == 1, "its pid in the log")
        os.kill(serve_pids()[0], signal.SIGKILL)
        wait(lambda: restarts() == 1, "the restarted aoc serve to report 1 restart")
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
