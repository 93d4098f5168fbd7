"""Snapshot images: type sniffing by magic bytes and the legacy object key layout."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from bridge.ids import valid_ambulance_id

__all__ = ["JPEG_MAGIC", "PNG_MAGIC", "image_key", "sniff"]

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff(data: bytes) -> tuple[str, str] | None:
    """``(ext, content_type)`` of a JPEG or PNG recognised by its magic bytes, else None."""
    if data.startswith(JPEG_MAGIC):
        return "jpg", "image/jpeg"
    if data.startswith(PNG_MAGIC):
        return "png", "image/png"
    return None


def image_key(ambulance_id: str, taken_at: datetime, data: bytes, *, index: int = 0) -> str:
    """The legacy object key of an image.

    ``ambulance_images/<id>/<yyyy>/<mm>/<dd>/<HH>_<MM>/<MM>_<SS>_<4 digits>.<ext>``
    in UTC. The legacy server drew the 4 digits at random; ours come from the
    bytes and the image's index so that a redelivered snap rewrites the same key.
    Raises ``ValueError`` for an invalid id or bytes that are not JPEG/PNG.
    """
    if not valid_ambulance_id(ambulance_id):
        raise ValueError(f"invalid ambulance id {ambulance_id!r}")
    kind = sniff(data)
    if kind is None:
        raise ValueError("not a JPEG or PNG image")
    when = taken_at.replace(tzinfo=UTC) if taken_at.tzinfo is None else taken_at.astimezone(UTC)
    digest = hashlib.sha256(data)
    digest.update(b"\0%d" % index)
    digits = int.from_bytes(digest.digest()[:8], "big") % 10_000
    return f"ambulance_images/{ambulance_id}/{when:%Y/%m/%d/%H_%M/%M_%S}_{digits:04d}.{kind[0]}"
