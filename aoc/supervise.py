"""``aoc up``: run the whole one-machine stack under supervision.

Starts Mosquitto (with the project's ``mosquitto.conf``), Redis and ``aoc serve``
(and, with ``AOC_BRIDGES`` > 1, more bridges on one shared subscription) as
child processes (the broker with accounts on: ``aoc.bootstrap`` makes them
at first start, and hands the bridge's and the shim's to ``aoc serve``),
restarts any that dies with capped backoff (each restart counted and logged
with its cause), and on Ctrl-C, SIGTERM or SIGHUP stops them in reverse
order: the application first, so it can finish and acknowledge its work while
the broker is still up. No child outlives ``aoc up``, even one killed with
SIGKILL (``_parent_death_signal``).

It says "up" only about its own processes: a child's ports must be free
before it starts, and the process answering on them must be that child
(``aoc.ports``); ``aoc serve`` must also answer ``/readyz``. A broker or Redis
already listening is used, and named, in the log and in the "up" line.

What a restart cannot cure stops everything, with one line on stderr and a
non-zero exit (``Failed``): a port held by another program, a child that
exits with the configuration-error code (2), one that dies ``FAST_DEATHS``
times within ``FAST_WINDOW_S``, or one that does not start at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import storage
from aoc import bootstrap, credentials, ports, tls
from aoc.config import Settings
from aoc.manage import ManageError
from aoc.parts import Backoff, stop_on_signals
from aoc.ports import Bind
from aoc.startup import EXIT_CONFIG
from bridge.validate import Limits
from broker import conf as broker_conf

log = logging.getLogger(__name__)

# A child exiting with ``EXIT_CONFIG`` (a configuration error: ``aoc.startup``)
# is not restarted, and `aoc up` exits with it too.
# A child that dies this often within this many seconds is given up on.
FAST_DEATHS = 5
FAST_WINDOW_S = 60.0
PORT_TIMEOUT_S = 30.0  # for a child to open its port
READY_TIMEOUT_S = 60.0  # then for `aoc serve` to be ready (storage, the broker)

PR_SET_PDEATHSIG = 1  # prctl(2), <linux/prctl.h>
# Looked up once, here: the function run in a child between fork and exec
# should do as little as possible.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class Failed(Exception):
    """What a restart cannot cure: `aoc up` stops everything and exits with ``code``."""

    def __init__(self, line: str, code: int = 1) -> None:
        super().__init__(line)
        self.code = code


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
    # Run beside the supervision once every child has started, given `stopping`,
    # which it must heed (retiring the bridges of an earlier start).
    alongside: Callable[[asyncio.Event], Awaitable[object]] | None = field(
        default=None, repr=False
    )
    host: str = "127.0.0.1"  # where `port` is reached
    binds: list[Bind] = field(default_factory=list)  # must be free before it starts
    user: str | None = None  # run as this user (`aoc up` run as root), else as ours
    # Ready once its port answers, unless this says otherwise (`aoc serve`: /readyz).
    ready: Callable[[Child], Coroutine[Any, Any, None]] | None = field(default=None, repr=False)
    config_error_exit: int | None = None  # an exit code that no restart cures
    restarts: int = 0
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)


def _variable(setting: str) -> str:
    """The environment variable of a ``Settings`` field."""
    return f"{Settings.model_config.get('env_prefix', '')}{setting}".upper()


def _reach(bind_host: str) -> str:
    """Where a server bound to ``bind_host`` is reached from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


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


def _setting_of(child: Child, port: int) -> str:
    names = [bind.variable for bind in child.binds if bind.port == port]
    return f" ({names[0]})" if names else ""


def _exited(child: Child) -> None:
    """``RuntimeError`` if ``child`` has exited."""
    if child.proc is not None and child.proc.returncode is not None:
        raise RuntimeError(
            f"{child.name} exited with code {child.proc.returncode} at start-up "
            "(its output above says why)"
        )


def _holds_its_port(child: Child) -> None:
    """``Failed`` if another process than ``child`` listens on its port (when /proc tells)."""
    if child.proc is None or child.port is None:
        return
    holder = ports.holder(child.port, first=[child.proc.pid])
    # A holder whose pid /proc would not show us (another user's) is unknown, not foreign.
    if holder is not None and holder.pid is not None and holder.pid != child.proc.pid:
        raise Failed(
            f"port {child.port}{_setting_of(child, child.port)} answers, but not from "
            f"{child.name}: {holder} holds it",
            EXIT_CONFIG,
        )


async def wait_port(
    child: Child, timeout: float = PORT_TIMEOUT_S, *, attempt_timeout: float = 0.5
) -> None:
    """Wait until ``child`` listens on its port; other tasks (supervision, signals) keep running.

    Each connection attempt gets ``attempt_timeout`` seconds; attempts go on
    until one succeeds or, after one has failed, ``timeout`` has passed. A
    port that answers from another process raises ``Failed``.
    """
    deadline = time.monotonic() + timeout
    while child.port is not None and not await port_open(
        child.port, child.host, timeout=attempt_timeout
    ):
        _exited(child)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} did not open port {child.port} in {timeout:g}s")
        await asyncio.sleep(0.1)
    _holds_its_port(child)


async def _get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    """``GET path`` over HTTP/1.0 (the server closes after its answer): status and JSON body.

    The body is None unless it is JSON; ``OSError`` or ``TimeoutError`` without an answer.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            answer = await reader.read()  # bounded by the timeout
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


async def http_ready(child: Child, timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until ``child``, holding its port, answers ``/readyz`` with 200.

    ``TimeoutError`` naming the components not ready if it does not in ``timeout``.
    """
    await wait_port(child)
    assert child.port is not None
    deadline = time.monotonic() + timeout
    report = "no answer"
    while True:
        _exited(child)
        try:
            status, body = await _get(child.host, child.port, "/readyz")
        except (OSError, TimeoutError) as exc:
            report = str(exc) or type(exc).__name__
        else:
            if status == 200:
                return
            failing = body.items() if isinstance(body, dict) else []
            report = "; ".join(f"{k}: {v}" for k, v in failing if v != "ok") or f"HTTP {status}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} is not ready after {timeout:g}s: {report}")
        await asyncio.sleep(0.2)


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise SystemExit(
            f"{name} is not installed; `make run` installs it (apt-get install {name})"
        )
    return path


def _holder(port: int, ours: str) -> str:
    """Who serves ``port``, for the log: an earlier `aoc up`'s if its command has ``ours``."""
    holder = ports.holder(port)
    if holder is None:
        return "a process that could not be identified"
    if ours in holder.command:
        return f"{holder}, left running by an earlier `aoc up` of this data directory"
    return str(holder)


async def plan(settings: Settings, borrowed: list[str] | None = None) -> list[Child]:
    """The children to run, skipping a broker or Redis that already listens on its port.

    What is used instead is named in ``borrowed``, for the "up" line.
    """
    borrowed = [] if borrowed is None else borrowed
    data = settings.data_dir.resolve()
    children: list[Child] = []
    serve_env: dict[str, str] = {}
    conf_path = data / "mosquitto" / "mosquitto.conf"
    if await port_open(settings.mqtt_port):
        who = _holder(settings.mqtt_port, str(conf_path))
        log.warning("port %d already serves MQTT: using that broker, %s", settings.mqtt_port, who)
        borrowed.append(f"the MQTT broker on :{settings.mqtt_port} ({who})")
        # Maybe one an earlier `aoc up` left running: its accounts are in the file.
        serve_env = bootstrap.serve_env(settings) if settings.broker_auth else {}
    else:
        wanted = bootstrap.prepare(settings) if settings.broker_auth else None
        dynsec = bootstrap.dynsec_file(settings)
        tls_files = [f for f in (settings.tls_cert_file, settings.tls_key_file) if f is not None]
        user = broker_conf.broker_user(owned=[data / "mosquitto"], reads=tls_files)
        if user.why_root:
            log.warning("Mosquitto runs as root: %s", user.why_root)
        conf = broker_conf.write(
            conf_path,
            mqtt_port=settings.mqtt_port,
            ws_port=settings.mqtt_ws_port,
            bind_host=settings.resolved_mqtt_bind_host,
            data_dir=data / "mosquitto" / "data",
            auth=settings.broker_auth,
            dynsec_file=dynsec,
            # The largest packet a device may send follows the snapshot limits.
            max_packet_size=broker_conf.packet_bound(
                Limits.from_settings(settings).max_snap_json_bytes
            ),
            max_connections=settings.mqtt_max_connections,
            extra=tls.broker_listeners(settings),  # MQTT and wss over TLS, with a certificate
            user=user.name,
        )
        host = settings.resolved_mqtt_bind_host
        names = ["mqtt_port", "mqtt_ws_port"]
        if tls_files:
            names += ["mqtt_tls_port", "mqtt_wss_port"]
        broker = Child(
            "mosquitto",
            [_binary("mosquitto"), "-c", str(conf)],
            settings.mqtt_port,
            host=_reach(host),
            binds=[Bind(_variable(n), host, getattr(settings, n)) for n in names],
            # Started as its user, not switching to it itself: see _parent_death_signal.
            user=user.name if os.geteuid() == 0 else None,
        )
        if wanted is not None:
            broker.after_start = lambda: bootstrap.apply(settings, wanted)
            serve_env = wanted.env
        children.append(broker)
    redis = urlsplit(settings.redis_url)
    redis_port = redis.port or 6379
    if redis.hostname not in {"127.0.0.1", "localhost"}:
        log.warning("using the Redis server at %s", storage.redact(settings.redis_url))
        borrowed.append(f"Redis at {storage.redact(settings.redis_url)}")
    elif await port_open(redis_port):
        who = _holder(redis_port, str(data / "redis"))
        log.warning("port %d already serves Redis: using it, %s", redis_port, who)
        borrowed.append(f"Redis on :{redis_port} ({who})")
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
        binds = [Bind(_variable("redis_url"), "127.0.0.1", redis_port)]
        children.append(Child("redis", argv, redis_port, binds=binds))
    serve = [sys.executable, "-m", "aoc.cli", "serve"]
    children.append(
        Child(
            "aoc-serve",
            serve,
            settings.http_port,
            stop_timeout=20.0,
            env=serve_env,
            host=_reach(settings.bind_host),
            binds=[
                Bind(_variable(n), settings.bind_host, getattr(settings, n))
                for n in ("http_port", "socketio_port")
            ],
            ready=http_ready,
            config_error_exit=EXIT_CONFIG,
        )
    )
    children += bridges(settings, serve_env)
    # Once every bridge runs, beside the supervision (which restarts children
    # meanwhile): those an earlier start ran beyond AOC_BRIDGES leave.
    children[-1].alongside = lambda stopping: retire_members(settings, serve_env, stopping)
    return children


def bridges(settings: Settings, serve_env: dict[str, str]) -> list[Child]:
    """The `aoc bridge` processes beside `aoc serve`'s bridge: ``AOC_BRIDGES`` - 1 of them.

    Each member of the share group keeps a client id of its own, the same at
    every start (``<id>-<n>``, ``<id>`` being `aoc serve`'s): a member that dies
    gets its session back when it is restarted, with what Mosquitto kept for
    it meanwhile (its share, and what it held unacknowledged, which the broker
    gives no other member). Each has its own probe port (from
    ``AOC_BRIDGE_HTTP_PORT`` on) and object spool (the spool is one process's).
    """
    return [
        Child(
            f"aoc-bridge-{n}",
            [sys.executable, "-m", "aoc.cli", "bridge"],
            settings.bridge_http_port + n - 1,
            stop_timeout=20.0,
            env=_member_env(settings, serve_env, n),
            host=_reach(settings.bind_host),
            binds=[
                Bind(
                    _variable("bridge_http_port"),
                    settings.bind_host,
                    settings.bridge_http_port + n - 1,
                )
            ],
            ready=http_ready,
            config_error_exit=EXIT_CONFIG,
        )
        for n in range(1, settings.bridges)
    ]


def _member_env(settings: Settings, serve_env: dict[str, str], n: int) -> dict[str, str]:
    """The environment of bridge ``n`` (1, 2...): its client id, group, probe port and spool."""
    base = serve_env.get("AOC_MQTT_CLIENT_ID", settings.mqtt_client_id)
    spool = settings.resolved_spool_dir
    return {
        **serve_env,
        "AOC_MQTT_CLIENT_ID": f"{base}-{n}",
        "AOC_SHARE_GROUP": settings.resolved_share_group,
        "AOC_BRIDGE_HTTP_PORT": str(settings.bridge_http_port + n - 1),
        "AOC_SPOOL_DIR": str(spool.with_name(f"{spool.name}-{n}")),
    }


# Where `aoc up` records how many bridges it ran, in the credentials file.
MEMBERS_KEY = "bridge_members"


# How long a retiring bridge gets to stop when `aoc up` stops (it finishes its batch).
RETIRE_STOP_S = 20.0


async def retire_members(
    settings: Settings, serve_env: dict[str, str], stopping: asyncio.Event | None = None
) -> None:
    """Retire the bridges an earlier `aoc up` ran beyond ``AOC_BRIDGES`` (`aoc bridge --retire`).

    Mosquitto keeps routing a member's share to its session while it is away:
    a member no longer started would strand it. Each is retired in turn (its
    output is ours; each within ``lifecycle.RETIRE_TIMEOUT_S``); one that
    fails is logged and tried again at the next start, and so is the one
    ``stopping`` interrupts (its retirement gets SIGTERM and keeps its sessions).
    """
    stopping = stopping or asyncio.Event()
    path = settings.resolved_credentials_file
    try:
        ran = credentials.load(path).data.get(MEMBERS_KEY, 1)
    except credentials.CredentialsError as exc:
        log.error("cannot tell which bridges to retire: %s", exc)
        return
    ran = ran if isinstance(ran, int) else 1
    for n in range(settings.bridges, ran):
        if stopping.is_set():
            return
        env = _member_env(settings, serve_env, n)
        client_id = env["AOC_MQTT_CLIENT_ID"]
        log.info("retiring bridge %d (%s): AOC_BRIDGES is now %d", n, client_id, settings.bridges)
        code = await _retire_one(env, stopping)
        if code is None:
            log.info("retiring bridge %d stopped with aoc up: the next start tries again", n)
            return
        if code != 0:
            log.error(
                "retiring bridge %d failed (exit code %d): its session keeps what it holds; "
                "the next `aoc up` tries again",
                n,
                code,
            )
            return
    with credentials.editing(path) as creds:
        creds.data[MEMBERS_KEY] = settings.bridges


async def _retire_one(env: dict[str, str], stopping: asyncio.Event) -> int | None:
    """`aoc bridge --retire` in ``env``: its exit code, or None if ``stopping`` ended it."""
    retire = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "aoc.cli", "bridge", "--retire"],
        env={**os.environ, **env},
        start_new_session=True,
        preexec_fn=_parent_death_signal(os.getpid()),
    )
    exited = asyncio.ensure_future(retire.wait())
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if exited.done():
        return exited.result()
    with contextlib.suppress(ProcessLookupError):
        retire.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(RETIRE_STOP_S):
            code = await exited
    except TimeoutError:
        log.error("the retiring bridge did not stop in %.0fs; killing it", RETIRE_STOP_S)
        with contextlib.suppress(ProcessLookupError):
            retire.kill()
        await exited
        return None
    return 0 if code == 0 else None  # 0: it had finished as the stop came


async def _beside(child: Child, stopping: asyncio.Event) -> None:
    """``child.alongside``; its failure is logged, never the supervision's end."""
    assert child.alongside is not None
    try:
        await child.alongside(stopping)
    except Exception:
        log.exception("%s: the task beside it failed", child.name)


def check_ports(children: list[Child]) -> None:
    """``Failed`` (a configuration error) naming the first port a child could not listen on."""
    for child in children:
        try:
            ports.check(child.binds, child.name)
        except ports.Unavailable as exc:
            raise Failed(str(exc), EXIT_CONFIG) from exc


def _parent_death_signal(parent: int) -> Callable[[], None] | None:
    """What a child runs before its program: the kernel sends it SIGTERM when ``parent`` dies.

    Children run in sessions of their own (``start_new_session``), so that a
    Ctrl-C at the terminal reaches `aoc up` only, which stops them in order.
    Nothing would stop them if `aoc up` died without doing so (SIGKILL, the
    OOM killer, a crash): only the kernel can, with prctl's PR_SET_PDEATHSIG,
    which asyncio.create_subprocess_exec offers no other hook for than
    ``preexec_fn`` (``process_group`` and ``start_new_session`` only regroup).
    The signal comes when the thread that forked exits: asyncio forks on the
    event loop's thread, the main one, which lasts as long as the process.
    SIGTERM, not SIGKILL: each child stops as `aoc up` would stop it (the
    broker saves its persistence file, `aoc serve` acknowledges its batch).

    The setting is cleared when a process changes its user: so Mosquitto is
    started as its user (``Child.user``: Popen switches before ``preexec_fn``)
    rather than switching itself. If ``parent`` died before the setting took,
    the child exits at once. None off Linux: no such setting there.
    """
    if _LIBC is None:
        return None
    prctl = _LIBC.prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _as_user(name: str | None) -> dict[str, Any]:
    """Popen's arguments that run a child as user ``name`` with its groups only."""
    if name is None:
        return {}
    account = pwd.getpwnam(name)
    return {
        "user": account.pw_uid,
        "group": account.pw_gid,
        "extra_groups": os.getgrouplist(name, account.pw_gid),
    }


async def _unless_stopping(
    stopping: asyncio.Event | None, waiting: Coroutine[Any, Any, None]
) -> bool:
    """Await ``waiting``, abandoned if ``stopping`` is set first; whether it completed."""
    if stopping is None:
        await waiting
        return True
    task = asyncio.create_task(waiting)
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stop):
            pending.cancel()  # nothing for one that is done
        await asyncio.gather(task, stop, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()  # its exception, if it failed
    return True


async def _start(child: Child, stopping: asyncio.Event | None = None) -> bool:
    """Start ``child`` and wait until it is ready; False if ``stopping`` was set first.

    ``Failed`` if another process holds its port; ``RuntimeError`` if it
    exited, ``TimeoutError`` if it is not ready in time (a restart may cure those).
    """
    # The child exports its restart count as a metric (AOC_RESTART_COUNT).
    env = {**os.environ, **child.env, "AOC_RESTART_COUNT": str(child.restarts)}
    child.proc = await asyncio.create_subprocess_exec(
        *child.argv,
        env=env,
        start_new_session=True,
        preexec_fn=_parent_death_signal(os.getpid()),
        **_as_user(child.user),
    )
    if not await _unless_stopping(stopping, (child.ready or wait_port)(child)):
        return False
    log.info("%s started (pid %d)", child.name, child.proc.pid)
    return True


def _incurable(child: Child, code: int, cause: str, deaths: deque[float]) -> Failed | None:
    """Why ``child``, dead with ``code``, must not be restarted (``deaths``: when it died)."""
    if child.config_error_exit is not None and code == child.config_error_exit:
        return Failed(
            f"{child.name} exited with code {code}, a configuration error (its output above "
            "names it): not restarting it",
            EXIT_CONFIG,
        )
    if len(deaths) == FAST_DEATHS and deaths[-1] - deaths[0] <= FAST_WINDOW_S:
        return Failed(
            f"{child.name} died {FAST_DEATHS} times within {FAST_WINDOW_S:g}s (last: {cause}): "
            "giving up (its output above says why)"
        )
    return None


async def _keep_alive(
    child: Child, stopping: asyncio.Event, backoff: Backoff | None = None
) -> Failed | None:
    """Restart ``child`` each time it dies until ``stopping``; why it gave up, if it did.

    Giving up sets ``stopping``: `aoc up` then stops everything.
    """
    backoff = backoff or Backoff()
    deaths: deque[float] = deque(maxlen=FAST_DEATHS)
    while not stopping.is_set():
        assert child.proc is not None
        started = time.monotonic()
        code = await child.proc.wait()
        if stopping.is_set():
            return None
        died = time.monotonic()
        if backoff.healthy(died - started):
            deaths.clear()  # dying fast counts only in a row
        deaths.append(died)
        cause = f"signal {-code}" if code < 0 else f"exit code {code}"
        failure = _incurable(child, code, cause, deaths)
        if failure is not None:
            stopping.set()
            return failure
        delay = backoff.delay(died - started)
        child.restarts += 1
        log.error("%s died (%s); restart #%d in %.1fs", child.name, cause, child.restarts, delay)
        # A signal during the wait stops here: nothing is started that `up` would not stop.
        if await Backoff.wait(stopping, delay):
            return None
        try:
            await _start(child, stopping)
        except Failed as exc:
            stopping.set()
            return exc
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.error("%s failed to restart: %s", child.name, exc)
    return None


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


async def _first_start(child: Child, stopping: asyncio.Event) -> bool:
    """``_start`` at start-up, where any failure is ``Failed``; False if stopping."""
    try:
        return await _start(child, stopping)
    except (OSError, RuntimeError, TimeoutError) as exc:
        code = child.proc.returncode if child.proc is not None else None
        config = code is not None and code == child.config_error_exit
        raise Failed(str(exc), EXIT_CONFIG if config else 1) from exc


async def _supervise(
    children: list[Child],
    stopping: asyncio.Event,
    announce: str | None,
    backoff: Callable[[], Backoff],
) -> None:
    for child in children:
        if not await _first_start(child, stopping):
            return
        if child.after_start is not None:
            try:
                await child.after_start()
            except ManageError as exc:
                raise Failed(f"{child.name}: {exc}", exc.exit_code) from exc
    if announce:
        print(announce, file=sys.stderr)
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_keep_alive(child, stopping, backoff()), name=f"keep-{child.name}")
            for child in children
        ]
        for child in children:
            if child.alongside is not None:
                group.create_task(_beside(child, stopping), name=f"beside-{child.name}")
        await stopping.wait()
        # Stop the children here: each supervising task returns only once
        # its child has exited, and the task group waits for all of them.
        for child in reversed(children):
            await _stop(child)
    for task in tasks:
        failure = task.result()
        if failure is not None:
            raise failure


async def run(
    children: list[Child],
    stopping: asyncio.Event,
    *,
    announce: str | None = None,
    backoff: Callable[[], Backoff] = Backoff,
) -> int:
    """Start ``children`` in order, keep them alive until ``stopping``; the exit code.

    ``announce`` is printed once all are ready. They are stopped in reverse
    order; after a ``Failed`` too, which is then printed as one line.
    """
    try:
        await _supervise(children, stopping, announce, backoff)
    except Failed as failure:
        print(f"aoc up: {failure}", file=sys.stderr)
        return failure.code
    finally:
        stopping.set()
        for child in reversed(children):
            await _stop(child)
    return 0


def _announcement(settings: Settings, borrowed: list[str]) -> str:
    path = settings.resolved_credentials_file
    accounts = (
        f" Credentials of the simulator's devices, dashboard {bootstrap.FIRST_DASHBOARD}"
        f" and a dispatch token: {path} (it reads every ambulance, sets destinations and "
        "acknowledges alarms)."
        if settings.broker_auth
        else f" Dispatch token: {path}. The broker accepts anyone (AOC_BROKER_AUTH=false)."
    )
    others = (
        f" Not started by this `aoc up`, and left running: {'; '.join(borrowed)}."
        if borrowed
        else ""
    )
    return (
        f"AOC is up: HTTP http://{settings.bind_host}:{settings.http_port}/docs, "
        f"Socket.IO :{settings.socketio_port}, MQTT :{settings.mqtt_port}, "
        f"MQTT over WebSocket :{settings.mqtt_ws_port}.{accounts}{others} "
        # The token itself stays in the file (mode 0600), out of terminals and logs.
        f"Dashboard: http://{settings.bind_host}:{settings.http_port}/dashboard?token=<api_token "
        "of that file>. Ctrl-C stops what it started."
    )


async def up(settings: Settings) -> int:
    """Start the stack, keep it alive, stop it cleanly on the first signal; the exit code."""
    stopping = stop_on_signals()
    borrowed: list[str] = []
    try:
        children = await plan(settings, borrowed)
        check_ports(children)
        await bootstrap.first_token(settings)
    except ManageError as exc:  # the broker's accounts or the token cannot be prepared
        print(f"aoc up: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, OSError) as exc:  # the broker's configuration cannot be written
        log.debug("cannot prepare the broker", exc_info=exc)
        print(f"aoc up: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Failed as exc:
        print(f"aoc up: {exc}", file=sys.stderr)
        return exc.code
    return await run(children, stopping, announce=_announcement(settings, borrowed))
