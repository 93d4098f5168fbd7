"""``bench throughput``: how many tracking points per second end up stored.

N devices (one MQTT client each) publish M QoS 1 points in total, as fast as
the broker acknowledges them (a window of publishes in flight per device).
A run's rate is M divided by the time from the first publish until the store
holds all M: end to end, not just what the broker accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
import httpx

from bench import stack as stack_mod
from bench.stack import Stack
from bench.stats import median
from bridge import contract
from bridge.contract import Kind

_POLL = 0.05
STORED_METRIC = 'aoc_messages_stored_total{kind="tracking"}'
CONFLICTS_METRIC = "aoc_batch_conflicts_total{}"


@dataclass
class RunResult:
    """One run's figures."""

    messages: int
    stored: int
    publish_s: float
    stored_s: float
    cpu: dict[str, float]  # process name -> CPU seconds used during the run
    in_store: int  # rows of this run in the SQLite store afterwards (the ground truth)
    batches: float | None = None  # from /metrics, when the bridge exports a batch histogram
    batch_messages: float | None = None
    conflicts: float | None = None  # batches planned again (several bridges), from /metrics

    @property
    def rate(self) -> float:
        return self.stored / self.stored_s if self.stored_s > 0 else 0.0

    def line(self, number: int) -> str:
        text = (
            f"run {number}: {self.stored}/{self.messages} stored in {self.stored_s:6.2f}s"
            f" = {self.rate:8.0f} msg/s  (broker acked all in {self.publish_s:6.2f}s"
            f" = {self.messages / self.publish_s:8.0f} msg/s)"
        )
        cpu = "  ".join(
            f"{name} {seconds / self.stored_s * 100:3.0f}%" for name, seconds in self.cpu.items()
        )
        text += f"\n       CPU of a core: {cpu}"
        if self.in_store != self.messages:
            text += f"\n       the store holds {self.in_store} rows of this run"
        if self.batches:
            mean = (self.batch_messages or 0) / self.batches
            text += f"\n       bridge batches: {self.batches:.0f}, mean size {mean:.1f}"
        if self.conflicts:
            text += f", planned again after a conflict: {self.conflicts:.0f}"
        return text


def _payload(seq: int, ts: int) -> bytes:
    body = {
        "lat": round(13.70 + seq * 1e-5, 6),
        "lon": 100.50,
        "speed": 45.5,
        "heading": 90,
        "ts": ts,
        "seq": seq,
        "accuracy": 5,
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def _device(client: aiomqtt.Client, aids: list[str], count: int, window: int) -> None:
    # Device times in the past, one millisecond apart: unique ids, in order.
    base = stack_mod.now_ms() - count - 1000
    seqs = iter(range(count))

    async def worker() -> None:
        # Workers share one iterator, so publishes are issued in sequence order.
        for seq in seqs:
            topic = contract.topic(aids[seq % len(aids)], Kind.TRACKING)
            await client.publish(topic, _payload(seq, base + seq), qos=1, timeout=60)

    await asyncio.gather(*(worker() for _ in range(window)))


def _ambulance_ids(prefix: str, devices: int, ambulances: int | None) -> list[list[str]]:
    """Each device's ambulance ids: one each by default, else ``ambulances`` dealt round."""
    if not ambulances:
        return [[f"{prefix}{i:04d}"] for i in range(devices)]
    return [[f"{prefix}{j:06d}" for j in range(i, ambulances, devices)] for i in range(devices)]


def _batch_figures(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> tuple[float | None, float | None]:
    """(batches, messages in them) during a run, from a ``*batch_size*`` histogram."""
    if not before or not after:
        return None, None
    counts = [k for k in after if "batch_size" in k and k.split("{")[0].endswith("_count")]
    sums = [k for k in after if "batch_size" in k and k.split("{")[0].endswith("_sum")]
    if not counts or not sums:
        return None, None
    batches = sum(after[k] - before.get(k, 0.0) for k in counts)
    messages = sum(after[k] - before.get(k, 0.0) for k in sums)
    return batches, messages


def _cpu(stack: Stack) -> dict[str, float]:
    return {
        name: seconds
        for name, pid in stack.pids().items()
        if (seconds := stack_mod.cpu_seconds(pid)) is not None
    }


async def _stored_counter(
    stack: Stack, http: httpx.AsyncClient, prefix: str
) -> tuple[str, Callable[[], Awaitable[int]]]:
    """How to count this run's stored points: the bridges' counters if exported, else the store."""
    urls = stack.metrics_urls
    baselines = [await stack_mod.scrape(http, url) for url in urls]
    if all(b is not None and STORED_METRIC in b for b in baselines):
        starts = [b[STORED_METRIC] for b in baselines if b is not None]

        async def from_metrics() -> int:
            total = 0.0
            for url, start in zip(urls, starts, strict=True):
                samples = await stack_mod.scrape(http, url) or {}
                total += samples.get(STORED_METRIC, start) - start
            return int(total)

        where = "the bridges' " if len(urls) > 1 else ""
        return f"{where}/metrics {STORED_METRIC}", from_metrics

    async def from_store() -> int:
        return await asyncio.to_thread(stack_mod.stored_with_prefix, stack.store_path, prefix)

    return "row count of the SQLite store", from_store


async def run_once(
    stack: Stack,
    http: httpx.AsyncClient,
    *,
    devices: int,
    messages: int,
    window: int,
    timeout: float,
    ambulances: int | None = None,
    prefix: str | None = None,
) -> tuple[RunResult, str]:
    """One run: connect, publish everything, wait until it is all stored.

    A new id prefix per run unless ``prefix`` is given (then the ids may be known).
    """
    prefix = prefix or f"TP-{uuid.uuid4().hex[:6]}-"
    share = [messages // devices + (1 if i < messages % devices else 0) for i in range(devices)]
    aids = _ambulance_ids(prefix, devices, ambulances)
    source, stored = await _stored_counter(stack, http, prefix)
    in_store_before = await asyncio.to_thread(
        stack_mod.stored_with_prefix, stack.store_path, prefix
    )
    metrics_before = await stack_mod.scrape(http, stack.metrics_url)
    conflicts_before = await _conflicts(stack, http)
    async with contextlib.AsyncExitStack() as exits:
        clients = [
            await exits.enter_async_context(stack.mqtt(max_inflight=window)) for _ in range(devices)
        ]
        cpu_before = _cpu(stack)
        started = time.monotonic()
        publishing = asyncio.gather(
            *(
                _device(client, ids, count, window)
                for client, ids, count in zip(clients, aids, share, strict=True)
            )
        )
        publish_s: float | None = None
        count = 0
        while True:
            if publish_s is None and publishing.done():
                publishing.result()  # a failed publish fails the run, loudly
                publish_s = time.monotonic() - started
            count = await stored()
            elapsed = time.monotonic() - started
            if count >= messages or elapsed > timeout:
                break
            await asyncio.sleep(_POLL)
        stored_s = time.monotonic() - started
        await publishing
        if publish_s is None:
            publish_s = stored_s
    cpu_after = _cpu(stack)
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    batches, batch_messages = _batch_figures(
        metrics_before, await stack_mod.scrape(http, stack.metrics_url)
    )
    in_store = await asyncio.to_thread(stack_mod.stored_with_prefix, stack.store_path, prefix)
    in_store -= in_store_before
    result = RunResult(messages, count, publish_s, stored_s, cpu, in_store, batches, batch_messages)
    result.conflicts = await _conflicts(stack, http) - conflicts_before
    return result, source


async def _conflicts(stack: Stack, http: httpx.AsyncClient) -> float:
    """``aoc_batch_conflicts_total`` summed over the consuming processes (0 if not exported)."""
    total = 0.0
    for url in stack.metrics_urls:
        samples = await stack_mod.scrape(http, url) or {}
        total += samples.get(CONFLICTS_METRIC, 0.0)
    return total


async def throughput(
    stack: Stack,
    *,
    devices: int,
    messages: int,
    runs: int,
    window: int,
    timeout: float,
    ambulances: int | None = None,
    same_ids: bool = False,
) -> list[RunResult]:
    """``runs`` runs on one running stack; prints each run and the median.

    With ``same_ids`` every run sends from the same ambulance ids: the first run
    meets them new, the later ones known (their medians are printed apart).
    """
    prefix = f"TP-{uuid.uuid4().hex[:6]}-" if same_ids else None
    probe_s = await stack.probe()
    print(f"pipeline up (first point stored {probe_s:.2f}s after the first try)", flush=True)
    results = []
    async with httpx.AsyncClient() as http:
        for number in range(1, runs + 1):
            result, source = await run_once(
                stack,
                http,
                devices=devices,
                messages=messages,
                window=window,
                timeout=timeout,
                ambulances=ambulances,
                prefix=prefix,
            )
            if number == 1:
                print(f"stored count read from: {source}", flush=True)
            print(result.line(number), flush=True)
            if result.stored < result.messages:
                print(f"       INCOMPLETE: timed out after {timeout:.0f}s", flush=True)
            results.append(result)
    rates = [r.rate for r in results]
    if same_ids and len(results) > 1:
        known = rates[1:]
        print(
            f"first run (new ids): {rates[0]:.0f} msg/s; median of the {len(known)} later runs"
            f" (known ids): {median(known):.0f} msg/s",
            flush=True,
        )
    print(
        f"median of {len(results)} runs: {median(rates):.0f} msg/s stored end to end"
        f"  (min {min(rates):.0f}, max {max(rates):.0f})",
        flush=True,
    )
    return results
