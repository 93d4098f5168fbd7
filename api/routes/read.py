"""The read API: latest states, history, crashes, snapshots, images and dead letters."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from api.deps import AMBULANCE_ID_PATTERN, AmbulanceId, Deps, NotReserved
from api.models import (
    AmbulanceList,
    AmbulanceState,
    CrashPage,
    CrashRecord,
    DeadLetter,
    DeadLetterPage,
    ImageLink,
    ImageSet,
    Snapshots,
    TrackPage,
    TrackPoint,
)
from storage import codec
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    IMAGE_HISTORIES,
    IMAGES,
    TRACKINGS,
    Document,
    ObjectStore,
    Page,
    StoreUnavailable,
)
from storage.base import Query as StoreQuery

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["read"])
files_router = APIRouter(tags=["read"])

M = TypeVar("M", bound=BaseModel)
MAX_LIMIT = 1000
MAX_FLEET = 10_000  # states read from the store when the cache cannot answer
CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}

Since = Annotated[datetime | None, Query(description="inclusive, ISO 8601")]
Until = Annotated[datetime | None, Query(description="exclusive, ISO 8601")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of a page")]
OptionalAmbulanceId = Annotated[str | None, Query(pattern=AMBULANCE_ID_PATTERN), NotReserved]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        # Normalised here: year 1 or 9999 with an offset overflows, and would
        # otherwise do so deep in the store as a 500.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise HTTPException(422, detail="since/until: out of the representable range") from None


def _models(model: type[M], docs: list[Document]) -> list[M]:
    """``docs`` as ``model``; a malformed stored document is logged and skipped, not a 500."""
    out = []
    for doc in docs:
        try:
            out.append(model.model_validate(doc))
        except ValidationError as exc:
            log.warning("skipping malformed %s %r: %s", model.__name__, doc.get("_id"), exc)
    return out


async def _find(deps: Deps, query: StoreQuery) -> Page:
    try:
        return await deps.store.find(query)
    except ValueError as exc:  # an invalid cursor: the store checks what it decodes
        detail = [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]
        raise HTTPException(422, detail=detail) from exc


async def _cached_states(deps: Deps) -> dict[str, Document]:
    if deps.cache is None:
        return {}
    try:
        return await deps.cache.get_all()
    except StoreUnavailable as exc:
        log.warning("state cache unavailable, reading the store: %s", exc)
        return {}


@router.get("/ambulances", response_model=AmbulanceList)
async def list_ambulances(deps: Deps) -> AmbulanceList:
    """The latest state of every ambulance (Redis cache, else the store)."""
    states = await _cached_states(deps)
    source = "cache"
    if not states:
        source = "store"
        query = StoreQuery(AMBULANCES, limit=MAX_LIMIT)
        docs: list[Document] = []
        while len(docs) < MAX_FLEET:
            page = await _find(deps, query)
            docs += page.items
            if page.next_cursor is None:
                break
            query = StoreQuery(AMBULANCES, limit=MAX_LIMIT, cursor=page.next_cursor)
        states = {doc["ambulance_id"]: doc for doc in docs if "ambulance_id" in doc}
    items = _models(AmbulanceState, [states[aid] for aid in sorted(states)])
    return AmbulanceList(items=items, source=source)


@router.get(
    "/ambulances/{ambulance_id}",
    response_model=AmbulanceState,
    responses={404: {"description": "Unknown ambulance"}},
)
async def get_ambulance(ambulance_id: AmbulanceId, deps: Deps) -> AmbulanceState:
    """The latest state of one ambulance."""
    state = None
    if deps.cache is not None:
        try:
            state = await deps.cache.get(ambulance_id)
        except StoreUnavailable as exc:
            log.warning("state cache unavailable, reading the store: %s", exc)
    if state is None:
        state = await deps.store.get(AMBULANCES, ambulance_id)
    if state is None:
        raise HTTPException(404, detail=f"no ambulance {ambulance_id!r}")
    return AmbulanceState.model_validate(state)


@router.get("/ambulances/{ambulance_id}/track", response_model=TrackPage)
async def get_track(
    ambulance_id: AmbulanceId,
    deps: Deps,
    *,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    newest_first: bool = False,
) -> TrackPage:
    """Tracking history of one ambulance, one page at a time."""
    page = await _find(deps, StoreQuery(
        TRACKINGS, ambulance_id=ambulance_id, since=_utc(since), until=_utc(until),
        limit=limit, cursor=cursor, newest_first=newest_first,
    ))
    return TrackPage(items=_models(TrackPoint, page.items), next_cursor=page.next_cursor)


@router.get("/crashes", response_model=CrashPage)
async def list_crashes(
    deps: Deps,
    *,
    ambulance_id: OptionalAmbulanceId = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    newest_first: bool = False,
) -> CrashPage:
    """Crash records, of one ambulance or all."""
    page = await _find(deps, StoreQuery(
        CRASHES, ambulance_id=ambulance_id, since=_utc(since), until=_utc(until),
        limit=limit, cursor=cursor, newest_first=newest_first,
    ))
    return CrashPage(items=_models(CrashRecord, page.items), next_cursor=page.next_cursor)


def _image_set(doc: Document, request: Request, objects: ObjectStore) -> ImageSet:
    links = []
    images: dict[str, Any] = doc.get("images") or {}
    for name, key in images.items():
        if not isinstance(key, str):
            continue
        try:
            url = objects.url(key) or str(request.url_for("get_file", key=key))
        except ValueError:  # a key the object store would refuse: not linkable
            log.warning("skipping invalid object key %r of %s", key, doc.get("_id"))
            continue
        links.append(ImageLink(name=name, key=key, url=url))
    return ImageSet(id=doc.get("_id"), created_at=doc.get("createdAt"), images=links)


@router.get("/ambulances/{ambulance_id}/snapshots", response_model=Snapshots)
async def get_snapshots(
    ambulance_id: AmbulanceId,
    deps: Deps,
    request: Request,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Snapshots:
    """The current images of one ambulance and the history of its snaps, newest first."""
    current = await deps.store.get(IMAGES, ambulance_id)
    page = await _find(deps, StoreQuery(
        IMAGE_HISTORIES, ambulance_id=ambulance_id, limit=limit, cursor=cursor, newest_first=True
    ))
    return Snapshots(
        ambulance_id=ambulance_id,
        current=None if current is None else _image_set(current, request, deps.objects),
        history=[_image_set(doc, request, deps.objects) for doc in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/dead-letters", response_model=DeadLetterPage)
async def list_dead_letters(
    deps: Deps, since: Since = None, limit: Limit = 100, cursor: Cursor = None
) -> DeadLetterPage:
    """Rejected messages with the reason, newest first."""
    page = await _find(deps, StoreQuery(
        DEAD_LETTERS, since=_utc(since), limit=limit, cursor=cursor, newest_first=True
    ))
    return DeadLetterPage(items=_models(DeadLetter, page.items), next_cursor=page.next_cursor)


@files_router.get(
    "/files/{key:path}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, 404: {}},
)
async def get_file(key: str, deps: Deps) -> Response:
    """The bytes of a stored object (images), with the content type of its extension."""
    try:
        codec.validate_key(key)
    except ValueError as exc:
        raise HTTPException(400, detail=f"invalid object key: {exc}") from exc
    try:
        data = await deps.objects.get(key)
    except KeyError as exc:
        raise HTTPException(404, detail=f"no object {key!r}") from exc
    ext = key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return Response(
        data,
        media_type=CONTENT_TYPES.get(ext, "application/octet-stream"),
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"},
    )
