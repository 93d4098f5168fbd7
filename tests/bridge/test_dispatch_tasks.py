"""Tests of the bridge's dispatch chores (bridge.dispatch_tasks) on a real SQLite store."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from bridge.dispatch import Dispatch
from bridge.dispatch_tasks import OfflineSweep, PlaceWatch
from bridge.messages import Check
from bridge.places import place_doc, places_from_geojson
from storage.base import AMBULANCES, PLACES, Write
from storage.sqlite import SQLiteDocumentStore

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
LOG = logging.getLogger("tests.dispatch_tasks")


def circle(place_id: str, updated_at: datetime) -> Write:
    feature = {"type": "Feature", "id": place_id,
               "properties": {"name": place_id, "kind": "station", "radius_m": 80},
               "geometry": {"type": "Point", "coordinates": [98.95, 18.8]}}
    doc = place_doc(places_from_geojson(feature)[0]) | {"updated_at": updated_at}
    return Write(PLACES, "upsert", doc)


async def test_a_damaged_place_is_skipped_and_logged_once(
    store: SQLiteDocumentStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that one bad place document costs that place, not the bridge."""
    await store.apply([
        circle("good", T0),
        Write(PLACES, "upsert", {"_id": "bad", "ambulance_id": None, "updated_at": T0,
                                 "name": "Bad", "kind": "station", "geometry": None,
                                 "radius_m": None}),
    ])
    dispatch = Dispatch()
    watch = PlaceWatch(store, dispatch, every=1.0, logger=LOG)
    with caplog.at_level(logging.WARNING):
        assert await watch.refresh()
        await watch.refresh()
    assert [p.id for p in dispatch.places.places] == ["good"]
    assert watch.loaded.is_set()
    assert sum("'bad'" in r.getMessage() for r in caplog.records) == 1


async def test_a_place_written_late_with_an_older_time_is_still_read(
    store: SQLiteDocumentStore,
) -> None:
    """Test the look-back: another process's clock behind, or its write committed later."""
    dispatch = Dispatch()
    watch = PlaceWatch(store, dispatch, every=1.0, logger=LOG)
    await store.apply([circle("newer", T0 + timedelta(seconds=10))])
    await watch.refresh()
    await store.apply([circle("older", T0)])
    await watch.refresh()
    assert dispatch.places.get("older") is not None
    removed = circle("older", T0 + timedelta(seconds=20))
    removed.doc["removed_at"] = T0 + timedelta(seconds=20)
    await store.apply([removed])
    await watch.refresh()
    assert dispatch.places.get("older") is None and "older" in dispatch.removed


async def test_the_sweep_asks_about_silent_ambulances_only(store: SQLiteDocumentStore) -> None:
    """Test candidates: silent over the bound and not handled; heard ones and handled ones not."""
    now = T0 + timedelta(hours=1)
    docs = {
        "silent": {"last_seen": T0, "heard_at": T0, "silence_handled": None},
        "handled": {"last_seen": T0, "heard_at": T0, "silence_handled": True},
        "recent": {"last_seen": now, "heard_at": now, "silence_handled": None},
        # Its device clock lags: last_seen is old, but it was heard a minute ago.
        "lagging": {"last_seen": T0, "heard_at": now - timedelta(minutes=1),
                    "silence_handled": None},
    }
    await store.apply([
        Write(AMBULANCES, "upsert", {"_id": aid, "ambulance_id": aid, **fields})
        for aid, fields in docs.items()
    ])
    asked: list[Check] = []

    async def put(check: Check) -> None:
        asked.append(check)

    sweep = OfflineSweep(store, put, after=300.0, logger=LOG, clock=lambda: now)
    assert await sweep.sweep() == 1
    assert asked == [Check("silent", now)]
