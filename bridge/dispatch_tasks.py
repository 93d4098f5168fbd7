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
from storage.base import AMBULANCES, PLACES, Document, DocumentStore, Query, StoreUnavailable

PAGE = 500
# Device clocks may run a few seconds ahead (``AOC_MAX_CLOCK_AHEAD_SECONDS``):
# candidates are read with this slack, and each check compares receipt times.
CLOCK_SLACK = timedelta(seconds=60)
LOOKBACK = timedelta(seconds=60)


class PlaceWatch:
    """Loads the places into ``dispatch`` and reads their changes every ``every`` seconds.

    Each read goes back ``LOOKBACK`` before the newest change seen: a place
    written by another process whose clock is behind, or whose write committed
    later than a newer one, is still seen. A damaged place document is skipped
    (logged once), never the end of the bridge.
    """

    def __init__(
        self, store: DocumentStore, dispatch: Dispatch, *, every: float, logger: logging.Logger
    ) -> None:
        self._store = store
        self._dispatch = dispatch
        self._every = every
        self._log = logger
        self._places: dict[str, Place] = {}
        self._newest: datetime | None = None
        self._damaged: set[str] = set()
        self.loaded = asyncio.Event()  # set after the first complete read

    async def refresh(self) -> bool:
        """Read what changed; True when the index was rebuilt."""
        changed = False
        cursor: str | None = None
        since = None if self._newest is None else self._newest - LOOKBACK
        while True:
            page = await self._store.find(Query(PLACES, since=since, limit=PAGE, cursor=cursor))
            for doc in page.items:
                changed |= self._take(doc)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        if changed:
            self._dispatch.places = PlaceIndex(self._places.values())
            self._log.info("places: %d in use", len(self._places))
        self.loaded.set()
        return changed

    def _take(self, doc: Document) -> bool:
        """Take one stored place; whether it changed what is in use."""
        try:
            place = place_from_doc(doc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if str(doc.get("_id")) not in self._damaged:
                self._damaged.add(str(doc.get("_id")))
                self._log.warning("place %r is damaged, not used: %s", doc.get("_id"), exc)
            return False
        newest = self._newest
        if place.updated_at is not None and (newest is None or place.updated_at > newest):
            self._newest = place.updated_at
        if place.removed_at is not None:
            self._dispatch.removed.add(place.id)
            return self._places.pop(place.id, None) is not None
        self._dispatch.removed.discard(place.id)
        if self._places.get(place.id) == place:
            return False
        self._places[place.id] = place
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                self._log.debug("places not read: %s", exc)
            except Exception:  # a chore's bug must not stop the bridge's ingestion
                self._log.exception("reading the places failed")
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
            except Exception:  # a chore's bug must not stop the bridge's ingestion
                self._log.exception("the offline sweep failed")
            await asyncio.sleep(self.every)
