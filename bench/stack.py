"""The system under test: Mosquitto, Redis and one ``aoc`` process, on free ports.

Started with ``tests.services`` (run from the repository root, where ``tests``
is importable), so the benchmark runs exactly what the end-to-end tests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import httpx
from prometheus_client.parser import text_string_to_metric_families

from aoc.config import Settings
from bridge import contract
from bridge.contract import Kind
from bridge.validate import Limits
from broker import conf as broker_conf
from tests import services

log = logging.getLogger(__name__)

TRACKINGS = "ambulance_trackings"


@dataclass
class Stack:
    """A running broker, cache and ``aoc`` process, and how to reach each."""

    workdir: Path
    mosquitto: services.Service
    redis: services.Service
    app: services.AocService  # its token reads the API (legacy mode serves the devices)
    # More `aoc bridge` processes sharing the stream with ``app`` (``running(bridges=)``).
    extra: tuple[services.AocService, ...] = ()

    @property
    def mqtt_port(self) -> int:
        return self.mosquitto.port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app.env['AOC_HTTP_PORT']}"

    @property
    def metrics_url(self) -> str:
        # `aoc bridge` alone serves /metrics on its own port (when it has one).
        if self.app.name == "aoc-bridge":
            return f"http://127.0.0.1:{self.app.env['AOC_BRIDGE_HTTP_PORT']}/metrics"
        return f"{self.http_url}/metrics"

    @property
    def metrics_urls(self) -> list[str]:
        """The /metrics of every consuming process: ``app``'s and the extra bridges'."""
        ports = [bridge.env["AOC_BRIDGE_HTTP_PORT"] for bridge in self.extra]
        return [self.metrics_url, *(f"http://127.0.0.1:{port}/metrics" for port in ports)]

    @property
    def socketio_url(self) -> str:
        return f"http://127.0.0.1:{self.app.env['AOC_SOCKETIO_PORT']}"

    @property
    def store_path(self) -> Path:
        return Path(self.app.env["AOC_DATA_DIR"]) / "aoc.sqlite3"

    def pids(self) -> dict[str, int]:
        """Process name -> pid of every server process of the stack."""
        found = {}
        for service in (self.mosquitto, self.redis, self.app, *self.extra):
            if service.proc is not None and service.proc.poll() is None:
                name = service.workdir.name if service in self.extra else service.name
                found[name] = service.proc.pid
        return found

    def mqtt(self, *, max_inflight: int | None = None) -> aiomqtt.Client:
        """An MQTT client of the broker; many publishes in flight are the point here."""
        client = aiomqtt.Client(
            "127.0.0.1",
            self.mqtt_port,
            max_inflight_messages=max_inflight,
            max_queued_outgoing_messages=0,  # 0: unbounded, the window bounds it
        )
        # aiomqtt warns on every publish past 10 pending, which a benchmark always has.
        client.pending_calls_threshold = 1_000_000
        return client

    async def probe(self, timeout: float = 60.0) -> float:
        """Send one point and wait until it is stored: the pipeline is up and subscribed.

        Returns the seconds it took. The bridge subscribes a moment after its
        ports open, so a point published before that could be lost to it;
        this probe is re-sent until one is stored.
        """
        started = time.monotonic()
        aid = f"PROBE-{uuid.uuid4().hex[:6]}"
        seq = 0
        async with self.mqtt() as client:
            while time.monotonic() - started < timeout:
                body = {"lat": 13.75, "lon": 100.5, "speed": 1, "ts": now_ms(), "seq": seq}
                await client.publish(contract.topic(aid, Kind.TRACKING), json.dumps(body), qos=1)
                seq += 1
                for _ in range(20):
                    if stored_points(self.store_path, aid) > 0:
                        return time.monotonic() - started
                    await asyncio.sleep(0.1)
        raise TimeoutError(f"no probe point stored within {timeout}s:\n{self.app.log_tail()}")


def now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def running(
    *,
    command: str = "serve",
    env: dict[str, str] | None = None,
    keep: Path | None = None,
    bridges: int = 1,
) -> Iterator[Stack]:
    """Start Mosquitto, Redis and ``aoc <command>``; stop them all on exit.

    With ``bridges`` > 1, ``bridges`` - 1 more `aoc bridge` processes share
    the stream with it (one share group, one store, each its own session).
    Files go to a temporary directory, or to ``keep`` when given (to read the
    logs afterwards).
    """
    if bridges > 1:
        env = {"AOC_SHARE_GROUP": "bench", "AOC_BRIDGES": str(bridges), **(env or {})}
    with contextlib.ExitStack() as exits:
        if keep is None:
            workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="aoc-bench-")))
        else:
            workdir = keep
            workdir.mkdir(parents=True, exist_ok=True)
        # The broker's packet bound follows the snapshot limits, as under `aoc up`.
        limits = Limits.from_settings(Settings())
        mosquitto = exits.enter_context(
            services.mosquitto(
                workdir / "mosquitto",
                max_packet_size=broker_conf.packet_bound(limits.max_snap_json_bytes),
            )
        )
        redis = exits.enter_context(services.redis(workdir / "redis"))
        app = services.aoc(
            command,
            workdir / f"aoc-{command}",
            mqtt_port=mosquitto.port,
            redis_port=redis.port,
            env={"AOC_LOG_LEVEL": "WARNING", **(env or {})},
        )
        app.env.setdefault("AOC_BRIDGE_HTTP_PORT", str(services.free_port()))
        exits.enter_context(app)
        extra: list[services.AocService] = []
        for n in range(1, bridges):
            bridge = services.aoc(
                "bridge",
                workdir / f"aoc-bridge-{n}",
                mqtt_port=mosquitto.port,
                redis_port=redis.port,
                env={
                    "AOC_LOG_LEVEL": "WARNING",
                    **(env or {}),
                    "AOC_DATA_DIR": app.env["AOC_DATA_DIR"],  # one store
                    "AOC_SPOOL_DIR": str(workdir / f"aoc-bridge-{n}" / "spool"),
                },
            )
            exits.enter_context(bridge)
            extra.append(bridge)
        yield Stack(workdir, mosquitto, redis, app, tuple(extra))


def stored_points(store: Path, ambulance_id: str | None = None) -> int:
    """Tracking points in the SQLite store (all, or one ambulance's); 0 before it exists."""
    sql = f'SELECT count(*) FROM "{TRACKINGS}"'
    params: tuple[str, ...] = ()
    if ambulance_id is not None:
        sql += " WHERE ambulance_id = ?"
        params = (ambulance_id,)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            return int(conn.execute(sql, params).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or busy for a moment
        return 0


def stored_with_prefix(store: Path, prefix: str, collection: str = TRACKINGS) -> int:
    """Records (tracking points by default) of ambulances whose id starts with ``prefix``."""
    sql = f'SELECT count(*) FROM "{collection}" WHERE ambulance_id >= ? AND ambulance_id < ?'
    # Ids are ASCII: every id with the prefix sorts between prefix and prefix + '\x7f'.
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            return int(conn.execute(sql, (prefix, prefix + "\x7f")).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float] | None:
    """Every sample of a Prometheus ``/metrics`` page, keyed ``name{labels}``; None if absent."""
    try:
        response = await client.get(url, timeout=5.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return samples


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (VmRSS), or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` so far, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name may hold spaces: the fields start after its ')'.
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
