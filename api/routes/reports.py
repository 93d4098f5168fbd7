"""Fleet reports (issue 14): the summary, trips and stops over a range, as JSON or CSV.

Everything is read from the stored trips and stops (``bridge.trips`` keeps
them as points arrive), never from the raw points: a 30-day fleet summary
reads two documents' worth per drive, not every fix (``bench.reports``).
The range and the sums are ``api.reports``; CSV is ``api.csvout``.

Any token reads them; a token limited to some ambulances must pass
``ambulance_id`` of its own (403 otherwise), as for crashes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse

from api import csvout, reports
from api.access import (
    FORBIDDEN,
    UNAUTHORIZED,
    Token,
    require_ambulance,
    require_fleet,
    require_token,
)
from api.deps import ApiDeps, Deps
from api.report_models import Stop, StopPage, Summary, Trip, TripPage
from api.routes.read import Cursor, Limit, OptionalAmbulanceId, TrackOrder, _find, _models
from api.tokens import TokenInfo
from storage.base import STOPS, TRIPS, Document, DocumentStore, Page
from storage.base import Query as StoreQuery

READ_PAGE = 1000  # documents per store read of a summary or a CSV
# A CSV of trips or stops ends after this many rows: exactly this many means
# the range held more (narrow it, or page the JSON).
CSV_MAX_ROWS = 100_000

router = APIRouter(
    prefix="/api/v1/reports",
    tags=["reports"],
    dependencies=[Depends(require_token)],
    responses={
        401: UNAUTHORIZED,
        403: {"description": f"{FORBIDDEN['description']}: pass ambulance_id of its own"},
    },
)

From = Annotated[str, Query(
    alias="from", min_length=1, max_length=40,
    description="first day (YYYY-MM-DD, from midnight in `tz`) or an ISO datetime, inclusive",
)]
To = Annotated[str, Query(
    min_length=1, max_length=40,
    description="last day included (YYYY-MM-DD, to midnight after it in `tz`) or an ISO "
    "datetime, exclusive; at most 366 days after `from`",
)]
Tz = Annotated[str, Query(
    min_length=1, max_length=64, description="IANA time zone of the days and of the times shown",
)]
Format = Annotated[Literal["json", "csv"] | None, Query(
    description="`csv` for text/csv; unset: the Accept header decides (JSON by default)",
)]


def _csv_answer(what: str) -> dict[int | str, dict[str, Any]]:
    return {200: {
        "description": f"{what} (JSON, or CSV with a header row for `format=csv` or "
        "`Accept: text/csv`)",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }}


def _check(token: TokenInfo, ambulance_id: str | None, what: str) -> None:
    if ambulance_id is None:
        require_fleet(token, f"the {what} of every ambulance (pass ambulance_id)")
    else:
        require_ambulance(token, ambulance_id)


def _range(start: str, end: str, tz: str) -> reports.Range:
    try:
        return reports.resolve(start, end, tz)
    except reports.RangeError as exc:
        raise HTTPException(422, detail=[
            {"loc": ["query", exc.field], "msg": str(exc), "type": "value_error"}
        ]) from None


def _resolved(span: reports.Range, tz: str) -> dict[str, Any]:
    return {"tz": tz, "from": span.local(span.start), "to": span.local(span.end)}


def _query(collection: str, span: reports.Range, ambulance_id: str | None, *,
           limit: int | None = None, cursor: str | None = None,
           newest_first: bool = False) -> StoreQuery:
    return StoreQuery(collection, ambulance_id=ambulance_id, since=span.start, until=span.end,
                      limit=READ_PAGE if limit is None else limit, cursor=cursor,
                      newest_first=newest_first)


async def _pages(store: DocumentStore, query: StoreQuery, first: Page | None = None
                 ) -> AsyncIterator[Page]:
    """The pages of ``query`` from ``first`` (read now when None), one store read each."""
    page = first if first is not None else await store.find(query)
    while True:
        yield page
        if page.next_cursor is None:
            return
        page = await store.find(dataclasses.replace(query, cursor=page.next_cursor))


async def summarize(
    store: DocumentStore, span: reports.Range, ambulance_id: str | None = None
) -> reports.Summary:
    """The sums of ``span``'s trips and stops, a page at a time (one ``Figures`` per ambulance)."""
    summary = reports.Summary()
    if ambulance_id is not None:
        summary.include(ambulance_id)
    for collection, add in ((TRIPS, summary.add_trip), (STOPS, summary.add_stop)):
        async for page in _pages(store, _query(collection, span, ambulance_id)):
            for doc in page.items:
                add(doc)
    return summary


def _local(doc: Document, span: reports.Range) -> Document:
    """``doc`` with its times in the report's zone (same instants)."""
    out = dict(doc)
    for name in ("started_at", "ended_at"):
        value = out.get(name)
        if isinstance(value, datetime):
            out[name] = span.local(value)
    return out


def _items(
    model: type[Trip] | type[Stop], docs: list[Document], span: reports.Range
) -> list[Trip | Stop]:
    return list(_models(model, [_local(doc, span) for doc in docs]))


def _flat(item: Mapping[str, Any], columns: tuple[str, ...]) -> list[Any]:
    """A JSON item as a CSV row: ``a.b`` columns read nested objects (locations)."""
    row = []
    for column in columns:
        value: Any = item
        for part in column.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        row.append(value)
    return row


TRIP_COLUMNS = (
    "id", "ambulance_id", "started_at", "ended_at", "open", "start_place", "end_place",
    "start_location.lat", "start_location.lon", "end_location.lat", "end_location.lon",
    "distance_m", "duration_s", "max_speed", "avg_speed", "overspeed_s", "overspeed_episodes",
    "points", "crashes", "snapshots",
)
STOP_COLUMNS = (
    "id", "ambulance_id", "started_at", "ended_at", "open", "place_id", "place",
    "location.lat", "location.lon", "duration_s", "crashes", "snapshots",
)


@dataclasses.dataclass(frozen=True)
class _Listing:
    """What a listing reads and how it answers."""

    collection: str
    model: type[Trip] | type[Stop]
    page: type[TripPage] | type[StopPage]
    columns: tuple[str, ...]


TRIPS_LISTING = _Listing(TRIPS, Trip, TripPage, TRIP_COLUMNS)
STOPS_LISTING = _Listing(STOPS, Stop, StopPage, STOP_COLUMNS)


async def _csv_stream(
    deps: ApiDeps, query: StoreQuery, first: Page, span: reports.Range, listing: _Listing
) -> AsyncIterator[bytes]:
    yield csvout.lines([listing.columns]).encode()
    sent = 0
    async for page in _pages(deps.store, query, first):
        items = _items(listing.model, page.items, span)[: CSV_MAX_ROWS - sent]
        sent += len(items)
        yield csvout.lines(
            _flat(item.model_dump(mode="json", by_alias=True), listing.columns)
            for item in items
        ).encode()
        if sent >= CSV_MAX_ROWS:
            return


async def _listing(
    deps: ApiDeps, request: Request, listing: _Listing, span: reports.Range, tz: str, *,
    ambulance_id: str | None, limit: int, cursor: str | None, order: str, format: str | None,
) -> Response | TripPage | StopPage:
    newest_first = order == "newest"
    if csvout.wants_csv(format, request.headers.get("accept")):
        # The whole range, no paging; the first page read before answering,
        # so a store outage is still a 503 and not a cut-off download.
        query = _query(listing.collection, span, ambulance_id, newest_first=newest_first)
        first = await _find(deps, query)
        return StreamingResponse(
            _csv_stream(deps, query, first, span, listing),
            media_type=csvout.MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{listing.collection}.csv"'},
        )
    page = await _find(deps, _query(listing.collection, span, ambulance_id, limit=limit,
                                    cursor=cursor, newest_first=newest_first))
    items = _items(listing.model, page.items, span)
    return listing.page.model_validate(
        {**_resolved(span, tz), "items": items, "next_cursor": page.next_cursor}
    )


@router.get("/summary", response_model=Summary, responses=_csv_answer("The summary"))
async def get_summary(
    deps: Deps, token: Token, request: Request, *, from_: From, to: To,
    ambulance_id: OptionalAmbulanceId = None, tz: Tz = "UTC", format: Format = None,
) -> Response | Summary:
    """Per ambulance: distance, driving and stopped time, top speed, overspeed, crashes, snapshots.

    From the trips and stops whose ``started_at`` is in the range (an open one
    as of its last checkpoint, at most a minute old). Every ambulance with one
    of them, by id, or the one asked (zeros when it had none), and the fleet's
    ``total``. CSV: a header row, then one row per ambulance with the range.
    """
    _check(token, ambulance_id, "summary")
    span = _range(from_, to, tz)
    summary = await summarize(deps.store, span, ambulance_id)
    answer = Summary.model_validate(
        {**_resolved(span, tz), "ambulances": summary.rows(), "total": summary.total()}
    )
    if not csvout.wants_csv(format, request.headers.get("accept")):
        return answer
    start, end = (value.isoformat() for value in (answer.from_, answer.to))
    header = ("ambulance_id", "from", "to", *reports.FIGURES)
    rows = [(row["ambulance_id"], start, end, *(row[f] for f in reports.FIGURES))
            for row in summary.rows()]
    return Response(csvout.lines([header, *rows]), media_type=csvout.MEDIA_TYPE,
                    headers={"Content-Disposition": 'attachment; filename="summary.csv"'})


@router.get("/trips", response_model=TripPage, responses=_csv_answer("A page of trips"))
async def list_trips(
    deps: Deps, token: Token, request: Request, *, from_: From, to: To,
    ambulance_id: OptionalAmbulanceId = None, tz: Tz = "UTC", limit: Limit = 100,
    cursor: Cursor = None, order: TrackOrder = "newest", format: Format = None,
) -> Response | TripPage | StopPage:
    """Trips that started in the range, newest first by default, a page at a time.

    Follow ``next_cursor`` with the same parameters until it is null. CSV
    (``format=csv`` or ``Accept: text/csv``) is the whole range in one
    streamed answer, ``limit`` and ``cursor`` ignored, at most 100,000 rows.
    """
    _check(token, ambulance_id, "trips")
    span = _range(from_, to, tz)
    return await _listing(
        deps, request, TRIPS_LISTING, span, tz, ambulance_id=ambulance_id,
        limit=limit, cursor=cursor, order=order, format=format,
    )


@router.get("/stops", response_model=StopPage, responses=_csv_answer("A page of stops"))
async def list_stops(
    deps: Deps, token: Token, request: Request, *, from_: From, to: To,
    ambulance_id: OptionalAmbulanceId = None, tz: Tz = "UTC", limit: Limit = 100,
    cursor: Cursor = None, order: TrackOrder = "newest", format: Format = None,
) -> Response | TripPage | StopPage:
    """Stops that started in the range, newest first by default, a page at a time.

    As trips: follow ``next_cursor``; CSV is the whole range, streamed, at
    most 100,000 rows.
    """
    _check(token, ambulance_id, "stops")
    span = _range(from_, to, tz)
    return await _listing(
        deps, request, STOPS_LISTING, span, tz, ambulance_id=ambulance_id,
        limit=limit, cursor=cursor, order=order, format=format,
    )
