"""``bench soak``: ``aoc simulate`` against ``aoc serve`` for a while, watching memory.

Every ``interval`` seconds the resident memory (VmRSS) of each process is
sampled: Mosquitto, Redis, ``aoc serve`` and the simulator. Memory should rise
while caches, connections and the store warm up and then stay flat, so the
verdict compares the median of the second quarter of the run (warm) with the
median of the last quarter (end) and prints the ratio of each process.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from bench import stack as stack_mod
from bench.stack import Stack
from bench.stats import median, mib, table
from tests import services

_SIM_PREFIX = "SOAK"


@dataclass
class Samples:
    """RSS samples per process, and the stored points, over time."""

    times: list[float] = field(default_factory=list)
    rss: dict[str, list[int | None]] = field(default_factory=dict)
    stored: list[int] = field(default_factory=list)

    def quarter(self, name: str, which: int) -> float:
        """Median RSS of ``name`` in quarter ``which`` (1-4) of the run."""
        values = self.rss[name]
        n = len(values)
        lo, hi = (which - 1) * n // 4, max((which - 1) * n // 4 + 1, which * n // 4)
        return median([v for v in values[lo:hi] if v is not None])


def _simulator(stack: Stack, *, ambulances: int, rate: float, duration: float) -> services.Service:
    argv = [sys.executable, "-m", "aoc.cli", "simulate", "--ambulances", str(ambulances)]
    argv += ["--rate", str(rate), "--duration", str(duration), "--seed", "1"]
    argv += ["--prefix", _SIM_PREFIX]
    env = {"AOC_MQTT_PORT": str(stack.mqtt_port), "AOC_LOG_LEVEL": "WARNING"}
    return services.Service("aoc-simulate", argv, 0, stack.workdir / "simulate", env=env)


async def soak(
    stack: Stack,
    *,
    ambulances: int,
    rate: float,
    duration: float,
    interval: float,
    tolerance: float,
) -> bool:
    """Run the soak; print progress, the RSS table and the verdict. True when flat."""
    await stack.probe()
    sim = _simulator(stack, ambulances=ambulances, rate=rate, duration=duration)
    samples = Samples()
    print(
        f"soak: {ambulances} ambulances at {rate:g} Hz for {duration:.0f}s,"
        f" RSS sampled every {interval:g}s",
        flush=True,
    )
    with sim:
        assert sim.proc is not None
        pids = {**stack.pids(), "simulator": sim.proc.pid}
        samples.rss = {name: [] for name in pids}
        start = time.monotonic()
        cpu_start = {name: stack_mod.cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
        cpu_end = dict(cpu_start)
        while True:
            elapsed = time.monotonic() - start
            samples.times.append(elapsed)
            for name, pid in pids.items():
                samples.rss[name].append(stack_mod.rss_bytes(pid))
                cpu_end[name] = stack_mod.cpu_seconds(pid) or cpu_end[name]
            stored = await asyncio.to_thread(
                stack_mod.stored_with_prefix, stack.store_path, _SIM_PREFIX
            )
            samples.stored.append(stored)
            memory = "  ".join(
                f"{name} {mib(v[-1] or 0).strip()}" for name, v in samples.rss.items()
            )
            print(
                f"  {elapsed:6.0f}s/{duration:.0f}s  stored {stored:8d}  RSS MiB: {memory}",
                flush=True,
            )
            if sim.proc.poll() is not None or elapsed >= duration + 30:
                break
            await asyncio.sleep(max(0.0, start + len(samples.times) * interval - time.monotonic()))
        run_s = time.monotonic() - start
    print(f"simulator: {sim.log_tail(1).strip()}")
    _report(samples, cpu_start, cpu_end, run_s)
    return _verdict(samples, tolerance)


def _report(
    samples: Samples, cpu_start: dict[str, float], cpu_end: dict[str, float], run_s: float
) -> None:
    rows = []
    for name, values in samples.rss.items():
        seen = [v for v in values if v is not None]
        if not seen:
            continue
        warm, end = samples.quarter(name, 2), samples.quarter(name, 4)
        cpu = (cpu_end[name] - cpu_start[name]) / run_s * 100
        rows.append(
            [
                name,
                mib(seen[0]),
                mib(warm),
                mib(end),
                mib(max(seen)),
                f"{end / warm:.3f}",
                f"{cpu:.0f}%",
            ]
        )
    header = ["process", "start MiB", "warm MiB", "end MiB", "max MiB", "end/warm", "CPU"]
    print(table(header, rows))
    if len(samples.stored) > 1:
        rate = (samples.stored[-1] - samples.stored[0]) / max(samples.times[-1], 1e-9)
        print(f"stored {samples.stored[-1]} tracking points ({rate:.1f}/s) in {run_s:.0f}s")


def _verdict(samples: Samples, tolerance: float) -> bool:
    """Memory after warm-up: flat if no process grew more than ``tolerance`` percent."""
    if len(samples.times) < 8:
        print(f"verdict: too few samples ({len(samples.times)}) to judge; run longer")
        return False
    growth = {name: samples.quarter(name, 4) / samples.quarter(name, 2) for name in samples.rss}
    worst = max(growth, key=lambda name: growth[name])
    figures = ", ".join(f"{name} x{ratio:.3f}" for name, ratio in growth.items())
    flat = growth[worst] <= 1 + tolerance / 100
    word = "FLAT" if flat else "GROWING"
    print(
        f"verdict: memory {word} after warm-up (median RSS of the last quarter / second quarter:"
        f" {figures}; largest {worst} {(growth[worst] - 1) * 100:+.1f}%,"
        f" tolerance {tolerance:g}%)"
    )
    return flat
