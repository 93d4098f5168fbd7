"""``aoc up``: run the whole one-machine stack under supervision.

Starts Mosquitto (with the project's ``mosquitto.conf``), Redis and ``aoc serve``
as child processes (the broker with accounts on: ``aoc.bootstrap`` makes them
at first start, and hands the bridge's and the shim's to ``aoc serve``),
restarts any that dies with capped backoff (each restart counted and logged
with its cause), and on Ctrl-C or SIGTERM stops them in reverse order: the
application first, so it can finish and acknowledge its work while the broker
is still up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aoc import bootstrap, tls
from aoc.config import Settings, redact_url
from aoc.manage import ManageError
from aoc.parts import Backoff
from bridge.validate import Limits
from broker import conf as broker_conf

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    port: int | None = None
    stop_timeout: float = 15.0
    env: dict[str, str] = field(default_factory=dict, repr=False)  # on top of os.environ
    # Run once after its first start (the broker's accounts), before the next child starts.
    after_start: Callable[[], Awaitable[object]] | None = field(default=None, repr=False)
    restarts: int = 0
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)


async def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether ``host:port`` accepts a connection, without blocking the event loop."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def wait_port(child: Child, timeout: float = 30.0, *, attempt_timeout: float = 0.5) -> None:
    """Wait until ``child`` listens on its port; other tasks (supervision, signals) keep running.

    Each connection attempt gets ``attempt_timeout`` seconds; attempts go on
    until one succeeds or, after one has failed, ``timeout`` has passed.
    """
    deadline = time.monotonic() + timeout
    while child.port is not None and not await port_open(child.port, timeout=attempt_timeout):
        if child.proc is not None and child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode} at start-up")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} did not open port {child.port} in {timeout}s")
        await asyncio.sleep(0.1)


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise SystemExit(
            f"{name} is not installed; `make run` installs it (apt-get install {name})"
        )
    return path


async def plan(settings: Settings) -> list[Child]:
    """The children to run, skipping a broker or Redis that already listens on its port."""
    data = settings.data_dir.resolve()
    children: list[Child] = []
    serve_env: dict[str, str] = {}
    if await port_open(settings.mqtt_port):
        log.warning("port %d already serves MQTT: using that broker", settings.mqtt_port)
        # Maybe one an earlier `aoc up` left running: its accounts are in the file.
        serve_env = bootstrap.serve_env(settings) if settings.broker_auth else {}
    else:
        wanted = bootstrap.prepare(settings) if settings.broker_auth else None
        conf = broker_conf.write(
            data / "mosquitto" / "mosquitto.conf",
            mqtt_port=settings.mqtt_port,
            ws_port=settings.mqtt_ws_port,
            bind_host=settings.resolved_mqtt_bind_host,
            data_dir=data / "mosquitto" / "data",
            auth=settings.broker_auth,
            dynsec_file=bootstrap.dynsec_file(settings),
            # The largest packet a device may send follows the snapshot limits.
            max_packet_size=broker_conf.packet_bound(
                Limits.from_settings(settings).max_snap_json_bytes
            ),
            max_connections=settings.mqtt_max_connections,
            extra=tls.broker_listeners(settings),  # MQTT and wss over TLS, with a certificate
        )
        broker = Child("mosquitto", [_binary("mosquitto"), "-c", str(conf)], settings.mqtt_port)
        if wanted is not None:
            broker.after_start = lambda: bootstrap.apply(settings, wanted)
            serve_env = wanted.env
        children.append(broker)
    redis = urlsplit(settings.redis_url)
    redis_port = redis.port or 6379
    if redis.hostname not in {"127.0.0.1", "localhost"} or await port_open(redis_port):
        log.warning("using the Redis server at %s", redact_url(settings.redis_url))
    else:
        (data / "redis").mkdir(parents=True, exist_ok=True)
        argv = [
            _binary("redis-server"),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data / "redis"),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--loglevel",
            "warning",
        ]
        children.append(Child("redis", argv, redis_port))
    serve = [sys.executable, "-m", "aoc.cli", "serve"]
    children.append(
        Child("aoc-serve", serve, settings.http_port, stop_timeout=20.0, env=serve_env)
    )
    return children


async def _start(child: Child) -> None:
    # The child exports its restart count as a metric (AOC_RESTART_COUNT).
    env = {**os.environ, **child.env, "AOC_RESTART_COUNT": str(child.restarts)}
    child.proc = await asyncio.create_subprocess_exec(*child.argv, start_new_session=True, env=env)
    await wait_port(child)
    log.info("%s started (pid %d)", child.name, child.proc.pid)


async def _keep_alive(child: Child, stopping: asyncio.Event) -> None:
    backoff = Backoff()
    while not stopping.is_set():
        assert child.proc is not None
        started = time.monotonic()
        code = await child.proc.wait()
        if stopping.is_set():
            return
        delay = backoff.delay(time.monotonic() - started)
        child.restarts += 1
        cause = f"signal {-code}" if code < 0 else f"exit code {code}"
        log.error("%s died (%s); restart #%d in %.1fs", child.name, cause, child.restarts, delay)
        # A signal during the wait stops here: nothing is started that `up` would not stop.
        if await Backoff.wait(stopping, delay):
            return
        try:
            await _start(child)
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.error("%s failed to restart: %s", child.name, exc)


async def _stop(child: Child) -> None:
    proc = child.proc
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(child.stop_timeout):
            await proc.wait()
    except TimeoutError:
        log.error("%s did not stop in %.0fs; killing it", child.name, child.stop_timeout)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    log.info("%s stopped", child.name)


async def up(settings: Settings) -> int:
    """Start the stack, keep it alive, stop it cleanly on the first signal; the exit code."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        children = await plan(settings)
        await bootstrap.first_token(settings)
    except ManageError as exc:  # the broker's accounts or the token cannot be prepared
        print(f"aoc up: {exc}", file=sys.stderr)
        return exc.exit_code
    started: list[Child] = []
    try:
        for child in children:
            await _start(child)
            started.append(child)
            if child.after_start is not None:
                try:
                    await child.after_start()
                except ManageError as exc:
                    print(f"aoc up: {child.name}: {exc}", file=sys.stderr)
                    return exc.exit_code
        path = settings.resolved_credentials_file
        accounts = (
            f" Credentials of the simulator's devices, dashboard {bootstrap.FIRST_DASHBOARD}"
            f" and a read token: {path}."
            if settings.broker_auth
            else f" Read token: {path}. The broker accepts anyone (AOC_BROKER_AUTH=false)."
        )
        print(
            f"AOC is up: HTTP http://{settings.bind_host}:{settings.http_port}/docs, "
            f"Socket.IO :{settings.socketio_port}, MQTT :{settings.mqtt_port}, "
            f"MQTT over WebSocket :{settings.mqtt_ws_port}.{accounts} Ctrl-C stops everything.",
            file=sys.stderr,
        )
        async with asyncio.TaskGroup() as group:
            for child in started:
                group.create_task(_keep_alive(child, stopping), name=f"supervise-{child.name}")
            await stopping.wait()
            # Stop the children here: each supervising task returns only once
            # its child has exited, and the task group waits for all of them.
            for child in reversed(started):
                await _stop(child)
    finally:
        stopping.set()
        for child in reversed(children):
            await _stop(child)
    return 0
