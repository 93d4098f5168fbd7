"""Decoder processes: real children of the test, killed for real."""

from __future__ import annotations

import asyncio
import base64
import json
import os
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


async def test_a_decoder_that_died_while_idle_is_replaced_before_use() -> None:
    """Test that a child killed while idle costs its next message nothing.

    Counting its death against that message made a valid snapshot a dead letter
    (and so acknowledged and lost) once two idle children had been killed.
    """
    async with Decoders(workers=2, limits=LIMITS) as decoders:
        for worker in list(decoders._all):
            worker.proc.kill()
            await worker.proc.wait()
        for _ in range(2):
            decoded = await decoders.decode("aoc/332/snap", snap_payload(), NOW)
            assert isinstance(decoded.parsed, Snap)
        assert all(worker.proc.returncode is None for worker in decoders._all)


async def test_a_decoder_dying_mid_message_fails_it_and_work_goes_on() -> None:
    """Test that a child killed while it holds a message fails that message only."""
    async with Decoders(workers=1, limits=LIMITS) as decoders:
        [worker] = decoders._all
        big = b"{" + b" " * (20 * 1024 * 1024) + b"}"  # takes many pipe writes to send
        call = asyncio.create_task(decoders.decode("aoc/332/snap", big, NOW))
        await asyncio.sleep(0)  # the call takes the worker and waits on the pipe
        assert decoders._idle.empty()
        worker.proc.kill()
        with pytest.raises(DecoderDied):
            await call
        decoded = await decoders.decode("aoc/332/snap", snap_payload(), NOW)
        assert isinstance(decoded.parsed, Snap)


async def test_decoders_are_out_of_the_bridge_process_group() -> None:
    """Test that a Ctrl-C or SIGTERM to the bridge's process group spares its decoders.

    A stopping bridge still finishes the snapshot in hand; its decoder killed by
    the same signal made that snapshot fail, and twice meant a dead letter.
    """
    async with Decoders(workers=1, limits=LIMITS) as decoders:
        [worker] = decoders._all
        assert os.getpgid(worker.proc.pid) != os.getpgid(0)
