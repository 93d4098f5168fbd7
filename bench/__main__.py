"""``python -m bench {throughput,latency,soak}``: run from the repository root."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aoc.config import Settings
from bench import stack
from bench.flood import flood
from bench.latency import latency
from bench.soak import soak
from bench.throughput import throughput


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start the stack, run one benchmark, print its figures."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    env: dict[str, str] = {}
    if getattr(args, "batch_size", None):
        env["AOC_BATCH_SIZE"] = str(args.batch_size)
    command = getattr(args, "process", "serve")
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
                )
            )
            return 0
        if args.command == "latency":
            settings = Settings()
            asyncio.run(
                latency(
                    running,
                    devices=args.devices,
                    rate=args.rate,
                    duration=args.duration,
                    runs=args.runs,
                    snap_publishers=args.snap_publishers,
                    snap_files=settings.max_upload_files,
                    snap_image_bytes=settings.max_image_bytes,
                    snap_interval=args.snap_interval,
                )
            )
            return 0
        if args.command == "flood":
            settings = Settings()
            default_count = 10 if args.scenario == "tracking" else 6
            asyncio.run(
                flood(
                    running,
                    scenario=args.scenario,
                    count=args.count or default_count,
                    size=args.size,
                    files=settings.max_upload_files,
                    image_bytes=settings.max_image_bytes,
                )
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
