"""Image links of the read API: on AOC_PUBLIC_URL, never on a Host header a client forges."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest

from aoc.config import Settings
from api import ApiDeps
from storage.base import IMAGES, Write
from storage.localfs import LocalObjectStore
from storage.sqlite import SQLiteDocumentStore
from tests.api.conftest import client_for
from tests.images import TINY_JPEG

PUBLIC = "https://aoc.example.org/tracking"
FORGED = "attacker.example.net"


def with_settings(deps: ApiDeps, **changes: Any) -> ApiDeps:
    return dataclasses.replace(deps, settings=deps.settings.model_copy(update=changes))


async def seed(store: SQLiteDocumentStore, objects: LocalObjectStore, aid: str) -> str:
    """A current image of ``aid``; its key."""
    key = f"ambulance_images/{aid}/2026/03/01/04_33/33_12_0042.jpg"
    await objects.put(key, TINY_JPEG, "image/jpeg")
    await store.apply([Write(IMAGES, "insert", {
        "_id": aid, "ambulance_id": aid, "createdAt": datetime.now(UTC), "images": {"image0": key},
    })])
    return key


async def link(deps: ApiDeps, token: str, aid: str, **headers: str) -> str:
    async with client_for(deps, token) as http:
        response = await http.get(f"/api/v1/ambulances/{aid}/snapshots", headers=headers)
    assert response.status_code == 200, response.text
    url: str = response.json()["current"]["images"][0]["url"]
    return url


async def test_links_are_built_on_the_public_url_whatever_the_host_header(
    deps: ApiDeps, store: SQLiteDocumentStore, objects: LocalObjectStore, api_token: str,
    ambulance_id: str,
) -> None:
    """Test that with AOC_PUBLIC_URL set a forged Host changes nothing, and the link serves."""
    key = await seed(store, objects, ambulance_id)
    configured = with_settings(deps, public_url=PUBLIC)
    forged = await link(configured, api_token, ambulance_id, host=FORGED)
    plain = await link(configured, api_token, ambulance_id)
    for url in (forged, plain):
        assert url.startswith(f"{PUBLIC}/files/{key}?expires="), url
        assert FORGED not in url
    # The path and query under the public base are what the API serves (a proxy strips the base).
    parts = urlsplit(forged)
    local = parts.path.removeprefix(urlsplit(PUBLIC).path) + "?" + parts.query
    async with client_for(configured) as browser:  # no token: the signature alone
        fetched = await browser.get(local)
    assert fetched.status_code == 200
    assert fetched.content == TINY_JPEG


async def test_without_the_setting_links_follow_the_request(
    deps: ApiDeps, store: SQLiteDocumentStore, objects: LocalObjectStore, api_token: str,
    ambulance_id: str,
) -> None:
    """Test the documented fallback: AOC_PUBLIC_URL unset, the link names the request's host."""
    await seed(store, objects, ambulance_id)
    url = await link(deps, api_token, ambulance_id, host="dev.local:5000")
    assert url.startswith("http://dev.local:5000/files/ambulance_images/")


class FakePresigningStore(LocalObjectStore):
    """A directory store whose objects have links of their own, as S3's presigned ones."""

    def url(self, key: str) -> str | None:
        return f"http://minio:9000/aoc-images/{key}?X-Amz-Signature=fake"


async def test_image_links_api_routes_every_link_through_the_api(
    deps: ApiDeps, store: SQLiteDocumentStore, api_token: str, ambulance_id: str, tmp_path: Any,
) -> None:
    """Test that AOC_IMAGE_LINKS=api hands out /files links, not the store's unreachable ones."""
    async with FakePresigningStore(tmp_path / "presigning") as objects:
        key = await seed(store, objects, ambulance_id)
        on_store = dataclasses.replace(deps, objects=objects)
        assert (await link(on_store, api_token, ambulance_id)).startswith("http://minio:9000/")
        via_api = with_settings(on_store, image_links="api", public_url=PUBLIC)
        url = await link(via_api, api_token, ambulance_id)
        assert url.startswith(f"{PUBLIC}/files/{key}?expires=")
        async with client_for(via_api) as browser:
            fetched = await browser.get(url.removeprefix(PUBLIC))
        assert fetched.content == TINY_JPEG


@pytest.mark.parametrize(
    ("value", "stored"),
    [("https://aoc.example.org/", "https://aoc.example.org"),
     ("http://10.0.0.5:5000/api-root/", "http://10.0.0.5:5000/api-root"), ("", "")],
)
def test_public_url_setting(value: str, stored: str) -> None:
    """Test that AOC_PUBLIC_URL keeps an http(s) base without its trailing slash."""
    settings = Settings(_env_file=None, public_url=value)  # type: ignore[call-arg]
    assert settings.public_url == stored


@pytest.mark.parametrize(
    "value", ["aoc.example.org", "ftp://aoc.example.org", "https://x.org/?a=1", "https://"]
)
def test_public_url_setting_refuses_what_is_no_base_url(value: str) -> None:
    """Test that a value links could not be built on is refused at start, naming it."""
    with pytest.raises(pydantic.ValidationError, match="public_url"):
        Settings(_env_file=None, public_url=value)  # type: ignore[call-arg]


def test_image_links_setting_has_two_values() -> None:
    """Test that AOC_IMAGE_LINKS is store (the default) or api, nothing else."""
    assert Settings(_env_file=None).image_links == "store"  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="image_links"):
        Settings(_env_file=None, image_links="cdn")  # type: ignore[call-arg]

