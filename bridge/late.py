"""Late points: counted where they belong in the ambulance's path, whenever they arrive.

A point is late when a newer point of its ambulance is already counted (a
device out of a dead zone; several bridges on a shared subscription, one
slower than another). Its speed simply joins the counters (``speed_count``,
``speed_sum``: sums do not care about order). Its distance does: the path
runs through the points in device-time order, so a late point ``p`` goes
between its counted neighbours ``prev`` and ``next``:

    distance += d(prev, p) + d(p, next) - d(prev, next)

With several late points of one ambulance in a batch, they are merged with
the counted points around them (the stored ones, read once per ambulance
per batch, ``stored_around``, and the batch's own in-order points) and the path is measured
again over that window. Points are ordered by (device time, id): the order
of ``DocumentStore.find`` on the (ambulance_id, time, _id) index.

Overspeed episodes are not re-derived: a late point joins none (see the
README, "Several bridges").
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bridge.geo import eta_s, haversine_m, position_from_doc
from bridge.messages import Position
from bridge.state import AmbulanceState
from storage.base import TRACKINGS, Document, DocumentStore, Query

# The newest stored points read first: late points among them need no other read.
NEAR = 8
# Else the stored points read per page from the earliest late point on.
PAGE = 200


@dataclass(frozen=True, slots=True)
class Point:
    """One point of a path: its device time, id (the ``TRACKINGS`` ``_id``) and position."""

    ts: datetime
    id: str
    position: Position

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.ts, self.id)


def point_of(doc: Document) -> Point | None:
    """The point of a ``TRACKINGS`` document (None without a time or a location)."""
    position = position_from_doc(doc.get("location"))
    ts = doc.get("count_datetime")
    if position is None or not isinstance(ts, datetime):
        return None
    return Point(ts, doc["_id"], position)


def path_m(points: Sequence[Point]) -> float:
    """The length of the path through ``points`` in their order."""
    return sum(haversine_m(a.position, b.position) for a, b in itertools.pairwise(points))


@dataclass(frozen=True, slots=True)
class Placement:
    """What late points add: metres of path, and the new first point if one comes first."""

    distance_m: float
    first: Point | None


def place(counted: Iterable[Point], late: Iterable[Point]) -> Placement:
    """Where ``late`` points go among ``counted`` ones (which need hold only the window
    from the last before the earliest late point to the first after the latest)."""
    late_points = sorted({p.id: p for p in late}.values(), key=lambda p: p.key)
    if not late_points:
        return Placement(0.0, None)
    late_ids = {p.id for p in late_points}
    known = sorted({p.id: p for p in counted if p.id not in late_ids}.values(), key=lambda p: p.key)
    low, high = late_points[0].key, late_points[-1].key
    before = [p for p in known if p.key < low]
    inside = [p for p in known if low <= p.key <= high]
    after = [p for p in known if p.key > high]
    window = before[-1:] + inside + after[:1]
    merged = sorted(window + late_points, key=lambda p: p.key)
    first = None if before else late_points[0]
    return Placement(path_m(merged) - path_m(window), first)


async def stored_around(
    store: DocumentStore, ambulance_id: str, since: datetime, until: datetime
) -> list[Point]:
    """The stored points of ``ambulance_id`` from the last before ``since`` to the first
    after ``until`` (and maybe more after it).

    Late points are nearly always a few points behind the newest: one read of
    the ``NEAR`` newest points reaches back past them. Else (a long dead zone,
    a clock behind) two reads from ``since``: the one before it, then a page of
    ``PAGE`` at a time from it to past ``until``.
    """
    newest = await store.find(
        Query(TRACKINGS, ambulance_id=ambulance_id, newest_first=True, limit=NEAR)
    )
    oldest = newest.items[-1].get("count_datetime") if newest.items else None
    if newest.next_cursor is None or (isinstance(oldest, datetime) and oldest < since):
        return _points(newest.items)
    before = await store.find(
        Query(TRACKINGS, ambulance_id=ambulance_id, until=since, newest_first=True, limit=1)
    )
    docs = list(before.items)
    cursor: str | None = None
    while True:
        page = await store.find(
            Query(TRACKINGS, ambulance_id=ambulance_id, since=since, limit=PAGE, cursor=cursor)
        )
        docs.extend(page.items)
        last = page.items[-1].get("count_datetime") if page.items else None
        if page.next_cursor is None or (isinstance(last, datetime) and last > until):
            break
        cursor = page.next_cursor
    return _points(docs)


def _points(docs: Iterable[Document]) -> list[Point]:
    return [p for p in map(point_of, docs) if p is not None]


async def settle(
    store: DocumentStore, state: AmbulanceState, late: Sequence[Point], counted: Iterable[Point]
) -> None:
    """Add ``late`` points' distance to ``state`` (their speeds are counted already).

    ``counted``: the points ``state`` counts that the store may not hold yet
    (the batch's in-order points, an outbox not stored). Its latest point is
    among them too, for a state whose history record was never stored.
    """
    if not late:
        return
    since = min(p.ts for p in late)
    until = max(p.ts for p in late)
    known = await stored_around(store, state.ambulance_id, since, until)
    known.extend(counted)
    if state.last_seen is not None and state.last_point_id and state.location is not None:
        known.append(Point(state.last_seen, state.last_point_id, state.location))
    placed = place(known, late)
    state.covered_distance += placed.distance_m
    if placed.first is not None:
        state.source_location = placed.first.position
    # The ETA from the latest position at the average that now counts them.
    destination = state.destination_location
    if destination is not None and state.location is not None:
        eta = eta_s(state.location, destination, state.avg_speed)
        state.estimated_time = None if eta is None else round(eta, 1)
