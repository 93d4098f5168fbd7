"""Real servers for tests: Mosquitto, Redis and SeaweedFS on free loopback ports.

Each is a ``Service``: started as a child process in its own directory, waited
for until its port accepts connections, and stopped (or killed, for the fault
tests) on demand. Nothing here touches a system-wide instance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker import accounts
from broker import conf as broker_conf

ADMIN = "admin"  # the admin account of a test broker with authentication
DYNSEC_FILE = "dynamic-security.json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until 127.0.0.1:``port`` accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


def wait_until_ready(
    port: int, component: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``/readyz`` on 127.0.0.1:``port`` reports ``component`` as ok.

    An ``aoc`` process serves HTTP before its bridge has connected and
    subscribed (its parts start side by side): what a test publishes before
    then would reach a subscription made later, as a replayed retained
    message, or not at all.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, ValueError):
            # 503 (not ready) raises HTTPError, whose body is the report too.
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as got:
                    report = json.load(got)
            except urllib.error.HTTPError as refused:
                report = json.load(refused)
            if report.get(component) == "ok":
                return
        time.sleep(0.05)
    raise TimeoutError(f"{component} not ready on port {port} within {timeout}s")


@dataclass
class Service:
    """A server process that tests can start, stop, kill and restart."""

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 20.0
    extra_ports: Sequence[int] = ()
    # The ``/readyz`` component that must be ok on ``port`` before the service counts as started.
    ready: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Service:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        try:
            for port in (self.port, *self.extra_ports):
                if port:  # port 0: a process with no listener (the bridge alone)
                    wait_for_port(port, self.start_timeout, self.proc)
            if self.ready is not None:
                wait_until_ready(self.port, self.ready, self.start_timeout, self.proc)
        except Exception as exc:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {self.log_tail()}") from exc
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> Service:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _require(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{binary} is not installed: run `make setup` (it installs it)")
    return path


def mosquitto(
    workdir: Path,
    *,
    port: int | None = None,
    ws_port: int | None = None,
    extra: str = "",
    max_packet_size: int | None = None,
    admin_password: str | None = None,
) -> Service:
    """Mosquitto with the project's ``mosquitto.conf``, ports and paths substituted.

    Anonymous (``auth=False``) unless ``admin_password`` is given: then with
    the dynamic security plugin, whose file (``DYNSEC_FILE`` in ``workdir``,
    made once) holds only the account ``admin`` with that password.
    """
    port = port or free_port()
    ws_port = ws_port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    dynsec = workdir / DYNSEC_FILE
    if admin_password is not None and not dynsec.exists():
        accounts.write_initial_config(dynsec, ADMIN, admin_password)
    conf = broker_conf.write(
        workdir / "mosquitto.conf",
        mqtt_port=port,
        ws_port=ws_port,
        bind_host="127.0.0.1",
        data_dir=workdir / "data",
        auth=admin_password is not None,
        dynsec_file=dynsec,
        extra=extra,
        max_packet_size=max_packet_size,
    )
    service = Service("mosquitto", [_require("mosquitto"), "-c", str(conf)], port, workdir)
    service.extra_ports = (ws_port,)
    service.env["AOC_TEST_WS_PORT"] = str(ws_port)
    return service


def redis(workdir: Path, *, port: int | None = None) -> Service:
    """A private redis-server with no persistence (the cache is rebuilt from the store)."""
    port = port or free_port()
    argv = [
        _require("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    return Service("redis", argv, port, workdir)


def seaweedfs(workdir: Path) -> Service:
    """A single-process SeaweedFS with its S3 gateway; ``port`` is the S3 port."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        weed = Path(_require("weed"))
    s3_port, master, volume, filer = (free_port() for _ in range(4))
    argv = [
        str(weed),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir / 'data'}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-master.port.grpc={free_port()}",
        f"-volume.port.grpc={free_port()}",
        f"-filer.port.grpc={free_port()}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=20",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={free_port()}",
        # Listeners with fixed default ports would collide between parallel runs.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    return Service("seaweedfs", argv, s3_port, workdir, start_timeout=60.0)


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    """Start ``service`` for the duration of a ``with`` block."""
    with service:
        yield service


@dataclass
class AocService(Service):
    """An ``aoc`` process, with a token for its read API and Socket.IO (``token``)."""

    token: str = ""

    @property
    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header of ``token``."""
        return {"Authorization": f"Bearer {self.token}"}


def api_token(
    env: dict[str, str], rooms: Sequence[str] | None = None, *, dispatch: bool = False
) -> str:
    """A new token reading every ambulance (or ``rooms``), in the store ``env``'s process uses.

    ``dispatch``: it may also send dispatch commands.

    Created through the store itself (as `aoc token add` does), on a thread of
    its own so that a test already inside an event loop can call it too.
    """
    from aoc.config import Settings  # noqa: PLC0415 (tests of the servers alone need none)
    from api.tokens import create_token  # noqa: PLC0415
    from storage import open_document_store  # noqa: PLC0415

    data_dir = Path(env["AOC_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        store_url=env.get("AOC_STORE_URL", ""),
        mongodb_database=env.get("AOC_MONGODB_DATABASE", "aoc_v2"),
    )

    async def create() -> str:
        store = open_document_store(
            settings.resolved_store_url, database=settings.mongodb_database
        )
        async with store:
            name = f"tests-{os.getpid()}-{time.monotonic_ns()}"
            return await create_token(store, name, rooms, actor="tests", dispatch=dispatch)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, create()).result(60)


def aoc(
    command: str,
    workdir: Path,
    *,
    mqtt_port: int,
    redis_port: int,
    env: dict[str, str] | None = None,
    legacy: bool = True,
) -> AocService:
    """An ``aoc`` process (``serve``, ``bridge``, ``api``, ``realtime``) as a real child process.

    Its HTTP port is ``port``; ``env`` holds extra ``AOC_*`` settings and may
    override the defaults chosen here. ``legacy``: legacy mode on (the suites
    drive the stock legacy clients from loopback); the service's ``token``
    reads everything.
    """
    http_port, socketio_port, bridge_port = free_port(), free_port(), free_port()
    settings = {
        "AOC_MQTT_PORT": str(mqtt_port),
        "AOC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AOC_HTTP_PORT": str(http_port),
        "AOC_SOCKETIO_PORT": str(socketio_port),
        "AOC_BRIDGE_HTTP_PORT": str(bridge_port),
        "AOC_DATA_DIR": str(workdir / "data"),
        "AOC_MQTT_CLIENT_ID": f"aoc-bridge-{http_port}",
        "AOC_LOG_LEVEL": "INFO",
        **({"AOC_LEGACY_MODE": "1"} if legacy else {}),
        **(env or {}),
    }
    http_port, socketio_port, bridge_port = (
        int(settings[name])
        for name in ("AOC_HTTP_PORT", "AOC_SOCKETIO_PORT", "AOC_BRIDGE_HTTP_PORT")
    )
    ports = {
        "serve": (http_port, socketio_port),
        "api": (http_port,),
        "realtime": (socketio_port,),
        "bridge": (bridge_port,),  # its probes and metrics
    }
    waits = ports.get(command, ())
    service = AocService(
        f"aoc-{command}",
        [sys.executable, "-m", "aoc.cli", command],
        waits[0] if waits else 0,
        workdir,
        env=settings,
        extra_ports=waits[1:],
        # Started once its MQTT side is up: the bridge subscribed, or the shim's publisher.
        ready="broker" if command in ("serve", "bridge", "api") else None,
        token=api_token(settings),
    )
    return service


def port_is_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def up_settings(data_dir: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Free ports and the environment for an ``aoc up`` of the tests' own."""
    ports = {name: free_port() for name in ("mqtt", "ws", "http", "sio", "redis")}
    env = {
        **os.environ,
        "AOC_DATA_DIR": str(data_dir),
        "AOC_MQTT_PORT": str(ports["mqtt"]),
        "AOC_MQTT_WS_PORT": str(ports["ws"]),
        "AOC_HTTP_PORT": str(ports["http"]),
        "AOC_SOCKETIO_PORT": str(ports["sio"]),
        "AOC_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
    }
    return ports, env
