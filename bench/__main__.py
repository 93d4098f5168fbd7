"""``python -m bench <command>``: run from the repository root (``--help`` lists them)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from aoc.config import Settings
from bench import coalesce, late, plan, share, stack
from bench.dashboard import dashboard
from bench.flood import flood
from bench.junk import junk
from bench.latency import latency
from bench.limits import fleet, slow, upload
from bench.soak import soak
from bench.throughput import throughput
from tests import services


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks against real Mosquitto, Redis and aoc processes on free ports.",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep logs and data in this directory"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_load(commands)
    _add_latency_and_memory(commands)
    _add_limits(commands)
    _add_coalesce(commands)
    return parser


def _add_load(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tp = commands.add_parser("throughput", help="stored messages per second, end to end")
    tp.add_argument("--devices", type=int, default=10, help="MQTT clients publishing at once")
    tp.add_argument("--messages", type=int, default=5000, help="tracking points per run, in all")
    tp.add_argument("--runs", type=int, default=5, help="runs (the median is printed)")
    tp.add_argument("--batch-size", type=int, default=None, help="AOC_BATCH_SIZE of the bridge")
    tp.add_argument("--window", type=int, default=50, help="unacknowledged publishes per device")
    tp.add_argument(
        "--process",
        choices=("serve", "bridge"),
        default="serve",
        help="consume with `aoc serve` or `aoc bridge` alone",
    )
    tp.add_argument(
        "--bridges",
        type=int,
        default=1,
        help="consuming processes on one MQTT share group: --process and N-1 `aoc bridge`",
    )
    tp.add_argument("--timeout", type=float, default=300.0, help="seconds a run may take")
    tp.add_argument(
        "--ambulances",
        type=int,
        default=None,
        help="spread each run's points over this many ambulance ids (default: one per device)",
    )
    tp.add_argument(
        "--same-ids",
        action="store_true",
        help="every run uses the same ids: the first meets them new, the later ones known",
    )

    pl = commands.add_parser(
        "plan", help="processor + SQLite alone: points from new ids against known ids"
    )
    pl.add_argument("--ambulances", type=int, default=20000, help="distinct ambulance ids")
    pl.add_argument("--messages", type=int, default=20000, help="tracking points per half-run")
    pl.add_argument("--runs", type=int, default=5, help="runs (medians are printed)")
    pl.add_argument("--batch-size", type=int, default=200, help="points per batch")

    lt = commands.add_parser(
        "late", help="processor + SQLite alone: a stream with late points against it in order"
    )
    lt.add_argument("--ambulances", type=int, default=200, help="distinct ambulance ids")
    lt.add_argument("--messages", type=int, default=20000, help="tracking points per stream")
    lt.add_argument("--every", type=int, default=5, help="every N-th point of each comes late")
    lt.add_argument("--runs", type=int, default=5, help="runs (medians are printed)")
    lt.add_argument("--batch-size", type=int, default=200, help="points per batch")

    sh = commands.add_parser(
        "share", help="two processors sharing one ambulance's stream against one processor"
    )
    sh.add_argument("--points", type=int, default=5000, help="messages of the stream")
    sh.add_argument("--batch-size", type=int, default=20, help="largest batch (1 to this)")
    sh.add_argument("--seed", type=int, default=1, help="of the speeds, batches and order")

    jk = commands.add_parser(
        "junk", help="a flood of invalid payloads: disk growth, log lines, good points kept"
    )
    jk.add_argument("--messages", type=int, default=20000, help="invalid payloads, in all")
    jk.add_argument("--publishers", type=int, default=4, help="publisher processes")
    jk.add_argument("--size", type=int, default=4096, help="bytes per invalid payload")
    jk.add_argument("--good", type=int, default=200, help="good points published in between")
    jk.add_argument("--window", type=int, default=50, help="unacknowledged publishes per process")
    jk.add_argument("--timeout", type=float, default=300.0, help="seconds the flood may take")


def _add_latency_and_memory(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lat = commands.add_parser("latency", help="publish -> Socket.IO and MQTT state, percentiles")
    lat.add_argument("--devices", type=int, default=10, help="ambulances, round robin")
    lat.add_argument("--rate", type=float, default=50.0, help="points per second, in all")
    lat.add_argument("--duration", type=float, default=30.0, help="seconds of publishing")
    lat.add_argument("--batch-size", type=int, default=None, help="AOC_BATCH_SIZE of the bridge")
    lat.add_argument("--runs", type=int, default=1, help="runs (medians are printed)")
    lat.add_argument(
        "--snap-publishers",
        type=int,
        default=0,
        help="also measure while this many processes send maximum-size snapshots",
    )
    lat.add_argument(
        "--snap-interval",
        type=float,
        default=0.0,
        help="seconds between one publisher's snapshots (0: back to back, a flood)",
    )

    fl = commands.add_parser("flood", help="peak memory of broker and bridge, oversized input")
    fl.add_argument("scenario", choices=("tracking", "snapshots"))
    fl.add_argument("--count", type=int, default=None, help="payloads (10 tracking, 6 snapshots)")
    fl.add_argument("--size", type=int, default=50_000_000, help="bytes per tracking payload")

    db = commands.add_parser(
        "dashboard", help="the dashboard in headless Chromium under a fleet's updates"
    )
    db.add_argument("--ambulances", type=int, default=5000, help="each updated once a second")
    db.add_argument("--seconds", type=float, default=20.0, help="of updates per run")
    db.add_argument("--runs", type=int, default=3, help="runs (medians are printed)")

    soak = commands.add_parser("soak", help="`aoc simulate` for a while; memory of each process")
    soak.add_argument("--ambulances", type=int, default=50)
    soak.add_argument("--rate", type=float, default=1.0, help="points per second per ambulance")
    soak.add_argument("--duration", type=float, default=300.0, help="seconds")
    soak.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    soak.add_argument(
        "--tolerance",
        type=float,
        default=10.0,
        help="growth after warm-up, in percent, still called flat (printed with the verdict)",
    )


def _add_limits(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lim = commands.add_parser("limits", help="what one heavy HTTP client costs everyone else")
    lim.add_argument("scenario", choices=("upload", "slow", "fleet"))
    lim.add_argument("--runs", type=int, default=5, help="runs (medians are printed)")
    lim.add_argument("--files", type=int, default=10, help="upload: files per upload")
    lim.add_argument("--size-mb", type=float, default=5.0, help="upload: MB per file")
    lim.add_argument("--connections", type=int, default=200, help="slow: unfinished POSTs")
    lim.add_argument("--cap", type=float, default=90.0, help="slow: seconds to watch them")
    lim.add_argument("--ambulances", type=int, default=20000, help="fleet: its size")
    lim.add_argument("--source", choices=("cache", "store"), default="cache",
                     help="fleet: store = aoc serve with an unreachable Redis")
    lim.add_argument("--aoc-pythonpath", default=None,
                     help="run the aoc process from this checkout (e.g. the code before a change)")
    lim.add_argument("--env", action="append", default=[], metavar="AOC_X=V",
                     help="an extra setting of the aoc process (repeatable)")


def _add_coalesce(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    co = commands.add_parser(
        "coalesce", help="the live stream: a fleet at 1 Hz to many clients, staleness, completeness"
    )
    co.add_argument("--ambulances", type=int, default=1000)
    co.add_argument("--rate", type=float, default=1.0, help="points per second per ambulance")
    co.add_argument("--clients", type=int, default=200, help="live-stream clients, in all")
    co.add_argument("--client-processes", type=int, default=4)
    co.add_argument("--publishers", type=int, default=2, help="publisher processes")
    co.add_argument("--duration", type=float, default=30.0, help="seconds of publishing")
    co.add_argument("--warmup", type=float, default=5.0, help="first seconds not measured")
    co.add_argument("--interval-ms", type=int, default=100, help="AOC_LIVE_INTERVAL_MS")
    co.add_argument("--process", choices=("serve", "split", "feed"), default="serve",
                    help="aoc serve; aoc bridge + aoc realtime through Redis; or feed: aoc"
                    " realtime alone, fed through Redis as a bridge does (the fan-out alone)")
    co.add_argument("--selection", action="store_true",
                    help="clients subscribe to the ids by name, not to the fleet")
    co.add_argument("--node", action="store_true",
                    help="clients are the stock socket.io-client in Node (tests/js), not Python")
    co.add_argument("--legacy", action="store_true",
                    help="then compare the legacy tracking room's emit path with stock")
    co.add_argument("--legacy-events", type=int, default=1000, help="events per legacy run")
    co.add_argument("--legacy-runs", type=int, default=3, help="runs per server (medians)")
    co.add_argument("--legacy-only", action="store_true", help="only the legacy comparison")
    co.add_argument("--json", type=Path, default=None, help="also write the figures here")


def _coalesce(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {}
    if not args.legacy_only:
        figures["live"] = coalesce.run(
            ambulances=args.ambulances, rate=args.rate, clients=args.clients,
            client_processes=args.client_processes, publishers=args.publishers,
            duration=args.duration, warmup=args.warmup, interval_ms=args.interval_ms,
            process=args.process, selection=args.selection, node=args.node, keep=args.keep,
        )
        print(coalesce.report(figures["live"]), flush=True)
    if args.legacy or args.legacy_only:
        figures["legacy"] = coalesce.legacy_emit(
            clients=args.clients, client_processes=args.client_processes,
            events=args.legacy_events, runs=args.legacy_runs,
        )
        legacy = figures["legacy"]
        print(
            f"legacy room tracking, {legacy['clients']} clients, median of {legacy['runs']}:"
            f" aoc {legacy['deliveries_per_s']['aoc']:,} deliveries/s, stock python-socketio"
            f" {legacy['deliveries_per_s']['stock']:,}: ratio {legacy['ratio_aoc_to_stock']}",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    live = figures.get("live")
    return 1 if live is not None and live["missing_points"] else 0


def _limits(args: argparse.Namespace, running: stack.Stack) -> None:
    if args.scenario == "upload":
        size = int(args.size_mb * 2**20)
        asyncio.run(upload(running, runs=args.runs, files=args.files, size=size))
    elif args.scenario == "slow":
        asyncio.run(slow(running, connections=args.connections, cap=args.cap))
    else:
        cache = args.source == "cache"
        asyncio.run(fleet(running, runs=args.runs, count=args.ambulances, cache=cache))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start the stack, run one benchmark, print its figures."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "plan":
        plan.run(
            ambulances=args.ambulances,
            messages=args.messages,
            runs=args.runs,
            batch_size=args.batch_size,
        )
        return 0
    if args.command == "coalesce":
        return _coalesce(args)
    if args.command == "late":
        late.run(
            ambulances=args.ambulances,
            messages=args.messages,
            every=args.every,
            runs=args.runs,
            batch_size=args.batch_size,
        )
        return 0
    if args.command == "share":
        return 0 if share.run(points=args.points, batch_size=args.batch_size, seed=args.seed) else 1
    env: dict[str, str] = {}
    if getattr(args, "batch_size", None):
        env["AOC_BATCH_SIZE"] = str(args.batch_size)
    command = getattr(args, "process", "serve")
    if args.command == "throughput" and "AOC_DEVICE_BURST" not in os.environ:
        # Its devices send as fast as the broker acknowledges: far over any
        # device's rate (AOC_DEVICE_RATE). It measures the pipeline, so the
        # burst holds every message of every run (export it to bench the limit).
        env["AOC_DEVICE_BURST"] = str(max(args.messages * args.runs, 1))
    if args.command == "limits":
        if args.aoc_pythonpath:
            env["PYTHONPATH"] = args.aoc_pythonpath
        if args.scenario == "fleet" and args.source == "store":
            env["AOC_REDIS_URL"] = f"redis://127.0.0.1:{services.free_port()}/0"
        env.update(item.split("=", 1) for item in args.env)
    print(f"starting mosquitto, redis and aoc {command} ...", flush=True)
    bridges = getattr(args, "bridges", 1)
    if bridges > 1:
        print(f"  and {bridges - 1} more `aoc bridge` on one share group", flush=True)
    with stack.running(command=command, env=env, keep=args.keep, bridges=bridges) as running:
        print(
            f"  mqtt :{running.mqtt_port}  redis :{running.redis.port}"
            f"  batch size {env.get('AOC_BATCH_SIZE', 'default')}  files {running.workdir}",
            flush=True,
        )
        if "AOC_DEVICE_BURST" in env:
            print(f"  per-ambulance burst raised to {env['AOC_DEVICE_BURST']}", flush=True)
        return _run(args, running)


def _run(args: argparse.Namespace, running: stack.Stack) -> int:
    """Run the benchmark ``args`` names against ``running``; 1 if it failed its verdict."""
    if args.command == "limits":
        _limits(args, running)
        return 0
    if args.command == "dashboard":
        dashboard(running, ambulances=args.ambulances, seconds=args.seconds, runs=args.runs)
        return 0
    settings = Settings()
    jobs: dict[str, Callable[[], Coroutine[Any, Any, object]]] = {
        "throughput": lambda: throughput(
            running, devices=args.devices, messages=args.messages, runs=args.runs,
            window=args.window, timeout=args.timeout, ambulances=args.ambulances,
            same_ids=args.same_ids,
        ),
        "junk": lambda: junk(
            running, messages=args.messages, publishers=args.publishers, size=args.size,
            good=args.good, window=args.window, timeout=args.timeout,
        ),
        "latency": lambda: latency(
            running, devices=args.devices, rate=args.rate, duration=args.duration,
            runs=args.runs, snap_publishers=args.snap_publishers,
            snap_files=settings.max_upload_files, snap_image_bytes=settings.max_image_bytes,
            snap_interval=args.snap_interval,
        ),
        "flood": lambda: flood(
            running, scenario=args.scenario,
            count=args.count or (10 if args.scenario == "tracking" else 6), size=args.size,
            files=settings.max_upload_files, image_bytes=settings.max_image_bytes,
        ),
        "soak": lambda: soak(
            running, ambulances=args.ambulances, rate=args.rate, duration=args.duration,
            interval=args.interval, tolerance=args.tolerance,
        ),
    }
    verdict = asyncio.run(jobs[args.command]())
    return 1 if verdict is False else 0  # soak's verdict: memory stayed flat or not


if __name__ == "__main__":
    sys.exit(main())
