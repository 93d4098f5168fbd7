"""The rig ``aoc bench`` stages share: servers started once, helper processes, counters.

``Context`` starts the pipeline (Mosquitto, Redis, ``aoc serve``) and the
ceiling's broker at their first use and stops them, and every helper process,
at the end. The rest reads what the stages measure with: the store (the
ground truth), the bridge's ``/metrics``, and a probe that waits for the
fan-out to go idle (``settle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import sqlite3
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio

from aoc.config import Settings
from bench import stack as stack_mod
from bench.children import ROOT, Child
from bench.procstat import ProcessFigures
from bench.stack import Stack
from bench.stats import percentile
from bench.suite import Config, StageResult, progress
from bridge import contract
from bridge.contract import Kind
from bridge.validate import Limits
from broker import conf as broker_conf
from tests import services

STORE_POLL = 0.005  # seconds between the store observer's reads
STALL = 30.0  # seconds of a store not growing, short of what was acknowledged: lost
STORED_METRIC = 'aoc_messages_stored_total{kind="tracking"}'
SIO_DROPPED = 'aoc_fanout_dropped_total{channel="socketio",reason="queue_full"}'
JS = ROOT / "tests" / "js"


@dataclass
class Context:
    """What the stages share: the configuration, a work directory, servers started once."""

    config: Config
    workdir: Path
    exits: contextlib.ExitStack
    _pipeline: Stack | None = None
    _ceiling: services.Service | None = None
    children: list[Child] = field(default_factory=list)
    _mongo: Any = None  # a pymongo client, with --store-url mongodb://...

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: Config, workdir: Path) -> Iterator[Context]:
        with contextlib.ExitStack() as exits:
            ctx = cls(config, workdir, exits)
            exits.callback(ctx.close_children)
            yield ctx

    def pipeline(self) -> Stack:
        """Mosquitto, Redis and ``aoc serve`` (started at the first call, kept to the end)."""
        if self._pipeline is None:
            env = {"AOC_DEVICE_BURST": str(10**9)}  # the benchmark is not a misbehaving device
            if self.config.store_url:
                env["AOC_STORE_URL"] = self.config.store_url
            progress("starting mosquitto, redis and aoc serve ...")
            self._pipeline = self.exits.enter_context(
                stack_mod.running(command="serve", env=env, keep=self.workdir / "pipeline")
            )
            probe = asyncio.run(self._pipeline.probe())
            progress(f"pipeline up (first point stored {probe:.2f}s after the first try)")
        return self._pipeline

    def ceiling(self) -> services.Service:
        """A Mosquitto of the project's configuration, for the raw ceiling alone."""
        if self._ceiling is None:
            limits = Limits.from_settings(Settings())
            self._ceiling = self.exits.enter_context(
                services.mosquitto(
                    self.workdir / "ceiling-mosquitto",
                    max_packet_size=broker_conf.packet_bound(limits.max_snap_json_bytes),
                )
            )
        return self._ceiling

    def child(self, name: str, module: str, config: dict[str, Any]) -> Child:
        made = Child.python(name, module, config, self.workdir / "logs")
        self.children.append(made)
        return made

    def node(self, name: str, argv: list[str]) -> Child:
        node = shutil.which("node")
        if node is None or not (JS / "node_modules" / "autocannon").exists():
            raise RuntimeError("node and tests/js/node_modules are needed: `make setup`")
        made = Child(name, [node, *argv], self.workdir / "logs")
        self.children.append(made)
        return made

    def close_children(self) -> None:
        for child in self.children:
            child.close()
        self.children.clear()

    def stored(self, prefix: str) -> int:
        """Tracking points of ambulances ``prefix*`` in the store: the ground truth."""
        url = self.config.store_url or ""
        if url.startswith("mongodb"):
            import pymongo  # noqa: PLC0415

            if self._mongo is None:
                self._mongo = pymongo.MongoClient[dict[str, Any]](url)
                self.exits.callback(self._mongo.close)
            coll = self._mongo[Settings().mongodb_database][stack_mod.TRACKINGS]
            query = {"ambulance_id": {"$regex": f"^{re.escape(prefix)}"}}
            return int(coll.count_documents(query))
        return stack_mod.stored_with_prefix(self.pipeline().store_path, prefix)


def new_prefix(letter: str) -> str:
    return f"{letter}{uuid.uuid4().hex[:5]}-"


def split_ids(prefix: str, total: int, parts: int) -> list[list[str]]:
    """``total`` ambulance ids dealt to ``parts`` processes (``<prefix><p>-<n>``).

    As ``bench.publish`` makes them from ``_id_config``.
    """
    return [
        [f"{prefix}{p}-{n:05d}" for n in range(total // parts + (1 if p < total % parts else 0))]
        for p in range(parts)
    ]


def id_config(own: list[str]) -> dict[str, Any]:
    """How a publisher makes the ids ``own`` of ``_split_ids`` (argv stays short)."""
    return {"id_prefix": own[0][:-5] if own else "", "ambulances": len(own)}


def publishers(ctx: Context, port: int, ids: list[list[str]], tag: str, **mode: Any) -> list[Child]:
    config = ctx.config
    made = []
    for p, own in enumerate(ids):
        settings = {"port": port, "clients": config.clients, "name": f"{tag}{p}"}
        settings |= id_config(own)
        settings |= {"phase": p / len(ids), "ack_timeout": config.timeout, **mode}
        made.append(ctx.child(f"publisher-{tag}-{p}", "bench.publish", settings))
    for child in made:
        child.wait_ready()
    return made


def watchers(
    ctx: Context,
    url: str,
    token: str | None,
    prefix: str,
    rooms: list[list[str]],
    *,
    latency: bool,
    processes: int = 1,
    tag: str = "",
) -> list[Child]:
    """Socket.IO client processes; ``rooms``: each client's rooms, dealt to the processes."""
    made = []
    for p in range(processes):
        mine = rooms[p::processes]
        if not mine:
            continue
        settings = {"url": url, "token": token, "rooms": mine, "prefix": prefix}
        made.append(ctx.child(f"watchers{tag}-{p}", "bench.watch", settings | {"latency": latency}))
    for child in made:
        child.wait_ready()
    return made


def rooms_of(config: Config, ids: list[str]) -> list[list[str]]:
    """Each watcher's rooms: ``watchers`` in room tracking, ``room_watchers`` in a few ids'."""
    rooms = [["tracking"]] * config.watchers
    each = config.rooms_each
    return rooms + [ids[i * each : (i + 1) * each] for i in range(config.room_watchers)]


def stop_all(children: list[Child], timeout: float) -> list[dict[str, Any]]:
    for child in children:
        child.send("stop")
    results = [child.result(timeout) for child in children]
    for child in children:
        child.close()
    return results


def metrics(stack: Stack) -> dict[str, float]:
    """Every sample of the bridge's ``/metrics`` (``name{labels}`` -> value); {} if unreadable."""
    try:
        with urllib.request.urlopen(stack.metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def stored_metric(stack: Stack) -> float | None:
    """The bridge's stored-tracking counter, or None when it cannot be read."""
    return metrics(stack).get(STORED_METRIC)


def dropped(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Socket.IO sends the bridge dropped between two scrapes (its fan-out queue was full)."""
    if SIO_DROPPED not in after:
        return 0.0 if after else None
    return after[SIO_DROPPED] - before.get(SIO_DROPPED, 0.0)


def settle(stack: Stack, timeout: float) -> float:
    """Block until the fan-out has sent everything queued before now; the seconds it took.

    A probe point goes in behind whatever an earlier stage left queued; the
    bridge stores and emits in order, so when a Socket.IO client in the
    probe's room has it, the queue ahead of it is gone (sent or dropped) and
    the next measurement starts from an idle pipeline.
    """

    async def probe() -> float:
        started = time.monotonic()
        aid = f"SETTLE-{uuid.uuid4().hex[:6]}"
        got = asyncio.Event()
        client = socketio.AsyncClient(reconnection=False)

        @client.on(contract.EVENT)  # type: ignore[untyped-decorator]
        async def on_data(data: object) -> None:
            if isinstance(data, str) and aid in data and not data.startswith("room joined"):
                got.set()

        await client.connect(
            stack.socketio_url, transports=["websocket"], auth={"token": stack.app.token}
        )
        try:
            await client.emit(contract.JOIN_EVENT, aid)
            await asyncio.sleep(0.2)  # the join is handled before the point arrives
            body = f'{{"lat":13.7,"lon":100.5,"speed":1,"ts":{stack_mod.now_ms()},"seq":0}}'
            async with stack.mqtt() as mqtt:
                await mqtt.publish(contract.topic(aid, Kind.TRACKING), body, qos=1)
            async with asyncio.timeout(timeout):
                await got.wait()
        finally:
            await client.disconnect()
        return time.monotonic() - started

    try:
        return asyncio.run(probe())
    except TimeoutError:
        progress(f"  the fan-out did not go idle within {timeout:.0f}s: measuring anyway")
        return timeout


def stored_since(
    ctx: Context, stack: Stack, baseline: float | None, prefix: str, already: int = 0
) -> int:
    """Points stored since ``baseline`` (the counter); else those of ``prefix*`` in the store
    less the ``already`` there before."""
    now = stored_metric(stack) if baseline is not None else None
    if baseline is None or now is None:
        return ctx.stored(prefix) - already
    return int(now - baseline)


@dataclass
class Drained:
    """How a wait for the store ended."""

    stored: int
    seconds: float
    still_draining: bool  # the cap ended it while points were still being stored


def drain(ctx: Context, prefix: str, target: int) -> Drained:
    """Wait until ``target`` points of ``prefix*`` are stored, or nothing moves for a while.

    A backlog that is still being stored is waited for (up to ``--drain-timeout``),
    so a slow pipeline is never reported as a lossy one; a store that stops
    growing short of ``target`` for ``STALL`` seconds has lost the rest.
    """
    config = ctx.config
    started = last_move = time.monotonic()
    count = ctx.stored(prefix)
    while count < target:
        now = time.monotonic()
        if now - last_move > min(STALL, config.timeout) or now - started > config.drain_timeout:
            return Drained(count, now - started, now - last_move <= min(STALL, config.timeout))
        time.sleep(0.1)
        latest = ctx.stored(prefix)
        if latest != count:
            count, last_move = latest, time.monotonic()
    return Drained(count, time.monotonic() - started, still_draining=False)


def stack_pids(stack: Stack) -> dict[str, int]:
    return stack.pids()


def percentiles_ms(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return tuple(percentile(values, p) * 1000 for p in (50.0, 95.0, 99.0))  # type: ignore[return-value]


class StoreObserver:
    """Sees new tracking rows appear in the SQLite store: publish -> stored latencies."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-observer", daemon=True)

    def __enter__(self) -> StoreObserver:
        self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        row = self._conn.execute(f'SELECT max(rowid) FROM "{stack_mod.TRACKINGS}"').fetchone()
        self._last = int(row[0] or 0)
        self._thread.start()
        return self

    def _run(self) -> None:
        sql = f'SELECT rowid, _id FROM "{stack_mod.TRACKINGS}" WHERE rowid > ? ORDER BY rowid'
        while not self._stop.wait(STORE_POLL):
            with contextlib.suppress(sqlite3.OperationalError):  # busy for a moment
                rows = self._conn.execute(sql, (self._last,)).fetchall()
                now = time.time()
                for rowid, doc_id in rows:
                    self._last = rowid
                    aid, _, rest = str(doc_id).partition(":")  # "<aid>:<ts ms>[:<seq>]"
                    if aid.startswith(self.prefix):
                        self.latencies.append(now - int(rest.split(":")[0]) / 1000)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def busiest(procs: list[ProcessFigures]) -> str:
    """The process that used the most CPU: the first to saturate, on a loaded pipeline."""
    known = [p for p in procs if p.cpu_percent is not None]
    if not known:
        return "busiest process: unknown"
    top = max(known, key=lambda p: p.cpu_percent or 0.0)
    return f"busiest process: {top.name} at {top.cpu_percent:.0f}% of a core"


def latency_rows(result: StageResult, label: str, values: list[float]) -> None:
    p50, p95, p99 = percentiles_ms(values)
    result.row(f"{label} p50", p50, "ms")
    result.row(f"{label} p95", p95, "ms")
    result.row(f"{label} p99", p99, "ms")
