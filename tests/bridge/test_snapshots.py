"""Tests for bridge.snapshots: magic-byte sniffing and the legacy image key layout."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.snapshots import image_key, sniff
from tests.images import TINY_JPEG, png

PNG = png()
TAKEN = datetime(2024, 3, 7, 9, 5, 4, 999000, tzinfo=UTC)
KEY = re.compile(
    r"ambulance_images/332/2024/03/07/09_05/05_04_(?P<digits>[0-9]{4})\.(?P<ext>jpg|png)"
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (TINY_JPEG, ("jpg", "image/jpeg")),
        (b"\xff\xd8\xff", ("jpg", "image/jpeg")),
        (PNG, ("png", "image/png")),
        (b"\x89PNG\r\n\x1a\n", ("png", "image/png")),
        (b"", None),
        (b"\xff\xd8", None),
        (b"\x89PNG\r\n\x1a", None),
        (b"GIF89a", None),
        (b"RIFF\x00\x00\x00\x00WEBP", None),
        (b" " + TINY_JPEG, None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
    ],
)
def test_sniff(data: bytes, expected: tuple[str, str] | None) -> None:
    """Test that only the JPEG and PNG magic bytes at offset 0 are recognised."""
    assert sniff(data) == expected


def test_image_key_layout() -> None:
    """Test the legacy layout: UTC date/time folders, zero padded, ext from the bytes."""
    jpeg_key = image_key("332", TAKEN, TINY_JPEG)
    png_key = image_key("332", TAKEN, PNG)
    jpeg_match = KEY.fullmatch(jpeg_key)
    png_match = KEY.fullmatch(png_key)
    assert jpeg_match is not None and jpeg_match["ext"] == "jpg"
    assert png_match is not None and png_match["ext"] == "png"


def test_image_key_is_deterministic_and_depends_on_bytes_and_index() -> None:
    """Test that a redelivered image maps to the same key, and index/bytes change it."""
    assert image_key("332", TAKEN, TINY_JPEG) == image_key("332", TAKEN, TINY_JPEG, index=0)
    keys = {image_key("332", TAKEN, TINY_JPEG, index=index) for index in range(20)}
    assert len(keys) > 15  # 4 digits from a hash: collisions are possible but rare
    colours = {image_key("332", TAKEN, png(rgb=(n, 0, 0))) for n in range(20)}
    assert len(colours) > 15


def test_image_key_converts_to_utc() -> None:
    """Test that a time in another zone, or a naive one (taken as UTC), gives UTC folders."""
    bangkok = TAKEN.astimezone(timezone(timedelta(hours=7)))
    assert image_key("332", bangkok, PNG) == image_key("332", TAKEN, PNG)
    naive = TAKEN.replace(tzinfo=None)
    assert image_key("332", naive, PNG) == image_key("332", TAKEN, PNG)
    late = datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert image_key("7", late, PNG).startswith("ambulance_images/7/2023/12/31/23_59/59_59_")


@pytest.mark.parametrize("aid", ["..", "a/b", "", "a" * 65, "332 ", "รถ"])
def test_image_key_refuses_bad_ids(aid: str) -> None:
    """Test that an id that could escape the key layout is refused (defence in depth)."""
    with pytest.raises(ValueError, match="invalid ambulance id"):
        image_key(aid, TAKEN, PNG)


def test_image_key_refuses_non_images() -> None:
    """Test that bytes that are not JPEG/PNG get no key (their extension is unknown)."""
    with pytest.raises(ValueError, match="not a JPEG or PNG"):
        image_key("332", TAKEN, b"GIF89a")
