"""The read API: latest states, history, crashes, snapshots, images and dead letters."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, TypeVar
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from api.access import (
    FORBIDDEN,
    UNAUTHORIZED,
    OptionalToken,
    Token,
    require_ambulance,
    require_fleet,
    require_token,
    unauthorized,
)
from api.deps import AMBULANCE_ID_PATTERN, AmbulanceId, ApiDeps, Deps, NotReserved
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
from api.tokens import TokenInfo
from bridge.contract import AMBULANCE_ID
from storage import codec
from storage.base import (
    AMBULANCES,
    CRASHES,
    DEAD_LETTERS,
    IMAGE_HISTORIES,
    IMAGES,
    TRACKINGS,
    Document,
    Page,
    StoreUnavailable,
)
from storage.base import Query as StoreQuery

log = logging.getLogger(__name__)

_SECURED: dict[int | str, dict[str, Any]] = {401: UNAUTHORIZED, 403: FORBIDDEN}
# Every read needs a token (``api.access``); routes take it again to check its rooms.
router = APIRouter(
    prefix="/api/v1", tags=["read"], dependencies=[Depends(require_token)], responses=_SECURED
)
files_router = APIRouter(tags=["read"])

M = TypeVar("M", bound=BaseModel)
MAX_LIMIT = 1000
FLEET_PAGE = 1000  # ambulances per page of the fleet list unless asked otherwise
CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}

Since = Annotated[datetime | None, Query(description="inclusive, ISO 8601")]
Until = Annotated[datetime | None, Query(description="exclusive, ISO 8601")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of a page")]
TrackOrder = Annotated[
    Literal["newest", "oldest"], Query(description="`newest` (default) or `oldest` point first")
]
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
        raise _bad_cursor(str(exc)) from exc


class _FleetCursor(NamedTuple):
    """Where a fleet listing continues: after an id in the cache, or at a store cursor."""

    source: str  # "cache" or "store"
    position: str  # the last ambulance id listed, or the store's own next_cursor


def _fleet_cursor(cursor: str) -> _FleetCursor:
    try:
        position = codec.decode_cursor(cursor)
    except ValueError as exc:
        raise _bad_cursor(str(exc)) from exc
    if len(position) != 2 or position[0] not in ("cache", "store") or not isinstance(
        position[1], str
    ):
        raise _bad_cursor("invalid cursor: not a next_cursor of this listing")
    # The id's alphabet only: an id stored before a rule reserved some names
    # must still be a place to continue from.
    if position[0] == "cache" and not AMBULANCE_ID.fullmatch(position[1]):
        raise _bad_cursor("invalid cursor: not a next_cursor of this listing")
    return _FleetCursor(position[0], position[1])


def _bad_cursor(msg: str) -> HTTPException:
    detail = [{"loc": ["query", "cursor"], "msg": msg, "type": "value_error"}]
    return HTTPException(422, detail=detail)


async def _cache_page(
    deps: Deps, *, after: str | None, limit: int
) -> tuple[list[Document], str | None] | None:
    """A page of the cache, or None when there is no cache or Redis is unreachable."""
    if deps.cache is None:
        return None
    try:
        return await deps.cache.page(after=after, limit=limit)
    except StoreUnavailable as exc:
        log.warning("state cache unavailable, reading the store: %s", exc)
        return None


def _fleet_json(docs: list[Document], source: str, next_cursor: str | None) -> bytes:
    # A page of a thousand states is tens of milliseconds of validation and
    # encoding: done on a worker thread, so the shared event loop keeps serving.
    listing = AmbulanceList(
        items=_models(AmbulanceState, docs), source=source, next_cursor=next_cursor
    )
    return listing.model_dump_json().encode()


@router.get(
    "/ambulances",
    response_model=AmbulanceList,
    responses={503: {"description": "A cache cursor while the cache is unreachable"}},
)
async def list_ambulances(
    deps: Deps, token: Token, limit: Limit = FLEET_PAGE, cursor: Cursor = None
) -> Response:
    """The latest state of every ambulance, a page at a time (Redis cache, else the store).

    Follow ``next_cursor`` until it is null. From the cache, ambulances come
    in id order and each appears exactly once across the pages, even while
    the bridge writes. From the store (Redis down or empty), they come in
    ``last_seen`` order: an ambulance updated during the listing can appear
    again on a later page (with its newer state), none is skipped.

    A token limited to some ambulances gets theirs only, in one page.
    """
    if token.rooms is not None:
        return await _own_ambulances(deps, token.rooms)
    at = None if cursor is None else _fleet_cursor(cursor)
    docs: list[Document] | None = None
    next_cursor = None
    if at is None or at.source == "cache":
        cached = await _cache_page(deps, after=at.position if at else None, limit=limit)
        if cached is None and at is not None:
            raise HTTPException(
                503,
                detail="the state cache this cursor pages is unavailable; "
                "list again without a cursor to read the store",
                headers={"Retry-After": "5"},
            )
        # An empty cache on a first page: not filled yet (or Redis lost it).
        if cached is not None and (cached[0] or cached[1] or at is not None):
            docs, next_after = cached
            if next_after is not None:
                next_cursor = codec.encode_cursor(["cache", next_after])
            source = "cache"
    if docs is None:
        store_cursor = at.position if at is not None else None
        page = await _find(deps, StoreQuery(AMBULANCES, limit=limit, cursor=store_cursor))
        docs = page.items
        if page.next_cursor is not None:
            next_cursor = codec.encode_cursor(["store", page.next_cursor])
        source = "store"
    body = await asyncio.to_thread(_fleet_json, docs, source, next_cursor)
    return Response(body, media_type="application/json")


async def _state(deps: ApiDeps, ambulance_id: str) -> Document | None:
    """The latest state of one ambulance: the cache, else the store."""
    state = None
    if deps.cache is not None:
        try:
            state = await deps.cache.get(ambulance_id)
        except StoreUnavailable as exc:
            log.warning("state cache unavailable, reading the store: %s", exc)
    if state is None:
        state = await deps.store.get(AMBULANCES, ambulance_id)
    return state


async def _own_ambulances(deps: ApiDeps, ambulance_ids: tuple[str, ...]) -> Response:
    """The fleet list of a limited token: its ambulances that have a state, in one page."""
    docs = [doc for aid in ambulance_ids if (doc := await _state(deps, aid)) is not None]
    body = await asyncio.to_thread(_fleet_json, docs, "store", None)
    return Response(body, media_type="application/json")


@router.get(
    "/ambulances/{ambulance_id}",
    response_model=AmbulanceState,
    responses={404: {"description": "Unknown ambulance"}},
)
async def get_ambulance(ambulance_id: AmbulanceId, deps: Deps, token: Token) -> AmbulanceState:
    """The latest state of one ambulance."""
    require_ambulance(token, ambulance_id)
    state = await _state(deps, ambulance_id)
    if state is None:
        raise HTTPException(404, detail=f"no ambulance {ambulance_id!r}")
    return AmbulanceState.model_validate(state)


@router.get("/ambulances/{ambulance_id}/track", response_model=TrackPage)
async def get_track(
    ambulance_id: AmbulanceId,
    deps: Deps,
    token: Token,
    *,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    order: TrackOrder = "newest",
    newest_first: Annotated[
        bool | None,
        Query(deprecated=True, description="the former name: true is `order=newest`, false "
              "`order=oldest`; when given, it decides"),
    ] = None,
) -> TrackPage:
    """Tracking history of one ambulance, one page at a time, newest point first by default.

    ``order=newest`` (the default: what a dashboard draws first) or ``oldest``.
    Follow ``next_cursor`` with the same ``order`` until it is null; ``since``
    and ``until`` bound the time range in either order.
    """
    require_ambulance(token, ambulance_id)
    if newest_first is not None:
        # Clients of the former parameter keep the order they asked for.
        order = "newest" if newest_first else "oldest"
    page = await _find(deps, StoreQuery(
        TRACKINGS, ambulance_id=ambulance_id, since=_utc(since), until=_utc(until),
        limit=limit, cursor=cursor, newest_first=order == "newest",
    ))
    return TrackPage(items=_models(TrackPoint, page.items), next_cursor=page.next_cursor)


@router.get("/crashes", response_model=CrashPage)
async def list_crashes(
    deps: Deps,
    token: Token,
    *,
    ambulance_id: OptionalAmbulanceId = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    newest_first: bool = False,
) -> CrashPage:
    """Crash records, of one ambulance or all (all: not for a token limited to some)."""
    if ambulance_id is None:
        require_fleet(token, "the crashes of every ambulance (pass ambulance_id)")
    else:
        require_ambulance(token, ambulance_id)
    page = await _find(deps, StoreQuery(
        CRASHES, ambulance_id=ambulance_id, since=_utc(since), until=_utc(until),
        limit=limit, cursor=cursor, newest_first=newest_first,
    ))
    return CrashPage(items=_models(CrashRecord, page.items), next_cursor=page.next_cursor)


def image_url(key: str, request: Request, deps: ApiDeps) -> str:
    """A link a browser opens without a header: the object store's own, else a signed /files URL.

    The S3 store's own link is presigned (it expires), or a plain link under
    ``AOC_OBJECTS_PUBLIC_URL`` when the operator published the bucket; with
    ``AOC_IMAGE_LINKS=api`` every link is the API's own. The API's links are
    built on ``AOC_PUBLIC_URL``; only when it is unset on the request's own
    URL, whose host a client chooses (its ``Host`` header).
    """
    codec.validate_key(key)
    settings = deps.settings
    if settings.image_links == "store":
        own = deps.objects.url(key)
        if own is not None:
            return own
    base = settings.public_url or str(request.base_url).rstrip("/")
    path = quote(str(request.app.url_path_for("get_file", key=key)), safe="/")
    expires, sig = deps.signer.sign(key)
    return f"{base}{path}?{urlencode({'expires': expires, 'sig': sig})}"


def _image_set(doc: Document, request: Request, deps: ApiDeps) -> ImageSet:
    links = []
    images: dict[str, Any] = doc.get("images") or {}
    for name, key in images.items():
        if not isinstance(key, str):
            continue
        try:
            url = image_url(key, request, deps)
        except ValueError:  # a key the object store would refuse: not linkable
            log.warning("skipping invalid object key %r of %s", key, doc.get("_id"))
            continue
        links.append(ImageLink(name=name, key=key, url=url))
    return ImageSet(id=doc.get("_id"), created_at=doc.get("createdAt"), images=links)


@router.get("/ambulances/{ambulance_id}/snapshots", response_model=Snapshots)
async def get_snapshots(
    ambulance_id: AmbulanceId,
    deps: Deps,
    token: Token,
    request: Request,
    *,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Snapshots:
    """The current images of one ambulance and the history of its snaps, newest first.

    Each image's ``url`` works without a token until it expires
    (``AOC_IMAGE_URL_TTL_SECONDS``).
    """
    require_ambulance(token, ambulance_id)
    current = await deps.store.get(IMAGES, ambulance_id)
    page = await _find(deps, StoreQuery(
        IMAGE_HISTORIES, ambulance_id=ambulance_id, limit=limit, cursor=cursor, newest_first=True
    ))
    return Snapshots(
        ambulance_id=ambulance_id,
        current=None if current is None else _image_set(current, request, deps),
        history=[_image_set(doc, request, deps) for doc in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/dead-letters", response_model=DeadLetterPage)
async def list_dead_letters(
    deps: Deps, token: Token, since: Since = None, limit: Limit = 100, cursor: Cursor = None
) -> DeadLetterPage:
    """Rejected messages with the reason, newest first (not for a token limited to some)."""
    require_fleet(token, "the dead letters (messages of any device)")
    page = await _find(deps, StoreQuery(
        DEAD_LETTERS, since=_utc(since), limit=limit, cursor=cursor, newest_first=True
    ))
    return DeadLetterPage(items=_models(DeadLetter, page.items), next_cursor=page.next_cursor)


@files_router.get(
    "/files/{key:path}",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}},
        400: {"description": "Not a valid object key (e.g. a path climbing out with ..)"},
        401: UNAUTHORIZED,
        403: {"description": "An expired or wrong signature, or a token limited to other "
              "ambulances"},
        404: {"description": "No object under this key"},
    },
)
async def get_file(
    key: str,
    deps: Deps,
    token: OptionalToken,
    expires: Annotated[int | None, Query(description="unix seconds, of a signed URL")] = None,
    sig: Annotated[str | None, Query(max_length=128, description="of a signed URL")] = None,
) -> Response:
    """The bytes of a stored object (images), with the content type of its extension.

    For a token, or for the signed URL the read API hands out (``expires`` and
    ``sig``), until it expires.
    """
    try:
        codec.validate_key(key)
    except ValueError as exc:
        raise HTTPException(400, detail=f"invalid object key: {exc}") from exc
    _check_file_access(key, deps, token, expires, sig)
    try:
        data = await deps.objects.get(key)
    except KeyError as exc:
        raise HTTPException(404, detail=f"no object {key!r}") from exc
    ext = key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return Response(
        data,
        media_type=CONTENT_TYPES.get(ext, "application/octet-stream"),
        # Private: a shared cache must not hand an image to someone without the link.
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )


def _key_ambulance(key: str) -> str | None:
    """The ambulance of an image key (``ambulance_images/<id>/...``), else None."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "ambulance_images" else None


def _check_file_access(
    key: str, deps: ApiDeps, token: TokenInfo | None, expires: int | None, sig: str | None
) -> None:
    """Pass a token that may read the key's ambulance, or a valid signature; else 401/403."""
    if token is not None:
        if token.limited:
            owner = _key_ambulance(key)
            if owner is None or not token.may_read(owner):
                raise HTTPException(403, detail="this token may not read this object")
        return
    if expires is None and sig is None:
        raise unauthorized("a token or a signed URL (expires, sig) is required")
    if expires is None or sig is None or not deps.signer.valid(key, expires, sig):
        raise HTTPException(403, detail="this link is expired or its signature is wrong")
