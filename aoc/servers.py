"""Uvicorn servers embedded in our own asyncio lifecycle, each with its bounds.

Uvicorn normally owns the process: it installs signal handlers and re-raises
the signal when it stops. ``aoc serve`` runs two servers (HTTP and Socket.IO)
next to the bridge in one event loop, so signals are handled once, by the
lifecycle in ``aoc.lifecycle``, which then asks each server to exit.

Bounds, so that one client cannot hold what every other client needs:

- ``max_connections``: uvicorn's ``limit_concurrency``. Past it, uvicorn still
  accepts the connection but answers each request at once with ``503 Service
  Unavailable`` and ``Connection: close`` (a WebSocket handshake gets the same
  503), so the file descriptor is freed right away. Open connections, WebSocket
  ones included, count towards it.
- ``body_timeout``: a request body that has not fully arrived this many
  seconds after its headers gets ``408 Request Timeout`` and the connection is
  closed (``BodyTimeout``); uvicorn alone waits for a body forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    """ASGI middleware: every ``receive`` of a request body shares one deadline."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # waiting for a disconnect, not for a body: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow from None
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


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

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
    graceful_timeout: float = 5.0,
) -> EmbeddedServer:
    """An embedded server for ``app``; logging stays as ``aoc.logs`` configured it."""
    if body_timeout is not None:
        app = BodyTimeout(app, seconds=body_timeout)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=int(graceful_timeout),
        proxy_headers=False,
        server_header=False,
    )
    return EmbeddedServer(config)
