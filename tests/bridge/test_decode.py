"""Decoder processes: real children of the test, killed for real."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from bridge.decode import DecoderDied, Decoders
from bridge.ids import snap_id
from bridge.messages import Rejected, Snap
from bridge.snapshots import image_digest
from bridge.validate import Limits
from tests.images import png

LIMITS = Limits(max_image_bytes=1024 * 1024, max_upload_files=5)
NOW = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def snap_payload() -> bytes:
    image = base64.b64encode(png()).decode()
    return json.dumps({"images": [{"name": "a.png", "data": image}]}).encode()


async def test_a_snapshot_comes_back_parsed_with_digests_and_id() -> None:
    """Test that a child parses a snap and hashes it exactly as the parent would."""
    async with Decoders(workers=1, limits=LIMITS) as decoders:
        decoded = await decoders.decode("aoc/332/snap", snap_payload(), NOW)
    assert isinstance(decoded.parsed, Snap)
    assert decoded.parsed.images[0].data == png()
    assert decoded.digests == (image_digest(png()),)
    assert decoded.snap_id == snap_id(decoded.parsed)


async def test_a_rejected_message_keeps_its_payload() -> None:
    """Test that a dead letter still carries the whole payload (it is not sent back)."""
    payload = b"\xff\xd8 not json"
    async with Decoders(workers=1, limits=LIMITS) as decoders:
        decoded = await decoders.decode("aoc/332/snap", payload, NOW)
    assert isinstance(decoded.parsed, Rejected)
    assert decoded.parsed.payload == payload


async def test_a_dead_decoder_fails_its_message_and_is_replaced() -> None:
    """Test that a killed child makes its message fail with DecoderDied, then work goes on."""
    async with Decoders(workers=1, limits=LIMITS) as decoders:
        [worker] = decoders._all
        worker.proc.kill()
        await worker.proc.wait()
        with pytest.raises(DecoderDied):
            await decoders.decode("aoc/332/snap", snap_payload(), NOW)
        decoded = await decoders.decode("aoc/332/snap", snap_payload(), NOW)
        assert isinstance(decoded.parsed, Snap)
