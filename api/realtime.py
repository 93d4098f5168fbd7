"""The Socket.IO server of port 5050, with the legacy room semantics.

Dashboards join rooms (an ambulance id, ``tracking``, ``snap``, ``crash``,
``CRASH_NOTIFY_<id>``: ``bridge.contract``) and receive event ``data`` whose
payload is a JSON string. The bridge emits with ``emit("data", payload, room=...)``,
on this process's server or, from a separate process, through a write-only
Redis manager.

Clients connect with a token (``auth={"token": ...}``, or ``?token=`` in the
URL for kiosks); a token limited to some ambulances joins only their rooms
(``api.tokens``). Without a token, only legacy mode admits a client, from
``AOC_LEGACY_NETWORKS`` (``api.access``); such a client joins any room, as
legacy dashboards did. A revoked token joins nothing more at once, and its
connections are closed by the next ``RevocationSweep`` (every few seconds).

New dashboards may take the live stream instead (``live_subscribe``:
``api.live``): one event per interval with the latest state of each
ambulance updated in it, under the same token rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import socketio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from aoc import metrics
from aoc.config import Settings
from api.access import legacy_allowed, legacy_networks, metrics_refusal
from api.deps import ReadyCheck
from api.live import LiveManager, LiveStream, Selection, parse_selection
from api.pages import HOME_HTML
from api.routes.health import _run as run_check  # one report format with the HTTP API
from api.tokens import TokenInfo, live_token, verify_token
from bridge.contract import (
    EVENT,
    JOIN_EVENT,
    LEAVE_EVENT,
    LIVE_ERROR_EVENT,
    LIVE_PREFIX,
    LIVE_SUBSCRIBE_EVENT,
    LIVE_UNSUBSCRIBE_EVENT,
)
from storage.base import DocumentStore, StoreUnavailable

log = logging.getLogger(__name__)

MAX_ROOM_LENGTH = 128
# How often the connections of revoked tokens are looked for and closed.
REVOCATION_SWEEP_SECONDS = 5.0
# Sent to a client whose room_join is refused: {"room": ..., "message": ...}.
JOIN_ERROR_EVENT = "room_error"
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


# Engine.IO calls it with the Origin header and the request: whether to admit it.
OriginCheck = Callable[[str | None, dict[str, Any]], bool]


def allowed_origins(
    origins: Sequence[str], *, dashboard_port: int | None = None
) -> str | list[str] | OriginCheck | None:
    """Engine.IO's ``cors_allowed_origins`` for the configured ``origins``.

    None (no origins configured) admits the server's own origin only, "*" any,
    a list those listed; a connection with another ``Origin`` header is refused
    (400). One without the header (devices, scripts) is always admitted. Never
    ``[]``: to Engine.IO that turns the check off and admits every origin.

    With ``dashboard_port`` (the HTTP API's port), the page ``/dashboard``
    served there is admitted too: the same host name as this connection's,
    on that port (``dashboard_origin``).
    """
    if "*" in origins:
        return "*"
    if dashboard_port is None:
        return list(origins) or None
    listed = frozenset(origins)

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        return origin is not None and (
            origin in listed or origin in own_origins(environ, dashboard_port)
        )

    return check


def own_origins(environ: dict[str, Any], dashboard_port: int) -> tuple[str, ...]:
    """The connection's own origins and the dashboard's (the same host on ``dashboard_port``).

    They come from the request's ``Host`` header and, behind a reverse proxy,
    from ``X-Forwarded-Proto``/``X-Forwarded-Host`` too: exactly the origins
    Engine.IO's own check admits (``cors_allowed_origins=None``), so a page
    behind a TLS proxy is admitted as it was before ``dashboard_port``.
    """
    host = environ.get("HTTP_HOST")
    if not host:
        return ()
    scheme = environ.get("wsgi.url_scheme", "http")
    bases = [(scheme, host)]
    if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
        # As engineio.base_server: the first of a comma-separated list of proxies.
        bases.append(
            (
                environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip(),
                environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip(),
            )
        )
    origins: list[str] = []
    for base_scheme, base_host in bases:
        origins.append(f"{base_scheme}://{base_host}")
        try:
            name = urlsplit(f"//{base_host}").hostname or ""
        except ValueError:  # a malformed header ("[::1"): no dashboard origin for it
            continue
        if ":" in name:  # an IPv6 address goes back in brackets
            name = f"[{name}]"
        origins.append(f"{base_scheme}://{name}:{dashboard_port}")
    return tuple(origins)


def client_address(environ: dict[str, Any]) -> str | None:
    """The client's address as uvicorn gave it.

    Engine.IO's ASGI ``REMOTE_ADDR`` is always "127.0.0.1": only the ASGI
    scope's ``client`` is the real peer.
    """
    scope = environ.get("asgi.scope") or {}
    client = scope.get("client")
    if client:
        return str(client[0])
    return None


def presented_token(environ: dict[str, Any], auth: Any) -> str | None:
    """The token of a connection: ``auth={"token": ...}``, else ``?token=`` in its URL."""
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return str(auth["token"])
    values = parse_qs(environ.get("QUERY_STRING", "")).get("token")
    return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Session:
    """Who a connection is: its token, or None for a legacy client (legacy mode)."""

    token: TokenInfo | None


class SocketGate:
    """Admits Socket.IO connections and room joins (see the module's docstring).

    It keeps the session of each connection of its server (``sessions``), so
    that joins are checked against the connection's token and the
    connections of a revoked token can be found (``revoked``).
    """

    def __init__(self, settings: Settings, store: DocumentStore) -> None:
        self.settings = settings
        self.store = store
        self.sessions: dict[str, Session] = {}  # by Socket.IO session id
        legacy_networks(settings)  # a bad AOC_LEGACY_NETWORKS fails at start, not per client

    async def admit(self, environ: dict[str, Any], auth: Any) -> Session:
        """The session of a new connection; ``ConnectionRefusedError`` saying why not."""
        token = presented_token(environ, auth)
        if token is not None:
            try:
                info = await verify_token(self.store, token)
            except StoreUnavailable as exc:
                raise socketio.exceptions.ConnectionRefusedError(
                    "tokens cannot be checked right now (storage unavailable): retry"
                ) from exc
            if info is None:
                raise socketio.exceptions.ConnectionRefusedError("invalid or revoked token")
            return Session(info)
        if legacy_allowed(self.settings, client_address(environ)):
            return Session(None)
        raise socketio.exceptions.ConnectionRefusedError(
            'a token is required: connect with auth={"token": "<token>"} (or ?token= in the '
            "URL); `aoc token add <name>` makes one"
        )

    async def join_refusal(self, session: Session, room: str) -> str | None:
        """Why ``session`` may not join ``room`` (its token revoked, or limited), or None."""
        live = await self._live_token(session)
        if isinstance(live, str):
            return live
        if live is not None and not live.may_join(room):
            return f"this token may not join room {room!r}"
        return None

    async def live_refusal(self, session: Session, selection: Selection) -> str | None:
        """Why ``session`` may not watch ``selection`` (None: the fleet) live, or None.

        As for rooms: a limited token watches its own ambulances only, never the fleet.
        """
        live = await self._live_token(session)
        if isinstance(live, str):
            return live
        if live is None or not live.limited:
            return None
        if selection is None:
            return "this token is limited to some ambulances: subscribe to them by id"
        others = sorted(aid for aid in selection if not live.may_read(aid))
        if others:
            return f"this token may not read ambulance(s) {', '.join(others)}"
        return None

    async def _live_token(self, session: Session) -> TokenInfo | str | None:
        """The session's token as stored now; None for a legacy client; why not, if revoked."""
        if session.token is None:
            return None
        try:
            live = await live_token(self.store, session.token.token_id)
        except StoreUnavailable:
            return "tokens cannot be checked right now (storage unavailable): retry"
        if live is None:
            return "the token of this connection was revoked"
        return live

    async def revoked(self) -> list[str]:
        """The session ids whose token is no longer live: one store read per distinct token."""
        by_token: dict[str, list[str]] = {}
        for sid, session in list(self.sessions.items()):
            if session.token is not None:
                by_token.setdefault(session.token.token_id, []).append(sid)
        gone = []
        for token_id, sids in by_token.items():
            if await live_token(self.store, token_id) is None:
                gone.extend(sids)
        return gone


class RevocationSweep:
    """Disconnects, every ``every`` seconds, the connections of tokens revoked meanwhile.

    A revoked token's next ``room_join`` is refused at once; its open
    connection, and the rooms it had joined, last until the next sweep.
    """

    def __init__(self, sio: socketio.AsyncServer, gate: SocketGate, *, every: float) -> None:
        self.sio = sio
        self.gate = gate
        self.every = every
        self._stop = asyncio.Event()

    async def sweep(self) -> int:
        """Disconnect the revoked tokens' connections now; how many there were."""
        gone = await self.gate.revoked()
        for sid in gone:
            log.info("disconnecting Socket.IO session %s: its token was revoked", sid)
            await self.sio.disconnect(sid)
        return len(gone)

    async def run(self) -> None:
        """Sweep until ``stop``; a store outage skips a sweep (logged), it does not end the loop."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                log.warning("revoked tokens not checked (storage unavailable): %s", exc)

    def stop(self) -> None:
        self._stop.set()


def create_sio(
    gate: SocketGate,
    *,
    cors_origins: Sequence[str] = (),
    dashboard_port: int | None = None,
    client_manager: socketio.AsyncManager | None = None,
    live: LiveStream | None = None,
    logger: logging.Logger | None = None,
) -> socketio.AsyncServer:
    """A Socket.IO server with the legacy ``room_join``/``room_leave`` events and the live stream.

    ``gate`` decides who connects and who joins which room or watches what.
    ``client_manager`` defaults to a ``LiveManager``; give a ``LiveRedisManager``
    (or any ``LiveManager``) for the live stream ``live`` to get the bridges'
    feed. ``live`` (default: one of 100 ms, not run) is attached to the
    server; its owner runs it (``LiveStream.run``).

    Browsers from ``cors_origins`` (``Settings.cors_origin_list``) may connect,
    besides the server's own origin and, with ``dashboard_port``, the page
    ``/dashboard`` of the HTTP API on that port: see ``allowed_origins``.
    """
    sio_log = logger or log
    manager = client_manager if client_manager is not None else LiveManager()
    stream = live if live is not None else LiveStream(interval=0.1)
    sio = socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=allowed_origins(cors_origins, dashboard_port=dashboard_port),
        client_manager=manager,
    )
    _attach(stream, sio, manager)
    connected: set[str] = set()
    _CONNECTED[sio] = connected
    sessions = gate.sessions

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        # ConnectionRefusedError goes back to the client as its connect_error.
        sessions[sid] = await gate.admit(environ, auth)
        connected.add(sid)

    async def disconnect(sid: str, *args: Any) -> None:
        connected.discard(sid)
        sessions.pop(sid, None)
        stream.forget(sid)

    async def room_join(sid: str, *args: Any) -> str | None:
        room = room_name(args[0] if args else None)
        if room is None:
            sio_log.debug("ignoring room_join from %s with %r", sid, args[:1])
            return None
        session = sessions.get(sid)
        refusal: str | None
        if room.startswith(LIVE_PREFIX):  # the live stream's rooms: its own rules
            refusal = f"rooms {LIVE_PREFIX}... are the live stream's: use {LIVE_SUBSCRIBE_EVENT}"
        elif session is None:
            refusal = "not connected"
        else:
            refusal = await gate.join_refusal(session, room)
        if refusal is not None:
            sio_log.info("room_join %r refused for %s: %s", room, sid, refusal)
            await sio.emit(JOIN_ERROR_EVENT, {"room": room, "message": refusal}, to=sid)
            return refusal  # for a client that asked for an acknowledgement
        try:
            await sio.enter_room(sid, room)
            # To the joiner only: the legacy broadcast told everyone who watches what.
            await sio.emit(EVENT, f"room joined: {room}", to=sid)
        except Exception:  # a handler must never raise into the server
            sio_log.exception("room_join %r for %s failed", room, sid)
        return None

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
    _live_events(sio, gate, stream, sio_log)
    return sio


def _attach(stream: LiveStream, sio: socketio.AsyncServer, manager: socketio.AsyncManager) -> None:
    """Wire ``stream`` to its server, and to the manager's feed if it has one."""
    stream.sio = sio
    if isinstance(manager, LiveManager):
        manager.live = stream


def _live_events(
    sio: socketio.AsyncServer, gate: SocketGate, stream: LiveStream, sio_log: logging.Logger
) -> None:
    """The live stream's ``live_subscribe`` and ``live_unsubscribe`` (``api.live``)."""

    async def live_subscribe(sid: str, *args: Any) -> dict[str, Any]:
        # The answer (also the acknowledgement) says what is watched, or why not.
        selection = parse_selection(args[0] if args else None)
        session = gate.sessions.get(sid)
        if isinstance(selection, str):
            refusal: str | None = selection
        elif session is None:
            refusal = "not connected"
        else:
            refusal = await gate.live_refusal(session, selection)
        if refusal is not None or isinstance(selection, str):
            sio_log.info("live_subscribe refused for %s: %s", sid, refusal)
            await sio.emit(LIVE_ERROR_EVENT, {"message": refusal}, to=sid)
            return {"error": refusal}
        await stream.subscribe(sid, selection)
        watched: str | list[str] = "*" if selection is None else sorted(selection)
        return {"ambulances": watched, "interval_ms": round(stream.interval * 1000)}

    async def live_unsubscribe(sid: str, *args: Any) -> None:
        await stream.unsubscribe(sid)

    sio.on(LIVE_SUBSCRIBE_EVENT, handler=live_subscribe)
    sio.on(LIVE_UNSUBSCRIBE_EVENT, handler=live_unsubscribe)


def connected_clients(sio: socketio.AsyncServer | None = None) -> int:
    """Clients connected to ``sio``, or to every server of this process."""
    if sio is not None:
        return len(_CONNECTED.get(sio, ()))
    return sum(len(sids) for sids in _CONNECTED.values())


metrics.SOCKETIO_CLIENTS.set_function(connected_clients)


async def _home(request: Request) -> HTMLResponse:
    return HTMLResponse(HOME_HTML)


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_realtime_app(
    sio: socketio.AsyncServer,
    settings: Settings,
    ready_checks: Mapping[str, ReadyCheck] | None = None,
) -> socketio.ASGIApp:
    """The ASGI app of port 5050: Socket.IO at ``/socket.io/``, the home page, ``/metrics``,
    and the probes ``/healthz`` (liveness) and ``/readyz``.

    ``/readyz`` answers as the HTTP API's, over ``ready_checks`` (what this
    port's clients need: the store their tokens are checked in, the Redis
    that brings the bridges' events): each component's ``"ok"`` or error,
    503 unless all are ok. ``/metrics`` is guarded as the HTTP API's
    (``api.access.metrics_refusal``).
    """

    checks = dict(ready_checks or {})

    async def _readyz(request: Request) -> JSONResponse:
        names = list(checks)
        results = await asyncio.gather(*(run_check(checks[name]) for name in names))
        report = dict(zip(names, results, strict=True))
        ok = all(result == "ok" for result in results)
        return JSONResponse(report, status_code=200 if ok else 503)

    async def _metrics(request: Request) -> Response:
        # `aoc realtime` alone has no HTTP API: its metrics (clients) are served here.
        host = request.client.host if request.client is not None else None
        refusal = metrics_refusal(settings, host, request.headers.get("authorization"))
        if refusal is not None:
            status, detail = refusal
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"detail": detail}, status_code=status, headers=headers)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    home = Starlette(
        routes=[
            Route("/", _home, methods=["GET"]),
            Route("/metrics", _metrics, methods=["GET"]),
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", _readyz, methods=["GET"]),
        ]
    )
    return socketio.ASGIApp(sio, other_asgi_app=home, socketio_path="socket.io")
