"""Idempotency ids (``_id``) of stored records, from the MQTT contract.

MQTT QoS 1 delivers at least once: a redelivered message must map to the same
id so the store recognises it. Ids are therefore built only from what the
device sent (never from the receipt time, which differs on redelivery).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from bridge.messages import Snap

__all__ = [
    "crash_id",
    "dead_letter_id",
    "epoch_ms",
    "snap_id",
    "snap_id_of",
    "tracking_id",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch, rounded down (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MS


def tracking_id(ambulance_id: str, ts: datetime, seq: int | None = None) -> str:
    """``"<aid>:<ts ms>"``, plus ``":<seq>"`` when the device numbers its points."""
    base = f"{ambulance_id}:{epoch_ms(ts)}"
    return base if seq is None else f"{base}:{seq}"


def crash_id(ambulance_id: str, ts: datetime) -> str:
    """``"crash:<aid>:<ts ms>"``."""
    return f"crash:{ambulance_id}:{epoch_ms(ts)}"


def snap_id(snap: Snap) -> str:
    """``"snap:<aid>:"`` + 32 hex of a hash over the snap's ts (if the device gave one) and images.

    A snap without a device ``ts`` has ``ts == received_at`` (``bridge.validate``
    guarantees the two differ, to the millisecond, when the device gave one), and
    its id then depends on the image bytes only. A device ts clamped to the
    receipt time is in ``device_ts``, and the id is built from it.
    """
    if snap.id is not None:  # computed while the bytes were still there
        return snap.id
    given = snap.device_ts
    if given is None and epoch_ms(snap.ts) != epoch_ms(snap.received_at):
        given = snap.ts
    images = [image.data for image in snap.images]
    return snap_id_of(snap.ambulance_id, images, given)


def snap_id_of(ambulance_id: str, images: list[bytes], ts: datetime | None) -> str:
    """The snap id from its parts: ``ts`` is None when the device gave no time."""
    digest = hashlib.sha256()
    if ts is not None:
        digest.update(b"ts:%d\0" % epoch_ms(ts))
    for data in images:
        digest.update(hashlib.sha256(data).digest())
    return f"snap:{ambulance_id}:{digest.hexdigest()[:32]}"


def dead_letter_id(topic: str, payload: bytes) -> str:
    """``"dl:"`` + 32 hex of sha256(topic + NUL + payload): one record per distinct message."""
    # surrogatepass: a topic is whatever the broker let through; this must not raise.
    raw_topic = topic.encode("utf-8", "surrogatepass")
    return "dl:" + hashlib.sha256(raw_topic + b"\0" + bytes(payload)).hexdigest()[:32]
