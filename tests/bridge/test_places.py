"""Places: GeoJSON parsing and its refusals, documents, distances, the index and hysteresis."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import places_geojson
from bridge.messages import Position
from bridge.places import (
    MAX_PLACES,
    Place,
    PlaceError,
    PlaceIndex,
    contains,
    distance_m,
    membership,
    place_doc,
    place_feature,
    place_from_doc,
    places_from_geojson,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "places" / "chiang-mai.geojson"
# Chiang Mai's old city: where the test shapes are centred.
LAT, LON = 18.79, 98.98
M_PER_DEG_LAT = 6_371_008.8 * math.pi / 180  # on bridge.geo's sphere


def at(north_m: float, east_m: float) -> Position:
    """The point ``north_m`` north and ``east_m`` east of (LAT, LON)."""
    lat = LAT + north_m / M_PER_DEG_LAT
    return Position(lat, LON + east_m / (M_PER_DEG_LAT * math.cos(math.radians(LAT))))


def square(half_m: float, **props: Any) -> dict[str, Any]:
    """A square Feature of side 2 * ``half_m`` centred on (LAT, LON)."""
    corners = [at(-half_m, -half_m), at(-half_m, half_m), at(half_m, half_m), at(half_m, -half_m)]
    ring = [[p.lon, p.lat] for p in [*corners, corners[0]]]
    return feature({"type": "Polygon", "coordinates": [ring]}, **props)


def circle(radius_m: float, **props: Any) -> dict[str, Any]:
    return feature({"type": "Point", "coordinates": [LON, LAT]}, radius_m=radius_m, **props)


def feature(geometry: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": {"name": "Test", **props}}


def one(data: dict[str, Any]) -> Place:
    (place,) = places_from_geojson(data)
    return place


# --- parsing ----------------------------------------------------------------------------


def test_the_example_file_parses_into_hospitals_and_stations() -> None:
    """Test that the shipped example has 4 polygon hospitals and 3 circle stations of 80 m."""
    places = places_from_geojson(json.loads(EXAMPLE.read_text()))
    hospitals = [p for p in places if p.kind == "hospital"]
    stations = [p for p in places if p.kind == "station"]
    assert len(hospitals) == 4
    assert all(p.geometry is not None for p in hospitals)
    assert [(p.geometry, p.radius_m) for p in stations] == [(None, 80.0)] * 3
    maharaj = next(p for p in places if p.id == "maharaj-nakorn")
    assert PlaceIndex(places).containing(Position(18.7897, 98.9737)) == {"maharaj-nakorn"}
    assert maharaj.properties == {"emergency": True}


def test_ids_names_kinds_and_properties() -> None:
    """Test the id from the feature, from properties, else the name's slug; kind lower-cased."""
    data = {
        "type": "FeatureCollection",
        "features": [
            {**square(100, name="A"), "id": "feat-id"},
            square(100, name="B", id=42, kind=" Hospital ", beds=300),
            circle(80, name="Wat Phra Singh (station)"),
        ],
    }
    a, b, c = places_from_geojson(data)
    assert (a.id, a.kind, a.properties) == ("feat-id", "place", {})
    assert (b.id, b.kind, b.properties) == ("42", "hospital", {"beds": 300})
    assert (c.id, c.name, c.radius_m, c.center) == (
        "wat-phra-singh-station", "Wat Phra Singh (station)", 80.0, Position(LAT, LON)
    )
    legacy_radius = feature({"type": "Point", "coordinates": [LON, LAT]}, radius=50)
    assert one(legacy_radius).radius_m == 50.0


def _bowtie() -> dict[str, Any]:
    ring = [[98.0, 18.0], [98.01, 18.01], [98.01, 18.0], [98.0, 18.01], [98.0, 18.0]]
    return feature({"type": "Polygon", "coordinates": [ring]}, id="bow")


def _open_ring() -> dict[str, Any]:
    ring = [[98.0, 18.0], [98.01, 18.0], [98.01, 18.01], [98.0, 18.01]]
    return feature({"type": "Polygon", "coordinates": [ring]}, id="open")


INVALID: list[tuple[object, str]] = [
    ([], "expected a GeoJSON Feature or FeatureCollection (a JSON object)"),
    ({"type": "Point", "coordinates": [1, 2]}, "got type 'Point'"),
    ({"type": "FeatureCollection", "features": {}}, "needs a list of features"),
    ({"type": "FeatureCollection", "features": [42]}, "feature 0: not a GeoJSON Feature"),
    ({**square(100), "properties": {"kind": "x"}}, "feature 0: needs a name"),
    ({**square(100), "properties": []}, "feature 0: properties must be an object"),
    (square(100, id="a b"), "feature 0: id 'a b' must match [A-Za-z0-9_-]{1,64}"),
    (square(100, id=1.5), "feature 0: id must be a string or an integer"),
    (square(100, name="!!!"), "feature 0: id '' must match"),
    (square(100, id="h", kind=7), "feature 0 ('h'): kind must be a non-empty string"),
    ({**square(100, id="h"), "geometry": None}, "feature 0 ('h'): needs a geometry"),
    (feature({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, id="l"),
     "feature 0 ('l'): geometry 'LineString' is not a Polygon, MultiPolygon or Point"),
    (feature({"type": "Point", "coordinates": [LON, LAT]}, id="c"),
     "feature 0 ('c'): a Point is a circle and needs a radius_m property"),
    (circle(0, id="c"), "needs a radius_m property in metres, above 0 and at most 50000"),
    (circle(60_000, id="c"), "above 0 and at most 50000"),
    (circle(True, id="c"), "needs a radius_m property"),  # a JSON true: not a number
    (feature({"type": "Point", "coordinates": [LAT, 200]}, id="c", radius_m=5),
     "feature 0 ('c'): position [18.79, 200.0] is out of range (lon, lat order)"),
    (feature({"type": "Point", "coordinates": [math.nan, 1]}, id="c", radius_m=5),
     "feature 0 ('c'): a position must be [lon, lat] numbers"),
    (_open_ring(), "feature 0 ('open'): a ring must be closed (last position = first)"),
    (feature({"type": "Polygon", "coordinates": [[[1, 1], [2, 2], [1, 1]]]}, id="p"),
     "feature 0 ('p'): a ring needs at least 4 positions"),
    (feature({"type": "MultiPolygon", "coordinates": []}, id="m"),
     "a MultiPolygon needs a list of polygons"),
    (_bowtie(), "feature 0 ('bow'): invalid Polygon: Self-intersection"),
    (square(100, id="h", **{"$where": 1}), "property name '$where' has '$', '.'"),
    ({"type": "FeatureCollection", "features": [square(100, id="h"), circle(9, id="h")]},
     "feature 1 ('h'): duplicate id, feature 0 has it"),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_input_is_refused_naming_the_feature(data: object, message: str) -> None:
    """Test each kind of invalid input and that its message says where and what."""
    with pytest.raises(PlaceError) as caught:
        places_from_geojson(data)
    assert message in str(caught.value)


def test_the_bounds_on_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that too many features, or too many vertices in all, are refused."""
    many = {"type": "FeatureCollection", "features": [circle(5)] * (MAX_PLACES + 1)}
    with pytest.raises(PlaceError, match=f"at most {MAX_PLACES} places"):
        places_from_geojson(many)
    monkeypatch.setattr(places_geojson, "MAX_VERTICES", 9)
    two = {"type": "FeatureCollection", "features": [square(10, id="a"), square(10, id="b")]}
    with pytest.raises(PlaceError, match="more than 9 vertices in all \\(at feature 1\\)"):
        places_from_geojson(two)


# --- documents and features --------------------------------------------------------------


def test_documents_and_features_round_trip() -> None:
    """Test place -> document -> place, and that an exported Feature imports as the same place."""
    places = places_from_geojson(json.loads(EXAMPLE.read_text()))
    for place in places:
        doc = place_doc(place)
        assert doc["ambulance_id"] is None
        assert json.loads(json.dumps(doc)) == doc  # lists, not tuples: as a store returns it
        assert place_from_doc(doc) == place
        assert one(place_feature(place)) == place
    station = place_doc(next(p for p in places if p.kind == "station"))
    assert station["geometry"] == {"type": "Point", "coordinates": [98.9853, 18.7883]}
    assert station["radius_m"] == 80.0


# --- distance and containment ------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "metres"),
    [((0, 0), 0.0), ((90, -90), 0.0), ((0, 200), 100.0), ((300, 0), 200.0),
     ((-1100, 0), 1000.0), ((200, 200), 100 * math.sqrt(2))],
)
def test_distance_to_a_polygon_in_metres(where: tuple[float, float], metres: float) -> None:
    """Test metres from points around a 200 m square at Chiang Mai's latitude (within 1 %)."""
    place = one(square(100))
    assert distance_m(at(*where), place) == pytest.approx(metres, rel=0.01, abs=0.5)


@pytest.mark.parametrize(
    ("where", "metres"), [((0, 0), 0.0), ((0, 79), 0.0), ((500, 0), 420.0), ((0, -280), 200.0)]
)
def test_distance_to_a_circle_in_metres(where: tuple[float, float], metres: float) -> None:
    """Test metres from points around an 80 m circle (within 1 %)."""
    assert distance_m(at(*where), one(circle(80))) == pytest.approx(metres, rel=0.01, abs=0.5)


def test_the_index_finds_what_contains_and_what_is_near() -> None:
    """Test containing, near (inside counts), nearest and that removed places are left out."""
    hospital = one(square(100, id="hospital", name="H"))
    station = one(feature({"type": "Point", "coordinates": [at(0, 400).lon, LAT]},
                          id="station", radius_m=80))
    gone = replace(one(square(100, id="gone")), removed_at=datetime.now(UTC))
    index = PlaceIndex([hospital, station, gone])
    assert len(index) == 2
    assert {p.id for p in index.places} == {"hospital", "station"}
    assert index.get("gone") is None
    assert index.containing(at(0, 0)) == {"hospital"}
    assert index.containing(at(0, 400)) == {"station"}
    assert index.containing(at(0, 200)) == set()
    # 100 m from the hospital's edge, 120 m from the station's.
    assert index.near(at(0, 200), 99) == set()
    assert index.near(at(0, 200), 110) == {"hospital"}
    assert index.near(at(0, 200), 130) == {"hospital", "station"}
    assert index.near(at(0, 0), 0) == {"hospital"}
    found = index.nearest(at(0, 260), 1000)
    assert found is not None
    assert found[0].id == "station"
    assert found[1] == pytest.approx(60, rel=0.01)
    assert index.nearest(at(0, 2000), 500) is None
    assert PlaceIndex([]).nearest(at(0, 0), 1e6) is None


# --- hysteresis --------------------------------------------------------------------------


def test_a_point_jittering_across_an_edge_enters_once_and_exits_once() -> None:
    """Test enter on the first point inside, none while jittering within the margin, one exit."""
    index = PlaceIndex([one(square(100, id="hospital"))])
    margin = 30.0
    # East offsets in metres: the edge is at 100; the last is 2 x margin outside it.
    track = [150, 120, 95, 105, 98, 110, 90, 125, 101, 99, 129, 100 + 2 * margin]
    inside: set[str] = set()
    entered: list[str] = []
    exited: list[str] = []
    for east in track:
        inside, came, left = membership(frozenset(inside), at(0, east), index, margin)
        entered += came
        exited += left
    assert (entered, exited, inside) == (["hospital"], ["hospital"], set())


def test_a_place_that_went_away_is_dropped_silently() -> None:
    """Test that a place no longer in the index leaves the set with no exit event."""
    index = PlaceIndex([one(square(100, id="kept"))])
    inside, entered, exited = membership({"kept", "removed"}, at(0, 0), index, 30)
    assert (inside, entered, exited) == ({"kept"}, [], [])


# Places spread over ~10 km around LAT, LON: some in one grid cell, some across several.
SPREAD = [
    one(feature({"type": "Point", "coordinates": [at(n, e).lon, at(n, e).lat]},
                id=f"c{i}", radius_m=r))
    for i, (n, e, r) in enumerate([(0, 0, 80), (900, -1200, 400), (-3000, 2500, 1500),
                                   (4000, 4000, 50), (-4500, -4500, 3000)])
] + [
    replace(one(square(half, id=f"s{i}", name=f"S{i}")), id=f"s{i}")
    for i, half in enumerate([50, 700])
] + [  # small ones, each in one cell, every 600 m
    one(feature({"type": "Point", "coordinates": [at(n, e).lon, at(n, e).lat]},
                id=f"t{n}_{e}", radius_m=20))
    for n in range(-5400, 5401, 600) for e in range(-5400, 5401, 1800)
]


@given(
    north=st.floats(-6000, 6000), east=st.floats(-6000, 6000),
    margin=st.sampled_from([0.0, 30.0, 250.0, 1000.0, 5000.0]),
)
@settings(max_examples=300, deadline=None)
def test_the_index_answers_as_a_scan_of_every_place_would(
    north: float, east: float, margin: float
) -> None:
    """Test the index (its grid, its tree for wide queries) against distances to every place."""
    index = PlaceIndex(SPREAD)
    here = at(north, east)
    expected = {p.id for p in SPREAD if distance_m(here, p) <= margin}
    assert index.near(here, margin) == expected
    assert index.containing(here) == {p.id for p in SPREAD if contains(p, here)}
