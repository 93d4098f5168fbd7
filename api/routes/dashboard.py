"""The dispatch dashboard at ``/dashboard``: one page, its scripts and their libraries.

The page is plain HTML, CSS and JavaScript modules from ``dashboard/static``,
on libraries installed from npm with a lock file (``dashboard/package.json``;
``make setup`` and ``make run`` run ``npm ci`` there) and served here as the
packages ship them: no CDN, no build step. It is a client of the public
interfaces only (the read API and Socket.IO), so it is also the reference
client for anyone building their own.

Access: the page needs a token, as the read API (``Authorization: Bearer``,
or ``?token=`` for kiosk screens, which the page then uses for its own calls);
without a valid one it is refused (401). Its scripts and libraries hold no
data and stay open, like ``/docs-assets``. The page is sent with
``Referrer-Policy: no-referrer``, so a kiosk's ``?token=`` never reaches a
tile server or an image host, and is never cached. The page, its scripts and
libraries are sent with a CSP that forbids framing them (``frame-ancestors
'none'``, clickjacking) and with ``nosniff``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from aoc.config import Settings
from api.access import bearer_scheme, presented_token, query_scheme
from api.deps import Deps
from api.tokens import verify_token

log = logging.getLogger(__name__)

# The repository's dashboard folder (the project is installed in place: `pip install -e .`).
DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboard"
PAGE = "page.html"
CONFIG_MARK = "<!--AOC_CONFIG-->"
# URL prefix -> folder of an npm package, relative to node_modules: only these are served.
VENDOR = {
    "leaflet": "leaflet/dist",
    "uplot": "uplot/dist",
    "socket.io": "socket.io-client/dist",
    "topojson": "topojson-client/dist",
    "world-atlas": "world-atlas",
}
# On the page and on every file under /dashboard (a stray HTML or SVG file included).
SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Scripts from this server only: nothing in the page's data can run as code. Never in
    # a frame (clickjacking): frame-ancestors, and X-Frame-Options for older browsers.
    "Content-Security-Policy": (
        "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}
HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
REFUSED = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<title>AOC dashboard: token required</title></head>
<body><h1>A token is required</h1>
<p>{why}. Open <code>/dashboard?token=&lt;token&gt;</code> with a token from
<code>aoc token add &lt;name&gt;</code> (<code>make run</code> keeps a first one in
<code>data/credentials.json</code>, as <code>api_token</code>).</p></body></html>
"""
MISSING = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AOC dashboard: not installed</title></head>
<body><h1>The dashboard's libraries are not installed</h1>
<p>Run <code>make setup</code> (or <code>npm ci</code> in <code>dashboard/</code>).</p>
</body></html>
"""


def page_config(settings: Settings) -> dict[str, Any]:
    """What the page needs to know from the settings; no secret goes in."""
    return {
        "socketio_url": settings.dashboard_socketio_url,
        "socketio_port": settings.socketio_port,
        "tile_url": settings.dashboard_tile_url,
        "tile_attribution": settings.dashboard_tile_attribution,
        "offline_seconds": settings.dashboard_offline_seconds,
        "orange_kmh": settings.speed_orange_kmh,
        "red_kmh": settings.speed_red_kmh,
    }


def render_page(template: str, settings: Settings) -> str:
    """The page with its settings as JSON in a non-executed script element."""
    # "<" escaped: a value can never close the element.
    config = json.dumps(page_config(settings)).replace("<", "\\u003c")
    element = f'<script id="aoc-config" type="application/json">{config}</script>'
    return template.replace(CONFIG_MARK, element)


def folder(settings: Settings) -> Path:
    """Where the page and its packages are: ``AOC_DASHBOARD_DIR``, else the checkout's."""
    return Path(settings.dashboard_dir) if settings.dashboard_dir else DASHBOARD_DIR


def installed(directory: Path) -> bool:
    """Whether the npm packages the page loads are there."""
    modules = directory / "node_modules"
    return all((modules / folder).is_dir() for folder in VENDOR.values())


class DashboardFiles(StaticFiles):
    """``StaticFiles`` whose answers carry ``SECURITY_HEADERS`` (still cacheable)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def add_dashboard(app: FastAPI, directory: Path = DASHBOARD_DIR) -> None:
    """Serve ``/dashboard`` and its assets from ``directory`` on ``app``."""
    # check_dir off: a clone without `npm ci` still starts; the page says what is missing.
    app.mount(
        "/dashboard/static",
        DashboardFiles(directory=directory / "static", check_dir=False),
        name="dashboard-static",
    )
    for prefix, folder in VENDOR.items():
        app.mount(
            f"/dashboard/vendor/{prefix}",
            DashboardFiles(directory=directory / "node_modules" / folder, check_dir=False),
            name=f"dashboard-{prefix}",
        )

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard(
        deps: Deps,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
        query_token: Annotated[str | None, Depends(query_scheme)],
    ) -> Response:
        token = presented_token(credentials, query_token)
        if token is None:
            return _refused("No token was given")
        if await verify_token(deps.store, token) is None:
            return _refused("This token is unknown or revoked")
        if not installed(directory):
            log.warning("dashboard requested, but %s has no node_modules: run make setup",
                        directory)
            return HTMLResponse(MISSING, status_code=503, headers=HEADERS)
        template = (directory / PAGE).read_text(encoding="utf-8")
        return HTMLResponse(render_page(template, deps.settings), headers=HEADERS)


def _refused(why: str) -> HTMLResponse:
    headers = {**HEADERS, "WWW-Authenticate": "Bearer"}
    return HTMLResponse(REFUSED.format(why=why), status_code=401, headers=headers)
