"""The Socket.IO server of port 5050, with the legacy room semantics.

Dashboards join rooms (an ambulance id, ``tracking``, ``snap``, ``crash``,
``CRASH_NOTIFY_<id>``: ``bridge.contract``) and receive event ``data`` whose
payload is a JSON string. The bridge emits with ``emit("data", payload, room=...)``,
on this process's server or, from a separate process, through a write-only
Redis manager.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import socketio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from aoc import metrics
from api.pages import HOME_HTML
from bridge.contract import EVENT, JOIN_EVENT, LEAVE_EVENT

log = logging.getLogger(__name__)

MAX_ROOM_LENGTH = 128
# Connected session ids per server (weak: a discarded server takes its set along).
_CONNECTED: weakref.WeakKeyDictionary[socketio.AsyncServer, set[str]] = (
    weakref.WeakKeyDictionary()
)


def room_name(value: object) -> str | None:
    """The room a ``room_join``/``room_leave`` argument names, quotes stripped; else None."""
    if not isinstance(value, str):
        return None
    # Legacy dashboards send the id JSON-quoted ('"332"'); the old server stripped quotes.
    room = value.replace('"', "").replace("'", "").strip()
    if not room or len(room) > MAX_ROOM_LENGTH:
        return None
    return room


def allowed_origins(origins: Sequence[str]) -> str | list[str] | None:
    """Engine.IO's ``cors_allowed_origins`` for the configured ``origins``.

    None (no origins configured) admits the server's own origin only, "*" any,
    a list those listed; a connection with another ``Origin`` header is refused
    (400). One without the header (devices, scripts) is always admitted. Never
    ``[]``: to Engine.IO that turns the check off and admits every origin.
    """
    if not origins:
        return None
    if "*" in origins:
        return "*"
    return list(origins)


def create_sio(
    *,
    cors_origins: Sequence[str] = (),
    client_manager: socketio.AsyncManager | None = None,
    logger: logging.Logger | None = None,
) -> socketio.AsyncServer:
    """A Socket.IO server with the legacy ``room_join``/``room_leave`` events.

    Browsers from ``cors_origins`` (``Settings.cors_origin_list``) may connect,
    besides the server's own origin: see ``allowed_origins``.
    """
    sio_log = logger or log
    options: dict[str, Any] = {
        "async_mode": "asgi",
        "cors_allowed_origins": allowed_origins(cors_origins),
    }
    if client_manager is not None:
        options["client_manager"] = client_manager
    sio = socketio.AsyncServer(**options)
    connected: set[str] = set()
    _CONNECTED[sio] = connected

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        connected.add(sid)

    async def disconnect(sid: str, *args: Any) -> None:
        connected.discard(sid)

    async def room_join(sid: str, *args: Any) -> None:
        room = room_name(args[0] if args else None)
        if room is None:
            sio_log.debug("ignoring room_join from %s with %r", sid, args[:1])
            return
        try:
            await sio.enter_room(sid, room)
            # To the joiner only: the legacy broadcast told everyone who watches what.
            await sio.emit(EVENT, f"room joined: {room}", to=sid)
        except Exception:  # a handler must never raise into the server
            sio_log.exception("room_join %r for %s failed", room, sid)

    async def room_leave(sid: str, *args: Any) -> None:
        room = room_name(args[0] if args else None)
        if room is None:
            sio_log.debug("ignoring room_leave from %s with %r", sid, args[:1])
            return
        try:
            await sio.leave_room(sid, room)
        except Exception:  # a handler must never raise into the server
            sio_log.exception("room_leave %r for %s failed", room, sid)

    sio.on("connect", handler=connect)
    sio.on("disconnect", handler=disconnect)
    sio.on(JOIN_EVENT, handler=room_join)
    sio.on(LEAVE_EVENT, handler=room_leave)
    return sio


def connected_clients(sio: socketio.AsyncServer | None = None) -> int:
    """Clients connected to ``sio``, or to every server of this process."""
    if sio is not None:
        return len(_CONNECTED.get(sio, ()))
    return sum(len(sids) for sids in _CONNECTED.values())


metrics.SOCKETIO_CLIENTS.set_function(connected_clients)


async def _home(request: Request) -> HTMLResponse:
    return HTMLResponse(HOME_HTML)


async def _metrics(request: Request) -> Response:
    # `aoc realtime` alone has no HTTP API: its metrics (clients) are served here.
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_realtime_app(sio: socketio.AsyncServer) -> socketio.ASGIApp:
    """The ASGI app of port 5050: Socket.IO at ``/socket.io/``, the home page, ``/metrics``."""
    home = Starlette(
        routes=[Route("/", _home, methods=["GET"]), Route("/metrics", _metrics, methods=["GET"])]
    )
    return socketio.ASGIApp(sio, other_asgi_app=home, socketio_path="socket.io")
