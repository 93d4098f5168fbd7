"""Places as data: the ``Place`` type, GeoJSON input and output, and stored documents.

Pure (no I/O). ``bridge.places`` re-exports everything here along with the
geometry (distances, the index, the enter/exit rule), so callers import one module.

A place is a polygon (``geometry``: a shapely Polygon or MultiPolygon in
lon/lat, EPSG:4326) or a circle (``geometry`` None, ``center`` and
``radius_m``). In GeoJSON a circle is a Point feature with a ``radius_m``
(or ``radius``) property, in metres: GeoJSON itself has no circles.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.validation import explain_validity

from bridge.contract import AMBULANCE_ID
from bridge.messages import Position
from storage.base import Document

# Same rule as ambulance ids: a place id becomes a document id and a URL segment.
PLACE_ID = AMBULANCE_ID
MAX_PLACES = 10_000  # per file or request
MAX_VERTICES = 100_000  # over every polygon of a file or request
MAX_RADIUS_M = 50_000.0  # a circle wider than a city is a mistake, not a place
MAX_NAME = 200
MAX_KIND = 64
MAX_PROPERTIES_BYTES = 16_384  # the other properties of one place, as JSON
# Properties the place's own fields take (and those ``place_feature`` adds, so that
# an exported file imports again); the rest is kept in ``properties``.
_OWN = ("id", "name", "kind", "radius_m", "radius", "updated_at", "removed_at")


class PlaceError(ValueError):
    """Input that is not a valid place (the message names the feature and the problem)."""


@dataclass(frozen=True)
class Place:
    id: str
    name: str
    kind: str
    geometry: Polygon | MultiPolygon | None  # None: a circle
    center: Position | None = None  # circles only
    radius_m: float | None = None  # circles only
    properties: dict[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None
    removed_at: datetime | None = None

    @property
    def is_circle(self) -> bool:
        return self.geometry is None


# --- GeoJSON in ----------------------------------------------------------------------------


def places_from_geojson(data: object) -> list[Place]:
    """The places of a GeoJSON FeatureCollection or single Feature; ``PlaceError`` if invalid."""
    if not isinstance(data, dict):
        raise PlaceError("expected a GeoJSON Feature or FeatureCollection (a JSON object)")
    if data.get("type") == "Feature":
        features: list[Any] = [data]
    elif data.get("type") == "FeatureCollection":
        if not isinstance(data.get("features"), list):
            raise PlaceError("a FeatureCollection needs a list of features")
        features = data["features"]
    else:
        raise PlaceError(
            f"expected a GeoJSON Feature or FeatureCollection, got type {data.get('type')!r}"
        )
    if len(features) > MAX_PLACES:
        raise PlaceError(f"{len(features)} features: at most {MAX_PLACES} places at once")
    places: list[Place] = []
    seen: dict[str, int] = {}
    vertices = 0
    for index, feature in enumerate(features):
        place, count = _feature(index, feature)
        vertices += count
        if vertices > MAX_VERTICES:
            raise PlaceError(f"more than {MAX_VERTICES} vertices in all (at feature {index})")
        if place.id in seen:
            raise PlaceError(
                f"feature {index} ({place.id!r}): duplicate id, feature {seen[place.id]} has it"
            )
        seen[place.id] = index
        places.append(place)
    return places


def slug(name: str) -> str:
    """An id from a name: lower case, runs of other characters as one ``-``, at most 64."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")


def _feature(index: int, feature: object) -> tuple[Place, int]:
    """One feature as a place, and its vertex count."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise PlaceError(f"feature {index}: not a GeoJSON Feature")
    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise PlaceError(f"feature {index}: properties must be an object")
    place_id, name, kind = _identity(f"feature {index}", feature, props)
    where = f"feature {index} ({place_id!r})"
    rest = {k: v for k, v in props.items() if k not in _OWN}
    _check_properties(where, rest)
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict):
        raise PlaceError(f"{where}: needs a geometry")
    if geometry.get("type") == "Point":
        center = _position(where, geometry.get("coordinates"))
        radius = _radius(where, props.get("radius_m", props.get("radius")))
        circle = Place(place_id, name, kind, None, center, radius, properties=rest)
        return circle, 1
    shaped, count = _polygon(where, geometry.get("type"), geometry.get("coordinates"))
    return Place(place_id, name, kind, shaped, properties=rest), count


def _identity(where: str, feature: dict[str, Any], props: dict[str, Any]) -> tuple[str, ...]:
    """(id, name, kind): the id from the feature, its properties, else the name's slug."""
    name = props.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise PlaceError(f"{where}: needs a name (a non-empty string of at most {MAX_NAME})")
    raw_id = feature.get("id", props.get("id"))
    if raw_id is None:
        place_id = slug(name)
    elif isinstance(raw_id, str) or (isinstance(raw_id, int) and not isinstance(raw_id, bool)):
        place_id = str(raw_id)
    else:
        raise PlaceError(f"{where}: id must be a string or an integer")
    if PLACE_ID.fullmatch(place_id) is None:
        raise PlaceError(f"{where}: id {place_id!r} must match {PLACE_ID.pattern}")
    kind = props.get("kind", "place")
    if not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_KIND:
        raise PlaceError(
            f"{where} ({place_id!r}): kind must be a non-empty string of at most {MAX_KIND}"
        )
    return place_id, name.strip(), kind.strip().lower()


def _radius(where: str, radius: object) -> float:
    if (
        not isinstance(radius, int | float) or isinstance(radius, bool)
        or not math.isfinite(radius) or not 0 < radius <= MAX_RADIUS_M
    ):
        raise PlaceError(
            f"{where}: a Point is a circle and needs a radius_m property "
            f"in metres, above 0 and at most {MAX_RADIUS_M:g}"
        )
    return float(radius)


def _polygon(where: str, gtype: object, coords: object) -> tuple[Polygon | MultiPolygon, int]:
    """A valid Polygon or MultiPolygon, and its vertex count."""
    if gtype == "Polygon":
        rings = [_rings(where, coords)]
    elif gtype == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise PlaceError(f"{where}: a MultiPolygon needs a list of polygons")
        rings = [_rings(where, polygon) for polygon in coords]
    else:
        raise PlaceError(f"{where}: geometry {gtype!r} is not a Polygon, MultiPolygon or Point")
    polygons = [Polygon(r[0], r[1:]) for r in rings]
    shaped = polygons[0] if gtype == "Polygon" else MultiPolygon(polygons)
    if not shaped.is_valid:
        raise PlaceError(f"{where}: invalid {gtype}: {explain_validity(shaped)}")
    return shaped, sum(len(ring) for polygon in rings for ring in polygon)


def _position(where: str, value: object) -> Position:
    """``[lon, lat]`` (an altitude after them is ignored) within range."""
    if not isinstance(value, list) or len(value) not in (2, 3) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in value
    ):
        raise PlaceError(f"{where}: a position must be [lon, lat] numbers, got {value!r:.60}")
    lon, lat = float(value[0]), float(value[1])
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise PlaceError(f"{where}: position [{lon}, {lat}] is out of range (lon, lat order)")
    return Position(lat, lon)


def _rings(where: str, value: object) -> list[list[tuple[float, float]]]:
    """A Polygon's rings (shell first), each closed and of at least 4 positions."""
    if not isinstance(value, list) or not value:
        raise PlaceError(f"{where}: a Polygon needs a list of rings")
    rings = []
    for ring in value:
        if not isinstance(ring, list) or len(ring) < 4:
            raise PlaceError(f"{where}: a ring needs at least 4 positions")
        points = [(p.lon, p.lat) for p in (_position(where, v) for v in ring)]
        if points[0] != points[-1]:
            raise PlaceError(f"{where}: a ring must be closed (last position = first)")
        rings.append(points)
    return rings


def _check_properties(where: str, value: object) -> None:
    """JSON that every store keeps as is: bounded, keys without ``$`` or ``.`` (MongoDB's)."""
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        raise PlaceError(f"{where}: properties must be plain JSON (no NaN)") from None
    if size > MAX_PROPERTIES_BYTES:
        raise PlaceError(f"{where}: properties over {MAX_PROPERTIES_BYTES} bytes of JSON")
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not key or key.startswith("$") or "." in key or "\0" in key:
                    raise PlaceError(f"{where}: property name {key!r} has '$', '.' or is empty")
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


# --- stored documents and GeoJSON out ------------------------------------------------------


def _geometry_json(place: Place) -> dict[str, Any]:
    """The GeoJSON geometry (a circle's centre as a Point), with lists, not tuples."""
    if place.geometry is None:
        assert place.center is not None
        return {"type": "Point", "coordinates": [place.center.lon, place.center.lat]}
    # A JSON round trip turns shapely's nested tuples into the lists stores return.
    loaded: dict[str, Any] = json.loads(json.dumps(mapping(place.geometry)))
    return loaded


def place_doc(place: Place) -> Document:
    """The document stored in ``PLACES``."""
    return {
        "_id": place.id,
        "name": place.name,
        "kind": place.kind,
        "geometry": _geometry_json(place),
        "radius_m": place.radius_m,
        "properties": place.properties,
        "updated_at": place.updated_at,
        "removed_at": place.removed_at,
        "ambulance_id": None,  # the owner field every collection has; places have none
    }


def place_from_doc(doc: Document) -> Place:
    """A place back from its stored document (``KeyError``/``ValueError`` if damaged)."""
    geometry = doc["geometry"]
    common: dict[str, Any] = {
        "id": doc["_id"],
        "name": doc["name"],
        "kind": doc["kind"],
        "properties": dict(doc.get("properties") or {}),
        "updated_at": doc.get("updated_at"),
        "removed_at": doc.get("removed_at"),
    }
    if geometry["type"] == "Point":
        lon, lat = geometry["coordinates"][:2]
        return Place(**common, geometry=None, center=Position(float(lat), float(lon)),
                     radius_m=float(doc["radius_m"]))
    shaped = shape(geometry)
    if not isinstance(shaped, Polygon | MultiPolygon):
        raise ValueError(f"place {doc['_id']!r}: stored geometry is a {shaped.geom_type}")
    return Place(**common, geometry=shaped)


def place_feature(place: Place) -> dict[str, Any]:
    """The GeoJSON Feature of a place (a circle: a Point with ``properties.radius_m``)."""
    props: dict[str, Any] = {**place.properties, "name": place.name, "kind": place.kind}
    if place.radius_m is not None:
        props["radius_m"] = place.radius_m
    props["updated_at"] = place.updated_at.isoformat() if place.updated_at else None
    if place.removed_at is not None:
        props["removed_at"] = place.removed_at.isoformat()
    return {"type": "Feature", "id": place.id, "geometry": _geometry_json(place),
            "properties": props}
