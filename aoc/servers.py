"""Uvicorn servers embedded in our own asyncio lifecycle.

Uvicorn normally owns the process: it installs signal handlers and re-raises
the signal when it stops. ``aoc serve`` runs two servers (HTTP and Socket.IO)
next to the bridge in one event loop, so signals are handled once, by the
lifecycle in ``aoc.lifecycle``, which then asks each server to exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self) -> None:
        """Stop accepting connections; in-flight requests finish (bounded by the config)."""
        self.should_exit = True


def server(app: Any, *, host: str, port: int, graceful_timeout: float = 5.0) -> EmbeddedServer:
    """An embedded server for ``app``; logging stays as ``aoc.logs`` configured it."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(graceful_timeout),
        proxy_headers=False,
        server_header=False,
    )
    return EmbeddedServer(config)
