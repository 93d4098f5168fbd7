"""The read API over a real SQLite store, local object store and Redis cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api import ApiDeps
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    IMAGE_HISTORIES,
    IMAGES,
    TRACKINGS,
    Write,
)
from storage.base import Query as StoreQuery
from storage.cache import StateCache
from storage.codec import encode_cursor
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.api.conftest import client_for
from tests.images import TINY_JPEG, png

T0 = datetime(2026, 3, 1, 4, 33, 12, 250000, tzinfo=UTC)


def state(aid: str, *, speed: float = 45.5, at: datetime = T0) -> dict[str, Any]:
    """An AMBULANCES document as the bridge writes it (with its internal bookkeeping)."""
    return {
        "_id": aid, "ambulance_id": aid, "location": {"lat": 13.7563, "lon": 100.5018},
        "speed": speed, "heading": 180.0, "state": "GREEN", "last_seen": at, "received_at": at,
        "online": True, "covered_distance": 120.5, "avg_speed": 40.0, "speed_sum": 80.0,
        "speed_count": 2, "estimated_time": None, "destination_location": None,
        "source_location": {"lat": 13.75, "lon": 100.5}, "open_episodes": {},
        "last_crash_at": None, "last_crash_id": None, "images_id": None, "images_at": None,
        "images_replaced_id": None,
    }


def point(aid: str, i: int) -> dict[str, Any]:
    ts = T0 + timedelta(seconds=i)
    return {
        "_id": f"{aid}:{int(ts.timestamp() * 1000)}", "ambulance_id": aid,
        "location": {"lat": 13.7 + i / 1000, "lon": 100.5}, "source_location": None,
        "destination_location": None, "speed": 10.0 * i, "avg_speed": 5.0, "heading": 90.0,
        "count_datetime": ts, "state": "GREEN", "covered_distance": 0.0, "estimated_time": None,
        "speed_above_80": None, "speed_above_120": None, "received_at": ts, "seq": None,
        "accuracy": None, "altitude": None, "late": False,
    }


async def put(store: SQLiteDocumentStore, collection: str, *docs: dict[str, Any]) -> None:
    await store.apply([Write(collection, "insert", doc) for doc in docs])


async def test_ambulances_from_the_cache(
    http: httpx.AsyncClient, cache: StateCache, ambulance_id: str
) -> None:
    """Test that the fleet list comes from Redis, without the bridge's internal fields."""
    await cache.set_many({ambulance_id: state(ambulance_id)})
    body = (await http.get("/api/v1/ambulances")).json()
    assert body["source"] == "cache"
    [item] = body["items"]
    assert item["ambulance_id"] == ambulance_id
    assert item["location"] == {"lat": 13.7563, "lon": 100.5018}
    assert item["last_seen"].startswith("2026-03-01T04:33:12.250")
    assert datetime.fromisoformat(item["last_seen"]) == T0
    assert "speed_sum" not in item and "open_episodes" not in item


async def test_ambulances_fall_back_to_the_store(
    deps: ApiDeps, store: SQLiteDocumentStore, ambulance_id: str, api_token: str
) -> None:
    """Test that an empty, missing or unreachable cache falls back to the AMBULANCES collection."""
    await put(store, AMBULANCES, state(ambulance_id), state("other-1", speed=99))
    async with client_for(deps, api_token) as http:  # the test's cache prefix is empty
        empty = (await http.get("/api/v1/ambulances")).json()
    dead = StateCache(f"redis://127.0.0.1:{services.free_port()}/0", prefix="nothing")
    deps.cache = dead
    async with client_for(deps, api_token) as http:
        unreachable = (await http.get("/api/v1/ambulances")).json()
        one = await http.get(f"/api/v1/ambulances/{ambulance_id}")
    await dead.close()
    deps.cache = None
    async with client_for(deps, api_token) as http:
        no_cache = (await http.get("/api/v1/ambulances")).json()
    for body in (empty, unreachable, no_cache):
        assert body["source"] == "store"
        assert [i["ambulance_id"] for i in body["items"]] == sorted([ambulance_id, "other-1"])
    assert one.status_code == 200
    assert one.json()["speed"] == 45.5


async def test_one_ambulance(
    http: httpx.AsyncClient, cache: StateCache, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that one ambulance is read from the cache first, then the store, else 404."""
    await cache.set_many({ambulance_id: state(ambulance_id, speed=50)})
    await put(store, AMBULANCES, state(ambulance_id, speed=10), state("stored-only", speed=20))
    assert (await http.get(f"/api/v1/ambulances/{ambulance_id}")).json()["speed"] == 50
    assert (await http.get("/api/v1/ambulances/stored-only")).json()["speed"] == 20
    missing = await http.get("/api/v1/ambulances/nobody")
    assert missing.status_code == 404
    assert "nobody" in missing.json()["detail"]


@pytest.mark.parametrize(
    "bad", ["bad..id!", "a%20b", "%2E%2E", "x" * 65, "%F0%9F%9A%91"],
    ids=["punctuation", "space", "dot-dot", "too-long", "emoji"],
)
@pytest.mark.parametrize("suffix", ["", "/track", "/snapshots"])
async def test_invalid_ambulance_id_is_422(http: httpx.AsyncClient, bad: str, suffix: str) -> None:
    """Test that a path ambulance id outside the contract's pattern is refused with 422."""
    response = await http.get(f"/api/v1/ambulances/{bad}{suffix}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["path", "ambulance_id"]


@pytest.mark.parametrize("suffix", ["", "/track", "/snapshots"])
@pytest.mark.parametrize("aid", ["crash", "CRASH_NOTIFY_7"])
async def test_a_room_name_is_no_ambulance_id(
    http: httpx.AsyncClient, aid: str, suffix: str
) -> None:
    """Test that an id naming a shared Socket.IO room is a 422 saying it is reserved."""
    response = await http.get(f"/api/v1/ambulances/{aid}{suffix}")
    assert response.status_code == 422, response.text
    assert "is reserved" in response.json()["detail"][0]["msg"]
    crashes = await http.get("/api/v1/crashes", params={"ambulance_id": aid})
    assert crashes.status_code == 422, crashes.text


async def _track(http: httpx.AsyncClient, url: str, **params: Any) -> list[float]:
    """The speeds of every point of a track, following next_cursor (pages of 2)."""
    speeds: list[float] = []
    params = {"limit": 2, **params}
    while True:
        page = (await http.get(url, params=params)).json()
        speeds += [p["speed"] for p in page["items"]]
        if page["next_cursor"] is None:
            return speeds
        params["cursor"] = page["next_cursor"]


async def test_track_is_newest_first_and_pages_either_way(
    http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that the track comes newest first by default, oldest on request, paged both ways."""
    await put(store, TRACKINGS, *(point(ambulance_id, i) for i in range(5)))
    await put(store, TRACKINGS, point("someone-else", 0))
    url = f"/api/v1/ambulances/{ambulance_id}/track"
    first = (await http.get(url, params={"limit": 2})).json()
    assert [p["speed"] for p in first["items"]] == [40, 30]
    assert first["items"][0]["id"] == point(ambulance_id, 4)["_id"]
    assert datetime.fromisoformat(first["items"][1]["count_datetime"]) == T0 + timedelta(seconds=3)
    assert await _track(http, url) == [40, 30, 20, 10, 0]
    assert await _track(http, url, order="newest") == [40, 30, 20, 10, 0]
    assert await _track(http, url, order="oldest") == [0, 10, 20, 30, 40]
    window = {"since": (T0 + timedelta(seconds=1)).isoformat(),
              "until": (T0 + timedelta(seconds=3)).isoformat()}
    assert await _track(http, url, **window) == [20, 10]
    assert await _track(http, url, order="oldest", **window) == [10, 20]
    # The former parameter keeps its meaning for the clients that send it.
    assert await _track(http, url, newest_first="false") == [0, 10, 20, 30, 40]
    assert await _track(http, url, newest_first="true") == [40, 30, 20, 10, 0]
    bad = await http.get(url, params={"order": "sideways"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "order"]


async def test_track_order_is_documented(http: httpx.AsyncClient) -> None:
    """Test that OpenAPI describes `order`: its two values and its default, newest."""
    schema = (await http.get("/openapi.json")).json()
    track = schema["paths"]["/api/v1/ambulances/{ambulance_id}/track"]["get"]
    [order] = [p for p in track["parameters"] if p["name"] == "order"]
    assert order["schema"]["enum"] == ["newest", "oldest"]
    assert order["schema"]["default"] == "newest"
    assert "newest" in order["description"]
    [former] = [p for p in track["parameters"] if p["name"] == "newest_first"]
    assert former["deprecated"] is True


async def test_measures_are_rounded_to_their_meaning(
    http: httpx.AsyncClient, cache: StateCache, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that metres and km/h are answered to 0.1, and stored with full precision."""
    raw = state(ambulance_id, speed=37.47599999999998) | {
        "covered_distance": 1234.5678901, "avg_speed": 41.04999999999,
    }
    await cache.set_many({ambulance_id: raw})
    one = (await http.get(f"/api/v1/ambulances/{ambulance_id}")).json()
    [listed] = [i for i in (await http.get("/api/v1/ambulances")).json()["items"]
                if i["ambulance_id"] == ambulance_id]
    for item in (one, listed):
        assert (item["speed"], item["covered_distance"], item["avg_speed"]) == (37.5, 1234.6, 41.0)
    track_point = point(ambulance_id, 1) | {
        "speed": 37.47599999999998, "covered_distance": 10.04999, "avg_speed": 5.55555,
        "accuracy": 4.96, "altitude": 12.34,
    }
    await put(store, TRACKINGS, track_point)
    [item] = (await http.get(f"/api/v1/ambulances/{ambulance_id}/track")).json()["items"]
    assert {k: item[k] for k in ("speed", "covered_distance", "avg_speed", "accuracy",
                                 "altitude")} == {
        "speed": 37.5, "covered_distance": 10.0, "avg_speed": 5.6, "accuracy": 5.0,
        "altitude": 12.3,
    }
    crash = {"_id": f"crash:{ambulance_id}:1", "ambulance_id": ambulance_id,
             "location": {"lat": 13.7, "lon": 100.5}, "speed": 149.76000000000002,
             "heading": 90.0, "count_datetime": T0, "state": "RED", "received_at": T0,
             "location_detail": None, "duplicate_of": None}
    await put(store, CRASHES, crash)
    [listed_crash] = (await http.get(
        "/api/v1/crashes", params={"ambulance_id": ambulance_id}
    )).json()["items"]
    assert listed_crash["speed"] == 149.8
    # Storage keeps every digit: rounding is for output only.
    [stored] = (await store.find(StoreQuery(TRACKINGS, ambulance_id=ambulance_id))).items
    assert stored["speed"] == 37.47599999999998


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 1001}, ["query", "limit"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"cursor": "not-a-cursor"}, ["query", "cursor"]),
        ({"cursor": "W10"}, ["query", "cursor"]),
        ({"since": "yesterday"}, ["query", "since"]),
    ],
    ids=["limit-too-big", "limit-zero", "garbage-cursor", "empty-position", "bad-since"],
)
async def test_bad_track_query_is_422(
    http: httpx.AsyncClient, ambulance_id: str, params: dict[str, Any], loc: list[str]
) -> None:
    """Test that bad paging parameters are a 422 naming the parameter."""
    response = await http.get(f"/api/v1/ambulances/{ambulance_id}/track", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


@pytest.mark.parametrize(
    "params",
    [
        {"since": "0001-01-01T00:00:00+05:00"},
        {"until": "9999-12-31T23:59:59-05:00"},
        {"cursor": encode_cursor([10**30, "x"])},
        {"cursor": encode_cursor([True, "x"])},
        {"cursor": encode_cursor([[1.5], "x"])},
        {"cursor": "WzEuNSwgeyJhIjogMX1d"},  # [1.5, {"a": 1}]
        {"cursor": "W05hTiwgIngiXQ"},  # [NaN, "x"]
    ],
    ids=["since-year-1", "until-year-9999", "huge-cursor", "bool-cursor", "list-in-cursor",
         "object-in-cursor", "nan-cursor"],
)
async def test_extreme_query_values_are_422_not_500(
    http: httpx.AsyncClient, ambulance_id: str, params: dict[str, Any]
) -> None:
    """Test that dates and cursors that overflow underneath are refused, not a 500."""
    for url in (f"/api/v1/ambulances/{ambulance_id}/track", "/api/v1/crashes"):
        response = await http.get(url, params=params)
        assert response.status_code == 422, response.text


async def test_crashes(
    http: httpx.AsyncClient, store: SQLiteDocumentStore, ambulance_id: str
) -> None:
    """Test that crashes are listed for one ambulance or all, with the map link."""
    records = [
        {"_id": f"crash:{aid}:{i}", "ambulance_id": aid, "location": {"lat": 13.7, "lon": 100.5},
         "speed": 149.76, "heading": 90.0, "count_datetime": T0 + timedelta(minutes=i),
         "state": "RED", "location_detail": {"address": None, "image": "https://maps.example/x"},
         "received_at": T0, "duplicate_of": None}
        for i, aid in enumerate([ambulance_id, "crash-other", ambulance_id])
    ]
    await put(store, CRASHES, *records)
    mine = (await http.get("/api/v1/crashes", params={"ambulance_id": ambulance_id})).json()
    assert [c["id"] for c in mine["items"]] == [records[0]["_id"], records[2]["_id"]]
    assert mine["items"][0]["location_detail"]["image"] == "https://maps.example/x"
    everyone = (await http.get("/api/v1/crashes", params={"limit": 2})).json()
    assert len(everyone["items"]) == 2 and everyone["next_cursor"]
    bad = await http.get("/api/v1/crashes", params={"ambulance_id": "../etc"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "ambulance_id"]


async def test_snapshots_link_to_fetchable_images(
    http: httpx.AsyncClient,
    store: SQLiteDocumentStore,
    objects: LocalObjectStore,
    ambulance_id: str,
) -> None:
    """Test that current and past images have URLs the API serves with their content type."""
    old_key = f"ambulance_images/{ambulance_id}/2026/03/01/04_30/30_00_0001.png"
    new_keys = [f"ambulance_images/{ambulance_id}/2026/03/01/04_33/33_12_{n}.jpg"
                for n in ("0042", "0043")]
    await objects.put(old_key, png(), "image/png")
    for key in new_keys:
        await objects.put(key, TINY_JPEG, "image/jpeg")
    old_at, new_at = T0 - timedelta(minutes=3), T0
    await put(store, IMAGE_HISTORIES,
              {"_id": "snap:old", "ambulance_id": ambulance_id, "images": {"image0": old_key},
               "createdAt": old_at},
              {"_id": "snap:new", "ambulance_id": ambulance_id,
               "images": {"image0": new_keys[0], "image1": new_keys[1]}, "createdAt": new_at})
    await put(store, IMAGES, {"_id": ambulance_id, "ambulance_id": ambulance_id,
                              "images": {"image0": new_keys[0], "image1": new_keys[1]},
                              "createdAt": new_at, "ambulance_image_histories_id": "snap:old"})
    body = (await http.get(f"/api/v1/ambulances/{ambulance_id}/snapshots")).json()
    assert body["ambulance_id"] == ambulance_id
    assert [i["key"] for i in body["current"]["images"]] == new_keys
    assert [s["id"] for s in body["history"]] == ["snap:new", "snap:old"]
    old_image = body["history"][1]["images"][0]
    assert old_image["name"] == "image0"
    fetched = await http.get(old_image["url"])
    assert fetched.status_code == 200
    assert fetched.content == png()
    assert fetched.headers["content-type"] == "image/png"
    current = await http.get(body["current"]["images"][1]["url"])
    assert current.content == TINY_JPEG
    assert current.headers["content-type"] == "image/jpeg"


async def test_snapshots_of_an_ambulance_without_any(
    http: httpx.AsyncClient, ambulance_id: str
) -> None:
    """Test that an ambulance with no snaps has no current images and an empty history."""
    body = (await http.get(f"/api/v1/ambulances/{ambulance_id}/snapshots")).json()
    assert body == {"ambulance_id": ambulance_id, "current": None, "history": [],
                    "next_cursor": None}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/ambulance_images/none/2026/01/01/00_00/00_00_0000.jpg", 404),
        ("/files/ambulance_images/.tmp-secret", 400),
        ("/files/ambulance_images/%2E%2E/%2E%2E/etc/passwd", 400),
        ("/files/ambulance_images/a%5Cb", 400),
        ("/files/ambulance_images", 404),
    ],
    ids=["absent", "dot-segment", "traversal", "backslash", "directory"],
)
async def test_bad_file_keys(http: httpx.AsyncClient, path: str, status: int) -> None:
    """Test that absent objects are 404 and unsafe keys are refused, never served."""
    response = await http.get(path)
    assert response.status_code == status, response.text
    assert "detail" in response.json()


async def test_dead_letters(http: httpx.AsyncClient, store: SQLiteDocumentStore) -> None:
    """Test that dead letters are listed newest first with their reason, and since filters."""
    letters = [
        {"_id": f"dl:{i}", "topic": "aoc/x/tracking", "ambulance_id": "x",
         "reason": f"lat: must be between -90 and 90, got {90 + i}",
         "received_at": T0 + timedelta(seconds=i), "payload": "{}", "payload_base64": False,
         "payload_size": 2, "truncated": False}
        for i in range(3)
    ]
    await put(store, DEAD_LETTERS, *letters)
    body = (await http.get("/api/v1/dead-letters")).json()
    assert [d["id"] for d in body["items"]] == ["dl:2", "dl:1", "dl:0"]
    assert body["items"][0]["reason"].startswith("lat:")
    since = (await http.get("/api/v1/dead-letters",
                            params={"since": (T0 + timedelta(seconds=1)).isoformat()})).json()
    assert [d["id"] for d in since["items"]] == ["dl:2", "dl:1"]


async def test_store_down_is_503(
    deps: ApiDeps, store: SQLiteDocumentStore, api_token: str
) -> None:
    """Test that reads answer 503 with a reason while the store is unavailable."""
    await store.close()
    deps.cache = None
    async with client_for(deps, api_token) as http:
        responses = [
            await http.get("/api/v1/ambulances"),
            await http.get("/api/v1/ambulances/a1"),
            await http.get("/api/v1/ambulances/a1/track"),
            await http.get("/api/v1/dead-letters"),
        ]
    for response in responses:
        assert response.status_code == 503, response.text
        assert "storage unavailable" in response.json()["detail"]


async def test_openapi_documents_the_read_models(http: httpx.AsyncClient) -> None:
    """Test that the read endpoints are in OpenAPI with their response models."""
    schema = (await http.get("/openapi.json")).json()
    track = schema["paths"]["/api/v1/ambulances/{ambulance_id}/track"]["get"]
    ok = track["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/TrackPage"}
    for name in ("AmbulanceState", "CrashPage", "Snapshots", "DeadLetterPage", "AmbulanceList"):
        assert name in schema["components"]["schemas"]


async def _fleet(http: httpx.AsyncClient, **params: Any) -> tuple[list[str], list[str]]:
    """Every ambulance id of the fleet list, following next_cursor; and each page's source."""
    ids: list[str] = []
    sources: list[str] = []
    while True:
        response = await http.get("/api/v1/ambulances", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [item["ambulance_id"] for item in body["items"]]
        sources.append(body["source"])
        if body["next_cursor"] is None:
            return ids, sources
        params = {**params, "cursor": body["next_cursor"]}


async def test_fleet_is_paged_never_truncated(http: httpx.AsyncClient, cache: StateCache) -> None:
    """Test that a call without parameters gets the first 1000 and a cursor to the rest."""
    fleet = {f"amb-{i:04d}": state(f"amb-{i:04d}") for i in range(1001)}
    await cache.rebuild(fleet)
    first = (await http.get("/api/v1/ambulances")).json()
    assert len(first["items"]) == 1000 and first["source"] == "cache"
    assert first["next_cursor"]
    ids, sources = await _fleet(http)
    assert ids == sorted(fleet) and set(sources) == {"cache"}
    ids, _ = await _fleet(http, limit=7)
    assert ids == sorted(fleet)


async def test_fleet_pages_stay_consistent_while_the_bridge_writes(
    http: httpx.AsyncClient, cache: StateCache
) -> None:
    """Test that states written between pages neither repeat nor skip an ambulance."""
    await cache.rebuild({f"m-{i:02d}": state(f"m-{i:02d}") for i in range(30)})
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 4}
    for step in range(1, 100):
        body = (await http.get("/api/v1/ambulances", params=params)).json()
        ids += [item["ambulance_id"] for item in body["items"]]
        later = T0 + timedelta(seconds=step)
        await cache.set_many({f"m-{i:02d}": state(f"m-{i:02d}", at=later) for i in range(30)})
        await cache.set_many({f"a-{step}": state(f"a-{step}"), f"z-{step}": state(f"z-{step}")})
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert len(ids) == len(set(ids))
    assert [aid for aid in ids if aid.startswith("m-")] == [f"m-{i:02d}" for i in range(30)]


async def test_fleet_from_the_store_pages_with_its_cursor(
    deps: ApiDeps, store: SQLiteDocumentStore, api_token: str
) -> None:
    """Test that without a cache the store's pages list every ambulance once."""
    docs = [state(f"s-{i:02d}", at=T0 + timedelta(seconds=i % 5)) for i in range(23)]
    await put(store, AMBULANCES, *docs)
    deps.cache = None
    async with client_for(deps, api_token) as http:
        ids, sources = await _fleet(http, limit=5)
    assert sorted(ids) == sorted(d["ambulance_id"] for d in docs)
    assert len(ids) == len(set(ids))
    assert set(sources) == {"store"}


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        encode_cursor([True, "x"]),
        encode_cursor(["cache", "../etc"]),
        encode_cursor(["elsewhere", "x"]),
        encode_cursor(["cache"]),
        encode_cursor(["store", "garbage"]),
    ],
    ids=["garbage", "bool", "bad-id", "unknown-source", "short", "bad-store-cursor"],
)
async def test_bad_fleet_cursor_is_422(http: httpx.AsyncClient, cursor: str) -> None:
    """Test that a cursor this listing never gave is a 422 naming the cursor."""
    response = await http.get("/api/v1/ambulances", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


async def test_fleet_cache_cursor_without_the_cache_is_503(
    deps: ApiDeps, cache: StateCache, api_token: str
) -> None:
    """Test that a cache cursor while Redis is unreachable says to list again, with Retry-After."""
    await cache.rebuild({f"c-{i}": state(f"c-{i}") for i in range(3)})
    async with client_for(deps, api_token) as http:
        cursor = (await http.get("/api/v1/ambulances", params={"limit": 1})).json()["next_cursor"]
    dead = StateCache(f"redis://127.0.0.1:{services.free_port()}/0", prefix="nothing")
    deps.cache = dead
    async with client_for(deps, api_token) as http:
        response = await http.get("/api/v1/ambulances", params={"cursor": cursor})
    await dead.close()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert "without a cursor" in response.json()["detail"]
