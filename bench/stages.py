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
  read once the store holds them all or has not grown for ``rig.STALL``
  seconds (``rig.drain``). It must be 0. A backlog still being stored when
  ``--drain-timeout`` ends the wait is reported as such, not as lost.
- **Known ambulances.** Throughput and latency runs first send one unmeasured
  point per ambulance, so they meet a fleet the bridge knows (first sight
  costs more: ``bench plan`` measures it), and every measurement starts once
  the fan-out has sent what an earlier one left queued (``rig.settle``).
- **publish -> Socket.IO** is, per delivered ``data`` event, the watcher's
  wall clock minus the point's ``ts`` (the publisher's wall clock at the
  publish, in whole milliseconds: a figure may read up to 1 ms high).
- **publish -> stored** is the time a point's row became visible in the
  SQLite store minus its ``ts``, seen by an observer thread that reads the
  new rows (``rowid`` order) every ``rig.STORE_POLL`` seconds: a figure may read
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import coalesce, rig
from bench.children import Child
from bench.procstat import ProcessFigures, Watch
from bench.stack import Stack
from bench.stats import median
from bench.suite import Config, StageResult, progress
from tests import services

# -- stage 1: throughput ----------------------------------------------------


@dataclass
class _Run:
    rate: float
    acked: int
    lost: int = 0
    procs: list[ProcessFigures] = field(default_factory=list)
    delivered: float | None = None  # Socket.IO deliveries per stored point (tracking room)
    dropped: float | None = None  # Socket.IO sends the bridge dropped (fan-out queue full)


def _ceiling_run(ctx: rig.Context, number: int, publishers: int) -> _Run:
    config, broker = ctx.config, ctx.ceiling()
    prefix = rig.new_prefix("C")
    messages = config.messages // publishers * publishers
    sink = ctx.child(
        f"sink-{number}",
        "bench.sink",
        {"port": broker.port, "client_id": f"bench-sink-{prefix}", "expect": messages},
    )
    sink.wait_ready()
    ids = rig.split_ids(prefix, config.flood_ambulances, publishers)
    pubs = rig.publishers(
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


def _warm(ctx: rig.Context, prefix: str, ids: list[list[str]]) -> None:
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
                **rig.id_config(own),
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
    rig.drain(ctx, prefix, already + acked)
    for pub in pubs:
        pub.close()


def _pipeline_run(ctx: rig.Context, number: int, prefix: str, ids: list[list[str]]) -> _Run:
    config, stack = ctx.config, ctx.pipeline()
    rig.settle(stack, config.timeout)
    already = ctx.stored(prefix)  # the earlier runs' points of the same ambulances
    messages = config.messages // config.publishers * config.publishers
    rooms = rig.rooms_of(config, [aid for own in ids for aid in own])
    watchers = rig.watchers(ctx, stack.socketio_url, stack.app.token, prefix, rooms, latency=False)
    pubs = rig.publishers(
        ctx,
        stack.mqtt_port,
        ids,
        f"p{number}-",
        mode="flood",
        count=config.messages // config.publishers,
        window=config.window,
    )
    pids = rig.stack_pids(stack) | {f"publisher-{p}": c.pid for p, c in enumerate(pubs)}
    pids |= {f"socketio-watchers-{n}": w.pid for n, w in enumerate(watchers)}
    before = rig.metrics(stack)
    baseline = before.get(rig.STORED_METRIC)
    watch = Watch(pids).start()
    started = time.time()
    for pub in pubs:
        pub.send("go")
    count = 0
    deadline = time.monotonic() + config.timeout
    while count < messages and time.monotonic() < deadline:
        time.sleep(0.05)
        count = rig.stored_since(ctx, stack, baseline, prefix, already)
    stored_s = time.time() - started
    procs = watch.stop()
    acked = sum(int(pub.result(config.timeout)["acked"]) for pub in pubs)
    truth = rig.drain(ctx, prefix, already + acked).stored - already
    rig.settle(stack, config.timeout)  # every emit of the run is out
    dropped = rig.dropped(before, rig.metrics(stack))
    seen = rig.stop_all(watchers, config.timeout)
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


def throughput(ctx: rig.Context) -> StageResult:
    """Raw ceiling and full pipeline, alternating; medians and their ratio."""
    config = ctx.config
    result = StageResult("throughput")
    ceilings: list[_Run] = []
    pipelines: list[_Run] = []
    prefix = rig.new_prefix("P")
    ids = rig.split_ids(prefix, config.flood_ambulances, config.publishers)
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
    result.notes.append(f"ceiling {rig.busiest(result.processes[: len(ceilings[0].procs)])}")
    result.notes.append(f"pipeline {rig.busiest(result.processes[len(ceilings[0].procs) :])}")
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
    ctx: rig.Context,
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
        stored = rig.stored_since(ctx, stack, baseline, prefix, already)
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


def latency(ctx: rig.Context) -> StageResult:
    """``ambulances`` x ``rate`` Hz, paced: latencies, achieved rate, backlog, CPU, memory."""
    config, stack = ctx.config, ctx.pipeline()
    result = StageResult("latency")
    prefix = rig.new_prefix("L")
    ids = rig.split_ids(prefix, config.ambulances, config.publishers)
    rooms = rig.rooms_of(config, [aid for own in ids for aid in own])
    progress(f"warm-up: one point from each of {config.ambulances} ambulances")
    _warm(ctx, prefix, ids)
    already = ctx.stored(prefix)
    rig.settle(stack, config.timeout)
    watchers = rig.watchers(ctx, stack.socketio_url, stack.app.token, prefix, rooms, latency=True)
    pubs = rig.publishers(
        ctx, stack.mqtt_port, ids, "l", mode="paced", rate=config.rate, duration=config.duration
    )
    offered = config.ambulances * config.rate
    pids = rig.stack_pids(stack) | {f"publisher-{p}": c.pid for p, c in enumerate(pubs)}
    pids |= {f"socketio-watchers-{n}": w.pid for n, w in enumerate(watchers)}
    before = rig.metrics(stack)
    baseline = before.get(rig.STORED_METRIC)
    observer = rig.StoreObserver(stack.store_path, prefix) if not config.store_url else None
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
        stored_in_window = rig.stored_since(ctx, stack, baseline, prefix, already)
        procs = watch.stop()
        published = [pub.result(config.timeout) for pub in pubs]
        acked = sum(int(r["acked"]) for r in published)
        drained = rig.drain(ctx, prefix, already + acked)
        truth, drain = drained.stored - already, drained.seconds
        if not drained.still_draining:
            rig.settle(stack, config.timeout)  # the last emits and rows
    seen = rig.stop_all(watchers, config.timeout)
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
    rig.latency_rows(result, "publish -> Socket.IO", [v for got in seen for v in got["latencies"]])
    rig.latency_rows(result, "publish -> stored", observer.latencies if observer else [])
    serve = next((p for p in procs if p.name == stack.app.name), None)
    result.row("aoc serve CPU", serve.cpu_percent if serve else None, "% core")
    _delivery_row(result, config, seen, rooms, truth)
    result.row(
        "Socket.IO sends dropped by the bridge (queue full)",
        rig.dropped(before, rig.metrics(stack)),
    )
    result.lost = max(acked - truth, 0)
    if drained.still_draining:  # not lost: the pipeline was still storing them
        result.row("acknowledged, still being stored when the wait ended", result.lost, "msgs")
        result.undetermined = (
            f"{result.lost} acknowledged points still being stored when --drain-timeout"
            f" ({config.drain_timeout:g}s) ended"
        )
        result.lost = None
    result.processes = procs
    result.series["backlog"] = backlog
    result.notes += [
        f"{config.ambulances} ambulances x {config.rate:g} Hz for {config.duration:g}s from"
        f" {config.publishers} publisher processes; acked {acked}, stored {truth}",
        rig.busiest(procs),
    ]
    return result


# -- stage 3: the legacy HTTP shim -------------------------------------------


def shim(ctx: rig.Context) -> StageResult:
    """Legacy tracking POSTs: ours (through to storage) next to the Node reference."""
    config, stack = ctx.config, ctx.pipeline()
    result = StageResult("shim")
    prefix = rig.new_prefix("S")
    ids = str(max(100, config.shim_requests // 5))
    argv = [str(rig.JS / "post_load.mjs")]
    load_args = [str(config.shim_requests), str(config.shim_connections), prefix, ids]
    rig.settle(stack, config.timeout)
    progress(f"shim: {config.shim_requests} POSTs to aoc serve ...")
    watch = Watch(rig.stack_pids(stack)).start()
    ours = ctx.node("autocannon-ours", [*argv, stack.http_url, *load_args]).result(config.timeout)
    procs = watch.stop()
    ok = int(ours["ok"])
    truth = rig.drain(ctx, prefix, ok).stored
    stored_s = time.time() - float(ours["first"]) / 1000  # first request -> all stored
    http_port, io_port = services.free_port(), services.free_port()
    progress(f"shim: {config.shim_requests} POSTs to the Node reference ...")
    ref = ctx.node(
        "legacy-reference", [str(rig.JS / "legacy_reference.mjs"), str(http_port), str(io_port)]
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
    ctx: rig.Context,
    url: str,
    token: str | None,
    prefix: str,
    go: Callable[[], object],
    *,
    pids: dict[str, int],
    label: str,
) -> tuple[dict[str, float | None], list[ProcessFigures]]:
    """Watchers on ``url``; ``go`` sends the events and returns once they were all emitted.

    The watchers' own CPU is in the process figures: if they, not the server,
    are saturated, the deliveries per second are theirs.
    """
    config = ctx.config
    rooms = [["tracking"]] * config.fanout_clients
    watchers = rig.watchers(
        ctx, url, token, prefix, rooms, latency=True, processes=config.fanout_processes, tag=prefix
    )
    pids = pids | {f"socketio-watchers-{n}": w.pid for n, w in enumerate(watchers)}
    watch = Watch({f"{label}: {name}": pid for name, pid in pids.items()}).start()
    go()  # returns once everything was emitted
    time.sleep(0.5)  # on its way to the clients
    procs = watch.stop()
    seen = rig.stop_all(watchers, config.timeout)
    firsts = [got["first"] for got in seen if got["first"]]
    lasts = [got["last"] for got in seen if got["last"]]
    received = sum(int(got["received"]) for got in seen)
    span = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    figures = {
        "rate": received / span if span > 0 else None,
        "received": received,
        "p99": rig.percentiles_ms([v for got in seen for v in got["latencies"]])[2],
    }
    return figures, procs


def fanout(ctx: rig.Context) -> StageResult:
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
    prefix = rig.new_prefix("F")
    ids = rig.split_ids(prefix, ambulances, config.publishers)
    acked = 0

    def ours_go() -> None:
        nonlocal acked
        pubs = rig.publishers(
            ctx,
            stack.mqtt_port,
            ids,
            "f",
            mode="paced",
            rate=per_ambulance,
            duration=config.fanout_duration,
        )
        for pub in pubs:
            pub.send("go")
        acked = sum(int(pub.result(config.timeout)["acked"]) for pub in pubs)
        for pub in pubs:
            pub.close()
        rig.drain(ctx, prefix, acked)
        rig.settle(stack, config.timeout)

    rig.settle(stack, config.timeout)
    before = rig.metrics(stack)
    ours, procs = _fanout_side(
        ctx,
        stack.socketio_url,
        stack.app.token,
        prefix,
        ours_go,
        pids=rig.stack_pids(stack),
        label="ours",
    )
    dropped = rig.dropped(before, rig.metrics(stack))
    truth = ctx.stored(prefix)
    progress("fanout: the same through a stock python-socketio server ...")
    ref_prefix = rig.new_prefix("R")
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

    def ref_go() -> None:
        ref.send("go")
        ref.result(config.timeout)
        time.sleep(1.0)  # what the server still has queued (no probe for a stock server)

    stock, stock_procs = _fanout_side(
        ctx,
        f"http://127.0.0.1:{port}",
        None,
        ref_prefix,
        ref_go,
        pids={"python-socketio server": ref.pid},
        label="stock",
    )
    procs += stock_procs
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


def live(ctx: rig.Context) -> StageResult:
    """The coalesced live stream to many Node clients: through ``aoc serve``, then fed alone."""
    config = ctx.config
    result = StageResult("live")
    result.lost = 0
    for process in ("serve", "feed"):
        figures = coalesce.run(
            ambulances=config.live_ambulances,
            clients=config.live_clients,
            client_processes=config.live_processes,
            duration=config.live_duration,
            warmup=1.0 if config.smoke else 5.0,
            process=process,
            node=True,
            progress=progress,
        )
        where = "aoc serve" if process == "serve" else "fan-out alone"
        stale = figures["staleness_device_ms"]
        result.row(f"{where}: clients complete", figures["complete_clients"], "clients",
                   reference=figures["clients"], reference_label="clients")
        result.row(f"{where}: points missing", figures["missing_points"], "points")
        result.row(f"{where}: final states wrong", figures["final_state_wrong"], "states")
        for pct in ("p50", "p95", "p99"):
            result.row(f"{where}: staleness {pct}", stale[pct], "ms")
        result.row(f"{where}: events per client", figures["events_per_client_per_s"], "/s")
        result.processes.extend(
            ProcessFigures(f"{where}: {name}", cpu, None, None, None)
            for name, cpu in figures["cpu_percent"].items()
        )
        # A state the stream never brought is data a dispatcher never saw.
        result.lost += figures["final_state_wrong"]
    result.notes.append(
        f"{config.live_ambulances} ambulances at 1 Hz to {config.live_clients} stock"
        f" socket.io-client clients in {config.live_processes} Node processes,"
        f" {config.live_duration:g}s each; staleness = receipt minus the device's ts;"
        " 'points missing' counts points merged into a later state of the same ambulance"
        " (an interval that stretched), 'final states wrong' a client whose last state"
        " of an ambulance is not the last one published"
    )
    return result


STAGES: dict[str, Callable[[rig.Context], StageResult]] = {
    "throughput": throughput,
    "latency": latency,
    "shim": shim,
    "fanout": fanout,
    "live": live,
}
