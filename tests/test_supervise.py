"""`aoc up`: the supervised one-machine stack, run as `make run` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import httpx
import pytest
import socketio

from aoc import credentials, parts, startup, supervise
from aoc.config import Settings
from aoc.parts import Backoff
from aoc.ports import Bind
from broker import accounts
from broker import conf as broker_conf
from storage import redact
from storage.base import AUDIT, Query
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.e2e.conftest import eventually


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _serve_pid(log: Path) -> int | None:
    pids = re.findall(r"aoc-serve started \(pid (\d+)\)", log.read_text(errors="replace"))
    return int(pids[-1]) if pids else None


def test_up_restarts_a_crashed_part_and_stops_everything(tmp_path: Path) -> None:
    """Test that `aoc up` restarts a killed `aoc serve`, logs the cause, and Ctrl-C stops all."""
    ports, env = services.up_settings(tmp_path / "data")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "aoc.cli", "up"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(lambda: _healthy(ports["http"]), 60, "the stack to come up")
        # `aoc up` logs the child's pid once it has seen its port open itself.
        _wait_for(lambda: _serve_pid(log) is not None, 60, "the start line")
        first = _serve_pid(log)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: _serve_pid(log) not in (None, first), 60, "a restart")
        _wait_for(lambda: _healthy(ports["http"]), 60, "the restarted server")
        text = log.read_text()
        assert "aoc-serve died (signal 9); restart #1" in text
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    for name in ("mqtt", "redis", "http", "sio"):
        assert not services.port_is_open(ports[name]), f"{name} still listening after Ctrl-C"
    text = log.read_text()
    assert text.index("aoc-serve stopped") < text.index("mosquitto stopped")


DEADLINE = 60.0


@contextlib.contextmanager
def _full_listener() -> Iterator[socket.socket]:
    """A listening socket whose accept queue is full: a new connect hangs in SYN_SENT.

    Linux drops SYNs to a listener whose queue is full, so a client's connect
    neither succeeds nor fails until the queue has room (the client resends
    its SYN) or its own timeout.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # more than the queue holds (backlog 0: one, plus slack)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield listener
        finally:
            for filler in fillers:
                filler.close()


async def _accept_all(listener: socket.socket) -> None:
    """Empty the accept queue and keep it empty, so queued and resent SYNs get through."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    while True:
        connection, _ = await loop.sock_accept(listener)
        connection.close()


async def _round_trip() -> bytes:
    """One message through a local echo server: work that needs the event loop throughout."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"ping\n")
        answer = await reader.readline()
        writer.close()
        return answer


async def test_waiting_for_a_port_leaves_the_event_loop_running() -> None:
    """Test that `aoc up` waiting on a port that does not answer yet still runs its other tasks.

    The wait makes a single attempt (``timeout`` 0) that may last ``DEADLINE``,
    on a listener that accepts nothing yet: while that connect is pending,
    another task completes a TCP round trip. Only then does the listener
    accept, which is what ends the wait (successfully). A connect blocking
    the loop would have held the round trip until the attempt ended, and the
    wait, with its one attempt failed, would have ended first with an error.
    """
    with _full_listener() as listener:
        child = supervise.Child("silent", ["true"], listener.getsockname()[1])
        waiting = asyncio.create_task(
            supervise.wait_port(child, timeout=0.0, attempt_timeout=DEADLINE)
        )
        assert await _round_trip() == b"ping\n"
        assert not waiting.done(), "the connect ended before the other task could run"
        accepting = asyncio.create_task(_accept_all(listener))
        try:
            async with asyncio.timeout(DEADLINE):
                await waiting  # the pending connect succeeds: no error
        finally:
            accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accepting


class _StopOnLine(logging.Handler):
    """Sets ``stop`` when a log line containing ``text`` is emitted: a signal at that moment."""

    def __init__(self, stop: asyncio.Event, text: str) -> None:
        super().__init__()
        self.stop = stop
        self.text = text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.stop.set()


async def test_a_signal_while_waiting_to_restart_starts_nothing() -> None:
    """Test that a child that died is not started again once `aoc up` is told to stop.

    The stop comes as the restart wait begins (when its line is logged): the
    supervising task must return without starting the child, which `up`
    would not stop any more.
    """
    child = supervise.Child("quitter", ["true"])
    await supervise._start(child)
    first = child.proc
    stopping = asyncio.Event()
    handler = _StopOnLine(stopping, "quitter died (exit code 0); restart #1")
    logger = logging.getLogger("aoc.supervise")
    logger.addHandler(handler)
    try:
        async with asyncio.timeout(DEADLINE):
            await supervise._keep_alive(child, stopping)
    finally:
        logger.removeHandler(handler)
    assert stopping.is_set()
    assert child.restarts == 1
    assert child.proc is first, "the child was started again after the stop"


async def test_wait_port_sees_a_listening_port() -> None:
    """Test that the wait ends once the child's port accepts connections."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        child = supervise.Child("listening", ["true"], server.sockets[0].getsockname()[1])
        await supervise.wait_port(child, timeout=5.0)


@contextlib.contextmanager
def _running_up(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`aoc up` until the block ends, then Ctrl-C (it must exit 0); ``log`` gets its output."""
    before = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "aoc.cli", "up"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(lambda: b"AOC is up" in log.read_bytes()[before:], 60, "the stack")
        yield up
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


TRACKING = b'{"lat": 13.75, "lon": 100.5, "speed": 42.0, "heading": 90.0, "ts": %d}'


async def _device_to_dashboard(port: int, creds: credentials.Credentials) -> bytes:
    """A device's point, through the bridge of `aoc up`, as the first dashboard sees its state."""
    device = "SIM001"
    async with (
        aiomqtt.Client(
            "127.0.0.1", port, username="dash-first",
            password=creds.dashboards["dash-first"], identifier="dash-first-test",
        ) as dashboard,
        aiomqtt.Client(
            "127.0.0.1", port, username=device, password=creds.devices[device],
            identifier=f"{device}-test",
        ) as publisher,
    ):
        await dashboard.subscribe(f"aoc/{device}/state", qos=1)
        await publisher.publish(
            f"aoc/{device}/tracking", TRACKING % int(time.time() * 1000), qos=1
        )
        async with asyncio.timeout(DEADLINE):
            async for message in dashboard.messages:
                # Skip a retained state from before: the bridge must publish this one now.
                if not message.retain:
                    assert isinstance(message.payload, bytes)
                    return message.payload
    raise AssertionError("no state")


async def _legacy_point_is_stored(http_port: int, token: str) -> None:
    """A legacy device's POST, published by the shim under its account, reaches the store."""
    base = f"http://127.0.0.1:{http_port}"
    body = {"ambulance_id": "LEG1", "tracking_latitude": 13.7, "tracking_longitude": 100.5,
            "tracking_speed": 12.5, "tracking_heading": 90}
    async with httpx.AsyncClient(base_url=base, timeout=DEADLINE) as http:
        posted = await http.post("/api/tracking/postAmbulanceTracking", json=body)
        assert posted.status_code == 200, posted.text
        headers = {"Authorization": f"Bearer {token}"}

        async def stored() -> httpx.Response | None:
            read = await http.get("/api/v1/ambulances/LEG1", headers=headers)
            return None if read.status_code == 404 else read

        read = await eventually(stored, timeout=DEADLINE)
    assert isinstance(read, httpx.Response) and read.status_code == 200, read
    assert read.json()["speed"] == 12.5


async def _refused(port: int, username: str | None, password: str | None) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with aiomqtt.Client("127.0.0.1", port, username=username, password=password):
            pass


async def test_up_makes_the_broker_accounts_at_first_start_and_keeps_them(tmp_path: Path) -> None:
    """Test `aoc up` with authentication: its credentials file works end to end, and lasts.

    First start: the file (mode 0600, path printed, no secret in the output)
    holds every account, a simulator device's point reaches the first
    dashboard through the bridge (which got its account from `aoc up`), and
    anonymous clients are refused. An account deleted behind its back is made
    again at the next start, with the same password, as are the others.
    """
    data = tmp_path / "data"
    ports, env = services.up_settings(data)
    env = {k: v for k, v in env.items() if not k.startswith(("AOC_MQTT_USER", "AOC_MQTT_PASS",
                                                            "AOC_SHIM_", "AOC_MQTT_ADMIN"))}
    # Legacy mode on: the shim publishes with its own account, which the ACLs keep to legacy/.
    env["AOC_LEGACY_MODE"] = "1"
    path = data / "credentials.json"
    log = tmp_path / "up.log"
    with _running_up(env, log):
        creds = credentials.load(path)
        assert path.stat().st_mode & 0o777 == 0o600
        assert sorted(creds.devices) == [f"SIM{n:03d}" for n in range(1, 11)]
        assert list(creds.dashboards) == ["dash-first"]
        assert creds.account("bridge") is not None and creds.account("shim") is not None
        admin = creds.account("admin")
        assert admin is not None
        assert creds.data["mqtt"] == {"host": "127.0.0.1", "port": ports["mqtt"],
                                      "ws_port": ports["ws"]}
        output = log.read_text()
        assert f"a dispatch token: {path}" in output
        secrets = [p for _, p in filter(None, map(creds.account, ("admin", "bridge", "shim")))]
        token = creds.data["api_token"]
        assert not any(s in output for s in [*secrets, *creds.devices.values(), token])

        state = json.loads(await _device_to_dashboard(ports["mqtt"], creds))
        assert state["ambulance_id"] == "SIM001"
        # Any account may connect with any client id: one with the default id
        # of the bridge's session does not take over the session of this bridge.
        client_id = creds.data["bridge_client_id"]
        assert re.fullmatch(r"aoc-bridge-[0-9a-f]{16}", client_id)
        for taken in ("aoc-bridge", "aoc-bridge-snap"):
            async with aiomqtt.Client(
                "127.0.0.1", ports["mqtt"], username="dash-first",
                password=creds.dashboards["dash-first"], identifier=taken, clean_session=True,
            ):
                pass
        state = json.loads(await _device_to_dashboard(ports["mqtt"], creds))
        assert state["ambulance_id"] == "SIM001"
        # The first read token reads what the device sent; without it, nothing.
        url = f"http://127.0.0.1:{ports['http']}/api/v1/ambulances/SIM001"
        async with httpx.AsyncClient(timeout=DEADLINE) as http:
            assert (await http.get(url)).status_code == 401
            read = await http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert read.status_code == 200, read.text
        assert read.json()["ambulance_id"] == "SIM001"
        await _legacy_point_is_stored(ports["http"], token)
        await _refused(ports["mqtt"], None, None)
        await _refused(ports["mqtt"], "SIM002", "wrong")
        async with accounts.DynsecAdmin(
            host="127.0.0.1", port=ports["mqtt"], username=admin[0], password=admin[1]
        ) as manager:
            await manager.delete_client("SIM002")
        await _refused(ports["mqtt"], "SIM002", creds.devices["SIM002"])

    with _running_up(env, log):
        assert credentials.load(path).data == creds.data  # nothing regenerated
        async with aiomqtt.Client(
            "127.0.0.1", ports["mqtt"], username="SIM002", password=creds.devices["SIM002"]
        ) as device:
            await device.publish("aoc/SIM002/status", b"online", qos=1)
        state = json.loads(await _device_to_dashboard(ports["mqtt"], creds))
        assert state["ambulance_id"] == "SIM001"
    async with SQLiteDocumentStore(data / "aoc.sqlite3") as store:
        page = await store.find(Query(AUDIT, limit=100))
    made = [(d["action"], d["target"]) for d in page.items]
    assert made.count(("device.add", "SIM002")) == 2  # first start, and made again
    assert ("service.add", "aoc-bridge") in made and ("dashboard.add", "dash-first") in made


def test_up_refuses_accounts_it_cannot_manage(tmp_path: Path) -> None:
    """Test a broker account file without a known admin password: one line, exit 2, nothing run."""
    data = tmp_path / "data"
    _, env = services.up_settings(data)
    env = {k: v for k, v in env.items() if not k.startswith("AOC_MQTT_ADMIN")}
    (data / "mosquitto").mkdir(parents=True)
    (data / "mosquitto" / "dynamic-security.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "aoc.cli", "up"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("aoc up:")]
    assert len(lines) == 1 and "AOC_MQTT_ADMIN_PASSWORD" in lines[0]


async def test_up_hands_serve_the_file_accounts_for_a_broker_already_running(
    tmp_path: Path,
) -> None:
    """Test that with a broker already listening (an earlier `aoc up`'s), serve still logs in.

    No broker is planned, and `aoc serve` gets the bridge's and the shim's
    accounts from the credentials file; one the operator set stays theirs.
    """
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        settings = Settings(
            _env_file=None, mqtt_port=port, data_dir=tmp_path / "data", http_port=1,
            mqtt_username=None, shim_mqtt_username=None,
        )
        with credentials.editing(settings.resolved_credentials_file) as creds:
            creds.set_account("bridge", "aoc-bridge", "fake-bridge-pw")
            creds.set_account("shim", "aoc-shim", "fake-shim-pw")
        borrowed: list[str] = []
        children = {child.name: child for child in await supervise.plan(settings, borrowed)}
        assert "mosquitto" not in children
        # Whose broker it is, in the "up" line: this test's process listens there.
        assert borrowed[0].startswith(f"the MQTT broker on :{port} (pid {os.getpid()} (")
        assert children["aoc-serve"].env == {
            "AOC_MQTT_USERNAME": "aoc-bridge", "AOC_MQTT_PASSWORD": "fake-bridge-pw",
            "AOC_SHIM_MQTT_USERNAME": "aoc-shim", "AOC_SHIM_MQTT_PASSWORD": "fake-shim-pw",
        }
        mine = settings.model_copy(update={"mqtt_username": "ops-bridge"})
        children = {child.name: child for child in await supervise.plan(mine)}
        assert children["aoc-serve"].env == {
            "AOC_SHIM_MQTT_USERNAME": "aoc-shim", "AOC_SHIM_MQTT_PASSWORD": "fake-shim-pw",
        }


async def test_an_external_redis_is_named_without_its_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that `aoc up` names the Redis it uses with its password masked (URLs carry one)."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        broker_auth=False,
        mqtt_port=services.free_port(),
        redis_url="redis://:fake-redis-pw@cache.example:6379/0",
    )
    with caplog.at_level(logging.WARNING, logger="aoc.supervise"):
        children = await supervise.plan(settings)
    assert [child.name for child in children] == ["mosquitto", "aoc-serve"]
    assert "using the Redis server at redis://:***@cache.example:6379/0" in caplog.text
    assert "fake-redis-pw" not in caplog.text


def test_urls_in_logs_have_their_passwords_masked() -> None:
    """Test ``storage.redact`` on each place a URL carries a password, and on one without."""
    assert redact("mongodb://aoc:fake-pw@mongo:27017/?authSource=admin") == (
        "mongodb://aoc:***@mongo:27017/?authSource=admin"
    )
    assert redact("redis://redis:6379/0?password=fake-pw&db=1") == (
        "redis://redis:6379/0?password=***&db=1"
    )
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# --- no child outlives `aoc up`, and "up" means its own processes ---------------------------


def _started(log: Path) -> dict[str, int]:
    """Each child's pid, as `aoc up` logged it at its (last) start."""
    found = re.findall(r"(\S+) started \(pid (\d+)\)", log.read_text(errors="replace"))
    return {name: int(pid) for name, pid in found}


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie not yet reaped has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter, unlike tmp_path's (root's pytest directory is 0700).

    So that, run as root, `aoc up` can hand the broker to the ``mosquitto`` user.
    """
    path = Path(tempfile.mkdtemp(prefix="aoc-up-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _broker_user() -> int:
    """The uid `aoc up` should run Mosquitto as: never root when a ``mosquitto`` user exists."""
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(broker_conf.BROKER_USER).pw_uid
    return os.geteuid()


def _up(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aoc.cli", "up"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_sighup_stops_every_child_and_the_broker_is_not_root(open_dir: Path) -> None:
    """Test that a hang-up (a closed terminal) stops `aoc up` and every child it started.

    Also, run as root, Mosquitto runs as the ``mosquitto`` user, which owns
    the files the broker writes; the stack is ready all the same.
    """
    data = open_dir / "data"
    ports, env = services.up_settings(data)
    log = open_dir / "up.log"
    up = _up(env, log)
    try:
        _wait_for(lambda: b"AOC is up" in log.read_bytes(), 60, "the stack")
        pids = _started(log)
        assert sorted(pids) == ["aoc-serve", "mosquitto", "redis"]
        assert _uid(pids["mosquitto"]) == _broker_user()
        for owned in ("mosquitto/dynamic-security.json", "mosquitto/data"):
            assert (data / owned).stat().st_uid == _broker_user(), owned
        up.send_signal(signal.SIGHUP)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert [name for name, pid in pids.items() if not _gone(pid)] == []
    for name in ("mqtt", "redis", "http", "sio"):
        assert not services.port_is_open(ports[name]), f"{name} still listening after SIGHUP"


def test_children_die_with_a_killed_up(tmp_path: Path) -> None:
    """Test that no child outlives `aoc up` killed with SIGKILL (it can stop nothing itself)."""
    ports, env = services.up_settings(tmp_path / "data")
    log = tmp_path / "up.log"
    up = _up(env, log)
    try:
        _wait_for(lambda: b"AOC is up" in log.read_bytes(), 60, "the stack")
        pids = _started(log)
        assert sorted(pids) == ["aoc-serve", "mosquitto", "redis"]
    finally:
        up.kill()
        up.wait()
    _wait_for(lambda: all(map(_gone, pids.values())), 60, "every child to exit")
    _wait_for(
        lambda: not any(map(services.port_is_open, ports.values())), 60, "every port to close"
    )


def _processes_naming(path: Path) -> list[str]:
    """The command lines of running processes that name ``path`` (a data directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or _gone(int(proc.name)):
            continue
        with contextlib.suppress(OSError):
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(path) in command:
                found.append(f"{proc.name}: {command}")
    return found


def test_up_with_an_unreachable_store_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    """Test that `aoc up` on a MongoDB nobody listens on exits with one line, before any child.

    It used to start the broker and Redis, then restart `aoc serve` with a
    92-line traceback each time. Exit 1: the store may come back.
    """
    data = tmp_path / "data"
    ports, env = services.up_settings(data)
    env["AOC_STORE_URL"] = "mongodb://127.0.0.1:1"
    result = subprocess.run(
        [sys.executable, "-m", "aoc.cli", "up"], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert result.returncode == startup.EXIT_UNREACHABLE, result.stderr
    logged = re.compile(r"\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) ")
    errors = [line for line in result.stderr.splitlines() if not logged.match(line)]
    assert errors == [
        "cannot start: AOC_STORE_URL='mongodb://127.0.0.1:1' is unreachable: MongoDB: "
        "127.0.0.1:1: [Errno 111] Connection refused"
    ], result.stderr
    assert "started (pid" not in result.stderr
    assert "AOC is up" not in result.stderr
    assert _processes_naming(data) == []
    for name, port in ports.items():
        assert not services.port_is_open(port), f"{name} listening"


def test_up_on_a_broker_already_running_names_it_in_the_up_line(
    mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test that `aoc up` with a Mosquitto already on its port says "up" naming that process.

    Never "up" on someone else's processes without saying which: it is left
    running, and named, with its pid.
    """
    _ports, env = services.up_settings(tmp_path / "data")
    env.update(AOC_MQTT_PORT=str(mosquitto.port), AOC_BROKER_AUTH="false")
    log = tmp_path / "up.log"
    up = _up(env, log)
    try:
        _wait_for(lambda: b"AOC is up" in log.read_bytes(), 60, "the stack")
        pids = _started(log)
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert sorted(pids) == ["aoc-serve", "redis"]  # no broker of its own
    [line] = [line for line in log.read_text().splitlines() if "AOC is up" in line]
    assert mosquitto.proc is not None
    assert (
        f"Not started by this `aoc up`, and left running: the MQTT broker on :{mosquitto.port} "
        f"(pid {mosquitto.proc.pid} ("
    ) in line, line
    assert mosquitto.proc.poll() is None  # left running
    assert all(map(_gone, pids.values()))


class _Answering(http.server.BaseHTTPRequestHandler):
    """Someone else's server: 200 and ``{}`` to any GET, /healthz and /readyz included."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_up_refuses_an_http_port_held_by_another_server(tmp_path: Path) -> None:
    """Test that with another server on the HTTP port, `aoc up` starts nothing and says so.

    One line names the port, its variable and the process; exit code 2; never "AOC is up".
    """
    ports, env = services.up_settings(tmp_path / "data")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", ports["http"]), _Answering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "aoc.cli", "up"], env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2, result.stderr
    assert "AOC is up" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("aoc up:")]
    assert len(lines) == 1, result.stderr
    assert f"port {ports['http']} (AOC_HTTP_PORT) is in use by pid {os.getpid()}" in lines[0]
    assert "started (pid" not in result.stderr
    for name in ("mqtt", "redis", "sio"):
        assert not services.port_is_open(ports[name]), f"{name} listening"


async def test_a_port_answered_by_another_process_is_not_the_childs() -> None:
    """Test that a child is not taken as started when someone else answers on its port.

    The port is taken after `aoc up` checked it was free (here: before the
    child starts, by this test's process): the child cannot bind it, and the
    answer is not its own.
    """
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        child = supervise.Child(
            "aoc-serve", ["sleep", "600"], port,
            binds=[Bind("AOC_HTTP_PORT", "127.0.0.1", port)],
        )
        try:
            with pytest.raises(supervise.Failed) as raised:
                async with asyncio.timeout(DEADLINE):
                    await supervise._start(child)
        finally:
            assert child.proc is not None
            child.proc.kill()
            await child.proc.wait()
    assert raised.value.code == startup.EXIT_CONFIG
    assert str(raised.value).startswith(
        f"port {port} (AOC_HTTP_PORT) answers, but not from aoc-serve: pid {os.getpid()} ("
    )


def test_serve_with_its_http_port_taken_never_says_serving_and_exits_2(tmp_path: Path) -> None:
    """Test that `aoc serve` with its HTTP port taken never says "serving": it stops at once.

    It used to say "serving" before it had bound the port; then it retried
    the bind forever. A port another program holds at start-up is a
    configuration error (exit 2, one line); the retry of a port taken later,
    while the server restarts, is in ``tests/test_lifecycle.py``.
    """
    env = {
        **os.environ,
        "AOC_DATA_DIR": str(tmp_path / "data"),
        "AOC_SOCKETIO_PORT": str(services.free_port()),
        "AOC_MQTT_PORT": str(services.free_port()),  # no broker: the bridge would retry
        "AOC_REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0",
        "AOC_LOG_LEVEL": "INFO",
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env["AOC_HTTP_PORT"] = str(port)
        done = subprocess.run(
            [sys.executable, "-m", "aoc.cli", "serve"], env=env, capture_output=True,
            text=True, timeout=60, check=False,
        )
    assert done.returncode == startup.EXIT_CONFIG, done.stderr
    assert "serving:" not in done.stderr
    assert "Traceback" not in done.stderr
    assert f"port {port} (AOC_HTTP_PORT) is in use by pid {os.getpid()}" in done.stderr


# --- what a restart cannot cure, and a stop during a restart's wait ---------------------------


def _drive() -> None:
    """`aoc up`'s supervision of test children (``sys.argv[1]``, JSON), run by the tests below."""
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    async def main() -> int:
        stopping = parts.stop_on_signals()
        children = [
            supervise.Child(name, argv, config_error_exit=startup.EXIT_CONFIG)
            for name, argv in spec["children"]
        ]
        delay = spec["delay"]
        return await supervise.run(
            children, stopping, announce="up", backoff=lambda: Backoff(first=delay, cap=delay)
        )

    sys.exit(asyncio.run(main()))


def _supervising(tmp_path: Path, quitter: str, delay: float) -> subprocess.Popen[bytes]:
    """A supervisor of a sleeper and of ``quitter`` (a shell command run after noting its start).

    Each start of the quitter appends its pid to ``starts`` in ``tmp_path``.
    """
    spec = {
        "children": [
            ["sleeper", ["sleep", "600"]],
            ["quitter", ["sh", "-c", f"echo $$ >> {tmp_path / 'starts'}; {quitter}"]],
        ],
        "delay": delay,
    }
    with (tmp_path / "out.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.test_supervise", json.dumps(spec)],
            stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent,
        )


def _finished(supervisor: subprocess.Popen[bytes], tmp_path: Path) -> tuple[int, str, int]:
    """Its exit code, its output, and how often the quitter started; the sleeper must be gone."""
    try:
        code = supervisor.wait(DEADLINE)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    output = (tmp_path / "out.log").read_text()
    sleeper = _started(tmp_path / "out.log")["sleeper"]
    assert _gone(sleeper), "the other child outlived the supervisor"
    return code, output, len((tmp_path / "starts").read_text().split())


def test_a_stop_during_a_restart_wait_starts_nothing(tmp_path: Path) -> None:
    """Test that SIGHUP while a dead child waits for its restart ends the wait: no restart.

    The wait is an hour long; the supervisor exits, having started the child once.
    """
    supervisor = _supervising(tmp_path, "exit 3", delay=3600.0)
    _wait_for(
        lambda: "quitter died (exit code 3); restart #1 in 3600.0s" in (
            tmp_path / "out.log").read_text(), DEADLINE, "the restart wait",
    )
    supervisor.send_signal(signal.SIGHUP)
    code, output, starts = _finished(supervisor, tmp_path)
    assert code == 0, output
    assert starts == 1
    assert "sleeper stopped" in output


def test_a_child_dying_fast_again_and_again_stops_the_supervisor(tmp_path: Path) -> None:
    """Test that a child that dies FAST_DEATHS times within a minute stops everything: one line."""
    supervisor = _supervising(tmp_path, "exit 3", delay=0.01)
    code, output, starts = _finished(supervisor, tmp_path)
    assert code == 1, output
    assert starts == supervise.FAST_DEATHS  # the first start and 4 restarts, then no more
    lines = [line for line in output.splitlines() if line.startswith("aoc up:")]
    assert lines == [
        f"aoc up: quitter died {supervise.FAST_DEATHS} times within 60s (last: exit code 3): "
        "giving up (its output above says why)"
    ]


def test_a_child_exiting_with_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    """Test that exit code 2 (a configuration error) stops everything at once, exit code 2."""
    supervisor = _supervising(tmp_path, "exit 2", delay=0.01)
    code, output, starts = _finished(supervisor, tmp_path)
    assert code == startup.EXIT_CONFIG, output
    assert starts == 1
    lines = [line for line in output.splitlines() if line.startswith("aoc up:")]
    assert len(lines) == 1 and "quitter exited with code 2, a configuration error" in lines[0]


def test_the_broker_stays_root_only_where_its_user_cannot_reach(open_dir: Path) -> None:
    """Test the broker's user: root hands it over unless that user cannot enter its directory."""
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    user = broker_conf.broker_user(owned=[closed / "data" / "mosquitto"])
    if _broker_user() == os.geteuid():  # not root, or no mosquitto user: nothing to hand over
        assert user == (pwd.getpwuid(os.geteuid()).pw_name, None)
        return
    assert user.name == "root"
    assert user.why_root == f"the mosquitto user may not enter or read {closed}"
    closed.chmod(0o711)  # searchable, not readable: enough to reach what is below
    assert broker_conf.broker_user(owned=[closed / "data"]) == ("mosquitto", None)


async def test_a_task_beside_the_children_runs_while_they_are_supervised() -> None:
    """Test ``Child.alongside`` (`aoc up` retiring old bridges): supervision does not wait
    for it (a child that dies meanwhile is restarted), and it ends with `aoc up`'s stop."""
    stopping = asyncio.Event()
    child = supervise.Child("sleeper", ["sleep", "600"])
    started, ended = asyncio.Event(), asyncio.Event()

    async def beside(stop: asyncio.Event) -> None:
        started.set()
        await stop.wait()  # a long retirement, until `aoc up` stops
        ended.set()

    child.alongside = beside
    running = asyncio.create_task(
        supervise.run([child], stopping, backoff=lambda: Backoff(first=0.05, cap=0.05))
    )
    try:
        await asyncio.wait_for(started.wait(), DEADLINE)
        assert child.proc is not None
        first = child.proc
        first.kill()

        async def restarted() -> bool:
            return child.proc is not first and child.proc is not None and (
                child.proc.returncode is None
            )

        await eventually(restarted, timeout=DEADLINE)
        assert not ended.is_set()
    finally:
        stopping.set()
        code = await asyncio.wait_for(running, DEADLINE)
    assert code == 0 and ended.is_set()


if __name__ == "__main__":
    _drive()


def _consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free now (``AOC_BRIDGE_HTTP_PORT`` and on)."""
    for _ in range(50):
        first = services.free_port()
        if all(not services.port_is_open(first + n) for n in range(count)) and (
            first + count < 65536
        ):
            return first
    raise AssertionError(f"no {count} consecutive free ports")


def _received(port: int) -> float:
    """``aoc_messages_received_total{kind="tracking"}`` on a process's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r'^aoc_messages_received_total\{kind="tracking"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _pids(log: Path, name: str) -> list[int]:
    text = log.read_text(errors="replace")
    return [int(pid) for pid in re.findall(rf"{name} started \(pid (\d+)\)", text)]


async def test_up_runs_several_bridges_on_one_group_and_restarts_each_under_its_id(
    tmp_path: Path,
) -> None:
    """Test AOC_BRIDGES=3: `aoc serve`'s bridge and two `aoc bridge` share the devices' stream.

    Each member takes some of the points, every point reaches a dashboard on
    `aoc serve`'s Socket.IO (the members' through Redis), and a member killed
    with SIGKILL is restarted under its own client id: its session, with
    what the broker kept for it, is there when it comes back. Started again
    with AOC_BRIDGES=2, `aoc up` retires the third member (what a retired
    member's session held is stored: tests/faults/test_shared_bridges.py)
    and the two that run take every point.
    """
    data = tmp_path / "data"
    ports, env = services.up_settings(data)
    probes = _consecutive_free_ports(2)
    env.update(AOC_BRIDGES="3", AOC_BRIDGE_HTTP_PORT=str(probes))
    log = tmp_path / "up.log"
    devices, points = [f"SIM{n:03d}" for n in range(1, 11)], 10
    with _running_up(env, log):
        creds = credentials.load(data / "credentials.json")
        base = creds.data["bridge_client_id"]
        sio = socketio.AsyncClient(reconnection=False)
        seen: list[str] = []
        sio.on("data", handler=seen.append)
        await sio.connect(
            f"http://127.0.0.1:{ports['sio']}", auth={"token": creds.data["api_token"]},
            transports=["websocket"], wait_timeout=10,
        )
        try:
            # Joined before the first point: the acknowledgement comes once it is.
            assert await sio.call("room_join", "tracking", timeout=DEADLINE) is None
            await _publish_points(ports["mqtt"], creds, devices, points)
            sent = len(devices) * points
            bodies = lambda: [b for b in seen if b.startswith("{")]  # noqa: E731 (not the acks)
            await eventually(_async(lambda: len(bodies()) >= sent), timeout=DEADLINE)
            await asyncio.sleep(0.5)  # a duplicate would arrive now
        finally:
            await sio.disconnect()
        taken = [_received(ports["http"]), _received(probes), _received(probes + 1)]
        assert all(taken) and sum(taken) == sent, taken
        points_seen = [(p["ambulance_id"], p["ts"]) for p in map(json.loads, bodies())]
        assert len(set(points_seen)) == len(points_seen) == sent

        [first] = _pids(log, "aoc-bridge-1")
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: len(_pids(log, "aoc-bridge-1")) == 2, 60, "the member's restart")
        text = log.read_text(errors="replace")
        assert "aoc-bridge-1 died (signal 9); restart #1" in text
        resumed = re.findall(rf"as {re.escape(base)}-1 \(session present: (\w+)\)", text)
        assert resumed[0] == "False" and resumed[-1] == "True", resumed
        await _publish_points(ports["mqtt"], creds, devices[:2], points, start=points)
        await eventually(
            _async(lambda: sum(map(_received, (ports["http"], probes, probes + 1))) >= 20),
            timeout=DEADLINE,
        )
    text = log.read_text(errors="replace")
    assert text.index("aoc-bridge-2 stopped") < text.index("aoc-serve stopped")
    assert not services.port_is_open(probes) and not services.port_is_open(probes + 1)

    # Down to two: bridge 2 is retired beside the running stack.
    env["AOC_BRIDGES"] = "2"
    with _running_up(env, log):
        retired = f"retired bridge {base}-2:".encode()
        _wait_for(lambda: retired in log.read_bytes(), 60, "bridge 2's retirement")
        text = log.read_text(errors="replace")
        assert "aoc-bridge-2 started" not in text[text.index(f"retired bridge {base}-2:"):]
        await _publish_points(ports["mqtt"], creds, devices[:3], points, start=2 * points)
        await eventually(
            _async(lambda: _received(ports["http"]) + _received(probes) >= 30), timeout=DEADLINE
        )
    assert credentials.load(data / "credentials.json").data["bridge_members"] == 2


def _async(check: object) -> object:
    """``check`` as the coroutine function ``eventually`` awaits."""

    async def run() -> object:
        return check()  # type: ignore[operator]

    return run


async def _publish_points(
    port: int, creds: credentials.Credentials, devices: list[str], points: int, start: int = 0
) -> None:
    """``points`` tracking points from each simulator device, acknowledged by the broker."""
    now = int(time.time() * 1000)
    for device in devices:
        async with aiomqtt.Client(
            "127.0.0.1", port, username=device, password=creds.devices[device],
            identifier=f"{device}-test",
        ) as client:
            for n in range(start, start + points):
                body = TRACKING % (now - 60_000 + n * 1000)
                await client.publish(f"aoc/{device}/tracking", body, qos=1)
