"""/docs and /redoc work offline: every script, style sheet and icon they load is served here."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

from api import ApiDeps
from tests.api.conftest import client_for


class _Assets(HTMLParser):
    """The URLs a page loads: script src, link href."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


@pytest.mark.parametrize(
    ("page", "scripts"),
    [("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}), ("/redoc", {"redoc.standalone.js"})],
)
async def test_doc_pages_load_only_local_assets(
    deps: ApiDeps, page: str, scripts: set[str]
) -> None:
    """Test that each asset URL of the page is a path of this server, which answers 200."""
    async with client_for(deps) as http:  # no token: the pages hold no data
        response = await http.get(page)
        assert response.status_code == 200, response.text
        parser = _Assets()
        parser.feed(response.text)
        # No absolute URL anywhere in the page: no CDN, no web fonts.
        assert "://" not in response.text
        assert {url.rsplit("/", 1)[-1] for url in parser.urls} >= scripts
        for url in parser.urls:
            assert url.startswith("/") and not url.startswith("//"), url
            asset = await http.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url  # the real bundle, not an error page
        spec = await http.get("/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["info"]["title"] == "AOC tracking API"


async def test_assets_are_not_in_the_openapi_description(http: httpx.AsyncClient) -> None:
    """Test that the pages and their assets are not described as API endpoints."""
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
