"""The /dashboard page as the HTTP API serves it: its token, headers, settings and assets.

The page's behaviour in a browser is tested in ``tests/e2e/test_dashboard.py``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import httpx
from fastapi import FastAPI

from aoc.config import Settings
from api import ApiDeps
from api.routes import dashboard
from api.routes.dashboard import DASHBOARD_DIR, add_dashboard, render_page
from tests.api.conftest import client_for

CONFIG = re.compile(r'<script id="aoc-config" type="application/json">(.*?)</script>', re.S)


async def test_the_page_needs_a_valid_token(deps: ApiDeps, api_token: str) -> None:
    """Test that /dashboard is refused without a token or with a wrong one, served with one."""
    async with client_for(deps) as client:
        for params in ({}, {"token": "fake-not-a-token"}):
            refused = await client.get("/dashboard", params=params)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "A token is required" in refused.text
        kiosk = await client.get("/dashboard", params={"token": api_token})
        header = await client.get("/dashboard", headers={"Authorization": f"Bearer {api_token}"})
    for page in (kiosk, header):
        assert page.status_code == 200
        assert '<div id="alerts"' in page.text
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]
    assert api_token not in kiosk.text  # the page reads it from its own URL


async def test_the_page_carries_its_settings(deps: ApiDeps, api_token: str) -> None:
    """Test that the tile URL, offline time, thresholds and Socket.IO port reach the page."""
    settings = deps.settings.model_copy(update={
        "dashboard_tile_url": "https://tiles.example.org/{z}/{x}/{y}.png",
        "dashboard_offline_seconds": 45.0,
        "speed_orange_kmh": 70.0,
        "socketio_port": 6060,
    })
    async with client_for(dataclasses.replace(deps, settings=settings), api_token) as client:
        page = await client.get("/dashboard")
    match = CONFIG.search(page.text)
    assert match is not None
    config = json.loads(match.group(1))
    assert config["tile_url"] == "https://tiles.example.org/{z}/{x}/{y}.png"
    assert config["offline_seconds"] == 45.0
    assert (config["orange_kmh"], config["red_kmh"]) == (70.0, 120.0)
    assert config["socketio_port"] == 6060


def test_a_setting_cannot_close_the_config_element(settings: Settings) -> None:
    """Test that a setting holding </script> stays inside the page's JSON, as text."""
    hostile = settings.model_copy(
        update={"dashboard_tile_attribution": "</script><script>alert(1)</script>"}
    )
    page = render_page(f"<head>{dashboard.CONFIG_MARK}</head>", hostile)
    assert page.count("</script>") == 1
    match = CONFIG.search(page)
    assert match is not None
    assert json.loads(match.group(1))["tile_attribution"] == "</script><script>alert(1)</script>"


async def test_the_libraries_are_served_from_the_npm_install(deps: ApiDeps) -> None:
    """Test that every script and stylesheet the page names is served, without a token."""
    async with client_for(deps) as client:
        page = (DASHBOARD_DIR / dashboard.PAGE).read_text()
        assets = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page)
        assert len(assets) >= 8
        for asset in [*assets, "/dashboard/vendor/world-atlas/countries-50m.json"]:
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
        # Only the packages' published folders: not the rest of node_modules.
        assert (await client.get("/dashboard/vendor/leaflet/../package.json")).status_code == 404
        assert (await client.get("/dashboard/vendor/ws/package.json")).status_code == 404


async def test_a_clone_without_npm_ci_says_what_to_run(
    deps: ApiDeps, api_token: str, tmp_path: Path
) -> None:
    """Test that without node_modules the page is a 503 naming `make setup`, not a blank map."""
    shutil.copytree(DASHBOARD_DIR / "static", tmp_path / "static")
    shutil.copy(DASHBOARD_DIR / dashboard.PAGE, tmp_path / dashboard.PAGE)
    app = FastAPI()
    app.state.deps = deps
    add_dashboard(app, tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.get("/dashboard", params={"token": api_token})
    assert answer.status_code == 503
    assert "make setup" in answer.text


async def test_aoc_dashboard_dir_serves_a_copy_elsewhere(
    deps: ApiDeps, api_token: str, tmp_path: Path
) -> None:
    """Test that AOC_DASHBOARD_DIR moves the page and its packages (as the Docker image does)."""
    page = (DASHBOARD_DIR / dashboard.PAGE).read_text()
    (tmp_path / dashboard.PAGE).write_text(page.replace("<body", "<!-- the copy --><body", 1))
    shutil.copytree(DASHBOARD_DIR / "static", tmp_path / "static")
    (tmp_path / "node_modules").symlink_to(DASHBOARD_DIR / "node_modules")
    settings = deps.settings.model_copy(update={"dashboard_dir": str(tmp_path)})
    async with client_for(dataclasses.replace(deps, settings=settings), api_token) as client:
        answer = await client.get("/dashboard")
        script = await client.get("/dashboard/vendor/leaflet/leaflet.js")
    assert answer.status_code == 200
    assert "<!-- the copy -->" in answer.text
    assert script.status_code == 200


async def test_the_page_and_its_files_cannot_be_framed(deps: ApiDeps, api_token: str) -> None:
    """Test that the page, its scripts and a library carry frame-ancestors 'none' and nosniff."""
    async with client_for(deps) as client:
        answers = [
            await client.get("/dashboard", params={"token": api_token}),
            await client.get("/dashboard", params={"token": "fake-not-a-token"}),
            await client.get("/dashboard/static/js/map.js"),
            await client.get("/dashboard/vendor/leaflet/leaflet.js"),
        ]
    for answer in answers:
        assert answer.status_code in (200, 401), answer.url
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], answer.url
        assert answer.headers["x-frame-options"] == "DENY", answer.url
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert answer.headers["referrer-policy"] == "no-referrer", answer.url
    # The files stay cacheable: only the page (it may carry a token) is no-store.
    assert answers[0].headers["cache-control"] == "no-store"
    assert "cache-control" not in answers[2].headers


def test_map_tooltips_are_text_never_html() -> None:
    """Test that every Leaflet tooltip of the page gets an element built with textContent.

    Leaflet inserts a string tooltip as HTML; browser tests of the page are in
    tests/e2e. Here the source: each bindTooltip call (the markers in map.js, the
    places in places.js) passes asText(...), asText sets textContent, and no
    script of the page sets innerHTML.
    """
    scripts = sorted((DASHBOARD_DIR / "static" / "js").glob("*.js"))
    sources = {path.name: path.read_text() for path in scripts}
    calls = {name: re.findall(r"\.bindTooltip\((.*?)\);", text) for name, text in sources.items()}
    assert calls["map.js"], "map.js binds a tooltip to each marker"
    assert calls["places.js"], "places.js binds a tooltip to each place"
    for name, found in calls.items():
        assert all(call.startswith("asText(") for call in found), (name, found)
    assert not [name for name, text in sources.items() if "innerHTML" in text]
    source = sources["map.js"]
    helper = re.search(r"function asText\(text\) \{(.*?)\n\}", source, re.S)
    assert helper is not None
    assert ".textContent = " in helper.group(1) and "innerHTML" not in helper.group(1)
