"""The dispatch API: destinations, alarms and events (docs/mqtt-contract.md, issue 13).

Reads (alarms, events) need a token, as the read API does. Commands (a
destination, acknowledging or resolving an alarm) need a dispatch token
(``api.access.require_dispatch``): they are published to the bridge, which
applies them (``api.dispatch_commands``), and each is recorded in the audit
log with the token's name as the actor.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import dispatch_commands
from api.access import (
    DISPATCH_FORBIDDEN,
    FORBIDDEN,
    UNAUTHORIZED,
    Token,
    require_ambulance,
    require_dispatch,
    require_fleet,
    require_token,
)
from api.deps import AmbulanceId, ApiDeps, Deps, PublisherDep
from api.dispatch_commands import PENDING, REFUSED, UNPUBLISHED, Applied
from api.models import Alarm, AlarmPage, DestinationResult, Event, EventPage, Pending
from api.routes.read import (
    Cursor,
    Limit,
    OptionalAmbulanceId,
    Since,
    TrackOrder,
    Until,
    _find,
    _models,
    _utc,
)
from api.tokens import TokenInfo
from bridge.contract import Kind
from bridge.places import Place
from bridge.places_store import get_place
from storage.base import ALARMS, AMBULANCES, EVENTS, Document
from storage.base import Query as StoreQuery

router = APIRouter(
    prefix="/api/v1",
    tags=["dispatch"],
    dependencies=[Depends(require_token)],
    responses={401: UNAUTHORIZED},
)

NOTE_MAX = 1000
NAME_MAX = 200
ID_MAX = 256
# Every command's answers besides 200 (``api.dispatch_commands``).
_COMMAND: dict[int | str, dict[str, Any]] = {
    202: {"model": Pending, **PENDING},
    400: {"description": "The body is not JSON"},
    403: DISPATCH_FORBIDDEN,
    409: REFUSED,
    503: UNPUBLISHED,
}
AlarmId = Annotated[str, Path(min_length=1, max_length=ID_MAX, description="the alarm's id")]


class PlaceTarget(BaseModel):
    """Send the ambulance to a stored place."""

    model_config = ConfigDict(extra="forbid")
    place_id: str = Field(min_length=1, max_length=ID_MAX)


class PointTarget(BaseModel):
    """Send the ambulance to a point (within ``radius_m`` counts as arrived)."""

    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    radius_m: float | None = Field(default=None, ge=1, le=50_000, allow_inf_nan=False)
    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)


class ClearTarget(BaseModel):
    """Clear the destination: ``{"destination": null}``."""

    model_config = ConfigDict(extra="forbid")
    destination: None


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, min_length=1, max_length=NOTE_MAX)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=1, max_length=NOTE_MAX)


DestinationBody = Annotated[
    PlaceTarget | PointTarget | ClearTarget | None,
    Body(description="a place, a point, or null (or {\"destination\": null}) to clear"),
]


async def _live_place(deps: ApiDeps, place_id: str) -> Place:
    place = await get_place(deps.store, place_id)
    if place is None:
        raise HTTPException(404, detail=f"no place {place_id!r}")
    return place


async def _known_ambulance(deps: ApiDeps, ambulance_id: str) -> None:
    # The bridge records a command's outcome in the ambulance's state: one it
    # has never heard from has none.
    if await deps.store.get(AMBULANCES, ambulance_id) is None:
        raise HTTPException(404, detail=f"no ambulance {ambulance_id!r}")


async def _destination(
    deps: ApiDeps, target: PlaceTarget | PointTarget | ClearTarget | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The command's ``destination`` and what the audit log records of it."""
    if isinstance(target, PlaceTarget):
        # Checked here for a clear 404; the bridge reads the place itself (a command
        # stays small however detailed the place is).
        place = await _live_place(deps, target.place_id)
        named = {"type": "place", "place_id": place.id}
        return named, named
    if isinstance(target, PointTarget):
        point = {"type": "point", **target.model_dump()}
        return point, point
    return None, None


async def _set_destination(
    deps: ApiDeps,
    publisher: PublisherDep,
    token: TokenInfo,
    ambulance_id: str,
    target: PlaceTarget | PointTarget | ClearTarget | None,
) -> DestinationResult | JSONResponse:
    require_dispatch(token, ambulance_id)
    destination, audited = await _destination(deps, target)
    await _known_ambulance(deps, ambulance_id)
    message = dispatch_commands.command(token, destination=destination)
    outcome = await dispatch_commands.send(
        deps, publisher, token, ambulance_id=ambulance_id, kind=Kind.DESTINATION,
        message=message, action="dispatch.destination", target=ambulance_id,
        details={"destination": audited},
    )
    if not isinstance(outcome, Applied):
        return outcome
    state = outcome.state
    return DestinationResult.model_validate({
        "ambulance_id": ambulance_id,
        "destination": state.get("destination"),
        "eta": state.get("eta"),
    })


@router.put(
    "/ambulances/{ambulance_id}/destination",
    response_model=DestinationResult,
    responses={**_COMMAND, 404: {"description": "Unknown ambulance or place"}},
)
async def put_destination(
    ambulance_id: AmbulanceId,
    deps: Deps,
    publisher: PublisherDep,
    token: Token,
    request: Request,
    *,
    target: DestinationBody = None,
) -> DestinationResult | JSONResponse:
    """Send an ambulance to a place or a point, or clear its destination (null).

    Answers once the bridge applied it, with the destination and ETA it
    computed; 202 if it did not within ``AOC_DISPATCH_WAIT_SECONDS``.
    """
    if target is None and not (await request.body()).strip():
        detail = [{"loc": ["body"], "msg": "a body is required: a place, a point or null",
                   "type": "missing"}]
        raise HTTPException(422, detail=detail)
    return await _set_destination(deps, publisher, token, ambulance_id, target)


@router.delete(
    "/ambulances/{ambulance_id}/destination",
    response_model=DestinationResult,
    responses={**_COMMAND, 404: {"description": "Unknown ambulance"}},
)
async def delete_destination(
    ambulance_id: AmbulanceId, deps: Deps, publisher: PublisherDep, token: Token
) -> DestinationResult | JSONResponse:
    """Clear an ambulance's destination (as PUT with null)."""
    return await _set_destination(deps, publisher, token, ambulance_id, None)


AlarmStatus = Annotated[
    Literal["open", "acknowledged", "resolved", "active"] | None,
    Query(description="`active`: open or acknowledged"),
]
AlarmKind = Annotated[
    Literal["crash", "overspeed", "offline", "geofence"] | None, Query()
]


def _check_reader(token: TokenInfo, ambulance_id: str | None, what: str) -> None:
    if ambulance_id is None:
        require_fleet(token, f"the {what} of every ambulance (pass ambulance_id)")
    else:
        require_ambulance(token, ambulance_id)


@router.get("/alarms", response_model=AlarmPage, responses={403: FORBIDDEN})
async def list_alarms(
    deps: Deps,
    token: Token,
    *,
    status: AlarmStatus = None,
    ambulance_id: OptionalAmbulanceId = None,
    kind: AlarmKind = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> AlarmPage:
    """Alarms, newest first, of one ambulance or all (all: not for a token limited to some)."""
    _check_reader(token, ambulance_id, "alarms")
    where: dict[str, Any] = {}
    if status == "active":
        where["active"] = True
    elif status is not None:
        where["status"] = status
    if kind is not None:
        where["kind"] = kind
    page = await _find(deps, StoreQuery(
        ALARMS, ambulance_id=ambulance_id, limit=limit, cursor=cursor, newest_first=True,
        where=where,
    ))
    return AlarmPage(items=_models(Alarm, page.items), next_cursor=page.next_cursor)


async def _alarm(deps: ApiDeps, alarm_id: str) -> Document:
    doc = await deps.store.get(ALARMS, alarm_id)
    if doc is None or not isinstance(doc.get("ambulance_id"), str):
        raise HTTPException(404, detail=f"no alarm {alarm_id!r}")
    return doc


@router.get(
    "/alarms/{alarm_id}",
    response_model=Alarm,
    responses={403: FORBIDDEN, 404: {"description": "Unknown alarm"}},
)
async def get_alarm(alarm_id: AlarmId, deps: Deps, token: Token) -> Alarm:
    """One alarm with its transitions."""
    doc = await _alarm(deps, alarm_id)
    require_ambulance(token, doc["ambulance_id"])
    return Alarm.model_validate(doc)


# What each action may leave from (docs/mqtt-contract.md); the bridge checks again.
_FROM = {"acknowledge": ("open",), "resolve": ("open", "acknowledged")}
_DONE = {"acknowledge": "acknowledged", "resolve": "resolved"}


async def _alarm_command(
    deps: ApiDeps,
    publisher: PublisherDep,
    token: TokenInfo,
    alarm_id: str,
    *,
    action: Literal["acknowledge", "resolve"],
    note: str | None,
) -> Alarm | JSONResponse:
    doc = await _alarm(deps, alarm_id)
    ambulance_id = doc["ambulance_id"]
    require_dispatch(token, ambulance_id)
    if doc.get("status") not in _FROM[action]:
        allowed = " or ".join(_FROM[action])
        raise HTTPException(
            409, detail=f"alarm {alarm_id!r} is {doc.get('status')}: only an alarm that is "
            f"{allowed} can be {_DONE[action]}",
        )
    message = dispatch_commands.command(token, alarm_id=alarm_id, action=action, note=note)
    outcome = await dispatch_commands.send(
        deps, publisher, token, ambulance_id=ambulance_id, kind=Kind.ALARM, message=message,
        action=f"alarm.{action}", target=alarm_id, details={"note": note},
    )
    if not isinstance(outcome, Applied):
        return outcome
    return Alarm.model_validate(await _alarm_after(deps, alarm_id, message["command_id"]))


async def _alarm_after(deps: ApiDeps, alarm_id: str, command_id: str) -> Document:
    """The alarm once it shows the command's transition.

    The state that records the command is written first; on MongoDB the alarm
    document lands in a later bulk write, so a read right away may be the old one.
    """
    deadline = asyncio.get_running_loop().time() + max(deps.settings.dispatch_wait_seconds, 1.0)
    while True:
        doc = await _alarm(deps, alarm_id)
        steps = doc.get("transitions") or []
        if any(step.get("command_id") == command_id for step in steps):
            return doc
        if asyncio.get_running_loop().time() > deadline:
            return doc  # as stored: the transition will show in it
        await asyncio.sleep(0.05)


_ALARM_COMMAND: dict[int | str, dict[str, Any]] = {
    **_COMMAND,
    404: {"description": "Unknown alarm"},
    409: {"description": "The alarm is not in a state this action leaves from, or the "
          "bridge refused the command"},
}


@router.post("/alarms/{alarm_id}/ack", response_model=Alarm, responses=_ALARM_COMMAND)
async def acknowledge_alarm(
    alarm_id: AlarmId,
    deps: Deps,
    publisher: PublisherDep,
    token: Token,
    body: Annotated[AckBody | None, Body()] = None,
) -> Alarm | JSONResponse:
    """Acknowledge an open alarm (someone is on it), with an optional note."""
    note = None if body is None else body.note
    return await _alarm_command(
        deps, publisher, token, alarm_id, action="acknowledge", note=note
    )


@router.post("/alarms/{alarm_id}/resolve", response_model=Alarm, responses=_ALARM_COMMAND)
async def resolve_alarm(
    alarm_id: AlarmId, deps: Deps, publisher: PublisherDep, token: Token, body: ResolveBody
) -> Alarm | JSONResponse:
    """Resolve an open or acknowledged alarm, with a note saying how."""
    return await _alarm_command(
        deps, publisher, token, alarm_id, action="resolve", note=body.note
    )


EventType = Annotated[Literal["enter", "exit", "arrival"] | None, Query()]
PlaceId = Annotated[str | None, Query(min_length=1, max_length=ID_MAX)]


@router.get("/events", response_model=EventPage, responses={403: FORBIDDEN})
async def list_events(
    deps: Deps,
    token: Token,
    *,
    ambulance_id: OptionalAmbulanceId = None,
    type: EventType = None,
    place_id: PlaceId = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    order: TrackOrder = "newest",
) -> EventPage:
    """Enter, exit and arrival events at places, newest first by default.

    Of one ambulance or all (all: not for a token limited to some).
    """
    _check_reader(token, ambulance_id, "events")
    where: dict[str, Any] = {}
    if type is not None:
        where["type"] = type
    if place_id is not None:
        where["place_id"] = place_id
    page = await _find(deps, StoreQuery(
        EVENTS, ambulance_id=ambulance_id, since=_utc(since), until=_utc(until), limit=limit,
        cursor=cursor, newest_first=order == "newest", where=where,
    ))
    return EventPage(items=_models(Event, page.items), next_cursor=page.next_cursor)
