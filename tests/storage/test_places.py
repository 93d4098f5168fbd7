"""Places on every document store: import, update, replace, remove as tombstones, audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.places import Place, places_from_geojson
from bridge.places_store import (
    PlaceNotFound,
    get_place,
    import_places,
    list_places,
    load_places,
    remove_place,
)
from storage.base import AUDIT, PLACES, DocumentStore, Query

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "places" / "chiang-mai.geojson"


def example() -> list[Place]:
    return places_from_geojson(json.loads(EXAMPLE.read_text()))


async def test_import_stores_places_that_load_back_equal(doc_store: DocumentStore) -> None:
    """Test that every place (polygons, circles, properties) loads back as imported."""
    places = example()
    result = await import_places(doc_store, places, actor="ops-lead")
    assert (result.added, result.updated, result.removed) == ([p.id for p in places], [], [])
    loaded = {p.id: p for p in await load_places(doc_store)}
    assert set(loaded) == {p.id for p in places}
    for place in places:
        got = loaded[place.id]
        assert got.updated_at is not None
        assert got.removed_at is None
        assert (got.name, got.kind, got.geometry, got.center, got.radius_m, got.properties) == (
            place.name, place.kind, place.geometry, place.center, place.radius_m,
            place.properties,
        )
    # One updated_at for all: in the store's order, by id.
    assert [p.id for p in await list_places(doc_store, "Station")] == [
        "station-nimman", "station-old-city", "station-san-kamphaeng"
    ]


async def test_update_replace_remove_and_reimport(doc_store: DocumentStore) -> None:
    """Test counts, tombstones (never deleted), 'not found' twice, and the audit records."""
    places = example()
    await import_places(doc_store, places, actor="ops-lead")
    again = await import_places(doc_store, places[:2], actor="ops-lead", replace=True)
    assert again.updated == [places[0].id, places[1].id]
    assert again.added == []
    assert sorted(again.removed) == sorted(p.id for p in places[2:])
    assert {p.id for p in await load_places(doc_store)} == {places[0].id, places[1].id}
    # Tombstones: still stored, with removed_at.
    stored = [doc async for doc in doc_store.scan(PLACES)]
    assert len(stored) == len(places)
    assert sum(doc["removed_at"] is not None for doc in stored) == len(places) - 2

    removed = await remove_place(doc_store, places[0].id, actor="ops-2")
    assert removed.removed_at is not None
    assert await get_place(doc_store, places[0].id) is None
    with pytest.raises(PlaceNotFound):
        await remove_place(doc_store, places[0].id, actor="ops-2")
    with pytest.raises(PlaceNotFound):
        await remove_place(doc_store, "never-was", actor="ops-2")

    back = await import_places(doc_store, places[:1], actor="ops-lead")
    assert (back.added, back.updated) == ([places[0].id], [])
    assert await get_place(doc_store, places[0].id) is not None

    audit = (await doc_store.find(Query(AUDIT, limit=10))).items
    assert [(r["actor"], r["action"], r["target"]) for r in audit] == [
        ("ops-lead", "places.import", "places"),
        ("ops-lead", "places.import", "places"),
        ("ops-2", "places.remove", places[0].id),
        ("ops-lead", "places.import", "places"),
    ]
    assert audit[1]["details"]["replace"] is True
    assert sorted(audit[1]["details"]["removed"]) == sorted(p.id for p in places[2:])
