"""``aoc bench``: the whole performance picture in one invocation.

Stages (``bench.stages``; each a function of the shared ``Context`` returning
a ``StageResult``, listed in ``STAGES``, so a new one is one more entry):

1. ``throughput``: the raw ceiling (the project's broker configuration,
   multi-process paho publishers, a bare paho subscriber) and the full
   pipeline (the same publishers against ``aoc serve``, Redis and Socket.IO
   watchers), alternating run by run; medians, and their ratio.
2. ``latency``: points paced at ``--ambulances`` x ``--rate`` Hz; publish ->
   Socket.IO and publish -> stored percentiles, achieved against offered rate,
   backlog, CPU of every process, memory start/warm/end.
3. ``shim``: legacy tracking POSTs (autocannon) through to storage, next to a
   database-less Express + socket.io server of the legacy shape.
4. ``fanout``: many Socket.IO clients in room ``tracking``, through the
   pipeline and from a stock python-socketio server at the same event rate.
5. ``live``: the coalesced live stream (``bench.coalesce``): a fleet at 1 Hz
   to many stock socket.io-client clients in Node, through ``aoc serve``
   and through ``aoc realtime`` fed over Redis alone (the fan-out without the
   bridge); completeness and staleness.

Every ratio is of two figures measured in the same invocation, and both are
shown. Progress goes to stderr; the table (or JSON, ``--format json``) to
stdout; ``--json FILE`` writes the JSON too. Run from the repository root
(``bench`` and ``tests`` are not installed packages).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the stages' modules start servers: imported only when a run starts
    from bench.procstat import ProcessFigures

STAGE_NAMES = ["throughput", "latency", "shim", "fanout", "live"]  # bench.stages.STAGES, in order


@dataclass
class Config:
    """What to run and how big; ``smoke()`` gives the small, fast configuration."""

    stages: list[str]
    runs: int = 3
    publishers: int = 2  # processes
    clients: int = 5  # MQTT clients per publisher process
    window: int = 100  # QoS 1 publishes in flight per client (flood)
    messages: int = 20_000  # per throughput run
    flood_ambulances: int = 1000
    ambulances: int = 1000  # latency stage
    rate: float = 1.0  # Hz per ambulance
    duration: float = 20.0  # seconds of the latency stage
    watchers: int = 1  # Socket.IO clients in room tracking (throughput, latency)
    room_watchers: int = 1  # Socket.IO clients each in `rooms_each` ambulance rooms
    rooms_each: int = 10
    shim_requests: int = 5000
    shim_connections: int = 50
    fanout_clients: int = 100
    fanout_processes: int = 4
    fanout_rate: float = 50.0  # events a second, in all
    fanout_duration: float = 10.0
    live_ambulances: int = 1000
    live_clients: int = 200  # stock socket.io-client in Node
    live_processes: int = 4  # Node processes holding them
    live_duration: float = 20.0  # seconds per topology
    store_url: str | None = None
    keep: Path | None = None
    smoke: bool = False
    timeout: float = 300.0  # seconds any one wait may take
    drain_timeout: float = 1800.0  # seconds to wait for a backlog still being stored

    @classmethod
    def smoke_config(cls, stages: list[str]) -> Config:
        return cls(
            stages=stages,
            runs=1,
            publishers=2,
            clients=2,
            window=20,
            messages=1000,
            flood_ambulances=40,
            ambulances=20,
            rate=2.0,
            duration=2.0,
            rooms_each=2,
            shim_requests=200,
            shim_connections=5,
            fanout_clients=6,
            fanout_processes=2,
            fanout_rate=20.0,
            fanout_duration=2.0,
            live_ambulances=20,
            live_clients=4,
            live_processes=2,
            live_duration=3.0,
            smoke=True,
            timeout=60.0,
            drain_timeout=60.0,
        )


@dataclass
class Row:
    """One figure; with ``reference``, a ratio of two figures of the same invocation."""

    stage: str
    metric: str
    value: float | None
    unit: str = ""
    reference: float | None = None
    reference_label: str = ""
    runs: list[float] = field(default_factory=list)  # per-run values (value is their median)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class StageResult:
    """What one stage measured: figures, processes, what was lost, and notes."""

    name: str
    rows: list[Row] = field(default_factory=list)
    processes: list[ProcessFigures] = field(default_factory=list)
    lost: int | None = None  # acknowledged by the broker (or answered 2xx) but not stored
    # Why ``lost`` could not be determined (None): a stage that ends without it fails the run.
    undetermined: str = ""
    notes: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)  # e.g. backlog over time

    def row(self, metric: str, value: float | None, unit: str = "", **extra: Any) -> Row:
        made = Row(self.name, metric, value, unit, **extra)
        self.rows.append(made)
        return made

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": [r.as_dict() for r in self.rows],
            "processes": [p.as_dict() for p in self.processes],
            "lost": self.lost,
            "undetermined": self.undetermined if self.lost is None else "",
            "notes": self.notes,
            "series": self.series,
        }


def progress(text: str) -> None:
    """One progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cells(row: Row) -> list[str]:
    ratio = row.ratio
    return [
        row.stage,
        row.metric,
        _fmt(row.value),
        row.unit,
        f"{_fmt(row.reference)} {row.reference_label}".strip() if row.reference else "",
        f"{ratio:.2f}" if ratio is not None else "",
    ]


HEADER = ["stage", "measure", "value", "unit", "reference (same run)", "ratio"]
PROC_HEADER = ["stage", "process", "CPU % of a core", "RSS start MiB", "warm", "end"]


def _proc_cells(stage: StageResult) -> list[list[str]]:
    return [
        [
            stage.name,
            p.name,
            _fmt(p.cpu_percent),
            _fmt(p.rss_start_mib),
            _fmt(p.rss_warm_mib),
            _fmt(p.rss_end_mib),
        ]
        for p in stage.processes
    ]


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    """A plain text table: the first ``left`` columns left-aligned, the figures right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    pad = [str.ljust if i < left else str.rjust for i in range(len(header))]
    lines = [
        "  ".join(p(c, w) for p, c, w in zip(pad, row, widths, strict=True))
        for row in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def render_text(results: list[StageResult]) -> str:
    rows = []
    for stage in results:
        rows += [_cells(r) for r in stage.rows]
        if stage.lost is not None:
            rows.append(
                [stage.name, "LOST (acknowledged, not stored)", str(stage.lost), "", "", ""]
            )
    parts = [_table(HEADER, rows) if rows else "(no figures)"]
    procs = [cells for s in results for cells in _proc_cells(s)]
    if procs:
        parts.append(_table(PROC_HEADER, procs))
    notes = [f"- {s.name}: {n}" for s in results for n in s.notes]
    if notes:
        parts.append("notes:\n" + "\n".join(notes))
    return "\n\n".join(parts)


def render_markdown(results: list[StageResult]) -> str:
    """The figures as a Markdown table, to paste into the README."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for stage in results:
        for row in stage.rows:
            lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(row)) + " |")
        if stage.lost is not None:
            lines.append(f"| {stage.name} | lost (acknowledged, not stored) | {stage.lost} | | | |")
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(config: Config, stages: dict[str, Callable[..., StageResult]]) -> dict[str, Any]:
    """Run the chosen stages on one shared context; the JSON-able report."""
    from bench.rig import Context  # noqa: PLC0415 (imports the services)

    started = datetime.now(UTC)
    load_before = os.getloadavg()  # the machine is shared: how busy it was, before and after
    results: list[StageResult] = []
    with contextlib.ExitStack() as exits:
        workdir = config.keep or Path(
            exits.enter_context(tempfile.TemporaryDirectory(prefix="aoc-bench-"))
        )
        ctx = exits.enter_context(Context.open(config, workdir))
        for name in config.stages:
            progress(f"stage {name}")
            result = stages[name](ctx)
            results.append(result)
            progress(f"stage {name} done")
    return {
        "started": started.isoformat(),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "machine": _machine() | {"load_average_before": load_before},
        "stages": [r.as_dict() for r in results],
        "_results": results,
    }


def count(text: str) -> int:
    """A count the run needs at least one of (``--runs 0`` would measure nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count_or_zero(text: str) -> int:
    """An ``int`` option that may be 0 (no Socket.IO watchers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> float:
    """A rate or a duration: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser, stage_names: list[str]) -> None:
    """The options of ``aoc bench``, each ``--help`` line with its default."""
    d = Config(stages=[])

    def add(*names: str, **options: Any) -> None:
        # Not ArgumentDefaultsHelpFormatter: aoc.settings_help sets every parser's formatter.
        if options.get("default") is not None and options.get("action") is None:
            options["help"] += " (default: %(default)s)"
        parser.add_argument(*names, **options)

    add("--stages", default=",".join(stage_names), help="comma-separated, in order")
    add(
        "--smoke",
        action="store_true",
        help="a small, fast configuration (seconds per stage); figures mean little",
    )
    add("--runs", type=count, default=d.runs, help="ceiling/pipeline run pairs (medians shown)")
    add("--publishers", type=count, default=d.publishers, help="publisher processes")
    add("--clients", type=count, default=d.clients, help="MQTT clients per publisher process")
    add("--window", type=count, default=d.window, help="QoS 1 publishes in flight per client")
    add("--messages", type=count, default=d.messages, help="points per throughput run")
    add(
        "--flood-ambulances",
        type=count,
        default=d.flood_ambulances,
        help="throughput: ambulance ids the points are spread over (new ids each run)",
    )
    add("--ambulances", type=count, default=d.ambulances, help="latency stage: ambulances")
    add("--rate", type=positive, default=d.rate, help="latency stage: points/s per ambulance")
    add("--duration", type=positive, default=d.duration, help="latency stage: seconds")
    add(
        "--watchers",
        type=count_or_zero,
        default=d.watchers,
        help="Socket.IO clients in room tracking during throughput and latency",
    )
    add(
        "--room-watchers",
        type=count_or_zero,
        default=d.room_watchers,
        help="Socket.IO clients each in a few per-ambulance rooms",
    )
    add("--shim-requests", type=count, default=d.shim_requests, help="POSTs per server")
    add("--shim-connections", type=count, default=d.shim_connections, help="autocannon connections")
    add("--fanout-clients", type=count, default=d.fanout_clients, help="Socket.IO clients")
    add("--fanout-processes", type=count, default=d.fanout_processes, help="their processes")
    add("--fanout-rate", type=positive, default=d.fanout_rate, help="tracking events/s, in all")
    add("--fanout-duration", type=positive, default=d.fanout_duration, help="seconds per server")
    add("--live-ambulances", type=count, default=d.live_ambulances, help="live stage: at 1 Hz")
    add("--live-clients", type=count, default=d.live_clients, help="live stage: Node clients")
    add("--live-processes", type=count, default=d.live_processes, help="their processes")
    add("--live-duration", type=positive, default=d.live_duration, help="seconds per topology")
    add(
        "--drain-timeout",
        type=positive,
        default=d.drain_timeout,
        help="seconds to wait for a backlog that is still being stored (then: not yet stored)",
    )
    add(
        "--store-url",
        default=None,
        help="AOC_STORE_URL of aoc serve (default: SQLite; mongodb://... for MongoDB)",
    )
    add("--keep", type=Path, default=None, help="keep logs and data in this directory")
    add("--json", type=Path, default=None, dest="json_file", help="also write the JSON here")
    add("--format", choices=("table", "json"), default="table", help="what stdout gets")
    add("--markdown", action="store_true", help="also print the figures as a Markdown table")


def config_from(args: argparse.Namespace, stage_names: list[str]) -> Config:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in stage_names]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}: choose from {stage_names}")
    if args.smoke:
        config = Config.smoke_config(stages)
    else:
        config = Config(
            stages=stages,
            runs=args.runs,
            publishers=args.publishers,
            clients=args.clients,
            window=args.window,
            messages=args.messages,
            flood_ambulances=args.flood_ambulances,
            ambulances=args.ambulances,
            rate=args.rate,
            duration=args.duration,
            watchers=args.watchers,
            room_watchers=args.room_watchers,
            shim_requests=args.shim_requests,
            shim_connections=args.shim_connections,
            fanout_clients=args.fanout_clients,
            fanout_processes=args.fanout_processes,
            fanout_rate=args.fanout_rate,
            fanout_duration=args.fanout_duration,
            live_ambulances=args.live_ambulances,
            live_clients=args.live_clients,
            live_processes=args.live_processes,
            live_duration=args.live_duration,
        )
    config.store_url = args.store_url
    if not args.smoke:
        config.drain_timeout = args.drain_timeout
    config.keep = args.keep
    return config


def verdict(results: list[StageResult]) -> tuple[int, list[str]]:
    """The exit code and its reasons: 1 when a point was lost or a stage could not tell."""
    lines = [f"stage {r.name}: LOST {r.lost} (acknowledged, not stored)" for r in results if r.lost]
    lines += [
        f"stage {r.name}: loss NOT DETERMINED ({r.undetermined or 'the stage did not count it'})"
        for r in results
        if r.lost is None
    ]
    return (1 if lines else 0), lines


def main(args: argparse.Namespace) -> int:
    """Run ``aoc bench``; 1 when something acknowledged was not stored, or may not have been."""
    from bench.stages import STAGES  # noqa: PLC0415

    config = config_from(args, STAGE_NAMES)
    report = run(config, STAGES)
    results: list[StageResult] = report.pop("_results")
    text = json.dumps(report, indent=2)
    if args.json_file is not None:
        args.json_file.write_text(text + "\n")
    if args.format == "json":
        print(text)
    else:
        print(render_text(results))
    if args.markdown:
        print("\n" + render_markdown(results))
    code, reasons = verdict(results)
    for line in reasons:
        print(line, file=sys.stderr)
    return code


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``aoc bench`` and its options."""
    parser = commands.add_parser(
        "bench",
        help="benchmark the whole pipeline against its references (run from a clone)",
        description=(__doc__ or "").split("\n\n")[0],
    )
    add_arguments(parser, STAGE_NAMES)
