"""Track exports (GPX, GeoJSON) over a real SQLite store, in-process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import gpxpy
import httpx
import pytest

from api import ApiDeps
from api.routes import exports
from api.tokens import create_token
from storage.base import TRACKINGS
from storage.sqlite import SQLiteDocumentStore
from tests.api.conftest import client_for
from tests.api.test_read import T0, point, put

TPX = "{http://www.garmin.com/xmlschemas/TrackPointExtension/v2}"
RANGE = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}


def track(aid: str, n: int) -> list[dict[str, Any]]:
    """``n`` points a second apart from T0, with altitude (every other one) and heading."""
    docs = []
    for i in range(n):
        doc = point(aid, i)
        doc["location"] = {"lat": 13.7 + i / 1000, "lon": 100.5 - i / 1000}
        doc["altitude"] = 10.5 + i if i % 2 == 0 else None
        docs.append(doc)
    return docs


async def test_gpx_parses_back_with_every_point_in_order(
    http: httpx.AsyncClient,
    store: SQLiteDocumentStore,
    ambulance_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that the GPX export, across several store pages, is every point oldest first."""
    docs = track(ambulance_id, 25)
    await put(store, TRACKINGS, *reversed(docs))
    await put(store, TRACKINGS, *track("other-ambulance", 3))
    monkeypatch.setattr(exports, "EXPORT_PAGE", 10)  # three pages
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.gpx", params=RANGE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gpx+xml"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{ambulance_id}_20260301T000000Z_20260302T000000Z.gpx"'
    )
    parsed = gpxpy.parse(response.text)
    [trk] = parsed.tracks
    [segment] = trk.segments
    got = [(p.latitude, p.longitude, p.time, p.elevation) for p in segment.points]
    assert got == [
        (d["location"]["lat"], d["location"]["lon"], d["count_datetime"], d["altitude"])
        for d in docs
    ]
    ext = segment.points[3].extensions[0]
    assert ext.tag == f"{TPX}TrackPointExtension"
    assert float(ext.find(f"{TPX}speed").text) == pytest.approx(30.0 / 3.6, abs=1e-3)
    assert float(ext.find(f"{TPX}course").text) == 90.0


async def test_geojson_is_one_linestring_with_its_times(
    http: httpx.AsyncClient,
    store: SQLiteDocumentStore,
    ambulance_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that GeoJSON is one LineString of [lon, lat] oldest first, times in coordTimes."""
    docs = track(ambulance_id, 25)
    await put(store, TRACKINGS, *docs)
    monkeypatch.setattr(exports, "EXPORT_PAGE", 10)  # three pages
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.geojson", params=RANGE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/geo+json"
    assert response.headers["content-disposition"].endswith('.geojson"')
    body = json.loads(response.text)
    assert body["type"] == "FeatureCollection"
    [feature] = body["features"]
    assert feature["geometry"] == {
        "type": "LineString",
        "coordinates": [[d["location"]["lon"], d["location"]["lat"]] for d in docs],
    }
    props = feature["properties"]
    assert [datetime.fromisoformat(t) for t in props["coordTimes"]] == [
        d["count_datetime"] for d in docs
    ]
    assert props["ambulance_id"] == ambulance_id
    assert (props["from"], props["to"], props["points"]) == (
        "2026-03-01T00:00:00.000Z", "2026-03-02T00:00:00.000Z", 25
    )


async def test_the_range_bounds_the_points(
    http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that `from` is inclusive and `to` exclusive, as in the track endpoint."""
    docs = track(ambulance_id, 10)
    await put(store, TRACKINGS, *docs)
    params = {"from": (T0 + timedelta(seconds=2)).isoformat(),
              "to": (T0 + timedelta(seconds=5)).isoformat()}
    gpx = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.gpx", params=params)
    times = [p.time for p in gpxpy.parse(gpx.text).tracks[0].segments[0].points]
    assert times == [d["count_datetime"] for d in docs[2:5]]
    geo = (await http.get(
        f"/api/v1/ambulances/{ambulance_id}/track.geojson", params=params
    )).json()
    assert len(geo["features"][0]["geometry"]["coordinates"]) == 3


async def test_empty_and_single_point_ranges_are_valid_documents(
    http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test an empty range (no points, no feature) and one point (a Point, not a LineString)."""
    gpx = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.gpx", params=RANGE)
    assert gpx.status_code == 200
    assert gpxpy.parse(gpx.text).tracks[0].segments[0].points == []
    empty = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.geojson", params=RANGE)
    assert empty.json() == {"type": "FeatureCollection", "features": []}
    [only] = track(ambulance_id, 1)
    await put(store, TRACKINGS, only)
    one = (await http.get(
        f"/api/v1/ambulances/{ambulance_id}/track.geojson", params=RANGE
    )).json()
    [feature] = one["features"]
    assert feature["geometry"] == {"type": "Point", "coordinates": [100.5, 13.7]}
    assert feature["properties"]["coordTimes"] == ["2026-03-01T04:33:12.250Z"]


async def test_the_range_defaults_to_the_last_24_hours(
    http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that without from/to the export covers the last 24 hours, up to now."""
    now = datetime.now(UTC).replace(microsecond=0)
    recent, old = point(ambulance_id, 0), point(ambulance_id, 1)
    recent["count_datetime"] = now - timedelta(hours=1)
    old["count_datetime"] = now - timedelta(hours=25)
    await put(store, TRACKINGS, recent, old)
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.gpx")
    assert [p.time for p in gpxpy.parse(response.text).tracks[0].segments[0].points] == [
        recent["count_datetime"]
    ]
    only_to = await http.get(
        f"/api/v1/ambulances/{ambulance_id}/track.geojson",
        params={"to": (now - timedelta(hours=24)).isoformat()},
    )
    assert only_to.json()["features"][0]["properties"]["coordTimes"] == [
        (now - timedelta(hours=25)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ]


@pytest.mark.parametrize("fmt", ["gpx", "geojson"])
@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-04-02T00:00:00Z"}, "31 days"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "before"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "before"),
        ({"from": "2026-01-01T00:00:00Z"}, "31 days"),  # to: now
        ({"from": "yesterday"}, "datetime"),
        ({"to": "0001-01-01T00:00:00"}, "range"),  # 24 h before year 1
    ],
)
async def test_bad_ranges_are_422(
    http: httpx.AsyncClient, ambulance_id: str, fmt: str, params: dict[str, str], says: str
) -> None:
    """Test that a reversed, empty, over-long, unparsable or unrepresentable range is a 422."""
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.{fmt}", params=params)
    assert response.status_code == 422, response.text
    assert says in response.text


async def test_exactly_31_days_is_allowed(http: httpx.AsyncClient, ambulance_id: str) -> None:
    """Test the bound itself: a range of exactly 31 days exports."""
    params = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.gpx", params=params)
    assert response.status_code == 200


@pytest.mark.parametrize("fmt", ["gpx", "geojson"])
async def test_tokens_are_checked_like_the_track(
    deps: ApiDeps, store: SQLiteDocumentStore, ambulance_id: str, fmt: str
) -> None:
    """Test no token 401, a token limited to another ambulance 403, to this one 200."""
    await put(store, TRACKINGS, *track(ambulance_id, 3))
    mine = await create_token(store, "exports-mine", [ambulance_id], actor="tests")
    other = await create_token(store, "exports-other", ["someone-else"], actor="tests")
    url = f"/api/v1/ambulances/{ambulance_id}/track.{fmt}"
    async with client_for(deps) as anonymous:
        refused = await anonymous.get(url, params=RANGE)
    async with client_for(deps, other) as client:
        forbidden = await client.get(url, params=RANGE)
    async with client_for(deps, mine) as client:
        allowed = await client.get(url, params=RANGE)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert forbidden.status_code == 403
    assert allowed.status_code == 200
    assert ambulance_id in allowed.text


async def test_exports_are_described_as_files(http: httpx.AsyncClient) -> None:
    """Test that the OpenAPI description gives each export's media type and its headers."""
    paths = (await http.get("/openapi.json")).json()["paths"]
    for ext, media in (("gpx", "application/gpx+xml"), ("geojson", "application/geo+json")):
        ok = paths[f"/api/v1/ambulances/{{ambulance_id}}/track.{ext}"]["get"]["responses"]["200"]
        assert list(ok["content"]) == [media]
        assert "Content-Disposition" in ok["headers"]
