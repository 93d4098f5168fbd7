"""The FastAPI application: the legacy shim, the read API and health checks."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from api.deps import ApiDeps
from api.routes import health, legacy, read
from storage.base import StoreUnavailable

log = logging.getLogger(__name__)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A store outage is temporary: say so, so clients retry instead of giving up.
    log.warning("%s %s: storage unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"storage unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"}
    )


def create_app(deps: ApiDeps) -> FastAPI:
    """The HTTP API of port 5000, serving with ``deps``."""
    app = FastAPI(
        title="AOC tracking API",
        version="2.0",
        description="Reads of the ambulance tracking backend, and the deprecated legacy "
        "device endpoints (devices should publish over MQTT).",
        exception_handlers={StoreUnavailable: _store_unavailable},
    )
    app.state.deps = deps
    origins = deps.settings.cors_origin_list
    if origins:
        # Without the middleware no response carries access-control-allow-origin,
        # so a browser on another origin cannot read it (same origin only).
        # Clients that send no Origin (devices, scripts) are not concerned.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(legacy.router)
    app.include_router(read.router)
    app.include_router(read.files_router)
    app.include_router(health.router)
    return app
