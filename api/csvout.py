"""CSV answers of the reports: which format a request wants, and rows as text.

Rows are written with the standard ``csv`` module (RFC 4180 quoting, CRLF
line ends), numbers as Python writes them (``1234.5``: no thousands
separator, a dot), nothing as an empty cell. A text cell a spreadsheet would
run as a formula (``=...``, ``+...``, ``-...``, ``@...``: a place name typed
by anyone) is written with a leading ``'``, as OWASP advises.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

MEDIA_TYPE = "text/csv; charset=utf-8"
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _quality(part: str) -> tuple[str, float]:
    media, *params = (p.strip() for p in part.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
    return media.lower(), q


def wants_csv(format: str | None, accept: str | None) -> bool:
    """Whether to answer CSV: ``format`` decides when given, else the ``Accept`` header.

    CSV when ``text/csv`` is accepted with a higher quality than JSON (or
    ``*/*``, which JSON answers); a tie goes to the type listed first.
    """
    if format is not None:
        return format == "csv"
    if not accept:
        return False
    best: tuple[float, int, bool] | None = None  # (quality, -position, is csv)
    for position, part in enumerate(accept.split(",")):
        media, q = _quality(part)
        if q <= 0:
            continue
        if media == "text/csv":
            csv_wanted = True
        elif media in ("application/json", "application/*", "*/*"):
            csv_wanted = False
        else:
            continue
        rank = (q, -position, csv_wanted)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return best is not None and best[2]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def lines(rows: Iterable[Sequence[Any]]) -> str:
    """``rows`` as CSV text, each ending with CRLF."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()
