"""The stages of ``aoc bench`` (see ``bench.suite``), on one shared ``Context``.

How each figure is taken:

- **Rates.** A raw-ceiling run's rate is the messages the bare subscriber
  received over the time from the publishers' ``go`` to its last message; a
  pipeline run's is the points stored (the bridge's
  ``aoc_messages_stored_total`` counter, polled) over the time from ``go``
  until the store held them all. Publishers, subscriber and watchers are
  separate processes; the publishers are paho-mqtt, several clients each.
- **Lost** is what the publishers' broker acknowledged (PUBACKs counted in
  the publisher processes) minus the rows of those ambulances in the store
  (SQLite rows, the ground truth; a MongoDB store is counted with pymongo),
  read once everything had time to arrive. It must be 0.
- **publish -> Socket.IO** is, per delivered ``data`` event, the watcher's
  wall clock minus the point's ``ts`` (the publisher's wall clock at the
  publish, in whole milliseconds: a figure may read up to 1 ms high).
- **publish -> stored** is the time a point's row became visible in the
  SQLite store minus its ``ts``, seen by an observer thread that reads the
  new rows (``rowid`` order) every ``STORE_POLL`` seconds: a figure may read
  up to that interval high. The bridge acknowledges a message only after its
  batch is committed and emits to Socket.IO after that, so a visible row is
  the durable point, and publish -> Socket.IO is never shorter than it (a
  broker-side "acknowledged" time cannot be seen from outside; the bridge's
  ``aoc_message_age_seconds`` histogram has buckets too coarse for p50 at
  millisecond scale). Not measured on a MongoDB store.
- **CPU** is % of one core over the measured window (200% is both cores);
  **RSS** is sampled every half second: start, warm (median of the second
  quarter), end (``bench.procstat``).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aoc.config import Settings
from bench import stack as stack_mod
from bench.children import ROOT, Child
from bench.procstat import ProcessFigures, Watch
from bench.stack import Stack
from bench.stats import median, percentile
from bench.suite import Config, StageResult, progress
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
            import asyncio  # noqa: PLC0415

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
            import re  # noqa: PLC0415

            import pymongo  # noqa: PLC0415

            if self._mongo is None:
                self._mongo = pymongo.MongoClient[dict[str, Any]](url)
                self.exits.callback(self._mongo.close)
            coll = self._mongo[Settings().mongodb_database][stack_mod.TRACKINGS]
            query = {"ambulance_id": {"$regex": f"^{re.escape(prefix)}"}}
            return int(coll.count_documents(query))
        return stack_mod.stored_with_prefix(self.pipeline().store_path, prefix)


# -- helpers ------------------------------------------------------------------


def _prefix(letter: str) -> str:
    return f"{letter}{uuid.uuid4().hex[:5]}-"


def _split_ids(prefix: str, total: int, parts: int) -> list[list[str]]:
    """``total`` ambulance ids dealt to ``parts`` processes (``<prefix><p>-<n>``).

    As ``bench.publish`` makes them from ``_id_config``.
    """
    return [
        [f"{prefix}{p}-{n:05d}" for n in range(total // parts + (1 if p < total % parts else 0))]
        for p in range(parts)
    ]


def _id_config(own: list[str]) -> dict[str, Any]:
    """How a publisher makes the ids ``own`` of ``_split_ids`` (argv stays short)."""
    return {"id_prefix": own[0][:-5] if own else "", "ambulances": len(own)}


def _publishers(
    ctx: Context, port: int, ids: list[list[str]], tag: str, **mode: Any
) -> list[Child]:
    config = ctx.config
    made = []
    for p, own in enumerate(ids):
        settings = {"port": port, "clients": config.clients, "name": f"{tag}{p}"}
        settings |= _id_config(own)
        settings |= {"phase": p / len(ids), "ack_timeout": config.timeout, **mode}
        made.append(ctx.child(f"publisher-{tag}-{p}", "bench.publish", settings))
    for child in made:
        child.wait_ready()
    return made


def _watchers(
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


def _rooms(config: Config, ids: list[str]) -> list[list[str]]:
    """Each watcher's rooms: ``watchers`` in room tracking, ``room_watchers`` in a few ids'."""
    rooms = [["tracking"]] * config.watchers
    each = config.rooms_each
    return rooms + [ids[i * each : (i + 1) * each] for i in range(config.room_watchers)]


def _stop_all(children: list[Child], timeout: float) -> list[dict[str, Any]]:
    for child in children:
        child.send("stop")
    results = [child.result(timeout) for child in children]
    for child in children:
        child.close()
    return results


def _metrics(stack: Stack) -> dict[str, float]:
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


def _metric(stack: Stack) -> float | None:
    """The bridge's stored-tracking counter, or None when it cannot be read."""
    return _metrics(stack).get(STORED_METRIC)


def _dropped(before: dict[str, float], after: dict[str, float]) -> float | None:
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
    import asyncio  # noqa: PLC0415

    import socketio  # noqa: PLC0415

    from bridge import contract  # noqa: PLC0415
    from bridge.contract import Kind  # noqa: PLC0415

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


def _stored_since(
    ctx: Context, stack: Stack, baseline: float | None, prefix: str, already: int = 0
) -> int:
    """Points stored since ``baseline`` (the counter); else those of ``prefix*`` in the store
    less the ``already`` there before."""
    now = _metric(stack) if baseline is not None else None
    if baseline is None or now is None:
        return ctx.stored(prefix) - already
    return int(now - baseline)


@dataclass
class Drained:
    """How a wait for the store ended."""

    stored: int
    seconds: float
    still_draining: bool  # the cap ended it while points were still being stored


def _drain(ctx: Context, prefix: str, target: int) -> Drained:
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


def _stack_pids(stack: Stack) -> dict[str, int]:
    return stack.pids()


def _pcts(values: list[float]) -> tuple[float | None, float | None, float | None]:
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


def _busiest(procs: list[ProcessFigures]) -> str:
    """The process that used the most CPU: the first to saturate, on a loaded pipeline."""
    known = [p for p in procs if p.cpu_percent is not None]
    if not known:
        return "busiest process: unknown"
    top = max(known, key=lambda p: p.cpu_percent or 0.0)
    return f"busiest process: {top.name} at {top.cpu_percent:.0f}% of a core"


def _latency_rows(result: StageResult, label: str, values: list[float]) -> None:
    p50, p95, p99 = _pcts(values)
    result.row(f"{label} p50", p50, "ms")
    result.row(f"{label} p95", p95, "ms")
    result.row(f"{label} p99", p99, "ms")


# -- stage 1: throughput ----------------------------------------------------


@dataclass
class _Run:
    rate: float
    acked: int
    lost: int = 0
    procs: list[ProcessFigures] = field(default_factory=list)
    delivered: float | None = None  # Socket.IO deliveries per stored point (tracking room)
    dropped: float | None = None  # Socket.IO sends the bridge dropped (fan-out queue full)


def _ceiling_run(ctx: Context, number: int, publishers: int) -> _Run:
    config, broker = ctx.config, ctx.ceiling()
    prefix = _prefix("C")
    messages = config.messages // publishers * publishers
    sink = ctx.child(
        f"sink-{number}",
        "bench.sink",
        {"port": broker.port, "client_id": f"bench-sink-{prefix}", "expect": messages},
    )
    sink.wait_ready()
    ids = _split_ids(prefix, config.flood_ambulances, publishers)
    pubs = _publishers(
        ctx,
        broker.port,
        ids,
        f"c{number}-{publishers}-",
        mode="flood",
        count=config.messages // publishers,
        window=config.window,
    )
    assert broker.proc is not None
    pids = {"mosquitto": broker.proc.pid, "subscriber": sink.pid}
    pids |= {f"publisher-{p}": c.pid for p, c in enumerate(pubs)}
    watch = Watch(pids).start()
    started = time.time()
    for pub in pubs:
        pub.send("go")
    published = [pub.result(config.timeout) for pub in pubs]
    got = sink.result(config.timeout)
    procs = watch.stop()
    for child in (sink, *pubs):
        child.close()
    acked = sum(int(r["acked"]) for r in published)
    elapsed = max(got["last"] - started, 1e-9)
    return _Run(rate=got["received"] / elapsed, acked=acked, procs=procs)


def _warm(ctx: Context, prefix: str, ids: list[list[str]]) -> None:
    """One point from each ambulance, unmeasured: the runs meet a fleet the bridge knows.

    A region's fleet is known to the bridge nearly all the time; an ambulance
    seen for the first time costs more (its state is created), which ``bench
    plan`` measures on its own.
    """
    config, stack = ctx.config, ctx.pipeline()
    pubs = [
        ctx.child(
            f"publisher-warm-{p}",
            "bench.publish",
            {
                "port": stack.mqtt_port,
                "clients": 1,
                **_id_config(own),
                "name": f"warm{p}",
                "mode": "flood",
                "count": len(own),
                "window": config.window,
            },
        )
        for p, own in enumerate(ids)
    ]
    for pub in pubs:
        pub.wait_ready()
    already = ctx.stored(prefix)
    for pub in pubs:
        pub.send("go")
    acked = sum(int(pub.result(config.timeout)["acked"]) for pub in pubs)
    _drain(ctx, prefix, already + acked)
    for pub in pubs:
        pub.close()


def _pipeline_run(ctx: Context, number: int, prefix: str, ids: list[list[str]]) -> _Run:
    config, stack = ctx.config, ctx.pipeline()
    settle(stack, config.timeout)
    already = ctx.stored(prefix)  # the earlier runs' points of the same ambulances
    messages = config.messages // config.publishers * config.publishers
    rooms = _rooms(config, [aid for own in ids for aid in own])
    watchers = _watchers(ctx, stack.socketio_url, stack.app.token, prefix, rooms, latency=False)
    pubs = _publishers(
        ctx,
        stack.mqtt_port,
        ids,
        f"p{number}-",
        mode="flood",
        count=config.messages // config.publishers,
        window=config.window,
    )
    pids = _stack_pids(stack) | {f"publisher-{p}": c.pid for p, c in enumerate(pubs)}
    pids |= {f"socketio-watchers-{n}": w.pid for n, w in enumerate(watchers)}
    before = _metrics(stack)
    baseline = before.get(STORED_METRIC)
    watch = Watch(pids).start()
    started = time.time()
    for pub in pubs:
        pub.send("go")
    count = 0
    deadline = time.monotonic() + config.timeout
    while count < messages and time.monotonic() < deadline:
        time.sleep(0.05)
        count = _stored_since(ctx, stack, baseline, prefix, already)
    stored_s = time.time() - started
    procs = watch.stop()
    acked = sum(int(pub.result(config.timeout)["acked"]) for pub in pubs)
    truth = _drain(ctx, prefix, already + acked).stored - already
    settle(stack, config.timeout)  # every emit of the run is out
    dropped = _dropped(before, _metrics(stack))
    seen = _stop_all(watchers, config.timeout)
    delivered = None
    if config.watchers and truth:
        delivered = median([float(n) for n in seen[0]["per_client"][: config.watchers]]) / truth
    for pub in pubs:
        pub.close()
    return _Run(truth / stored_s, acked, max(acked - truth, 0), procs, delivered, dropped)


def _merge_procs(runs: list[_Run], prefix: str) -> list[ProcessFigures]:
    """Per process: the median CPU over runs, RSS of the first run's start and the last's end."""
    names = [p.name for p in runs[0].procs]
    merged = []
    for name in names:
        mine = [p for r in runs for p in r.procs if p.name == name]
        cpus = [p.cpu_percent for p in mine if p.cpu_percent is not None]
        merged.append(
            ProcessFigures(
                f"{prefix}{name}",
                median(cpus) if cpus else None,
                mine[0].rss_start_mib,
                median([p.rss_warm_mib for p in mine if p.rss_warm_mib]),
                mine[-1].rss_end_mib,
            )
        )
    return merged


def throughput(ctx: Context) -> StageResult:
    """Raw ceiling and full pipeline, alternating; medians and their ratio."""
    config = ctx.config
    result = StageResult("throughput")
    ceilings: list[_Run] = []
    pipelines: list[_Run] = []
    prefix = _prefix("P")
    ids = _split_ids(prefix, config.flood_ambulances, config.publishers)
    progress(f"warm-up: one point from each of {config.flood_ambulances} ambulances")
    _warm(ctx, prefix, ids)
    more: list[_Run] = []  # the ceiling with one more publisher process: are they the limit?
    for number in range(1, config.runs + 1):
        ceilings.append(_ceiling_run(ctx, number, config.publishers))
        more.append(_ceiling_run(ctx, number, config.publishers + 1))
        progress(
            f"run {number}: raw ceiling {ceilings[-1].rate:,.0f} msg/s received"
            f" ({more[-1].rate:,.0f} with {config.publishers + 1} publisher processes)"
        )
        pipelines.append(_pipeline_run(ctx, number, prefix, ids))
        run = pipelines[-1]
        progress(f"run {number}: pipeline {run.rate:,.0f} msg/s stored, lost {run.lost}")
    ceiling = median([r.rate for r in ceilings])
    result.row("raw ceiling: received", ceiling, "msg/s", runs=[r.rate for r in ceilings])
    result.row(
        f"raw ceiling with {config.publishers + 1} publisher processes",
        median([r.rate for r in more]),
        "msg/s",
        reference=ceiling,
        reference_label=f"with {config.publishers}",
        runs=[r.rate for r in more],
    )
    result.row(
        "pipeline: stored",
        median([r.rate for r in pipelines]),
        "msg/s",
        reference=ceiling,
        reference_label="raw ceiling",
        runs=[r.rate for r in pipelines],
    )
    delivered = [r.delivered for r in pipelines if r.delivered is not None]
    if delivered:
        result.row("Socket.IO tracking deliveries per stored point", median(delivered))
    dropped = [r.dropped for r in pipelines if r.dropped is not None]
    if dropped:
        result.row("Socket.IO sends dropped by the bridge (queue full)", median(dropped), "")
    result.lost = sum(r.lost for r in pipelines)
    result.processes = _merge_procs(ceilings, "ceiling: ") + _merge_procs(pipelines, "pipeline: ")
    result.notes.append(f"ceiling {_busiest(result.processes[: len(ceilings[0].procs)])}")
    result.notes.append(f"pipeline {_busiest(result.processes[len(ceilings[0].procs) :])}")
    result.notes.append(
        f"{config.runs} alternating run pairs of {config.messages} points; {config.publishers}"
        f" publisher processes x {config.clients} clients, window {config.window}, QoS 1,"
        f" over {config.flood_ambulances} ambulances (known: each sent one point before);"
        f" {config.watchers} Socket.IO client(s) in"
        f" room tracking and {config.room_watchers} in {config.rooms_each} ambulance rooms"
    )
    return result


# -- stage 2: latency at a paced rate ----------------------------------------


def _follow(
    ctx: Context,
    stack: Stack,
    pubs: list[Child],
    *,
    baseline: float | None,
    prefix: str,
    started: float,
    already: int = 0,
) -> list[tuple[float, int]]:
    """Until the publishers finish: (seconds, points due by now but not stored) each second."""
    config = ctx.config
    offered = config.ambulances * config.rate
    total = round(config.duration * config.rate) * config.ambulances
    backlog: list[tuple[float, int]] = []
    next_report = started + 5
    while any(pub.proc.poll() is None for pub in pubs):
        time.sleep(1.0 if config.duration > 5 else 0.2)
        elapsed = time.time() - started
        stored = _stored_since(ctx, stack, baseline, prefix, already)
        behind = int(min(elapsed * offered, total)) - stored
        backlog.append((round(elapsed, 2), behind))
        if time.time() >= next_report:
            next_report += 5
            progress(f"  {elapsed:5.1f}s stored {stored:,}  backlog {behind:,}")
        if elapsed >= config.duration:
            break
    return backlog


def _rate_rows(
    result: StageResult,
    *,
    offered: float,
    achieved: float,
    backlog: list[tuple[float, int]],
    drain: float,
    published: list[dict[str, Any]],
) -> None:
    result.row("offered", offered, "msg/s")
    result.row(
        "achieved (stored during the run)",
        achieved,
        "msg/s",
        reference=offered,
        reference_label="offered",
    )
    result.row("backlog at the end of publishing", backlog[-1][1] if backlog else None, "msgs")
    result.row("backlog max", max((b for _, b in backlog), default=None), "msgs")
    result.row("drain after publishing", drain, "s")
    behind = max(float(r.get("behind_max_s") or 0.0) for r in published) * 1000
    result.row("publishers: most behind schedule", behind, "ms")


def _delivery_row(
    result: StageResult,
    config: Config,
    seen: list[dict[str, Any]],
    rooms: list[list[str]],
    truth: int,
) -> None:
    """Socket.IO deliveries against those due: every point to room tracking, a room's to it."""
    points = round(config.duration * config.rate)
    expected = config.watchers * truth + sum(len(r) for r in rooms[config.watchers :]) * points
    received = sum(int(got["received"]) for got in seen)
    result.row("Socket.IO deliveries", received, "", reference=expected, reference_label="expected")


def latency(ctx: Context) -> StageResult:
    """``ambulances`` x ``rate`` Hz, paced: latencies, achieved rate, backlog, CPU, memory."""
    config, stack = ctx.config, ctx.pipeline()
    result = StageResult("latency")
    prefix = _prefix("L")
    ids = _split_ids(prefix, config.ambulances, config.publishers)
    rooms = _rooms(config, [aid for own in ids for aid in own])
    progress(f"warm-up: one point from each of {config.ambulances} ambulances")
    _warm(ctx, prefix, ids)
    already = ctx.stored(prefix)
    settle(stack, config.timeout)
    watchers = _watchers(ctx, stack.socketio_url, stack.app.token, prefix, rooms, latency=True)
    pubs = _publishers(
        ctx, stack.mqtt_port, ids, "l", mode="paced", rate=config.rate, duration=config.duration
    )
    offered = config.ambulances * config.rate
    pids = _stack_pids(stack) | {f"publisher-{p}": c.pid for p, c in enumerate(pubs)}
    pids |= {f"socketio-watchers-{n}": w.pid for n, w in enumerate(watchers)}
    before = _metrics(stack)
    baseline = before.get(STORED_METRIC)
    observer = StoreObserver(stack.store_path, prefix) if not config.store_url else None
    progress(
        f"latency: {config.ambulances} ambulances x {config.rate:g} Hz for"
        f" {config.duration:g}s ({offered:,.0f} msg/s offered)"
    )
    with observer or contextlib.nullcontext():
        watch = Watch(pids).start()
        started = time.time()
        for pub in pubs:
            pub.send("go")
        backlog = _follow(
            ctx, stack, pubs, baseline=baseline, prefix=prefix, started=started, already=already
        )
        window = time.time() - started
        stored_in_window = _stored_since(ctx, stack, baseline, prefix, already)
        procs = watch.stop()
        published = [pub.result(config.timeout) for pub in pubs]
        acked = sum(int(r["acked"]) for r in published)
        drained = _drain(ctx, prefix, already + acked)
        truth, drain = drained.stored - already, drained.seconds
        if not drained.still_draining:
            settle(stack, config.timeout)  # the last emits and rows
    seen = _stop_all(watchers, config.timeout)
    for pub in pubs:
        pub.close()
    _rate_rows(
        result,
        offered=offered,
        achieved=stored_in_window / window,
        backlog=backlog,
        drain=drain,
        published=published,
    )
    _latency_rows(result, "publish -> Socket.IO", [v for got in seen for v in got["latencies"]])
    _latency_rows(result, "publish -> stored", observer.latencies if observer else [])
    serve = next((p for p in procs if p.name == stack.app.name), None)
    result.row("aoc serve CPU", serve.cpu_percent if serve else None, "% core")
    _delivery_row(result, config, seen, rooms, truth)
    result.row(
        "Socket.IO sends dropped by the bridge (queue full)", _dropped(before, _metrics(stack))
    )
    result.lost = max(acked - truth, 0)
    if drained.still_draining:  # not lost: the pipeline was still storing them
        result.row("acknowledged, still being stored when the wait ended", result.lost, "msgs")
        result.lost = None
    result.processes = procs
    result.series["backlog"] = backlog
    result.notes += [
        f"{config.ambulances} ambulances x {config.rate:g} Hz for {config.duration:g}s from"
        f" {config.publishers} publisher processes; acked {acked}, stored {truth}",
        _busiest(procs),
    ]
    return result


# -- stage 3: the legacy HTTP shim -------------------------------------------


def shim(ctx: Context) -> StageResult:
    """Legacy tracking POSTs: ours (through to storage) next to the Node reference."""
    config, stack = ctx.config, ctx.pipeline()
    result = StageResult("shim")
    prefix = _prefix("S")
    ids = str(max(100, config.shim_requests // 5))
    argv = [str(JS / "post_load.mjs")]
    load_args = [str(config.shim_requests), str(config.shim_connections), prefix, ids]
    settle(stack, config.timeout)
    progress(f"shim: {config.shim_requests} POSTs to aoc serve ...")
    watch = Watch(_stack_pids(stack)).start()
    ours = ctx.node("autocannon-ours", [*argv, stack.http_url, *load_args]).result(config.timeout)
    procs = watch.stop()
    ok = int(ours["ok"])
    truth = _drain(ctx, prefix, ok).stored
    stored_s = time.time() - float(ours["first"]) / 1000  # first request -> all stored
    http_port, io_port = services.free_port(), services.free_port()
    progress(f"shim: {config.shim_requests} POSTs to the Node reference ...")
    ref = ctx.node(
        "legacy-reference", [str(JS / "legacy_reference.mjs"), str(http_port), str(io_port)]
    )
    ref.wait_ready()
    ref_watch = Watch({"node-reference": ref.pid}).start()
    url = f"http://127.0.0.1:{http_port}"
    node = ctx.node("autocannon-ref", [*argv, url, *load_args]).result(config.timeout)
    procs += ref_watch.stop()
    ref.send("stop")
    ref.result(config.timeout)
    node_rate = int(node["ok"]) / max(float(node["seconds"]), 1e-3)
    result.row(
        "ours: requests answered 2xx",
        ok / max(float(ours["seconds"]), 1e-3),
        "req/s",
        reference=node_rate,
        reference_label="Node reference",
    )
    result.row(
        "ours: stored",
        truth / stored_s,
        "msg/s",
        reference=node_rate,
        reference_label="Node reference req/s",
    )
    result.row("ours: not answered 2xx", int(ours["requests"]) - ok, "requests")
    result.row(
        "Node reference: not answered 2xx", int(node["requests"]) - int(node["ok"]), "requests"
    )
    result.lost = max(ok - truth, 0)
    result.processes = procs
    result.notes.append(
        f"{config.shim_requests} JSON POSTs each, {config.shim_connections} autocannon"
        f" connections, {ids} ambulance ids; the Node reference is Express + socket.io with no"
        " database (tests/js/legacy_reference.mjs); no Socket.IO client is connected to either"
    )
    return result


# -- stage 4: Socket.IO fan-out ---------------------------------------------


def _fanout_side(
    ctx: Context, url: str, token: str | None, prefix: str, go: Callable[[], float]
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """Watchers on ``url``; ``go`` sends the events and returns once they were all emitted."""
    config = ctx.config
    rooms = [["tracking"]] * config.fanout_clients
    watchers = _watchers(
        ctx, url, token, prefix, rooms, latency=True, processes=config.fanout_processes, tag=prefix
    )
    go()  # returns once everything was emitted
    time.sleep(0.5)  # on its way to the clients
    seen = _stop_all(watchers, config.timeout)
    firsts = [got["first"] for got in seen if got["first"]]
    lasts = [got["last"] for got in seen if got["last"]]
    received = sum(int(got["received"]) for got in seen)
    span = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    figures = {
        "rate": received / span if span > 0 else None,
        "received": received,
        "p99": _pcts([v for got in seen for v in got["latencies"]])[2],
    }
    return figures, seen


def fanout(ctx: Context) -> StageResult:
    """Deliveries/s to many clients in room tracking: ours against stock python-socketio."""
    config, stack = ctx.config, ctx.pipeline()
    result = StageResult("fanout")
    ambulances = 100 if config.fanout_rate >= 100 else max(1, int(config.fanout_rate))
    per_ambulance = config.fanout_rate / ambulances
    events = round(config.fanout_duration * per_ambulance) * ambulances
    progress(
        f"fanout: {config.fanout_clients} clients, {config.fanout_rate:g} events/s,"
        f" through aoc serve ..."
    )
    prefix = _prefix("F")
    ids = _split_ids(prefix, ambulances, config.publishers)
    acked = 0
    procs: list[ProcessFigures] = []

    def ours_go() -> float:
        nonlocal acked, procs
        pubs = _publishers(
            ctx,
            stack.mqtt_port,
            ids,
            "f",
            mode="paced",
            rate=per_ambulance,
            duration=config.fanout_duration,
        )
        watch = Watch(_stack_pids(stack)).start()
        for pub in pubs:
            pub.send("go")
        acked = sum(int(pub.result(config.timeout)["acked"]) for pub in pubs)
        procs += watch.stop()
        for pub in pubs:
            pub.close()
        _drain(ctx, prefix, acked)
        settle(stack, config.timeout)
        return time.time()

    settle(stack, config.timeout)
    before = _metrics(stack)
    ours, _ = _fanout_side(ctx, stack.socketio_url, stack.app.token, prefix, ours_go)
    dropped = _dropped(before, _metrics(stack))
    truth = ctx.stored(prefix)
    progress("fanout: the same through a stock python-socketio server ...")
    ref_prefix = _prefix("R")
    port = services.free_port()
    ref = ctx.child(
        "refserver",
        "bench.refserver",
        {
            "port": port,
            "ambulances": ambulances,
            "rate": config.fanout_rate,
            "duration": config.fanout_duration,
            "prefix": ref_prefix,
        },
    )
    ref.wait_ready()

    def ref_go() -> float:
        nonlocal procs
        watch = Watch({"python-socketio reference": ref.pid}).start()
        ref.send("go")
        ref.result(config.timeout)
        procs += watch.stop()
        time.sleep(1.0)  # what the server still has queued (no probe for a stock server)
        return time.time()

    stock, _ = _fanout_side(ctx, f"http://127.0.0.1:{port}", None, ref_prefix, ref_go)
    ref.close()
    result.row(
        "ours: deliveries",
        ours["rate"],
        "/s",
        reference=stock["rate"],
        reference_label="stock python-socketio",
    )
    result.row(
        "ours: deliveries received",
        ours["received"],
        "",
        reference=truth * config.fanout_clients,
        reference_label="expected",
    )
    result.row(
        "stock: deliveries received",
        stock["received"],
        "",
        reference=events * config.fanout_clients,
        reference_label="expected",
    )
    result.row(
        "ours: publish -> Socket.IO p99",
        ours["p99"],
        "ms",
        reference=stock["p99"],
        reference_label="stock emit -> receipt",
    )
    result.row("ours: Socket.IO sends dropped by the bridge (queue full)", dropped)
    result.lost = max(acked - truth, 0)
    result.processes = procs
    result.notes.append(
        f"{config.fanout_clients} clients in room tracking over {config.fanout_processes}"
        f" processes; {config.fanout_rate:g} events/s over {ambulances} ambulances for"
        f" {config.fanout_duration:g}s on each server; ours from MQTT through aoc serve"
    )
    return result


STAGES: dict[str, Callable[[Context], StageResult]] = {
    "throughput": throughput,
    "latency": latency,
    "shim": shim,
    "fanout": fanout,
}
