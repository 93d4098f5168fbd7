"""Uvicorn servers embedded in our own asyncio lifecycle, each with its bounds.

Uvicorn normally owns the process: it installs signal handlers and re-raises
the signal when it stops. ``aoc serve`` runs two servers (HTTP and Socket.IO)
next to the bridge in one event loop, so signals are handled once, by the
lifecycle in ``aoc.lifecycle``, which then asks each server to exit; and a
server that cannot start raises, so that only it is restarted (``aoc.parts``).

Bounds, so that one client cannot hold what every other client needs:

- ``max_connections``: uvicorn's ``limit_concurrency``. Past it, uvicorn still
  accepts the connection but answers each request at once with ``503 Service
  Unavailable`` and ``Connection: close`` (a WebSocket handshake gets the same
  503), so the file descriptor is freed right away. Open connections, WebSocket
  ones included, count towards it.
- ``body_timeout`` and ``body_min_rate``: a request body gets
  ``body_timeout`` seconds after its headers, plus one second for every
  ``body_min_rate`` bytes that have arrived, as Apache's mod_reqtimeout
  (``MinRate``) gives. Past that it gets ``408 Request Timeout`` and the
  connection is closed (``BodyTimeout``). A large upload over a slow but
  steady link (a camera on a cellular network) thus completes, while a client
  that dribbles bytes to hold a connection cannot; uvicorn alone waits for a
  body forever.
- ``header_timeout``: a connection whose request headers have not fully
  arrived this many seconds after it opened (or after the request began) is
  closed without an answer (``HeaderTimeoutProtocol``). Uvicorn times only
  idle keep-alive connections, so a client that never finishes its headers
  would otherwise hold a connection (counted against ``max_connections``) for
  as long as it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aoc import ports
from aoc.parts import Explained

BODY_TIMEOUT_DETAIL = b'{"detail":"the request body did not arrive in time"}'


class BodyTooSlow(HTTPException):
    """The request body did not arrive before the deadline.

    An ``HTTPException`` (408), so FastAPI answers it as one when a route is
    reading; ``BodyTimeout`` answers it for any other app (Engine.IO polling).
    """

    def __init__(self) -> None:
        super().__init__(408, detail="the request body did not arrive in time",
                         headers={"Connection": "close"})


class BodyTimeout:
    """ASGI middleware: a request body's receives share one deadline, moved by what arrives."""

    def __init__(self, app: ASGIApp, *, seconds: float, min_rate: float = 0.0) -> None:
        self.app = app
        self.seconds = seconds
        self.min_rate = min_rate  # bytes per second that earn one more second; 0: none

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done, deadline
            if body_done:  # waiting for a disconnect, not for a body: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow from None
            if self.min_rate > 0:
                deadline += len(message.get("body", b"")) / self.min_rate
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except BodyTooSlow:
            if started:
                raise
            await send({
                "type": "http.response.start",
                "status": 408,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            })
            await send({"type": "http.response.body", "body": BODY_TIMEOUT_DETAIL})


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol, closing connections whose headers come too slowly."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _protocol(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    return type("BoundedProtocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})


class ServerFailed(Explained):
    """An embedded server could not start: its message names the port and why."""


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    on_bound: Callable[[], None] | None = None  # called once it listens on its port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_bound is not None:
            self.on_bound()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until ``stop()``; failing to start (a port in use) raises ``ServerFailed``.

        Uvicorn exits the process instead (``sys.exit``), which would take the
        other parts of ``aoc serve`` down with it, after logging the cause at
        ERROR: so the port is tried first, for a ``ServerFailed`` that names
        it and its holder, and the part's restart is its only line. (The
        commands check their ports once at start-up, where a taken port is a
        configuration error: this is for a port taken while a part restarts.)
        """
        host, port = self.config.host, self.config.port
        if sockets is None and (error := ports.bind_error(host, port)) is not None:
            taken = error.errno == errno.EADDRINUSE
            raise ServerFailed(
                f"cannot listen on {host}:{port}: "
                + (f"in use by {ports.holder(port) or 'another program'}" if taken
                   else str(error.strerror or error))
            )
        try:
            await super().serve(sockets)
        except SystemExit as exc:
            raise ServerFailed(
                f"could not start serving on {self.config.host}:{self.config.port}"
            ) from exc

    def stop(self) -> None:
        """Stop accepting connections; in-flight requests finish (bounded by the config)."""
        self.should_exit = True


def server(
    app: Any,
    *,
    host: str,
    port: int,
    max_connections: int | None = None,
    body_timeout: float | None = None,
    body_min_rate: float = 0.0,
    header_timeout: float | None = None,
    graceful_timeout: float = 5.0,
) -> EmbeddedServer:
    """An embedded server for ``app``; logging stays as ``aoc.logs`` configured it."""
    if body_timeout is not None:
        app = BodyTimeout(app, seconds=body_timeout, min_rate=body_min_rate)
    http: Any = "auto" if header_timeout is None else _protocol(header_timeout)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        log_config=None,
        access_log=False,
        lifespan="on",
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=int(graceful_timeout),
        proxy_headers=False,
        server_header=False,
    )
    return EmbeddedServer(config)
