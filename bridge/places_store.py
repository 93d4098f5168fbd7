"""Places in the document store: import, list, remove, load. Shared by ``aoc places`` and the API.

A place is never deleted: removing it stores a tombstone (the document with
``removed_at`` set), so that events and alarms that name it still resolve,
and importing it again brings it back. Every change is recorded in the audit
log (``aoc.audit``) with its actor: the operator, or the API token's name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aoc import audit
from bridge.places_geojson import Place, place_doc, place_from_doc
from storage.base import PLACES, DocumentStore, Write

log = logging.getLogger(__name__)


class PlaceNotFound(LookupError):
    """No live place has this id (unknown, or removed already)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import changed, by place id."""

    added: list[str] = field(default_factory=list)  # new, or back from a tombstone
    updated: list[str] = field(default_factory=list)  # live before, replaced
    removed: list[str] = field(default_factory=list)  # tombstoned by --replace

    def as_json(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "ids": {"added": self.added, "updated": self.updated, "removed": self.removed},
        }


def _now() -> datetime:
    """Now, to the millisecond every store keeps (so what we return is what is stored)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def _all(store: DocumentStore) -> list[Place]:
    """Every stored place, tombstones included; a damaged document is logged and skipped."""
    found = []
    async for doc in store.scan(PLACES):
        try:
            found.append(place_from_doc(doc))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            log.warning("skipping damaged place %r: %s", doc.get("_id"), exc)
    return found


async def load_places(store: DocumentStore) -> list[Place]:
    """The live places (not removed), oldest update first."""
    return [p for p in await _all(store) if p.removed_at is None]


async def list_places(store: DocumentStore, kind: str | None = None) -> list[Place]:
    """The live places, of ``kind`` only when given (compared in lower case)."""
    live = await load_places(store)
    return live if kind is None else [p for p in live if p.kind == kind.strip().lower()]


async def get_place(store: DocumentStore, place_id: str) -> Place | None:
    """The live place ``place_id``, or None."""
    doc = await store.get(PLACES, place_id)
    if doc is None:
        return None
    try:
        place = place_from_doc(doc)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.warning("damaged place %r: %s", place_id, exc)
        return None
    return place if place.removed_at is None else None


async def import_places(
    store: DocumentStore, places: Sequence[Place], *, actor: str, replace: bool = False
) -> ImportResult:
    """Upsert ``places`` (each with a new ``updated_at``), in one ``apply``, and audit it.

    ``replace``: tombstone the live stored places that ``places`` does not name.
    """
    now = _now()
    stored = {p.id: p for p in await _all(store)}
    result = ImportResult()
    writes = []
    for place in places:
        before = stored.get(place.id)
        live_before = before is not None and before.removed_at is None
        (result.updated if live_before else result.added).append(place.id)
        fresh = _with_times(place, updated_at=now, removed_at=None)
        writes.append(Write(PLACES, "upsert", place_doc(fresh)))
    if replace:
        named = {p.id for p in places}
        for old in stored.values():
            if old.removed_at is None and old.id not in named:
                result.removed.append(old.id)
                writes.append(Write(PLACES, "upsert", place_doc(_with_times(old, now, now))))
    if writes:
        await store.apply(writes)
    await audit.record(
        store, actor=actor, action="places.import", target="places",
        details={**result.as_json()["ids"], "replace": replace},
    )
    return result


async def remove_place(store: DocumentStore, place_id: str, *, actor: str) -> Place:
    """Tombstone the live place ``place_id``; ``PlaceNotFound`` if there is none."""
    place = await get_place(store, place_id)
    if place is None:
        raise PlaceNotFound(f"no place {place_id!r}")
    now = _now()
    removed = _with_times(place, updated_at=now, removed_at=now)
    await store.apply([Write(PLACES, "upsert", place_doc(removed))])
    await audit.record(store, actor=actor, action="places.remove", target=place_id,
                       details={"name": place.name, "kind": place.kind})
    return removed


def _with_times(place: Place, updated_at: datetime, removed_at: datetime | None) -> Place:
    return replace(place, updated_at=updated_at, removed_at=removed_at)
