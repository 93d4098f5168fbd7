"""``python -m bench {throughput,latency,soak}``: run from the repository root."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import plan, stack
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

    jk = commands.add_parser(
        "junk", help="a flood of invalid payloads: disk growth, log lines, good points kept"
    )
    jk.add_argument("--messages", type=int, default=20000, help="invalid payloads, in all")
    jk.add_argument("--publishers", type=int, default=4, help="publisher processes")
    jk.add_argument("--size", type=int, default=4096, help="bytes per invalid payload")
    jk.add_argument("--good", type=int, default=200, help="good points published in between")
    jk.add_argument("--window", type=int, default=50, help="unacknowledged publishes per process")
    jk.add_argument("--timeout", type=float, default=300.0, help="seconds the flood may take")

    lat = commands.add_parser("latency", help="publish -> Socket.IO and MQTT state, percentiles")
    lat.add_argument("--devices", type=int, default=10, help="ambulances, round robin")
    lat.add_argument("--rate", type=float, default=50.0, help="points per second, in all")
    lat.add_argument("--duration", type=float, default=30.0, help="seconds of publishing")
    lat.add_argument("--batch-size", type=int, default=None, help="AOC_BATCH_SIZE of the bridge")

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
    return parser


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
    env: dict[str, str] = {}
    if getattr(args, "batch_size", None):
        env["AOC_BATCH_SIZE"] = str(args.batch_size)
    command = getattr(args, "process", "serve")
    if args.command == "limits":
        if args.aoc_pythonpath:
            env["PYTHONPATH"] = args.aoc_pythonpath
        if args.scenario == "fleet" and args.source == "store":
            env["AOC_REDIS_URL"] = f"redis://127.0.0.1:{services.free_port()}/0"
        env.update(item.split("=", 1) for item in args.env)
    print(f"starting mosquitto, redis and aoc {command} ...", flush=True)
    with stack.running(command=command, env=env, keep=args.keep) as running:
        print(
            f"  mqtt :{running.mqtt_port}  redis :{running.redis.port}"
            f"  batch size {env.get('AOC_BATCH_SIZE', 'default')}  files {running.workdir}",
            flush=True,
        )
        if args.command == "throughput":
            asyncio.run(
                throughput(
                    running,
                    devices=args.devices,
                    messages=args.messages,
                    runs=args.runs,
                    window=args.window,
                    timeout=args.timeout,
                    ambulances=args.ambulances,
                    same_ids=args.same_ids,
                )
            )
            return 0
        if args.command == "junk":
            asyncio.run(
                junk(
                    running,
                    messages=args.messages,
                    publishers=args.publishers,
                    size=args.size,
                    good=args.good,
                    window=args.window,
                    timeout=args.timeout,
                )
            )
            return 0
        if args.command == "limits":
            _limits(args, running)
            return 0
        if args.command == "latency":
            asyncio.run(
                latency(running, devices=args.devices, rate=args.rate, duration=args.duration)
            )
            return 0
        flat = asyncio.run(
            soak(
                running,
                ambulances=args.ambulances,
                rate=args.rate,
                duration=args.duration,
                interval=args.interval,
                tolerance=args.tolerance,
            )
        )
        return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
