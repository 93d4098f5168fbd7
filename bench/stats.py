"""Small statistics and formatting helpers for benchmark figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile (0 < pct <= 100) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values (a benchmark that saw nothing still prints)."""
    return statistics.median(values) if values else math.nan


def summary_ms(values: Sequence[float]) -> str:
    """``values`` in seconds as ``n, p50, p90, p99, max`` in milliseconds."""
    if not values:
        return "n=0 (nothing received)"
    parts = [f"n={len(values)}"]
    for label, pct in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        parts.append(f"{label} {percentile(values, pct) * 1000:7.1f} ms")
    parts.append(f"max {max(values) * 1000:7.1f} ms")
    return "  ".join(parts)


def mib(n_bytes: float) -> str:
    """Bytes as MiB with one decimal."""
    return f"{n_bytes / 2**20:7.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, columns right-aligned except the first."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
