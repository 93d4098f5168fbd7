"""One ambulance's track over a range as a file: GPX 1.1 or GeoJSON, streamed.

The range is read from TRACKINGS a keyset page at a time, oldest first, and
each page is written out before the next is read: an export of any length
holds one page in memory, and its first bytes leave at once. GPX is written
by gpxpy (its escaping, its time format), a page of points at a time; never
one GPX object for the whole range.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import gpxpy.gpx
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import StreamingResponse

from api.access import FORBIDDEN, UNAUTHORIZED, Token, require_ambulance, require_token
from api.deps import AmbulanceId, ApiDeps, Deps
from storage.base import TRACKINGS, Document, Page
from storage.base import Query as StoreQuery

EXPORT_PAGE = 1000  # points per store read
DEFAULT_RANGE = timedelta(hours=24)
MAX_RANGE = timedelta(days=31)
GPX_TYPE = "application/gpx+xml"
GEOJSON_TYPE = "application/geo+json"
# Garmin's TrackPointExtension: what GPX 1.1 readers know for speed and course.
TPX_NS = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"

router = APIRouter(
    prefix="/api/v1",
    tags=["exports"],
    dependencies=[Depends(require_token)],
    responses={401: UNAUTHORIZED, 403: FORBIDDEN},
)

From = Annotated[
    datetime | None,
    Query(alias="from", description="inclusive, ISO 8601 (UTC without an offset); "
          "default: `to` minus 24 hours"),
]
To = Annotated[
    datetime | None,
    Query(alias="to", description="exclusive, ISO 8601 (UTC without an offset); default: now"),
]


GEOJSON_SCHEMA = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"type": "string", "enum": ["FeatureCollection"]},
        "features": {"type": "array", "items": {"type": "object"}},
    },
}


def _file_response(
    media_type: str, schema: dict[str, Any], description: str
) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "content": {media_type: {"schema": schema}},
            "headers": {"Content-Disposition": {
                "description": "attachment; filename=<id>_<from>_<to>.<ext>",
                "schema": {"type": "string"},
            }},
        },
        422: {"description": "A bad parameter; `from` not before `to`; a range over 31 days"},
    }


def _range_error(msg: str) -> HTTPException:
    detail = [{"loc": ["query", "from"], "msg": msg, "type": "value_error"}]
    return HTTPException(422, detail=detail)


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """The UTC range asked for, defaults applied; 422 when empty, reversed or too long."""
    try:
        end = datetime.now(UTC) if end is None else _utc(end)
        start = end - DEFAULT_RANGE if start is None else _utc(start)
    except OverflowError:  # year 1 or 9999 with an offset, or 24 h before year 1
        raise _range_error("from/to: out of the representable range") from None
    if start >= end:
        raise _range_error("from must be before to")
    if end - start > MAX_RANGE:
        raise _range_error(f"the range may span at most {MAX_RANGE.days} days")
    return start, end


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _pages(deps: ApiDeps, query: StoreQuery, first: Page) -> AsyncIterator[list[Document]]:
    """The points of ``query`` a page at a time, starting with ``first``."""
    page = first
    while True:
        yield page.items
        if page.next_cursor is None:
            return
        page = await deps.store.find(_at(query, page.next_cursor))


def _at(query: StoreQuery, cursor: str) -> StoreQuery:
    return StoreQuery(
        query.collection, ambulance_id=query.ambulance_id, since=query.since,
        until=query.until, limit=query.limit, cursor=cursor,
    )


def _location(doc: Document) -> tuple[float, float] | None:
    """(lat, lon) of a stored point, or None for a point without a usable location."""
    location = doc.get("location")
    if not isinstance(location, dict):
        return None
    lat, lon = _number(location.get("lat")), _number(location.get("lon"))
    if lat is None or lon is None:
        return None
    return lat, lon


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _stamp(start: datetime, end: datetime) -> str:
    return f"{start:%Y%m%dT%H%M%SZ}_{end:%Y%m%dT%H%M%SZ}"


def _headers(ambulance_id: str, start: datetime, end: datetime, ext: str) -> dict[str, str]:
    # The id's alphabet (letters, digits, _ and -) needs no quoting in a filename.
    name = f"{ambulance_id}_{_stamp(start, end)}.{ext}"
    return {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}


# GPX


def _gpx(ambulance_id: str, start: datetime, end: datetime) -> gpxpy.gpx.GPX:
    """A GPX document of one track and one segment, with no points yet."""
    doc = gpxpy.gpx.GPX()
    doc.creator = "aoc"
    doc.nsmap["gpxtpx"] = TPX_NS
    doc.name = f"{ambulance_id} {start.isoformat()} - {end.isoformat()}"
    doc.time = start
    track = gpxpy.gpx.GPXTrack(name=ambulance_id)
    track.segments.append(gpxpy.gpx.GPXTrackSegment())
    doc.tracks.append(track)
    return doc


def _trkpt(doc: Document) -> gpxpy.gpx.GPXTrackPoint | None:
    where = _location(doc)
    when = doc.get("count_datetime")
    if where is None or not isinstance(when, datetime):
        return None
    point = gpxpy.gpx.GPXTrackPoint(
        where[0], where[1], elevation=_number(doc.get("altitude")), time=when
    )
    speed, heading = _number(doc.get("speed")), _number(doc.get("heading"))
    if speed is not None or heading is not None:
        ext = ET.Element(f"{{{TPX_NS}}}TrackPointExtension")
        if speed is not None:  # stored in km/h; the extension's unit is m/s
            ET.SubElement(ext, f"{{{TPX_NS}}}speed").text = f"{speed / 3.6:.3f}"
        if heading is not None:
            # Rounded first: 359.96 would be written 360.0, outside [0, 360).
            ET.SubElement(ext, f"{{{TPX_NS}}}course").text = f"{round(heading, 1) % 360:.1f}"
        point.extensions.append(ext)
    return point


def _gpx_parts(ambulance_id: str, start: datetime, end: datetime) -> tuple[str, str]:
    """The document around the points: up to ``<trkseg>``, and from ``</trkseg>``."""
    text = _gpx(ambulance_id, start, end).to_xml(prettyprint=False)
    cut = text.index("</trkseg>")
    return text[:cut], text[cut:]


def _gpx_points(ambulance_id: str, start: datetime, end: datetime, docs: list[Document]) -> str:
    """The ``<trkpt>`` elements of a page, as gpxpy writes them in the whole document."""
    doc = _gpx(ambulance_id, start, end)
    doc.tracks[0].segments[0].points = [p for d in docs if (p := _trkpt(d)) is not None]
    text = doc.to_xml(prettyprint=False)
    return text[text.index("<trkseg>") + len("<trkseg>"):text.rindex("</trkseg>")]


async def _gpx_body(
    pages: AsyncIterator[list[Document]], ambulance_id: str, start: datetime, end: datetime
) -> AsyncIterator[bytes]:
    head, tail = _gpx_parts(ambulance_id, start, end)
    yield head.encode()
    async for docs in pages:
        # Tens of milliseconds a page: on a worker thread, so the shared event loop keeps serving.
        text = await asyncio.to_thread(_gpx_points, ambulance_id, start, end, docs)
        yield text.encode()
    yield tail.encode()


# GeoJSON


def _positions(docs: list[Document]) -> list[tuple[list[float], str]]:
    """([lon, lat], ISO time) of the usable points of a page."""
    out = []
    for doc in docs:
        where, when = _location(doc), doc.get("count_datetime")
        if where is not None and isinstance(when, datetime):
            out.append(([where[1], where[0]], _iso(when)))
    return out


def _properties(ambulance_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    return {"ambulance_id": ambulance_id, "from": _iso(start), "to": _iso(end)}


def _small_geojson(
    positions: list[tuple[list[float], str]], properties: dict[str, Any]
) -> bytes:
    """A range of fewer than two points: no feature, or one Point (a LineString needs two)."""
    features = [{
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": where},
        "properties": {**properties, "points": 1, "coordTimes": [when]},
    } for where, when in positions]
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


async def _geojson_body(
    pages: AsyncIterator[list[Document]], ambulance_id: str, start: datetime, end: datetime
) -> AsyncIterator[bytes]:
    """A FeatureCollection of one LineString, its coordinates written as they are read.

    Each position's time goes to ``properties.coordTimes`` (the convention of
    togeojson and Mapbox), which JSON can only write after the coordinates:
    they wait in a spooled temporary file (in memory up to 1 MB, then on disk).
    """
    properties = _properties(ambulance_id, start, end)
    # The geometry's type waits for two usable positions (a LineString needs two):
    # pages of points without a location may come first, or be all there is.
    first: list[tuple[list[float], str]] = []
    async for docs in pages:
        first += _positions(docs)
        if len(first) >= 2:
            break
    if len(first) < 2:
        yield _small_geojson(first, properties)
        return
    yield (b'{"type":"FeatureCollection","features":[{"type":"Feature",'
           b'"geometry":{"type":"LineString","coordinates":[')
    count = 0
    with tempfile.SpooledTemporaryFile(max_size=1 << 20, mode="w+b") as times:

        def written(positions: list[tuple[list[float], str]]) -> bytes:
            """The coordinates of ``positions``; their times go to ``times``."""
            nonlocal count
            coordinates, stamps = [], []
            for where, when in positions:
                sep = "," if count else ""
                coordinates.append(sep + json.dumps(where))
                stamps.append(sep + json.dumps(when))
                count += 1
            times.write("".join(stamps).encode())
            return "".join(coordinates).encode()

        yield written(first)
        async for docs in pages:  # the rest, after the page that gave the second position
            if chunk := written(_positions(docs)):
                yield chunk
        head = json.dumps({**properties, "points": count})[:-1]  # without its closing brace
        yield f']}},"properties":{head},"coordTimes":['.encode()
        times.seek(0)
        while chunk := times.read(1 << 16):
            yield chunk
    yield b"]}}]}"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Routes


async def _export(
    deps: ApiDeps, token: Token, ambulance_id: str, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime, StoreQuery, Page]:
    """The checked range, its query and its first page (read before the response starts)."""
    require_ambulance(token, ambulance_id)
    since, until = _range(start, end)
    query = StoreQuery(
        TRACKINGS, ambulance_id=ambulance_id, since=since, until=until, limit=EXPORT_PAGE
    )
    # Before the status line: an unreachable store is still a 503, not a cut body.
    return since, until, query, await deps.store.find(query)


@router.get(
    "/ambulances/{ambulance_id}/track.gpx",
    response_class=StreamingResponse,
    responses=_file_response(
        GPX_TYPE, {"type": "string"}, "GPX 1.1: one track of one segment, oldest point "
        "first; speed (m/s) and course in Garmin's TrackPointExtension",
    ),
)
async def export_gpx(
    ambulance_id: AmbulanceId, deps: Deps, token: Token, start: From = None, end: To = None
) -> StreamingResponse:
    """One ambulance's track over a range (at most 31 days) as a GPX file, streamed.

    Points without a location or time are left out. An empty range is a GPX
    document with an empty segment.
    """
    since, until, query, first = await _export(deps, token, ambulance_id, start, end)
    return StreamingResponse(
        _gpx_body(_pages(deps, query, first), ambulance_id, since, until),
        media_type=GPX_TYPE,
        headers=_headers(ambulance_id, since, until, "gpx"),
    )


@router.get(
    "/ambulances/{ambulance_id}/track.geojson",
    response_class=StreamingResponse,
    responses=_file_response(
        GEOJSON_TYPE, GEOJSON_SCHEMA, "A FeatureCollection of one LineString ([lon, lat], "
        "oldest first) whose properties are ambulance_id, from, to, points and coordTimes "
        "(one ISO time per position); a single point is a Point feature, none no feature",
    ),
)
async def export_geojson(
    ambulance_id: AmbulanceId, deps: Deps, token: Token, start: From = None, end: To = None
) -> StreamingResponse:
    """One ambulance's track over a range (at most 31 days) as GeoJSON (RFC 7946), streamed."""
    since, until, query, first = await _export(deps, token, ambulance_id, start, end)
    return StreamingResponse(
        _geojson_body(_pages(deps, query, first), ambulance_id, since, until),
        media_type=GEOJSON_TYPE,
        headers=_headers(ambulance_id, since, until, "geojson"),
    )
