"""Track exports (GPX, GeoJSON) over a real SQLite store, in-process."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gpxpy
import httpx
import pytest

from api import ApiDeps
from api.routes import exports
from api.tokens import create_token
from storage.base import TRACKINGS, Write
from storage.sqlite import SQLiteDocumentStore
from tests import services
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


# A 100,000-point export through a real `aoc api`: streamed, in flat memory.

BIG = 100_000
# What the server may grow by while exporting them. Holding the range instead
# would take far more: 100,000 points read from SQLite and kept as documents
# grew a process by 114 MB (measured), before any GPX object or text of them.
MAX_GROWTH_MB = 30
LATE_AFTER = 1024 * 1024  # bytes received before a point is added at the range's end
CLIENT_RCVBUF = 64 * 1024  # fixed, so the kernel cannot grow it into a buffer of the whole body


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def in_flight_bytes() -> int:
    """The most that can be on the way between the server and a client that stops reading.

    The server's send buffer (at most tcp_wmem's maximum), the client's
    receive buffer (SO_RCVBUF, doubled by the kernel), uvicorn's 64 KiB
    high-water mark, and a margin.
    """
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return wmem_max + 2 * CLIENT_RCVBUF + 64 * 1024 + 1024 * 1024


async def seed_big(path: Path, aid: str) -> None:
    async with SQLiteDocumentStore(path) as store:
        for start in range(0, BIG, 10_000):
            await store.apply([
                Write(TRACKINGS, "insert", point(aid, i)) for i in range(start, start + 10_000)
            ])


async def export_flat(
    client: httpx.AsyncClient, url: str, pid: int, late: dict[str, Any] | None, store_path: Path
) -> tuple[bytes, list[float]]:
    """The body of ``url``, with the server's RSS before, at the first chunk and at its peak.

    Once the first ``LATE_AFTER`` bytes are in, ``late`` (if any) is stored:
    it is the range's newest point, so it is in the body only if the server
    still had the range's end to read, i.e. it was reading pages as it sent
    them, not sending what it had read up front.
    """
    before = rss_mb(pid)
    chunks = []
    async with client.stream("GET", url, params={
        "from": T0.isoformat(), "to": (T0 + timedelta(days=2)).isoformat()
    }) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers  # chunked: sent as written
        stream = response.aiter_raw()
        chunks.append(await anext(stream))
        first = peak = rss_mb(pid)
        received = len(chunks[0])
        async for chunk in stream:
            chunks.append(chunk)
            if late is not None and received < LATE_AFTER <= received + len(chunk):
                async with SQLiteDocumentStore(store_path) as store:
                    await store.apply([Write(TRACKINGS, "insert", late)])
            received += len(chunk)
            if len(chunks) % 20 == 0:
                peak = max(peak, rss_mb(pid))
    peak = max(peak, rss_mb(pid))
    return b"".join(chunks), [before, first, peak]


async def test_a_100k_point_export_streams_in_flat_memory(
    tmp_path: Path, mosquitto: services.Service, redis_server: services.Service
) -> None:
    """Test a real `aoc api` streaming 100,000 points as GPX and GeoJSON without holding them."""
    aid = "amb-big"
    server = services.aoc("api", tmp_path, mqtt_port=mosquitto.port, redis_port=redis_server.port)
    store_path = Path(server.env["AOC_DATA_DIR"]) / "aoc.sqlite3"
    await seed_big(store_path, aid)
    late = point(aid, BIG)
    transport = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)]
    )
    with server:
        assert server.proc is not None
        pid = server.proc.pid
        async with httpx.AsyncClient(
            transport=transport, base_url=f"http://127.0.0.1:{server.port}",
            headers=server.auth_headers, timeout=60,
        ) as client:
            gpx, gpx_rss = await export_flat(
                client, f"/api/v1/ambulances/{aid}/track.gpx", pid, late, store_path
            )
            geojson, geojson_rss = await export_flat(
                client, f"/api/v1/ambulances/{aid}/track.geojson", pid, None, store_path
            )
    print(f"server RSS MB (before, first chunk, peak): GPX {gpx_rss}, GeoJSON {geojson_rss}")
    # The late point proves streaming only if the GPX body is longer than what was
    # received when it was stored plus what can be in the buffers between. (The
    # GeoJSON coordinates are too short for that proof: it is checked for memory.)
    assert len(gpx) > LATE_AFTER + in_flight_bytes()
    ET.fromstring(gpx)  # well-formed
    assert gpx.count(b"<trkpt ") == BIG + 1
    last_time = gpx[gpx.rindex(b"<time>") + 6:gpx.rindex(b"</time>")].decode()
    assert datetime.fromisoformat(last_time) == late["count_datetime"]
    feature = json.loads(geojson)["features"][0]
    assert feature["properties"]["points"] == BIG + 1
    assert len(feature["geometry"]["coordinates"]) == BIG + 1
    for before, _first, peak in (gpx_rss, geojson_rss):
        assert peak - before < MAX_GROWTH_MB


@pytest.mark.parametrize("case", [(0, None), (1, "Point"), (2, "LineString")])
async def test_geojson_geometry_follows_the_usable_points_across_pages(
    http: httpx.AsyncClient,
    store: SQLiteDocumentStore,
    ambulance_id: str,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[int, str | None],
) -> None:
    """Test points without a location filling the first pages: the type is the total's.

    A LineString of 0 or 1 positions is invalid GeoJSON (RFC 7946: two or more).
    """
    usable, geometry = case
    docs = track(ambulance_id, 25)
    for doc in docs[: 25 - usable]:
        doc["location"] = None
    await put(store, TRACKINGS, *docs)
    monkeypatch.setattr(exports, "EXPORT_PAGE", 10)  # three pages
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.geojson", params=RANGE)
    assert response.status_code == 200, response.text
    features = response.json()["features"]
    assert [f["geometry"]["type"] for f in features] == ([geometry] if geometry else [])
    if geometry:
        [feature] = features
        kept = docs[25 - usable:]
        positions = [[d["location"]["lon"], d["location"]["lat"]] for d in kept]
        assert feature["geometry"]["coordinates"] == (positions[0] if usable == 1 else positions)
        assert len(feature["properties"]["coordTimes"]) == feature["properties"]["points"] == usable


@pytest.mark.parametrize(
    ("heading", "course"), [(359.96, "0.0"), (359.94, "359.9"), (-0.04, "0.0"), (720.06, "0.1")]
)
async def test_gpx_course_stays_below_360(
    http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str,
    heading: float, course: str,
) -> None:
    """Test a heading that rounds up to 360.0: written as 0.0 (a course is in [0, 360))."""
    [doc] = track(ambulance_id, 1)
    doc["heading"] = heading
    await put(store, TRACKINGS, doc)
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track.gpx", params=RANGE)
    [point] = gpxpy.parse(response.text).tracks[0].segments[0].points
    assert point.extensions[0].find(f"{TPX}course").text == course
