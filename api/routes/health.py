"""Liveness and readiness probes, and the Prometheus metrics of the process."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aoc.metrics import REGISTRY
from api.access import FORBIDDEN, UNAUTHORIZED, require_metrics
from api.deps import ApiDeps, Deps, ReadyCheck

router = APIRouter(tags=["health"])

CHECK_TIMEOUT = 2.0  # seconds per component: a probe must answer quickly


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


async def _run(check: ReadyCheck) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check()
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT:g}s"
    except Exception as exc:  # any failure means "not ready", reported as text
        return str(exc) or type(exc).__name__
    return "ok"


@router.get(
    "/readyz",
    responses={503: {"description": "At least one component is not ready"}},
)
async def readyz(deps: Deps) -> JSONResponse:
    """Each component's readiness (``"ok"`` or the error); 503 unless all are ok."""
    names = list(deps.ready_checks)
    results = await asyncio.gather(*(_run(deps.ready_checks[n]) for n in names))
    report = dict(zip(names, results, strict=True))
    ok = all(result == "ok" for result in results)
    return JSONResponse(report, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_metrics)],
    responses={
        401: {**UNAUTHORIZED, "description": "AOC_METRICS_TOKEN is set and was not sent"},
        403: {**FORBIDDEN, "description": "No AOC_METRICS_TOKEN, and the client is not in "
              "AOC_METRICS_NETWORKS"},
    },
)
async def metrics() -> Response:
    """This process's metrics in the Prometheus text format.

    For ``AOC_METRICS_TOKEN`` as a bearer token, or (unset) clients in
    ``AOC_METRICS_NETWORKS`` (loopback by default).
    """
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_probe_app(deps: ApiDeps) -> FastAPI:
    """The probes and metrics alone: the HTTP face of a process without the API (`aoc bridge`)."""
    app = FastAPI(title="AOC probes", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.deps = deps
    app.include_router(router)
    return app
