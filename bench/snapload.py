"""Maximum-size snapshots from separate publisher processes, as background load.

Each publisher is its own process (so building and sending 70 MB payloads
does not slow the benchmark's own publisher or its clocks) and sends, one
after the other, JSON snapshots of ``files`` images of ``image_bytes`` each
(base64, the contract's JSON form): the largest snapshot the bridge accepts.
Every snapshot differs (its ``ts`` and a few bytes of each image), so none is
taken for a redelivery.
"""

from __future__ import annotations

import base64
import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event as EventType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bridge import contract
from bridge.contract import Kind

JPEG_HEAD = b"\xff\xd8\xff\xe0"


def snapshot(files: int, image_bytes: int, serial: int) -> bytes:
    """One JSON snapshot of ``files`` images of exactly ``image_bytes`` bytes each."""
    return _Snapshots(files, image_bytes).make(serial)


class _Snapshots:
    """Distinct maximum-size snapshots, cheaply: the random body is encoded once.

    Each image ends in 3 bytes (one base64 group) that carry the serial and
    its index, so every snapshot, and every image, differs; only those 4
    characters are encoded per snapshot. The publishers' CPU would otherwise
    compete with the system under test on a small machine.
    """

    def __init__(self, files: int, image_bytes: int) -> None:
        self._files = files
        body_len = image_bytes - 3
        body = JPEG_HEAD + os.urandom(body_len - len(JPEG_HEAD))
        # Encoded in groups of 3 bytes: the body must be a multiple of 3 long.
        cut = body_len - body_len % 3
        self._head = base64.b64encode(body[:cut])
        self._rest = body[cut:]

    def make(self, serial: int) -> bytes:
        # JSON by hand: json.dumps of 70 MB of strings costs the publisher a lot.
        parts = [b'{"images": [']
        for n in range(self._files):
            tail = self._rest + ((serial * 64 + n) % 2**24).to_bytes(3, "big")
            name = json.dumps(f"cam{n}.jpg").encode()
            data = self._head + base64.b64encode(tail)
            parts += [b", " if n else b"", b'{"name": ', name, b', "data": "', data, b'"}']
        parts.append(b'], "ts": %d}' % int(time.time() * 1000))
        return b"".join(parts)


def wait_sent(sent: Any, number: int, timeout: float = 300.0) -> None:
    """Block until ``number`` snapshots were acknowledged (a thread's job, not the loop's)."""
    deadline = time.monotonic() + timeout
    while sent.value < number:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {number} snapshots sent within {timeout}s")
        time.sleep(0.1)


def publish_one(port: int, ambulance_id: str, sizes: tuple[int, int]) -> None:
    """Publish one maximum-size snapshot and wait for the broker's PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"snapone-{ambulance_id}")
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    try:
        info = client.publish(contract.topic(ambulance_id, Kind.SNAP), snapshot(*sizes, 0), qos=1)
        info.wait_for_publish(timeout=300)
    finally:
        client.loop_stop()
        client.disconnect()


def _publish_loop(
    port: int, ambulance_id: str, sizes: tuple[int, int, float], stop: EventType, sent: Any
) -> None:
    files, image_bytes, interval = sizes
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"snapload-{ambulance_id}")
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    serial = 0
    snapshots = _Snapshots(files, image_bytes)
    next_at = time.monotonic()
    try:
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += interval
            payload = snapshots.make(serial)
            info = client.publish(contract.topic(ambulance_id, Kind.SNAP), payload, qos=1)
            info.wait_for_publish(timeout=120)
            serial += 1
            with sent.get_lock():
                sent.value += 1
    finally:
        client.loop_stop()
        client.disconnect()


@contextlib.contextmanager
def flowing(
    *,
    port: int,
    publishers: int,
    files: int,
    image_bytes: int,
    prefix: str,
    interval: float = 0.0,
) -> Iterator[Any]:
    """Run ``publishers`` snapshot publishers while the block runs.

    Each sends one snapshot every ``interval`` seconds (0: back to back, as
    fast as the broker acknowledges: a flood that outruns any bridge).

    Yields a shared integer (``.value``): the snapshots the broker acknowledged so far.
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    sent = context.Value("i", 0)
    procs = [
        context.Process(
            target=_publish_loop,
            args=(port, f"{prefix}SNAP{n}", (files, image_bytes, interval), stop, sent),
            name=f"snapload-{n}",
            daemon=True,
        )
        for n in range(publishers)
    ]
    for proc in procs:
        proc.start()
    try:
        yield sent
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
