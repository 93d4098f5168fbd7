"""The FastAPI application: the legacy shim, the read API and health checks.

Who may call what is in ``api.access``: the read API and ``/files`` need a
token (or, for ``/files``, a signed URL), ``/metrics`` its own token or a
network, the legacy endpoints legacy mode; the probes, ``/docs``, ``/redoc``
(with their assets) and ``/openapi.json`` (the API's description, no data)
stay open. ``/dashboard`` needs a token too; its scripts stay open
(``api.routes.dashboard``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from api.access import legacy_networks, metrics_refusal
from api.deps import ApiDeps
from api.routes import (
    dashboard,
    dispatch,
    docs,
    exports,
    health,
    legacy,
    places,
    read,
    reports,
)
from storage.base import StoreUnavailable

log = logging.getLogger(__name__)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A store outage is temporary: say so, so clients retry instead of giving up.
    log.warning("%s %s: storage unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"storage unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"}
    )


def create_app(deps: ApiDeps) -> FastAPI:
    """The HTTP API of port 5000, serving with ``deps``.

    ``ValueError`` naming the variable for a malformed network setting.
    """
    # Parsed now so a bad setting fails the start, not each request.
    legacy_networks(deps.settings)
    metrics_refusal(deps.settings, None, None)
    app = FastAPI(
        title="AOC tracking API",
        version="2.0",
        description="Reads of the ambulance tracking backend, and the deprecated legacy "
        "device endpoints (devices should publish over MQTT). Reads need a token from "
        "`aoc token add` as `Authorization: Bearer <token>` or `?token=`; image links in "
        "the answers are signed and expire, so they work without one.",
        exception_handlers={StoreUnavailable: _store_unavailable},
        # Served by api.routes.docs on local copies of their scripts, not a CDN's.
        docs_url=None,
        redoc_url=None,
    )
    docs.add_docs(app)
    dashboard.add_dashboard(app, dashboard.folder(deps.settings))
    app.state.deps = deps
    origins = deps.settings.cors_origin_list
    if origins:
        # Without the middleware no response carries access-control-allow-origin,
        # so a browser on another origin cannot read it (same origin only).
        # Clients that send no Origin (devices, scripts) are not concerned.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(legacy.router)
    app.include_router(read.router)
    app.include_router(read.files_router)
    app.include_router(exports.router)
    app.include_router(places.router)
    app.include_router(dispatch.router)
    app.include_router(reports.router)
    app.include_router(health.router)
    return app
