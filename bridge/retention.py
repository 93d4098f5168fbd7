"""Retention: old records (and the images of old snapshots) go away on schedule.

Each kind has its own bound in days (``AOC_RETENTION_*_DAYS``; 0 keeps it
forever, the default):

- ``tracking``: the points (``ambulance_trackings``);
- ``snapshots``: the snapshot records (``ambulance_image_histories``, and an
  ambulance's current images in ``ambulance_images``) with their image objects;
- ``crashes``: ``ambulance_crashes``;
- ``audit``: the audit log of account and token changes;
- ``reports``: what the points meant, which may outlive them: trips, stops,
  speed violations and dispatch events (enter, exit, arrival).

Never expired: ambulance states, places, API tokens, and alarms (an open alarm
may be old; closed ones are few and are the dispatch's record). Dead letters
keep their own bounds (``bridge.deadletters``).

``RetentionSweep`` runs in ``aoc serve`` and ``aoc bridge``. It first hands the
bounds to the store (``DocumentStore.set_retention``): MongoDB enforces them
with TTL indexes, except for snapshots, whose images must go first. The rest it
deletes itself every ``every`` seconds, ``batch`` records per step (one short
transaction), with a pause between steps so the bridge's writes interleave:
for a snapshot, its images are deleted before its record, so a crash between
leaves a record without images for one sweep, never images without a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aoc import metrics
from storage.base import (
    AUDIT,
    CRASHES,
    EVENTS,
    IMAGE_HISTORIES,
    IMAGES,
    SPEED_VIOLATIONS,
    STOPS,
    TRACKINGS,
    TRIPS,
    Document,
    DocumentStore,
    ObjectStore,
    Query,
    StoreUnavailable,
)
from storage.codec import validate_key

if TYPE_CHECKING:
    from aoc.config import Settings

log = logging.getLogger(__name__)

# The collections of each kind.
KINDS: Mapping[str, tuple[str, ...]] = {
    "tracking": (TRACKINGS,),
    "snapshots": (IMAGE_HISTORIES, IMAGES),
    "crashes": (CRASHES,),
    "audit": (AUDIT,),
    "reports": (TRIPS, STOPS, SPEED_VIOLATIONS, EVENTS),
}
# Collections whose records name image objects (``images``: name -> key).
WITH_IMAGES = frozenset({IMAGE_HISTORIES, IMAGES})
BATCH = 500
PAUSE_S = 0.1
DELETES_AT_ONCE = 16  # image deletions in flight


def bounds(days: Mapping[str, float]) -> dict[str, timedelta | None]:
    """Each collection's bound from each kind's days (0 or absent: None, kept forever)."""
    return {
        collection: timedelta(days=days[kind]) if days.get(kind) else None
        for kind, collections in KINDS.items()
        for collection in collections
    }


def days_from_settings(settings: Settings) -> dict[str, float]:
    """The days of each kind from ``AOC_RETENTION_*_DAYS``."""
    return {
        "tracking": settings.retention_tracking_days,
        "snapshots": settings.retention_snapshots_days,
        "crashes": settings.retention_crashes_days,
        "audit": settings.retention_audit_days,
        "reports": settings.retention_reports_days,
    }


def image_keys(docs: Iterable[Document]) -> list[str]:
    """The valid object keys the snapshot records ``docs`` name (each once)."""
    keys: dict[str, None] = {}
    for doc in docs:
        images = doc.get("images")
        if not isinstance(images, dict):
            continue
        for key in images.values():
            try:
                keys[validate_key(key)] = None
            except (TypeError, ValueError):
                log.debug("snapshot %s names no valid object key: %r", doc.get("_id"), key)
    return list(keys)


class RetentionSweep:
    """Applies the retention bounds to one store and its objects, in small steps."""

    def __init__(
        self,
        *,
        store: DocumentStore,
        objects: ObjectStore,
        days: Mapping[str, float],
        every: float = 3600.0,
        batch: int = BATCH,
        pause: float = PAUSE_S,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        logger: logging.Logger | None = None,
    ) -> None:
        """``days``: each kind's bound (``KINDS``); ``now`` dates the cutoffs (tests fix it)."""
        unknown = set(days) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown retention kinds: {sorted(unknown)}")
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._store = store
        self._objects = objects
        self._days = dict(days)
        self._bounds = bounds(days)
        self._every = every
        self._batch = batch
        self._pause = pause
        self._now = now
        self._log = logger or log
        self._enforced: frozenset[str] | None = None  # by the store itself, once told
        self._stop = asyncio.Event()
        self._failing = False

    async def sweep(self) -> dict[str, int]:
        """One sweep now: what it deleted, by kind (``images``: objects); ``StoreUnavailable``."""
        enforced = self._enforced
        if enforced is None:
            enforced = await self._set_retention()
        now = self._now()
        deleted: dict[str, int] = {}
        for kind, collections in KINDS.items():
            if not self._days.get(kind):
                continue
            before = now - timedelta(days=self._days[kind])
            for collection in collections:
                if collection in enforced or self._stop.is_set():
                    continue
                records, images = await self._expire(collection, before)
                for name, number in ((kind, records), ("images", images)):
                    if number:
                        deleted[name] = deleted.get(name, 0) + number
                        metrics.RETENTION_DELETED.labels(name).inc(number)
        if deleted:
            counts = ", ".join(f"{number} {name}" for name, number in deleted.items())
            self._log.info("retention: deleted %s", counts)
        return deleted

    async def _set_retention(self) -> frozenset[str]:
        """Hand the bounds to the store: what it expires itself (none if it refused)."""
        try:
            self._enforced = await self._store.set_retention(self._bounds)
        except StoreUnavailable:
            raise
        except Exception:
            # E.g. MongoDB refusing an index (OperationFailure): this sweep deletes
            # everything itself, and the next one asks the store again.
            self._log.exception("retention: the store could not set its own expiry; "
                                "the sweep deletes instead")
            return frozenset()
        return self._enforced

    async def _expire(self, collection: str, before: datetime) -> tuple[int, int]:
        """Expire ``collection`` before ``before`` step by step: (records, images) deleted."""
        records = images = 0
        while True:
            if collection in WITH_IMAGES:
                # Images first: read the step's records, delete their objects,
                # then the records (and the objects of any that came meanwhile).
                page = await self._store.find(Query(collection, until=before, limit=self._batch))
                images += await self._delete_objects(image_keys(page.items))
                gone = await self._store.expire(
                    collection, before, limit=max(1, len(page.items))
                )
                seen = {doc["_id"] for doc in page.items}
                images += await self._delete_objects(
                    image_keys(doc for doc in gone if doc["_id"] not in seen)
                )
                full = len(page.items) >= self._batch
            else:
                gone = await self._store.expire(collection, before, limit=self._batch)
                full = len(gone) >= self._batch
            records += len(gone)
            if collection == IMAGES:
                # The current images are a snapshot's whose history record names
                # them too: deleted again (harmless) but counted once, there.
                images = 0
            if not full or self._stop.is_set():
                return records, images
            await asyncio.sleep(self._pause)  # the bridge's writes go between steps

    async def _delete_objects(self, keys: list[str]) -> int:
        for start in range(0, len(keys), DELETES_AT_ONCE):
            chunk = keys[start : start + DELETES_AT_ONCE]
            await asyncio.gather(*(self._objects.delete(key) for key in chunk))
        return len(keys)

    async def run(self) -> None:
        """Sweep now, then every ``every`` seconds until ``stop``; a failure skips a sweep."""
        while not self._stop.is_set():
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                if not self._failing:
                    self._failing = True
                    self._log.warning(
                        "retention sweep failed, retrying every %.0f s: %s", self._every, exc
                    )
            except Exception:
                # Not an outage, yet no reason to stop expiring for good: tried again
                # next time, and logged each time (a bug or a refusal to look at).
                self._failing = True
                self._log.exception("retention sweep failed, retrying in %.0f s", self._every)
            else:
                if self._failing:
                    self._failing = False
                    self._log.warning("retention sweep works again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every):
                    await self._stop.wait()

    def stop(self) -> None:
        """End ``run`` (after the current step)."""
        self._stop.set()
