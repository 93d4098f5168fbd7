"""A watcher process of ``aoc bench``: python-socketio clients counting ``data`` events.

``python -m bench.watch '<json>'``: config ``url``, ``token`` (or null: legacy
mode admits loopback clients without one), ``rooms`` (one list of rooms per
client), ``prefix`` (only points of ambulances whose id starts with it count)
and ``latency`` (record, per point, this clock minus the point's ``ts``: the
publishers set ``ts`` to their wall clock when pacing).

It prints ``ready`` once every client has joined its rooms, then counts until
``stop``. The result: deliveries per client, the wall-clock times of the
first and last delivery, and up to ``max_samples`` latencies in seconds (a
random sample past that, so a long run's JSON stays small).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import socketio

from bench.children import emit_result
from bridge import contract


class _Counts:
    def __init__(self, prefix: str, latency: bool, max_samples: int) -> None:
        self.prefix = prefix
        self.latency = latency
        self.max_samples = max_samples
        self.seen = 0  # latencies offered to the sample
        self.samples: list[float] = []
        self.first = 0.0
        self.last = 0.0

    def record(self, data: str) -> bool:
        """Count one ``data`` payload of ours; False for anything else."""
        now = time.time()
        if not data.startswith("{"):
            return False
        try:
            body = json.loads(data)
            if not str(body.get("ambulance_id", "")).startswith(self.prefix):
                return False
            ts = body.get("ts")
        except (ValueError, AttributeError):
            return False
        if not self.first:
            self.first = now
        self.last = now
        if self.latency and isinstance(ts, int | float):
            self.seen += 1
            value = now - ts / 1000
            if len(self.samples) < self.max_samples:
                self.samples.append(value)
            elif (slot := random.randrange(self.seen)) < self.max_samples:
                self.samples[slot] = value  # reservoir sampling
        return True


async def _client(
    url: str, token: str | None, rooms: list[str], *, counts: _Counts, mine: list[int], n: int
) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    joined: set[str] = set()
    all_joined = asyncio.Event()

    @client.on(contract.EVENT)  # type: ignore[untyped-decorator]
    async def on_data(data: object) -> None:
        if not isinstance(data, str):
            return
        if data.startswith("room joined: "):
            joined.add(data.removeprefix("room joined: "))
            if joined >= set(rooms):
                all_joined.set()
            return
        if counts.record(data):
            mine[n] += 1

    auth = {"token": token} if token else None
    await client.connect(url, transports=["websocket"], auth=auth, wait_timeout=20)
    for room in rooms:
        await client.emit(contract.JOIN_EVENT, room)
    async with asyncio.timeout(30):
        await all_joined.wait()
    return client


async def _main(config: dict[str, Any]) -> None:
    rooms: list[list[str]] = config["rooms"]
    counts = _Counts(
        str(config.get("prefix", "")),
        bool(config.get("latency", False)),
        int(config.get("max_samples", 50_000)),
    )
    per_client = [0] * len(rooms)
    clients = []
    for n, own in enumerate(rooms):  # one at a time: a burst of connects is not the benchmark
        clients.append(
            await _client(
                config["url"], config.get("token"), own, counts=counts, mine=per_client, n=n
            )
        )
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("stop", ""):
        pass
    result = {
        "clients": len(clients),
        "per_client": per_client,
        "received": sum(per_client),
        "first": counts.first,
        "last": counts.last,
        "latencies": [round(v, 5) for v in counts.samples],
        "latency_count": counts.seen,
    }
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    emit_result(result)


if __name__ == "__main__":
    asyncio.run(_main(json.loads(sys.argv[1])))
