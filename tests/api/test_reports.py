"""The reports API over trips and stops seeded into a real SQLite store.

The bridge rule that writes trips and stops (``bridge.trips``) is built apart:
these tests seed stored documents of exactly its shape (docs: the history
contract of issue 14) and check what the reports make of them.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api import ApiDeps
from api.csvout import wants_csv
from api.routes import reports as routes
from api.tokens import create_token
from storage.base import STOPS, TRIPS, Write
from storage.sqlite import SQLiteDocumentStore
from tests.api.conftest import client_for

D1 = datetime(2026, 3, 1, tzinfo=UTC)
D2 = D1 + timedelta(days=1)
D3 = D1 + timedelta(days=2)
HERE = {"lat": 13.75, "lon": 100.5}
THERE = {"lat": 13.76, "lon": 100.53}


def trip(aid: str, start: datetime, seconds: float, distance: float, *, max_speed: float,
         overspeed_s: float = 0.0, episodes: int = 0, crashes: int = 0, snapshots: int = 0,
         open_: bool = False) -> dict[str, Any]:
    """A stored trip document as the bridge rule writes it."""
    return {
        "_id": f"{aid}.trip.{int(start.timestamp() * 1000)}", "ambulance_id": aid,
        "started_at": start, "ended_at": None if open_ else start + timedelta(seconds=seconds),
        "start_location": HERE, "end_location": THERE, "start_place": "Depot",
        "end_place": "Siriraj Hospital", "distance_m": distance, "duration_s": seconds,
        "max_speed": max_speed, "avg_speed": distance / seconds * 3.6,
        "overspeed_s": overspeed_s, "overspeed_episodes": episodes, "points": int(seconds // 5),
        "crashes": crashes, "snapshots": snapshots, "open": open_,
    }


def stop(aid: str, start: datetime, seconds: float, *, place: str | None = "Siriraj Hospital",
         crashes: int = 0, snapshots: int = 0, open_: bool = False) -> dict[str, Any]:
    """A stored stop document as the bridge rule writes it."""
    return {
        "_id": f"{aid}.stop.{int(start.timestamp() * 1000)}", "ambulance_id": aid,
        "started_at": start, "ended_at": None if open_ else start + timedelta(seconds=seconds),
        "location": THERE, "place_id": "siriraj" if place else None, "place": place,
        "duration_s": seconds, "crashes": crashes, "snapshots": snapshots, "open": open_,
    }


SEEDED_TRIPS = [
    trip("amb-a", D1 + timedelta(hours=8), 1800, 12000.0, max_speed=95.0, snapshots=1),
    # 23:30 UTC: 06:30 the next day in Bangkok.
    trip("amb-a", D1 + timedelta(hours=23, minutes=30), 1200, 20000.0, max_speed=131.4,
         overspeed_s=90, episodes=2, crashes=1),
    trip("amb-a", D3 + timedelta(hours=10), 300, 2500.56, max_speed=60.04, open_=True),
    trip("amb-b", D1 + timedelta(hours=12), 3600, 40000.3, max_speed=121.06, overspeed_s=150,
         episodes=1, snapshots=2),
    trip("amb-b", D2 + timedelta(hours=9), 600, 5000.0, max_speed=70.0),
]
SEEDED_STOPS = [
    stop("amb-a", D1 + timedelta(hours=8, minutes=30), 600),
    stop("amb-a", D2, 900),
    stop("amb-b", D1 + timedelta(hours=13), 1800, crashes=1, place="=HYPERLINK(1)"),
    stop("amb-c", D2 + timedelta(hours=15), 7200, place=None, open_=True),
]
ZERO = {
    "distance_m": 0.0, "driving_s": 0.0, "stopped_s": 0.0, "max_speed": 0.0,
    "overspeed_episodes": 0, "overspeed_minutes": 0.0, "crashes": 0, "snapshots": 0,
    "trips": 0, "stops": 0,
}
EXPECTED = {
    "amb-a": {
        "ambulance_id": "amb-a", "distance_m": 34500.6, "driving_s": 3300.0, "stopped_s": 1500.0,
        "max_speed": 131.4, "overspeed_episodes": 2, "overspeed_minutes": 1.5, "crashes": 1,
        "snapshots": 1, "trips": 3, "stops": 2,
    },
    "amb-b": {
        "ambulance_id": "amb-b", "distance_m": 45000.3, "driving_s": 4200.0, "stopped_s": 1800.0,
        "max_speed": 121.1, "overspeed_episodes": 1, "overspeed_minutes": 2.5, "crashes": 1,
        "snapshots": 2, "trips": 2, "stops": 1,
    },
    "amb-c": {"ambulance_id": "amb-c", **ZERO, "stopped_s": 7200.0, "stops": 1},
}


@pytest.fixture
async def seeded(store: SQLiteDocumentStore) -> None:
    """The stored trips and stops of three ambulances over three days."""
    await store.apply([Write(TRIPS, "upsert", doc) for doc in SEEDED_TRIPS]
                      + [Write(STOPS, "upsert", doc) for doc in SEEDED_STOPS])


def parse_csv(response: httpx.Response) -> list[dict[str, str]]:
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


async def pages(http: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged report, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        response = await http.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("paging did not end")


@pytest.mark.usefixtures("seeded")
async def test_summary_of_seeded_stored_trips_is_exact(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/reports/summary",
                              params={"from": "2026-03-01", "to": "2026-03-03"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ambulances"] == [EXPECTED["amb-a"], EXPECTED["amb-b"], EXPECTED["amb-c"]]
    assert body["total"] == {
        "distance_m": 79500.9, "driving_s": 7500.0, "stopped_s": 10500.0, "max_speed": 131.4,
        "overspeed_episodes": 3, "overspeed_minutes": 4.0, "crashes": 2, "snapshots": 3,
        "trips": 5, "stops": 4,
    }
    assert (body["tz"], body["from"], body["to"]) == (
        "UTC", "2026-03-01T00:00:00Z", "2026-03-04T00:00:00Z"
    )


@pytest.mark.usefixtures("seeded")
async def test_summary_of_seeded_stored_trips_for_one_ambulance(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/reports/summary", params={
        "from": "2026-03-01", "to": "2026-03-03", "ambulance_id": "amb-b"})
    assert response.json()["ambulances"] == [EXPECTED["amb-b"]]
    # An ambulance without anything in the range is listed with zeros when asked for.
    idle = await http.get("/api/v1/reports/summary", params={
        "from": "2026-03-01", "to": "2026-03-03", "ambulance_id": "amb-idle"})
    assert idle.json()["ambulances"] == [{"ambulance_id": "amb-idle", **ZERO}]
    # Only the first day: amb-b's trip and stop of the 1st.
    first = await http.get("/api/v1/reports/summary", params={
        "from": "2026-03-01", "to": "2026-03-01", "ambulance_id": "amb-b"})
    row = first.json()["ambulances"][0]
    assert (row["trips"], row["stops"], row["distance_m"]) == (1, 1, 40000.3)


@pytest.mark.usefixtures("seeded")
async def test_bangkok_days_of_seeded_stored_trips(http: httpx.AsyncClient) -> None:
    """A trip at 23:30 UTC on the 1st belongs to the 2nd in Bangkok (UTC+7), not in UTC."""
    day = {"from": "2026-03-02", "to": "2026-03-02", "ambulance_id": "amb-a"}
    bangkok = (await http.get("/api/v1/reports/summary",
                              params={**day, "tz": "Asia/Bangkok"})).json()
    assert (bangkok["from"], bangkok["to"]) == (
        "2026-03-02T00:00:00+07:00", "2026-03-03T00:00:00+07:00")
    row = bangkok["ambulances"][0]
    assert (row["trips"], row["distance_m"], row["stops"]) == (1, 20000.0, 1)
    utc = (await http.get("/api/v1/reports/summary", params=day)).json()["ambulances"][0]
    assert (utc["trips"], utc["distance_m"], utc["stops"]) == (0, 0.0, 1)

    trips = await http.get("/api/v1/reports/trips", params={**day, "tz": "Asia/Bangkok"})
    [item] = trips.json()["items"]
    assert item["started_at"] == "2026-03-02T06:30:00+07:00"
    assert item["ended_at"] == "2026-03-02T06:50:00+07:00"


@pytest.mark.usefixtures("seeded")
async def test_datetime_bounds_with_an_offset(http: httpx.AsyncClient) -> None:
    # [08:00Z, 12:00Z) on the 1st: amb-a's first trip and stop, not amb-b's trip at 12:00.
    response = await http.get("/api/v1/reports/summary", params={
        "from": "2026-03-01T15:00:00+07:00", "to": "2026-03-01T12:00:00Z"})
    body = response.json()
    assert body["from"] == "2026-03-01T08:00:00Z"
    assert [(r["ambulance_id"], r["trips"], r["stops"]) for r in body["ambulances"]] == [
        ("amb-a", 1, 1)
    ]


def _floats(row: dict[str, str], names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(row[name]) for name in names}


@pytest.mark.usefixtures("seeded")
async def test_csv_of_seeded_stored_trips_matches_the_json(http: httpx.AsyncClient) -> None:
    params = {"from": "2026-03-01", "to": "2026-03-03", "tz": "Asia/Bangkok"}
    summary = (await http.get("/api/v1/reports/summary", params=params)).json()
    by_format = await http.get("/api/v1/reports/summary", params={**params, "format": "csv"})
    by_accept = await http.get("/api/v1/reports/summary", params=params,
                               headers={"Accept": "text/csv"})
    assert by_format.text == by_accept.text
    rows = parse_csv(by_format)
    assert [row["ambulance_id"] for row in rows] == [
        row["ambulance_id"] for row in summary["ambulances"]]
    for row, expected in zip(rows, summary["ambulances"], strict=True):
        assert (row["from"], row["to"]) == (summary["from"], summary["to"])
        assert _floats(row, tuple(ZERO)) == {name: float(expected[name]) for name in ZERO}

    for path, columns in (("/api/v1/reports/trips", routes.TRIP_COLUMNS),
                          ("/api/v1/reports/stops", routes.STOP_COLUMNS)):
        items = await pages(http, path, **params, limit=2)
        csv_rows = parse_csv(await http.get(path, params={**params, "format": "csv",
                                                          "limit": 2}))
        assert len(csv_rows) == len(items) > 0
        assert list(csv_rows[0]) == list(columns)
        for row, item in zip(csv_rows, items, strict=True):
            assert row["id"] == item["id"]
            assert row["started_at"] == item["started_at"]
            assert row["started_at"].endswith("+07:00")
            assert row["ended_at"] == (item["ended_at"] or "")
            assert row["open"] == ("true" if item["open"] else "false")
            assert float(row["duration_s"]) == item["duration_s"]
            assert float(row["crashes"]) == item["crashes"]
            if path.endswith("trips"):
                assert float(row["distance_m"]) == item["distance_m"]
                assert float(row["max_speed"]) == item["max_speed"]
                assert float(row["start_location.lat"]) == item["start_location"]["lat"]
            elif item["place"] is not None and not item["place"].startswith("="):
                assert row["place"] == item["place"]
    # A place name a spreadsheet would run as a formula is written as text.
    stops = parse_csv(await http.get("/api/v1/reports/stops", params={**params, "format": "csv"}))
    assert "'=HYPERLINK(1)" in [row["place"] for row in stops]


@pytest.mark.usefixtures("seeded")
async def test_paging_of_seeded_stored_trips(http: httpx.AsyncClient) -> None:
    params = {"from": "2026-03-01", "to": "2026-03-03", "limit": 2}
    newest = await pages(http, "/api/v1/reports/trips", **params)
    starts = [item["started_at"] for item in newest]
    assert len(newest) == len(SEEDED_TRIPS)
    assert starts == sorted(starts, reverse=True)
    oldest = await pages(http, "/api/v1/reports/trips", **params, order="oldest")
    assert [item["id"] for item in oldest] == [item["id"] for item in reversed(newest)]
    first = (await http.get("/api/v1/reports/trips", params=params)).json()
    assert first["next_cursor"] is not None and len(first["items"]) == 2
    mine = await pages(http, "/api/v1/reports/stops", **params, ambulance_id="amb-a")
    assert [item["id"] for item in mine] == [d["_id"] for d in reversed(SEEDED_STOPS[:2])]


@pytest.mark.usefixtures("seeded")
async def test_csv_of_seeded_stored_trips_spans_pages_and_is_capped(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "READ_PAGE", 2)
    params = {"from": "2026-03-01", "to": "2026-03-03", "format": "csv", "order": "oldest"}
    rows = parse_csv(await http.get("/api/v1/reports/trips", params=params))
    assert [row["id"] for row in rows] == sorted(
        (d["_id"] for d in SEEDED_TRIPS), key=lambda i: int(i.rsplit(".", 1)[1]))
    monkeypatch.setattr(routes, "CSV_MAX_ROWS", 3)
    capped = parse_csv(await http.get("/api/v1/reports/trips", params=params))
    assert [row["id"] for row in capped] == [row["id"] for row in rows[:3]]


@pytest.mark.parametrize(("params", "field"), [
    ({"from": "2026-03-01", "to": "2026-03-02", "tz": "Mars/Olympus"}, "tz"),
    ({"from": "2026-03-01", "to": "2026-03-02", "tz": "../../etc/passwd"}, "tz"),
    ({"from": "yesterday", "to": "2026-03-02"}, "from"),
    ({"from": "2026-02-30", "to": "2026-03-02"}, "from"),
    ({"from": "2026-03-01", "to": "20260302"}, "to"),  # a day only as YYYY-MM-DD
    ({"from": "2026-03-02", "to": "2026-03-01"}, "to"),
    ({"from": "2026-03-01T10:00:00Z", "to": "2026-03-01T10:00:00Z"}, "to"),
    ({"from": "2025-01-01", "to": "2026-01-02"}, "to"),  # 367 days
    ({"from": "2026-03-01", "to": "9999-12-31"}, "to"),  # its day after overflows
    ({"from": "0001-01-01", "to": "0001-01-02", "tz": "Asia/Bangkok"}, "from"),  # year 0 UTC
    ({"to": "2026-03-02"}, "from"),
])
async def test_unusable_ranges_are_422(
    http: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    for path in ("summary", "trips", "stops"):
        response = await http.get(f"/api/v1/reports/{path}", params=params)
        assert response.status_code == 422, response.text
        assert [d["loc"][-1] for d in response.json()["detail"]] == [field]


@pytest.mark.parametrize(("start", "end", "tz"), [
    ("2028-01-01", "2028-12-31", "UTC"),  # a leap year: 366 days
    ("2025-03-01", "2026-03-01", "America/New_York"),  # 366 days, a DST change inside
])
async def test_366_days_are_allowed(
    http: httpx.AsyncClient, start: str, end: str, tz: str
) -> None:
    response = await http.get("/api/v1/reports/summary",
                              params={"from": start, "to": end, "tz": tz})
    assert response.status_code == 200, response.text
    assert response.json()["ambulances"] == []


@pytest.mark.usefixtures("seeded")
async def test_limited_token_reads_its_own_ambulance_only(
    deps: ApiDeps, store: SQLiteDocumentStore
) -> None:
    token = await create_token(store, "crew-a", ["amb-a"], actor="tests")
    params = {"from": "2026-03-01", "to": "2026-03-03"}
    async with client_for(deps, token) as client:
        for path in ("summary", "trips", "stops"):
            url = f"/api/v1/reports/{path}"
            assert (await client.get(url, params=params)).status_code == 403
            other = await client.get(url, params={**params, "ambulance_id": "amb-b"})
            assert other.status_code == 403
            own = await client.get(url, params={**params, "ambulance_id": "amb-a"})
            assert own.status_code == 200, own.text
        summary = await client.get("/api/v1/reports/summary",
                                   params={**params, "ambulance_id": "amb-a"})
        assert summary.json()["ambulances"] == [EXPECTED["amb-a"]]
    async with client_for(deps) as anonymous:
        response = await anonymous.get("/api/v1/reports/summary", params=params)
        assert response.status_code == 401


@pytest.mark.usefixtures("seeded")
async def test_a_damaged_stored_trip_is_left_out_not_a_500(
    http: httpx.AsyncClient, store: SQLiteDocumentStore
) -> None:
    damaged = {**SEEDED_TRIPS[0], "_id": "amb-a.trip.damaged", "distance_m": "far",
               "duration_s": None, "points": "many", "crashes": True}
    await store.apply([Write(TRIPS, "upsert", damaged)])
    params = {"from": "2026-03-01", "to": "2026-03-03", "ambulance_id": "amb-a"}
    summary = (await http.get("/api/v1/reports/summary", params=params)).json()
    row = summary["ambulances"][0]
    # Counted as a trip, its unreadable figures as nothing.
    assert (row["trips"], row["distance_m"], row["crashes"]) == (4, 34500.6, 1)
    listed = await pages(http, "/api/v1/reports/trips", **params)
    assert "amb-a.trip.damaged" not in [item["id"] for item in listed]
    assert len(listed) == 3


@pytest.mark.parametrize(("accept", "csv_wanted"), [
    (None, False),
    ("text/csv", True),
    ("application/json", False),
    ("*/*", False),
    ("text/csv, application/json", True),
    ("application/json, text/csv", False),
    ("application/json;q=0.5, text/csv", True),
    ("text/csv;q=0, */*", False),
    ("text/html", False),
])
def test_accept_header_chooses_csv(accept: str | None, csv_wanted: bool) -> None:
    assert wants_csv(None, accept) is csv_wanted
    assert wants_csv("json", accept) is False
    assert wants_csv("csv", accept) is True


@pytest.mark.usefixtures("seeded")
async def test_summary_of_seeded_stored_trips_reads_page_by_page(
    http: httpx.AsyncClient, store: SQLiteDocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    find = store.find

    async def counted(query: Any) -> Any:
        page = await find(query)
        reads.append(len(page.items))
        return page

    monkeypatch.setattr(routes, "READ_PAGE", 2)
    monkeypatch.setattr(store, "find", counted)
    response = await http.get("/api/v1/reports/summary",
                              params={"from": "2026-03-01", "to": "2026-03-03"})
    assert response.json()["ambulances"] == list(EXPECTED.values())
    # 5 trips and 4 stops, never more than a page of 2 at a time.
    assert reads == [2, 2, 1, 2, 2]
