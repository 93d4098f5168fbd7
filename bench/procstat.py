"""CPU and resident memory of named processes over a measured window (from ``/proc``).

A ``Watch`` reads each process's CPU seconds at ``start`` and ``stop`` (so
CPU is % of one core over the window: 200% is both cores of this machine)
and samples its RSS on a thread, every ``interval`` seconds, to give the
start, warm (median of the second quarter of the window) and end figures
that tell flat memory from a leak, as ``bench soak`` does. A process's
children (``aoc serve`` has none today, but may) are counted with it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.stack import cpu_seconds, rss_bytes
from bench.stats import median


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            direct = [int(p) for p in listing.read().split()]
    except OSError:
        return found
    for child in direct:
        found += [child, *children(child)]
    return found


def _cpu(pid: int) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in (pid, *children(pid)))


def _rss(pid: int) -> int | None:
    values = [rss_bytes(p) for p in (pid, *children(pid))]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@dataclass
class ProcessFigures:
    """One process over one window: % of a core, and RSS in MiB at start, warm and end."""

    name: str
    cpu_percent: float | None
    rss_start_mib: float | None
    rss_warm_mib: float | None
    rss_end_mib: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Watch:
    """Samples the processes ``pids`` (name -> pid) between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self._rss: dict[str, list[int]] = {name: [] for name in pids}
        self._cpu0: dict[str, float] = {}
        self._cpu_last: dict[str, float] = {}  # a process that exits keeps its last reading
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="procstat", daemon=True)

    def start(self) -> Watch:
        self._t0 = time.monotonic()
        self._cpu0 = {name: _cpu(pid) for name, pid in self.pids.items()}
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            for name, pid in self.pids.items():
                if (value := _rss(pid)) is not None:
                    self._rss[name].append(value)
                    self._cpu_last[name] = _cpu(pid)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> list[ProcessFigures]:
        wall = time.monotonic() - self._t0
        cpu1 = {
            name: _cpu(pid) if _rss(pid) is not None else self._cpu_last.get(name, self._cpu0[name])
            for name, pid in self.pids.items()
        }
        self._stop.set()
        self._thread.join()
        figures = []
        for name in self.pids:
            samples = self._rss[name]
            n = len(samples)
            warm = samples[n // 4 : max(n // 4 + 1, n // 2)]
            mib = 2**20
            figures.append(
                ProcessFigures(
                    name=name,
                    cpu_percent=(cpu1[name] - self._cpu0[name]) / wall * 100 if wall > 0 else None,
                    rss_start_mib=samples[0] / mib if samples else None,
                    rss_warm_mib=median(warm) / mib if warm else None,
                    rss_end_mib=samples[-1] / mib if samples else None,
                )
            )
        return figures
