"""The parts of one process: a part that fails is restarted alone, stop ends them all.

``aoc.parts.Parts`` on its own with fault-injecting parts, then ``aoc serve``
in this process against a real Mosquitto and Redis: with a fault-injecting
bridge whose first run fails while the HTTP API and Socket.IO keep serving,
with one that fails while stopping, and with the broker down at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from aoc import cli, lifecycle
from aoc.config import Settings
from aoc.metrics import REGISTRY
from aoc.parts import Parts, Running, Start, StopFailed
from aoc.servers import server
from bridge.service import Bridge
from storage import TRACKINGS, Write, open_document_store
from tests import services

DEADLINE = 30.0


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``predicate()`` holds; fail after ``DEADLINE`` seconds."""
    deadline = time.monotonic() + DEADLINE
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Ticker:
    """A healthy part: counts its ticks until stopped."""

    def __init__(self) -> None:
        self.ticks = 0
        self.starts = 0
        self.ended = 0
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def start(self) -> AsyncIterator[Running]:
        self.starts += 1
        self._stop = asyncio.Event()
        yield Running(self.run, self._stop.set)

    async def run(self) -> None:
        while not self._stop.is_set():
            self.ticks += 1
            await asyncio.sleep(0.001)
        self.ended += 1


class FaultInjectingPart:
    """A part whose first ``failures`` runs raise; later runs work until stopped."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.closed = 0  # its start's clean-up ran, after a failure too
        self.healthy = asyncio.Event()
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def start(self) -> AsyncIterator[Running]:
        self._stop = asyncio.Event()
        try:
            yield Running(self.run, self._stop.set)
        finally:
            self.closed += 1

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError("injected fault")
        self.healthy.set()
        await self._stop.wait()


def sample(name: str, part: str) -> float:
    """A part's metric as this process exports it (0 before it exists)."""
    return REGISTRY.get_sample_value(name, {"part": part}) or 0.0


def delays(caplog: pytest.LogCaptureFixture, name: str) -> list[float]:
    pattern = re.compile(rf"^{name} failed \(.*\); restart #\d+ in ([\d.]+)s$")
    return [
        float(m.group(1))
        for record in caplog.records
        if (m := pattern.match(record.getMessage()))
    ]


async def test_a_failing_part_is_restarted_alone_with_capped_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that a part failing 4 times is restarted each time, others never, then all stop."""
    caplog.set_level(logging.DEBUG, logger="aoc.parts")
    stop = asyncio.Event()
    parts = Parts(stop, first_delay=0.1, max_delay=0.4)
    faulty, healthy = FaultInjectingPart(4), Ticker()
    restarted = {name: sample("aoc_part_restarts_total", name) for name in ("faulty", "healthy")}
    parts.add("faulty", faulty.start)
    parts.add("healthy", healthy.start)
    running = asyncio.create_task(parts.run())

    async def recovered() -> bool:
        return faulty.healthy.is_set()

    await until(recovered, "the faulty part to run after its failures")
    ticks = healthy.ticks
    await until(lambda: _true(healthy.ticks > ticks), "the healthy part to keep ticking")
    assert (parts.restarts("faulty"), parts.restarts("healthy")) == (4, 0)
    assert [
        sample("aoc_part_restarts_total", name) - restarted[name] for name in ("faulty", "healthy")
    ] == [4, 0]
    assert (sample("aoc_part_up", "faulty"), sample("aoc_part_up", "healthy")) == (1, 1)
    assert (faulty.runs, faulty.closed, healthy.starts) == (5, 4, 1)
    assert delays(caplog, "faulty") == [0.1, 0.2, 0.4, 0.4]
    lines = [r for r in caplog.records if r.getMessage().startswith("faulty failed (")]
    assert lines[0].getMessage().startswith("faulty failed (RuntimeError: injected fault)")
    # The traceback at ERROR once, with the first failure; then at DEBUG.
    assert [r.exc_info is not None for r in lines] == [True, False, False, False]
    assert sum(r.levelno == logging.DEBUG and r.exc_info is not None for r in caplog.records) == 3

    stop.set()
    async with asyncio.timeout(DEADLINE):
        await running
    assert (faulty.closed, healthy.ended) == (5, 1)
    assert (sample("aoc_part_up", "faulty"), sample("aoc_part_up", "healthy")) == (0, 0)


async def _true(value: bool) -> bool:
    return value


async def test_a_part_ending_on_its_own_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """Test that a part whose run returns without a stop is started again."""
    stop = asyncio.Event()
    parts = Parts(stop, first_delay=0.01)
    runs = 0

    @contextlib.asynccontextmanager
    async def quitter() -> AsyncIterator[Running]:
        async def run() -> None:
            nonlocal runs
            runs += 1

        yield Running(run, lambda: None)

    parts.add("quitter", quitter)
    running = asyncio.create_task(parts.run())
    await until(lambda: _true(runs >= 3), "three runs")
    stop.set()
    async with asyncio.timeout(DEADLINE):
        await running
    assert "quitter failed (ended on its own); restart #1" in caplog.text


@pytest.mark.parametrize("phase", ["starting", "waiting to restart"])
async def test_stop_ends_a_part_that_is_starting_or_waiting(phase: str) -> None:
    """Test that stop does not wait for a start that never completes, nor for a long backoff."""
    stop = asyncio.Event()
    parts = Parts(stop, first_delay=3600.0)
    entered = asyncio.Event()
    if phase == "starting":

        @contextlib.asynccontextmanager
        async def start() -> AsyncIterator[Running]:
            entered.set()
            forever = asyncio.Event()
            await forever.wait()  # a broker that never answers

            async def run() -> None:  # never reached
                await forever.wait()

            yield Running(run, forever.set)

        parts.add("stuck", start)
    else:
        faulty = FaultInjectingPart(1)
        parts.add("stuck", faulty.start)
    healthy = Ticker()
    parts.add("healthy", healthy.start)
    running = asyncio.create_task(parts.run())
    if phase == "starting":
        await entered.wait()
    else:
        await until(lambda: _true(parts.restarts("stuck") == 1), "the first failure")
        assert (sample("aoc_part_up", "stuck"), sample("aoc_part_up", "healthy")) == (0, 1)
    stop.set()
    async with asyncio.timeout(DEADLINE):
        await running
    assert healthy.ended == 1


class ScriptedPart:
    """A part whose runs raise ``faults`` in turn (each from inside a task group if
    ``grouped``), then run until stopped."""

    def __init__(self, faults: list[Exception], *, grouped: bool = False) -> None:
        self.faults = list(faults)
        self.grouped = grouped
        self.healthy = asyncio.Event()
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def start(self) -> AsyncIterator[Running]:
        self._stop = asyncio.Event()
        yield Running(self.run, self._stop.set)

    async def run(self) -> None:
        if not self.faults:
            self.healthy.set()
            await self._stop.wait()
            return
        fault = self.faults.pop(0)
        if not self.grouped:
            raise fault

        async def inner() -> None:
            raise fault

        async with asyncio.TaskGroup() as group:  # as the bridge runs its loops
            group.create_task(inner())


async def _run_until_healthy(parts: Parts, part: ScriptedPart, stop: asyncio.Event) -> None:
    running = asyncio.create_task(parts.run())
    await until(lambda: _true(part.healthy.is_set()), "the part to run after its faults")
    stop.set()
    async with asyncio.timeout(DEADLINE):
        await running


def _failure_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"{name} failed (")]


async def test_the_log_names_a_task_groups_inner_failure_with_its_traceback_when_new(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that the restart line unwraps exception groups, and the traceback is logged at
    ERROR for every failure that differs from the previous one (a repeat: at DEBUG only)."""
    caplog.set_level(logging.DEBUG, logger="aoc.parts")
    stop = asyncio.Event()
    parts = Parts(stop, first_delay=0.01)
    faults: list[Exception] = [
        RuntimeError("store gone"),
        RuntimeError("store gone"),
        ValueError("bad batch"),
        RuntimeError("store gone"),
    ]
    part = ScriptedPart(faults, grouped=True)
    parts.add("grouped", part.start)
    await _run_until_healthy(parts, part, stop)
    lines = _failure_lines(caplog, "grouped")
    causes = [r.getMessage().split(";")[0] for r in lines]
    assert causes == [
        "grouped failed (RuntimeError: store gone)",
        "grouped failed (RuntimeError: store gone)",
        "grouped failed (ValueError: bad batch)",
        "grouped failed (RuntimeError: store gone)",
    ]
    assert [r.levelno for r in lines] == [logging.ERROR] * 4
    assert [r.exc_info is not None for r in lines] == [True, False, True, True]
    repeats = [r for r in caplog.records if r.getMessage() == "grouped failure"]
    assert [(r.levelno, r.exc_info is not None) for r in repeats] == [(logging.DEBUG, True)]


async def test_the_traceback_is_logged_again_after_a_healthy_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that the same failure after a healthy run logs its traceback at ERROR again."""
    stop = asyncio.Event()
    # Every run counts as healthy: each failure is the first since one.
    parts = Parts(stop, first_delay=0.1, healthy_after=0.0)
    part = ScriptedPart([RuntimeError("flaky disk") for _ in range(3)])
    parts.add("flaky", part.start)
    await _run_until_healthy(parts, part, stop)
    lines = _failure_lines(caplog, "flaky")
    assert [r.exc_info is not None for r in lines] == [True, True, True]
    assert delays(caplog, "flaky") == [0.1, 0.1, 0.1]  # and the backoff starts over


async def test_a_failure_while_stopping_is_logged_and_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that a part failing while it stops is logged with its traceback and makes
    ``Parts.run`` raise once every part has ended, instead of returning as if all went well."""
    stop = asyncio.Event()
    parts = Parts(stop)
    healthy = Ticker()
    finishing = asyncio.Event()

    @contextlib.asynccontextmanager
    async def finisher() -> AsyncIterator[Running]:
        async def run() -> None:
            await finishing.wait()
            raise RuntimeError("could not acknowledge the last batch")

        yield Running(run, finishing.set)

    parts.add("finisher", finisher)
    parts.add("healthy", healthy.start)
    running = asyncio.create_task(parts.run())
    await until(lambda: _true(healthy.ticks > 0), "the parts to run")
    stop.set()
    with pytest.raises(StopFailed) as raised:
        async with asyncio.timeout(DEADLINE):
            await running
    assert list(raised.value.failures) == ["finisher"]
    assert str(raised.value) == (
        "finisher failed while stopping: RuntimeError: could not acknowledge the last batch"
    )
    assert healthy.ended == 1
    [line] = [r for r in caplog.records if r.getMessage() == "finisher failed while stopping"]
    assert line.levelno == logging.ERROR
    assert line.exc_info is not None and line.exc_info[1] is raised.value.failures["finisher"]


async def test_parts_stop_last_added_first_each_after_the_next_ended() -> None:
    """Test the stop order: a server finishes its requests before the bridge it publishes
    through is asked to stop (``aoc serve`` adds the bridge first)."""
    stop = asyncio.Event()
    parts = Parts(stop)
    events: list[str] = []
    finishing = asyncio.Event()

    def recorded(name: str, *, slow: bool) -> Start:
        @contextlib.asynccontextmanager
        async def start() -> AsyncIterator[Running]:
            stopped = asyncio.Event()

            async def run() -> None:
                events.append(f"{name} running")
                await stopped.wait()
                if slow:  # an in-flight request still being answered
                    await finishing.wait()
                events.append(f"{name} ended")

            def ask() -> None:
                events.append(f"{name} asked to stop")
                stopped.set()

            yield Running(run, ask)

        return start

    parts.add("bridge", recorded("bridge", slow=False))
    parts.add("http", recorded("http", slow=True))
    running = asyncio.create_task(parts.run())
    await until(lambda: _true(len(events) == 2), "both parts running")
    stop.set()
    await until(lambda: _true("http asked to stop" in events), "the stop to reach http")
    for _ in range(20):  # let anything that would wrongly stop the bridge now run
        await asyncio.sleep(0)
    assert "bridge asked to stop" not in events
    finishing.set()
    async with asyncio.timeout(DEADLINE):
        await running
    assert events[2:] == [
        "http asked to stop", "http ended", "bridge asked to stop", "bridge ended",
    ]


# -- aoc serve, with a bridge that fails once -------------------------------------------------


def point(i: int) -> bytes:
    body = {"lat": 13.7563 + i * 0.001, "lon": 100.5018, "speed": 40.0, "heading": 0,
            "ts": int(time.time() * 1000) - 60_000 + i * 1000}
    return json.dumps(body).encode()


def serve_settings(tmp_path: Path, *, mqtt_port: int, redis_url: str) -> Settings:
    """Settings of an `aoc serve` on free ports, with a bridge session of its own."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        mqtt_port=mqtt_port,
        mqtt_client_id=f"aoc-bridge-{uuid.uuid4().hex[:8]}",
        redis_url=redis_url,
        http_port=services.free_port(),
        socketio_port=services.free_port(),
        snap_workers=1,
        legacy_mode=True,  # the legacy shim relays from loopback
    )


def read_headers(settings: Settings) -> dict[str, str]:
    """A bearer header of a new token in the store of ``settings`` (the read API needs one)."""
    token = services.api_token({"AOC_DATA_DIR": str(settings.data_dir)})
    return {"Authorization": f"Bearer {token}"}


async def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response | None:
    """The answer to GET ``url``, or None while nothing answers."""
    try:
        async with httpx.AsyncClient(headers=headers) as client:
            return await client.get(url, timeout=5)
    except httpx.TransportError:
        return None


def parts_metrics(text: str) -> dict[tuple[str, str], float]:
    """The ``aoc_part_*`` samples of a /metrics page, by name and part."""
    return {
        (sample.name, sample.labels["part"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("aoc_part_")
    }


async def test_serve_stops_http_then_the_bridge_while_socketio_still_serves(
    mosquitto: services.Service,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test the stop order of `aoc serve`: when the bridge is asked to stop, the HTTP
    server has finished (its legacy requests publish on the bridge's connection) and
    Socket.IO still serves (the bridge's last fan-out, alerts first, goes there)."""
    seen: dict[str, bool] = {}
    settings = serve_settings(tmp_path, mqtt_port=mosquitto.port, redis_url=redis_url)

    class WatchedBridge(Bridge):
        def stop(self) -> None:
            seen["http open"] = services.port_is_open(settings.http_port)
            seen["socketio open"] = services.port_is_open(settings.socketio_port)
            super().stop()

    monkeypatch.setattr(lifecycle, "Bridge", WatchedBridge)
    stop = asyncio.Event()
    serving = asyncio.create_task(lifecycle.serve(settings, stop=stop))
    try:
        ready = f"http://127.0.0.1:{settings.http_port}/readyz"

        async def is_ready() -> bool:
            answer = await get(ready)
            return answer is not None and answer.status_code == 200

        await until(is_ready, "aoc serve to be ready")
    finally:
        stop.set()
        async with asyncio.timeout(DEADLINE):
            await serving
    assert seen == {"http open": False, "socketio open": True}


async def test_serve_keeps_serving_while_its_bridge_restarts(
    mosquitto: services.Service,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that a bridge failure in `aoc serve` restarts the bridge alone.

    The first bridge fails on demand; /healthz and Socket.IO answer while the
    next one is held back, a point published before the failure is stored by
    the restarted bridge, and stop then ends every part and closes the ports.
    """
    fail, resume = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    class FaultInjectingBridge(Bridge):
        """The real bridge, except that its first run fails when told to."""

        async def run(self) -> None:
            runs.append("started")
            if len(runs) == 1:
                await fail.wait()
                raise RuntimeError("injected bridge fault")
            await resume.wait()
            await super().run()
            runs.append("ended")

    monkeypatch.setattr(lifecycle, "Bridge", FaultInjectingBridge)
    settings = serve_settings(tmp_path, mqtt_port=mosquitto.port, redis_url=redis_url)
    http_port, sio_port = settings.http_port, settings.socketio_port
    headers = read_headers(settings)
    stop = asyncio.Event()
    serving = asyncio.create_task(lifecycle.serve(settings, stop=stop))
    ambulance_id = f"LC{uuid.uuid4().hex[:8]}"
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}", headers=headers
        ) as http:

            async def answers(path: str, *, port: int = http_port) -> bool:
                try:
                    response = await http.get(f"http://127.0.0.1:{port}{path}", timeout=5)
                except httpx.TransportError:
                    return False
                return response.status_code == 200

            await until(lambda: answers("/readyz"), "aoc serve to be ready")
            before = parts_metrics((await http.get("/metrics")).text)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as device:
                await device.publish(f"aoc/{ambulance_id}/tracking", point(0), qos=1)
            fail.set()
            await until(lambda: _true(len(runs) == 2), "the bridge to be restarted")
            # The bridge is down (its successor held back): the servers still answer.
            assert await answers("/healthz")
            assert await answers("/", port=sio_port)
            resume.set()

            async def stored() -> bool:
                response = await http.get(f"/api/v1/ambulances/{ambulance_id}", timeout=5)
                return response.status_code == 200

            await until(stored, "the restarted bridge to store the point")
            assert await answers("/healthz")
            await until(lambda: answers("/readyz"), "readiness after the restart")
            after = parts_metrics((await http.get("/metrics")).text)
            names = ("bridge", "http", "socketio")
            restarts = [
                after["aoc_part_restarts_total", n] - before["aoc_part_restarts_total", n]
                for n in names
            ]
            assert restarts == [1, 0, 0]
            assert [after["aoc_part_up", n] for n in names] == [1, 1, 1]
    finally:
        stop.set()
        async with asyncio.timeout(DEADLINE):
            await serving
    assert runs == ["started", "started", "ended"]
    failed = [r.getMessage() for r in caplog.records if " failed (" in r.getMessage()]
    assert failed == ["bridge failed (RuntimeError: injected bridge fault); restart #1 in 0.5s"]
    assert not services.port_is_open(http_port)
    assert not services.port_is_open(sio_port)


async def test_a_server_whose_port_is_taken_later_retries_with_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that a server part whose port another process took fails that part alone, and
    each retry is one line naming the port and its holder, no traceback; it serves once free.

    (At start-up, a taken port is a configuration error instead: ``tests/test_startup.py``.)
    """

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    stop = asyncio.Event()
    parts = Parts(stop, first_delay=0.05, max_delay=0.2)
    healthy = Ticker()

    @contextlib.asynccontextmanager
    async def http_part() -> AsyncIterator[Running]:
        embedded = server(ok, host="127.0.0.1", port=port)
        yield Running(embedded.serve, embedded.stop)

    parts.add("http", http_part)
    parts.add("healthy", healthy.start)
    running = asyncio.create_task(parts.run())
    try:
        await until(lambda: _true(parts.restarts("http") >= 2), "the server to fail twice")
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(failures) >= 2
        for record in failures:  # uvicorn's own error line neither
            assert record.name == "aoc.parts"
            assert record.exc_info is None
            assert record.getMessage().startswith(
                f"http failed (ServerFailed: cannot listen on 127.0.0.1:{port}: in use by "
                f"pid {os.getpid()} ("
            )
        blocker.close()

        async def answers() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"http://127.0.0.1:{port}/", timeout=5)
            except httpx.TransportError:
                return False
            return response.text == "ok"

        await until(answers, "the server to start once its port is free")
        assert healthy.starts == 1
    finally:
        blocker.close()
        stop.set()
        async with asyncio.timeout(DEADLINE):
            await running
    assert not services.port_is_open(port)


async def test_serve_exits_with_an_error_when_its_bridge_fails_while_stopping(
    mosquitto: services.Service,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that a bridge failing as it finishes after the stop makes `aoc serve` raise
    (the command exits non-zero), after the servers have stopped."""

    class FaultInjectingBridge(Bridge):
        """The real bridge, except that finishing fails."""

        async def run(self) -> None:
            await super().run()
            raise RuntimeError("injected fault while finishing the batch")

    monkeypatch.setattr(lifecycle, "Bridge", FaultInjectingBridge)
    settings = serve_settings(tmp_path, mqtt_port=mosquitto.port, redis_url=redis_url)
    stop = asyncio.Event()
    serving = asyncio.create_task(lifecycle.serve(settings, stop=stop))
    ready = f"http://127.0.0.1:{settings.http_port}/readyz"
    try:
        await until(lambda: _ok(get(ready), serving), "aoc serve to be ready")
    finally:
        stop.set()
    with pytest.raises(StopFailed, match="bridge failed while stopping: RuntimeError: injected"):
        async with asyncio.timeout(DEADLINE):
            await serving
    assert not services.port_is_open(settings.http_port)


async def _ok(answer: Awaitable[httpx.Response | None], serving: asyncio.Task[None]) -> bool:
    """Whether ``answer`` is a 200; raises what ended ``serving`` if it ended."""
    if serving.done():
        serving.result()
        raise AssertionError("aoc serve returned")
    response = await answer
    return response is not None and response.status_code == 200


async def test_serve_starts_with_the_broker_down_and_its_bridge_connects_later(
    redis_url: str, tmp_path: Path
) -> None:
    """Test that `aoc serve` with no broker at start-up serves /healthz and a 503 /readyz
    instead of exiting, and that its bridge comes up once the broker starts: ready, and a
    point relayed by the legacy shim is stored."""
    broker = services.mosquitto(tmp_path / "mosquitto")  # its ports chosen, not started
    settings = serve_settings(tmp_path, mqtt_port=broker.port, redis_url=redis_url)
    base = f"http://127.0.0.1:{settings.http_port}"
    headers = read_headers(settings)
    stop = asyncio.Event()
    serving = asyncio.create_task(lifecycle.serve(settings, stop=stop))
    ambulance_id = f"LD{uuid.uuid4().hex[:8]}"
    try:
        await until(lambda: _ok(get(f"{base}/healthz"), serving), "/healthz without a broker")
        not_ready = await get(f"{base}/readyz")
        assert not_ready is not None and not_ready.status_code == 503
        assert not_ready.json()["broker"] == "the bridge is not running (starting or restarting)"
        await asyncio.to_thread(broker.start)
        await until(lambda: _ok(get(f"{base}/readyz"), serving), "readiness once the broker is up")
        body = {"ambulance_id": ambulance_id, "tracking_latitude": 13.75,
                "tracking_longitude": 100.5, "tracking_speed": 40, "tracking_heading": 0}
        async with httpx.AsyncClient(base_url=base) as http:
            relayed = await http.post("/api/tracking/postAmbulanceTracking", json=body, timeout=10)
            assert relayed.status_code == 200, relayed.text
            await until(
                lambda: _ok(get(f"{base}/api/v1/ambulances/{ambulance_id}", headers), serving),
                "the bridge to store the relayed point",
            )
    finally:
        stop.set()
        try:
            async with asyncio.timeout(DEADLINE):
                await serving
        finally:
            broker.stop()


async def test_serve_sweeps_what_is_older_than_its_retention_even_without_a_broker(
    redis_url: str, tmp_path: Path
) -> None:
    """Test that `aoc serve` runs the retention sweep as a part of its own: with the broker
    down (its bridge restarting), a point older than AOC_RETENTION_TRACKING_DAYS is
    deleted at start and a recent one kept."""
    settings = serve_settings(tmp_path, mqtt_port=services.free_port(), redis_url=redis_url)
    settings = settings.model_copy(update={"retention_tracking_days": 1.0})
    now = datetime.now(UTC)
    points = {name: {"_id": name, "ambulance_id": "332", "count_datetime": at}
              for name, at in (("old", now - timedelta(days=2)), ("recent", now))}
    async with open_document_store(settings.resolved_store_url) as store:
        await store.apply([Write(TRACKINGS, "insert", doc) for doc in points.values()])
    stop = asyncio.Event()
    serving = asyncio.create_task(lifecycle.serve(settings, stop=stop))
    try:
        async with open_document_store(settings.resolved_store_url) as store:

            async def old_point_gone() -> bool:
                if serving.done():
                    serving.result()
                    raise AssertionError("aoc serve returned")
                return await store.get(TRACKINGS, "old") is None

            await until(old_point_gone, "the sweep to delete the old point")
            assert await store.get(TRACKINGS, "recent") is not None
    finally:
        stop.set()
        async with asyncio.timeout(DEADLINE):
            await serving


def test_the_command_exits_1_without_a_traceback_when_a_part_failed_while_stopping(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Test that ``aoc`` turns ``StopFailed`` into one error line and exit status 1."""
    async def failing(*_: object) -> None:
        raise StopFailed({"bridge": RuntimeError("could not acknowledge the last batch")})

    monkeypatch.setattr(cli, "_run", failing)
    assert cli.main(["bridge"]) == 1
    err = capsys.readouterr().err
    assert "exiting with an error: bridge failed while stopping: RuntimeError" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["bridge", "api", "realtime"])
def test_a_hang_up_stops_each_process_cleanly(
    command: str, mosquitto: services.Service, redis_server: services.Service, tmp_path: Path
) -> None:
    """Test SIGHUP (a closed terminal, a dropped SSH session) as SIGTERM: a clean stop, exit 0.

    Left to its default, SIGHUP killed the process without finishing its work.
    """
    process = services.aoc(
        command, tmp_path, mqtt_port=mosquitto.port, redis_port=redis_server.port
    )
    with process:
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)
        code = process.proc.wait(60)
    assert code == 0, process.log_tail()
    assert "stopping" in process.log_tail(50)


async def test_serve_in_a_share_group_relays_the_emits_of_members_elsewhere(
    mosquitto: services.Service, redis_url: str, tmp_path: Path
) -> None:
    """Test that `aoc serve` with AOC_SHARE_GROUP (and AOC_BRIDGES=1) relays what other
    members (`aoc bridge` processes on other machines) emit through Redis."""
    settings = serve_settings(tmp_path, mqtt_port=mosquitto.port, redis_url=redis_url)
    settings = settings.model_copy(update={"share_group": "aoc"})
    assert settings.bridges == 1
    token = read_headers(settings)["Authorization"].removeprefix("Bearer ")
    stop = asyncio.Event()
    serving = asyncio.create_task(lifecycle.serve(settings, stop=stop))
    member = socketio.AsyncRedisManager(redis_url, write_only=True)  # another member's emitter
    sio = socketio.AsyncClient(reconnection=False)
    seen: list[str] = []
    sio.on("data", handler=seen.append)
    try:
        ready = f"http://127.0.0.1:{settings.http_port}/readyz"

        async def is_ready() -> bool:
            answer = await get(ready)
            return answer is not None and answer.status_code == 200

        await until(is_ready, "aoc serve to be ready")
        await sio.connect(
            f"http://127.0.0.1:{settings.socketio_port}", auth={"token": token},
            transports=["websocket"], wait_timeout=10,
        )
        assert await sio.call("room_join", "tracking", timeout=10) is None  # joined

        async def relayed() -> bool:
            await member.emit("data", "from a member elsewhere", room="tracking")
            await asyncio.sleep(0.2)
            return "from a member elsewhere" in seen

        await until(relayed, "a member's emit through Redis")
    finally:
        await sio.disconnect()
        stop.set()
        async with asyncio.timeout(DEADLINE):
            await serving
