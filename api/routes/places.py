"""The places API: hospitals, stations and other areas as GeoJSON (``bridge.places``).

Any live token reads them; writes need the permission ``require_places_write``
checks, and are recorded in the audit log with the token's name as the actor.
A removed place is kept as a tombstone (``bridge.places_store``), so an id
removed once answers 404 and can be imported again.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from pydantic import BaseModel

from api.access import UNAUTHORIZED, Token, require_dispatch, require_token
from api.deps import Deps
from api.tokens import TokenInfo
from bridge import places_store
from bridge.places import PLACE_ID, PlaceError, place_feature, places_from_geojson

_SECURED: dict[int | str, dict[str, Any]] = {401: UNAUTHORIZED}
router = APIRouter(
    prefix="/api/v1", tags=["places"], dependencies=[Depends(require_token)], responses=_SECURED
)

PlaceId = Annotated[
    str, PathParam(pattern=f"^{PLACE_ID.pattern}$", description="Place id (letters, digits, _ -)")
]
Kind = Annotated[
    str | None, QueryParam(max_length=64, description="only places of this kind (e.g. hospital)")
]
_WRITE_REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "The token may not change places"}
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No live place has this id"}}


class PlaceFeature(BaseModel):
    """A place as a GeoJSON Feature; a circle is a Point with ``properties.radius_m``."""

    type: Literal["Feature"] = "Feature"
    id: str
    geometry: dict[str, Any]
    properties: dict[str, Any]


class PlaceCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[PlaceFeature]


class PlaceIds(BaseModel):
    added: list[str]
    updated: list[str]
    removed: list[str]


class PlaceImport(BaseModel):
    """What a POST changed: counts, and the ids of each."""

    added: int
    updated: int
    removed: int
    ids: PlaceIds


def require_places_write(token: TokenInfo) -> None:
    """403 unless ``token`` may add, change or remove places: a fleet-wide dispatch token.

    Places drive events and alarms (a station silences offline alarms), so a
    read-only token, a kiosk's in a URL say, must not change them.
    """
    require_dispatch(token, None)


@router.get("/places", response_model=PlaceCollection)
async def list_places(deps: Deps, kind: Kind = None) -> PlaceCollection:
    """The live places as a GeoJSON FeatureCollection, of one ``kind`` when given."""
    found = await places_store.list_places(deps.store, kind)
    return PlaceCollection(features=[PlaceFeature(**place_feature(p)) for p in found])


@router.get("/places/{place_id}", response_model=PlaceFeature, responses=_NOT_FOUND)
async def get_place(place_id: PlaceId, deps: Deps) -> PlaceFeature:
    """One live place as a GeoJSON Feature."""
    place = await places_store.get_place(deps.store, place_id)
    if place is None:
        raise HTTPException(404, detail=f"no place {place_id!r}")
    return PlaceFeature(**place_feature(place))


@router.post(
    "/places",
    response_model=PlaceImport,
    responses={
        **_WRITE_REFUSED,
        400: {"description": "The body is not JSON"},
        422: {"description": "Not valid places (the detail says why)"},
    },
)
async def post_places(
    deps: Deps,
    token: Token,
    body: Annotated[
        dict[str, Any],
        Body(description="a GeoJSON Feature or FeatureCollection: Polygon, MultiPolygon, or "
             "Point with properties.radius_m (a circle); properties.name required"),
    ],
) -> PlaceImport:
    """Add or update places (upsert by id); returns how many of each, and their ids."""
    require_places_write(token)
    try:
        places = places_from_geojson(body)
    except PlaceError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    result = await places_store.import_places(deps.store, places, actor=token.name)
    return PlaceImport.model_validate(result.as_json())


@router.delete(
    "/places/{place_id}", response_model=PlaceFeature, responses={**_WRITE_REFUSED, **_NOT_FOUND}
)
async def delete_place(place_id: PlaceId, deps: Deps, token: Token) -> PlaceFeature:
    """Remove a place (kept as a tombstone); returns it with ``properties.removed_at``."""
    require_places_write(token)
    try:
        removed = await places_store.remove_place(deps.store, place_id, actor=token.name)
    except places_store.PlaceNotFound:
        raise HTTPException(404, detail=f"no place {place_id!r}") from None
    return PlaceFeature(**place_feature(removed))

