"""``bench latency``: publish -> Socket.IO ``data`` in room ``tracking``, and -> MQTT state.

Points go out at a steady total rate, round robin over a few ambulances. A
python-socketio client in room ``tracking`` sees each point (matched by its
ambulance id and ``seq``, which the legacy body carries through); an MQTT
subscriber sees the retained ``aoc/<id>/state`` (matched by ``last_seen``,
the device time of the latest point). The bridge publishes one state per
ambulance per batch, so a state message answers for the newest point of its
batch only, and there are fewer of them than points.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import aiomqtt
import socketio

from bench import snapload
from bench import stack as stack_mod
from bench.stack import Stack
from bench.stats import median, percentile, summary_ms, table
from bridge import contract
from bridge.contract import Kind

_GRACE = 10.0
SNAPS = "ambulance_image_histories"  # seconds to wait for the last points after publishing stops


@dataclass
class Latencies:
    """Publish times and the delays measured against them, in seconds."""

    published: dict[tuple[str, int], float] = field(default_factory=dict)  # (id, seq) -> t
    by_ts: dict[tuple[str, int], float] = field(default_factory=dict)  # (id, ts ms) -> t
    socketio: list[float] = field(default_factory=list)
    state: list[float] = field(default_factory=list)
    seen: set[tuple[str, int]] = field(default_factory=set)
    expected: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)  # every point seen


def _epoch_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


async def _dashboard(url: str, prefix: str, lat: Latencies) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    joined = asyncio.Event()

    @client.on(contract.EVENT)  # type: ignore[untyped-decorator]
    async def on_data(data: object) -> None:
        now = time.monotonic()
        if data == "room joined: tracking":
            joined.set()
            return
        if not isinstance(data, str):
            return
        with contextlib.suppress(ValueError, TypeError, KeyError):
            body = json.loads(data)
            key = (str(body["ambulance_id"]), int(body["seq"]))
            if key[0].startswith(prefix) and key in lat.published and key not in lat.seen:
                lat.seen.add(key)
                lat.socketio.append(now - lat.published[key])
                if len(lat.socketio) >= lat.expected:
                    lat.complete.set()

    await client.connect(url, transports=["websocket"], wait_timeout=10)
    await client.emit(contract.JOIN_EVENT, contract.TRACKING_ROOM)
    async with asyncio.timeout(10):
        await joined.wait()
    return client


async def _states(client: aiomqtt.Client, prefix: str, lat: Latencies) -> None:
    async for message in client.messages:
        now = time.monotonic()
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            body = json.loads(bytes(message.payload))
            aid = str(body["ambulance_id"])
            if not aid.startswith(prefix) or message.retain:
                continue  # retained: an old state replayed on subscribe, not a new one
            published = lat.by_ts.get((aid, _epoch_ms(body["last_seen"])))
            if published is not None:
                lat.state.append(now - published)


async def latency(
    stack: Stack,
    *,
    devices: int,
    rate: float,
    duration: float,
    runs: int = 1,
    snap_publishers: int = 0,
    snap_files: int = 10,
    snap_image_bytes: int = 5 * 1024 * 1024,
    snap_interval: float = 0.0,
) -> list[dict[str, Latencies]]:
    """Publish for ``duration`` seconds at ``rate`` points/s; print latency percentiles.

    With ``snap_publishers``, each run measures twice: idle, then while that
    many processes send maximum-size snapshots; the medians over ``runs`` follow.
    """
    probe_s = await stack.probe()
    print(f"pipeline up (first point stored {probe_s:.2f}s after the first try)", flush=True)
    results: list[dict[str, Latencies]] = []
    for run in range(1, runs + 1):
        phases: dict[str, Latencies] = {}
        if runs > 1 or snap_publishers:
            print(f"run {run}: idle", flush=True)
        phases["idle"] = await _phase(stack, devices=devices, rate=rate, duration=duration)
        if snap_publishers:
            print(
                f"run {run}: under load: {snap_publishers} processes sending snapshots of"
                f" {snap_files} x {snap_image_bytes} bytes (JSON, base64)"
                + (f", one every {snap_interval:g}s each" if snap_interval else ", back to back"),
                flush=True,
            )
            prefix = f"LOAD-{uuid.uuid4().hex[:6]}-"
            with snapload.flowing(
                port=stack.mqtt_port,
                publishers=snap_publishers,
                files=snap_files,
                image_bytes=snap_image_bytes,
                prefix=prefix,
                interval=snap_interval,
            ) as sent:
                # Measure only once snapshots are really flowing into the bridge.
                await asyncio.to_thread(snapload.wait_sent, sent, snap_publishers)
                phases["snapshots"] = await _phase(
                    stack, devices=devices, rate=rate, duration=duration
                )
                sent_during = sent.value
            print(f"  {sent_during} snapshots sent during the run", flush=True)
            # The next idle phase must not measure this phase's backlog.
            waited = await _drain(stack, prefix, sent.value)
            print(f"  all {sent.value} snapshots stored {waited:.1f}s after the run", flush=True)
        results.append(phases)
    if runs > 1 or snap_publishers:
        _print_medians(results)
    return results


async def _drain(stack: Stack, prefix: str, number: int, timeout: float = 600.0) -> float:
    """Seconds until ``number`` snapshots of ambulances ``prefix*`` are stored."""
    started = time.monotonic()
    while stack_mod.stored_with_prefix(stack.store_path, prefix, SNAPS) < number:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"snapshots not stored within {timeout}s")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def _print_medians(results: list[dict[str, Latencies]]) -> None:
    print(f"tracking publish -> Socket.IO, median of {len(results)} runs:")
    rows = []
    for phase in results[0]:
        figures = []
        for pct in (50.0, 95.0, 99.0):
            values = [percentile(run[phase].socketio, pct) * 1000 for run in results]
            figures.append(f"{median(values):.1f}")
        lost = median([run[phase].expected - len(run[phase].socketio) for run in results])
        rows.append([phase, *figures, f"{lost:g}"])
    print(table(["phase", "p50 ms", "p95 ms", "p99 ms", "missing"], rows))


async def _phase(stack: Stack, *, devices: int, rate: float, duration: float) -> Latencies:
    """One measurement: points at a steady rate, their delays to Socket.IO and MQTT state."""
    prefix = f"LAT-{uuid.uuid4().hex[:6]}-"
    ids = [f"{prefix}{i:03d}" for i in range(devices)]
    seqs = dict.fromkeys(ids, 0)
    last_ts = dict.fromkeys(ids, 0)
    total = max(1, round(rate * duration))
    lat = Latencies(expected=total)
    board = await _dashboard(stack.socketio_url, prefix, lat)
    try:
        async with (
            stack.mqtt() as subscriber,
            stack.mqtt() as publisher,
            asyncio.TaskGroup() as group,
        ):
            await subscriber.subscribe(contract.subscription(Kind.STATE), qos=1)
            listener = group.create_task(_states(subscriber, prefix, lat), name="state-listener")
            pending: set[asyncio.Task[None]] = set()
            print(f"publishing {total} points at {rate:g}/s over {devices} ambulances", flush=True)
            start = time.monotonic()
            next_report = start + 5
            for n in range(total):
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                aid = ids[n % devices]
                seq = seqs[aid]
                seqs[aid] += 1
                ts = max(stack_mod.now_ms(), last_ts[aid] + 1)  # unique per ambulance
                last_ts[aid] = ts
                body = {"lat": 13.75, "lon": round(100.5 + seq * 1e-5, 6), "speed": 40}
                body |= {"heading": 90, "ts": ts, "seq": seq}
                now = time.monotonic()
                lat.published[(aid, seq)] = now
                lat.by_ts[(aid, ts)] = now
                # Publishing without waiting for PUBACK keeps the rate steady.
                task = asyncio.create_task(
                    publisher.publish(contract.topic(aid, Kind.TRACKING), json.dumps(body), qos=1)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
                if now >= next_report:
                    next_report += 5
                    print(
                        f"  {now - start:5.1f}s  published {n + 1}"
                        f"  socket.io {len(lat.socketio)}  state {len(lat.state)}",
                        flush=True,
                    )
            await asyncio.gather(*pending)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_GRACE):
                    await lat.complete.wait()
            listener.cancel()
    finally:
        await board.disconnect()
    missing = total - len(lat.socketio)
    print(f"publish -> Socket.IO data (room tracking): {summary_ms(lat.socketio)}")
    if missing:
        print(f"  {missing} of {total} points never reached the dashboard within {_GRACE:.0f}s")
    p95 = percentile(lat.socketio, 95.0) * 1000
    print(f"  (Socket.IO p95 {p95:.1f} ms)")
    print(f"publish -> MQTT aoc/<id>/state:           {summary_ms(lat.state)}")
    print(f"  ({len(lat.state)} state messages for {total} points: one per ambulance per batch)")
    return lat
