"""Snapshot images: type sniffing by magic bytes and the legacy object key layout."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from bridge.contract import valid_ambulance_id
from bridge.messages import Snap
from storage.base import ObjectStore

__all__ = [
    "JPEG_MAGIC",
    "MAX_DRAWS",
    "PNG_MAGIC",
    "Digits",
    "KeysExhausted",
    "image_digest",
    "image_key",
    "key_digits",
    "sniff",
    "store_images",
]

# (image SHA-256, draw number) -> the key's 4 digits; injectable to force collisions.
Digits = Callable[[bytes, int], int]
# Draws per image before giving up: 10,000 keys per ambulance per second exist,
# so running out means a broken store or a broken digits function.
MAX_DRAWS = 64

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff(data: bytes) -> tuple[str, str] | None:
    """``(ext, content_type)`` of a JPEG or PNG recognised by its magic bytes, else None."""
    if data.startswith(JPEG_MAGIC):
        return "jpg", "image/jpeg"
    if data.startswith(PNG_MAGIC):
        return "png", "image/png"
    return None


def image_digest(data: bytes) -> bytes:
    """The SHA-256 of an image, from which its key's digits are drawn."""
    return hashlib.sha256(data).digest()


def key_digits(digest: bytes, draw: int) -> int:
    """The 4 digits of draw number ``draw`` for the image whose SHA-256 is ``digest``."""
    return int.from_bytes(hashlib.sha256(digest + b"\0%d" % draw).digest()[:8], "big") % 10_000


def image_key(
    ambulance_id: str,
    taken_at: datetime,
    data: bytes,
    *,
    index: int = 0,
    digest: bytes | None = None,
    digits: Digits = key_digits,
) -> str:
    """The legacy object key of an image.

    ``ambulance_images/<id>/<yyyy>/<mm>/<dd>/<HH>_<MM>/<MM>_<SS>_<4 digits>.<ext>``
    in UTC. The legacy server drew the 4 digits at random; ours come from the
    bytes and a draw number (the image's index, then further draws on a
    collision, see ``store_images``) so that a redelivered snap maps to the same
    keys. ``digest`` is ``image_digest(data)`` when the caller has it already.
    Raises ``ValueError`` for an invalid id or bytes that are not JPEG/PNG.
    """
    if not valid_ambulance_id(ambulance_id):
        raise ValueError(f"invalid ambulance id {ambulance_id!r}")
    kind = sniff(data)
    if kind is None:
        raise ValueError("not a JPEG or PNG image")
    when = taken_at.replace(tzinfo=UTC) if taken_at.tzinfo is None else taken_at.astimezone(UTC)
    drawn = digits(image_digest(data) if digest is None else digest, index) % 10_000
    return f"ambulance_images/{ambulance_id}/{when:%Y/%m/%d/%H_%M/%M_%S}_{drawn:04d}.{kind[0]}"


class KeysExhausted(Exception):
    """No free key was found for an image within ``MAX_DRAWS`` draws."""


async def store_images(
    objects: ObjectStore,
    snap: Snap,
    *,
    digests: Sequence[bytes] | None = None,
    digits: Digits = key_digits,
) -> tuple[str, ...]:
    """Store every image of ``snap`` under a key of its own; the keys, in image order.

    Never overwrites a stored object: a key that holds other bytes (another
    snap of the same ambulance in the same second drew the same 4 digits) is
    skipped and the next draw is tried. Draws follow a fixed sequence per image
    (its index, then index + n, index + 2n... for n images), so a redelivered
    snap walks the same sequence and lands on the keys that hold its own bytes.
    Raises ``StoreUnavailable`` from the store, ``KeysExhausted`` past ``MAX_DRAWS``.
    """
    keys: list[str] = []
    count = len(snap.images)
    for index, image in enumerate(snap.images):
        digest = image_digest(image.data) if digests is None else digests[index]
        for attempt in range(MAX_DRAWS):
            key = image_key(
                snap.ambulance_id,
                snap.ts,
                image.data,
                index=index + attempt * count,
                digest=digest,
                digits=digits,
            )
            # Two images of one snap may draw the same key; the bytes are durable
            # before any metadata names the key (the batch is acknowledged after).
            if key not in keys and await objects.put_new(key, image.data, image.content_type):
                keys.append(key)
                break
        else:
            raise KeysExhausted(
                f"no free key for image {index} of {snap.ambulance_id} after {MAX_DRAWS} draws"
            )
    return tuple(keys)
