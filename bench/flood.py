"""``bench flood``: peak memory of the broker and the bridge under oversized input.

Two scenarios, each against the stack as started (run them on fresh stacks
to compare figures):

- ``tracking``: ``count`` payloads of ``size`` bytes on tracking topics, all
  at once (what a broken or hostile client might send). The bridge must
  dead-letter every one.
- ``snapshots``: ``count`` maximum-size JSON snapshots at once, from as many
  publisher processes. The bridge must store every one.

Printed: the peak resident memory (VmHWM, the kernel's high-water mark of
VmRSS) of Mosquitto and the ``aoc`` process before and after, and how long the
bridge took to deal with everything.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
import uuid

from bench import snapload
from bench import stack as stack_mod
from bench.stack import Stack
from bench.stats import mib, table
from bridge import contract
from bridge.contract import Kind

DEAD_LETTERS = "dead_letters"
SNAPS = "ambulance_image_histories"


def peak_rss(pid: int) -> int | None:
    """The peak resident memory (VmHWM) of ``pid``, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def flood(
    stack: Stack,
    *,
    scenario: str,
    count: int,
    size: int,
    files: int,
    image_bytes: int,
    timeout: float = 600.0,
) -> dict[str, int | None]:
    """Run one scenario; print and return each process's peak RSS afterwards."""
    await stack.probe()
    pids = {name: pid for name, pid in stack.pids().items() if name != "redis"}
    before: dict[str, int | None] = {name: peak_rss(pid) for name, pid in pids.items()}
    prefix = f"FLOOD-{uuid.uuid4().hex[:6]}-"
    started = time.monotonic()
    if scenario == "tracking":
        print(f"publishing {count} tracking payloads of {size} bytes at once", flush=True)
        await _tracking(stack, prefix, count, size)
        collection = DEAD_LETTERS
    else:
        print(
            f"publishing {count} snapshots of {files} x {image_bytes} bytes (JSON) at once",
            flush=True,
        )
        await asyncio.to_thread(_snapshots, stack.mqtt_port, prefix, count, (files, image_bytes))
        collection = SNAPS
    published = time.monotonic() - started
    while stack_mod.stored_with_prefix(stack.store_path, prefix, collection) < count:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the bridge did not take all {count} within {timeout}s")
        await asyncio.sleep(0.2)
    done = time.monotonic() - started
    # The aoc process's own children (the bridge's snapshot decoders) count too.
    for n, child in enumerate(_children(stack.app.proc.pid if stack.app.proc else 0)):
        pids[f"  child {n + 1}"] = child
        before[f"  child {n + 1}"] = None
    after = {name: peak_rss(pid) for name, pid in pids.items()}
    rows = [
        [name, _mib(before[name]), _mib(after[name])] for name in pids
    ]
    print(table(["process", "peak RSS before MiB", "peak RSS after MiB"], rows))
    print(
        f"published in {published:.1f}s;"
        f" all {count} {collection} stored {done:.1f}s after the start"
    )
    return after


def _mib(value: int | None) -> str:
    return "-" if value is None else mib(value).strip()


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux: /proc/<pid>/task/*/children)."""
    found: list[int] = []
    try:
        with os.scandir(f"/proc/{pid}/task") as tasks:
            for task in tasks:
                with open(f"{task.path}/children") as children:
                    found += [int(child) for child in children.read().split()]
    except OSError:
        return []
    return found


async def _tracking(stack: Stack, prefix: str, count: int, size: int) -> None:
    filler = "x" * size
    async with stack.mqtt() as client:
        await asyncio.gather(
            *(
                client.publish(
                    contract.topic(f"{prefix}{n}", Kind.TRACKING),
                    json.dumps({"lat": 13.75, "lon": 100.5, "speed": 1, "pad": filler}),
                    qos=1,
                    timeout=300,
                )
                for n in range(count)
            )
        )


def _snapshots(port: int, prefix: str, count: int, sizes: tuple[int, int]) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(count) as pool:
        pool.starmap(
            snapload.publish_one, [(port, f"{prefix}{n}", sizes) for n in range(count)]
        )
