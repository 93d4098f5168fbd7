"""The bridge's two dispatch chores, each a loop ``bridge.service.Bridge.run`` starts.

- ``PlaceWatch`` keeps the rules' places current: places are changed by
  ``aoc places`` or the API in the store, which every bridge reads again
  every ``AOC_PLACES_REFRESH_SECONDS`` (only what changed since its last read:
  the ``updated_at`` index).
- ``OfflineSweep`` asks about ambulances silent for too long. Silence is the
  absence of messages, so no message can raise its alarm: the sweep finds the
  candidates in the store (``last_seen`` older than the bound, silence not yet
  looked at) and puts a ``Check`` for each on the bridge's own queue, where it
  is planned in turn with the ambulance's messages. With several bridges each
  sweeps; the state's version makes the second check of one silence a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from bridge.dispatch import Dispatch
from bridge.messages import Check
from bridge.places import Place, PlaceIndex, place_from_doc
from storage.base import AMBULANCES, PLACES, DocumentStore, Query, StoreUnavailable

PAGE = 500
# Device clocks may run a few seconds ahead (``AOC_MAX_CLOCK_AHEAD_SECONDS``):
# candidates are read with this slack, and each check compares receipt times.
CLOCK_SLACK = timedelta(seconds=60)


class PlaceWatch:
    """Loads the places into ``dispatch`` and reads their changes every ``every`` seconds."""

    def __init__(
        self, store: DocumentStore, dispatch: Dispatch, *, every: float, logger: logging.Logger
    ) -> None:
        self._store = store
        self._dispatch = dispatch
        self._every = every
        self._log = logger
        self._places: dict[str, Place] = {}
        self._since: datetime | None = None

    async def refresh(self) -> bool:
        """Read what changed; True when the index was rebuilt."""
        changed = False
        cursor: str | None = None
        since = self._since  # inclusive: a place written in the same millisecond is seen
        while True:
            query = Query(PLACES, since=since, limit=PAGE, cursor=cursor)
            page = await self._store.find(query)
            for doc in page.items:
                place = place_from_doc(doc)
                if place.updated_at is not None and (
                    self._since is None or place.updated_at > self._since
                ):
                    self._since = place.updated_at
                if place.removed_at is not None:
                    changed |= self._places.pop(place.id, None) is not None
                elif self._places.get(place.id) != place:
                    self._places[place.id] = place
                    changed = True
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        if changed:
            self._dispatch.places = PlaceIndex(self._places.values())
            self._log.info("places: %d in use", len(self._places))
        return changed

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                self._log.debug("places not read: %s", exc)
            await asyncio.sleep(self._every)


class OfflineSweep:
    """Every ``every`` seconds, a ``Check`` for each ambulance silent over ``after`` seconds."""

    def __init__(
        self,
        store: DocumentStore,
        put: Callable[[Check], Awaitable[None]],
        *,
        after: float,
        logger: logging.Logger,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._put = put
        self._after = timedelta(seconds=after)
        # Often enough that an alarm comes at most a fifth late, at most every 30 s.
        self.every = min(30.0, max(1.0, after / 5))
        self._log = logger
        self._clock = clock

    async def sweep(self) -> int:
        """Queue a check for each candidate; how many."""
        now = self._clock()
        cutoff = now - self._after + CLOCK_SLACK
        asked = 0
        cursor: str | None = None
        while True:
            query = Query(
                AMBULANCES, until=cutoff, limit=PAGE, cursor=cursor,
                where={"silence_handled": None},
            )
            page = await self._store.find(query)
            for doc in page.items:
                heard = doc.get("heard_at")
                if heard is not None and now - heard >= self._after:
                    await self._put(Check(doc["_id"], now))
                    asked += 1
            if page.next_cursor is None:
                return asked
            cursor = page.next_cursor

    async def run(self) -> None:
        # Bridges of one group started together do not sweep in step.
        await asyncio.sleep(random.uniform(0, self.every))
        while True:
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                self._log.debug("offline sweep skipped: %s", exc)
            await asyncio.sleep(self.every)
