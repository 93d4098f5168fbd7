"""The places API on the real app and store: read with any token, write with a dispatch one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import ApiDeps
from api.tokens import create_token
from storage.base import AUDIT, Query
from storage.sqlite import SQLiteDocumentStore
from tests.api.conftest import client_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "places" / "chiang-mai.geojson"


@pytest.fixture
async def http(deps: ApiDeps, store: SQLiteDocumentStore) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a fleet-wide dispatch token: places drive events and alarms."""
    token = await create_token(store, "api-tests", None, actor="tests", dispatch=True)
    async with client_for(deps, token) as client:
        yield client


def example() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return loaded


async def test_post_list_get_delete(http: httpx.AsyncClient, store: SQLiteDocumentStore) -> None:
    """Test the whole lifecycle through the API, and that writes are audited as the token."""
    posted = await http.post("/api/v1/places", json=example())
    assert posted.status_code == 200, posted.text
    body = posted.json()
    assert (body["added"], body["updated"], body["removed"]) == (7, 0, 0)
    assert "maharaj-nakorn" in body["ids"]["added"]

    listed = await http.get("/api/v1/places")
    assert listed.status_code == 200
    collection = listed.json()
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == 7
    hospitals = (await http.get("/api/v1/places", params={"kind": "hospital"})).json()
    assert sorted(f["id"] for f in hospitals["features"]) == [
        "bangkok-hospital-cm", "chiang-mai-ram", "maharaj-nakorn", "nakornping"
    ]

    one = await http.get("/api/v1/places/station-old-city")
    assert one.status_code == 200
    feature = one.json()
    assert feature["geometry"] == {"type": "Point", "coordinates": [98.9853, 18.7883]}
    assert (feature["properties"]["name"], feature["properties"]["radius_m"]) == (
        "Old City ambulance station", 80.0
    )

    # One Feature: an update (here, a rename).
    renamed = {**feature, "properties": {**feature["properties"], "name": "Tha Phae station"}}
    updated = (await http.post("/api/v1/places", json=renamed)).json()
    assert (updated["added"], updated["updated"]) == (0, 1)
    got = (await http.get("/api/v1/places/station-old-city")).json()
    assert got["properties"]["name"] == "Tha Phae station"

    deleted = await http.delete("/api/v1/places/station-old-city")
    assert deleted.status_code == 200
    assert deleted.json()["properties"]["removed_at"] is not None
    assert (await http.get("/api/v1/places/station-old-city")).status_code == 404
    assert (await http.delete("/api/v1/places/station-old-city")).status_code == 404
    assert (await http.delete("/api/v1/places/never-was")).status_code == 404
    assert len((await http.get("/api/v1/places")).json()["features"]) == 6

    audit = (await store.find(Query(AUDIT, limit=20))).items
    changes = [(r["actor"], r["action"], r["target"]) for r in audit]
    assert changes[1:] == [  # after the fixture's token.add
        ("api-tests", "places.import", "places"),
        ("api-tests", "places.import", "places"),
        ("api-tests", "places.remove", "station-old-city"),
    ]


async def test_invalid_bodies_are_422_naming_the_feature(http: httpx.AsyncClient) -> None:
    """Test that invalid GeoJSON is refused with the parser's message, and nothing stored."""
    collection = example()
    collection["features"][2]["geometry"]["coordinates"][0].pop()  # an open ring
    refused = await http.post("/api/v1/places", json=collection)
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "feature 2 ('nakornping'): a ring must be closed (last position = first)"
    )
    not_geojson = await http.post("/api/v1/places", json={"type": "Topology"})
    assert not_geojson.status_code == 422
    assert "got type 'Topology'" in not_geojson.json()["detail"]
    assert (await http.get("/api/v1/places")).json()["features"] == []


async def test_tokens_and_permissions(
    deps: ApiDeps, http: httpx.AsyncClient, store: SQLiteDocumentStore
) -> None:
    """Test 401 without a token; limited and read-only tokens read places, change none."""
    await http.post("/api/v1/places", json=example())
    async with client_for(deps) as anonymous:
        assert (await anonymous.get("/api/v1/places")).status_code == 401
        assert (await anonymous.post("/api/v1/places", json=example())).status_code == 401
    limited = await create_token(store, "kiosk", ["AMB-1"], actor="tests", dispatch=True)
    async with client_for(deps, limited) as kiosk:
        assert (await kiosk.get("/api/v1/places")).status_code == 200
        assert (await kiosk.get("/api/v1/places/nakornping")).status_code == 200
        refused = await kiosk.post("/api/v1/places", json=example())
        assert refused.status_code == 403
        assert refused.json()["detail"] == (
            "this token is limited to some ambulances: it may not dispatch the whole fleet"
        )
        assert (await kiosk.delete("/api/v1/places/nakornping")).status_code == 403
    # A read-only token, even fleet-wide (a wall screen's), reads places and changes none:
    # a removed station would make its parked ambulances raise offline alarms.
    screen = await create_token(store, "wall-screen", None, actor="tests")
    async with client_for(deps, screen) as wall:
        assert (await wall.get("/api/v1/places")).status_code == 200
        assert (await wall.delete("/api/v1/places/nakornping")).status_code == 403
        assert (await wall.post("/api/v1/places", json=example())).status_code == 403
    assert (await http.get("/api/v1/places/nakornping")).status_code == 200
