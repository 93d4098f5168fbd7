"""``bench coalesce``: the live stream (``api.live``) with a fleet at 1 Hz and many dashboards.

Mosquitto, Redis and ``aoc serve`` (or ``aoc bridge`` + ``aoc realtime``,
``process="split"``) on free ports. Several publisher processes send
``ambulances`` ids at ``rate`` points a second each, spread evenly over each
second, the device time ``ts`` taken at the publish. With ``process="feed"``
only Redis and ``aoc realtime`` run, and the publishers feed the stream
through Redis as ``aoc bridge`` does: the fan-out alone, without the
bridge's ingest. Several client processes hold ``clients`` clients
(python-socketio, or with ``node`` the stock socket.io-client,
``tests/js/live_bench.mjs``), each subscribed to the whole fleet
(``{"ambulances": "*"}``) or, with ``selection``, to the run's ids by name.

Per client it counts, for each ambulance, the distinct points it received
(a state whose ``last_seen`` is newer than the last one seen); at 1 Hz and
intervals of 100 ms no two points of one ambulance share an interval, so
every point must arrive: ``missing`` is the points published that a client
never saw, summed over clients (must be 0), and ``final`` checks each
client's last state of each ambulance against the last point published.
Staleness, per state received after a warm-up: receipt time minus the point's
device time (``last_seen``), and per event receipt minus the server's ``at``.
All clocks are this machine's. CPU: each process's share of a core over
the measured window.

``run(...)`` returns the figures as a JSON-able dict (for ``bench.suite``);
``python -m bench coalesce`` prints them. ``legacy_emit(...)`` compares the
legacy ``tracking`` room's emit path, ours against stock python-socketio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import subprocess
import tempfile
import time
import uuid
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import aiomqtt
import socketio

from aoc.config import Settings
from aoc.servers import server
from api import SocketGate, create_sio
from bench import stack as stack_mod
from bench.stats import median, table
from bridge import contract
from bridge.contract import Kind
from storage.sqlite import SQLiteDocumentStore
from tests import services

SAMPLE_EVERY = 4  # one client in this many records staleness (all its states)
BUCKETS = 60_000  # staleness histogram: 1 ms buckets up to a minute (the last holds the rest)
_SPAWN: SpawnContext = multiprocessing.get_context("spawn")


# --- histograms --------------------------------------------------------------------------


def _new_hist() -> array[int]:
    return array("q", bytes(8 * BUCKETS))


def _record(hist: array[int], ms: float) -> None:
    hist[min(max(int(ms), 0), BUCKETS - 1)] += 1


def _merge(into: array[int], other: array[int]) -> None:
    for i, n in enumerate(other):
        if n:
            into[i] += n


def hist_percentiles(hist: array[int], pcts: tuple[float, ...] = (50, 95, 99)) -> dict[str, Any]:
    """Nearest-rank percentiles (ms, to 1 ms) and the count and maximum of a histogram."""
    total = sum(hist)
    out: dict[str, Any] = {"n": total}
    if not total:
        return out | {f"p{p:g}": None for p in pcts} | {"max": None}
    ranks = {p: max(1, -(-p * total // 100)) for p in pcts}
    seen = 0
    for ms, n in enumerate(hist):
        if not n:
            continue
        for p, rank in ranks.items():
            if f"p{p:g}" not in out and seen + n >= rank:
                out[f"p{p:g}"] = ms
        seen += n
        out["max"] = ms
    return out


_SECONDS: dict[str, float] = {}  # "2026-01-01T00:00:00" -> epoch seconds (few distinct ones)


def _epoch_ms(text: str) -> float:
    """Epoch ms of a ``2026-01-01T00:00:00.123Z`` time; cheap, for 200,000 states a second."""
    whole = text[:19]
    seconds = _SECONDS.get(whole)
    if seconds is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        seconds = _SECONDS[whole] = datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds * 1000 + (int(text[20:23]) if len(text) >= 24 else 0)


# --- publishers ----------------------------------------------------------------------------


def _publisher(*, port: int, redis_url: str | None, ids: list[str], rate: float,
               duration: float, ready: Any, go: _Go, out: Any) -> None:
    """One process: each of ``ids`` at ``rate`` Hz for ``duration``, from the wall time ``go`` says.

    Over MQTT as devices do; or, with ``redis_url``, straight to the live
    stream as a bridge feeds it (``bridge.live``, every 20 ms, the bridge's
    batch wait), to measure the fan-out without the bridge. It connects first
    and says so on ``ready``: a process started late would catch up in a
    burst, several points of one ambulance in one interval.
    """

    async def main() -> dict[str, Any]:
        last: dict[str, int] = {}
        published = 0
        pending: set[asyncio.Task[Any]] = set()
        batch: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            if redis_url is None:
                client = aiomqtt.Client("127.0.0.1", port, max_queued_outgoing_messages=0)
                client.pending_calls_threshold = 1_000_000
                await stack.enter_async_context(client)
            else:
                manager = socketio.AsyncRedisManager(redis_url, write_only=True)

                async def feed_every(seconds: float) -> None:
                    while True:
                        await asyncio.sleep(seconds)
                        if batch:
                            data = "[" + ",".join(batch) + "]"
                            batch.clear()
                            await manager.emit(contract.LIVE_STATES_EVENT, data,
                                               room=contract.LIVE_STATE_FEED)

                feeding = asyncio.create_task(feed_every(0.02))
                stack.callback(feeding.cancel)
            ready.put(os.getpid())
            await asyncio.to_thread(go.wait)
            start = go.at.value
            ticks = round(duration * rate)
            step = 1 / (rate * len(ids))
            for tick in range(ticks):
                for n, aid in enumerate(ids):
                    due = start + tick / rate + n * step
                    delay = due - time.time()
                    if delay > 0.002:
                        await asyncio.sleep(delay)
                    ts = max(int(time.time() * 1000), last.get(aid, 0) + 1)
                    last[aid] = ts
                    published += 1
                    if redis_url is not None:
                        batch.append(json.dumps(_state(aid, ts, tick), separators=(",", ":")))
                        continue
                    body = {"lat": 13.75, "lon": round(100.5 + tick * 1e-4, 6), "speed": 40,
                            "heading": 90, "ts": ts, "seq": tick}
                    task = asyncio.create_task(
                        client.publish(contract.topic(aid, Kind.TRACKING), json.dumps(body), qos=1)
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            await asyncio.sleep(0.05)  # the last feed
        return {"published": published, "last": last, "behind_s": time.time() - start - duration}

    out.put(asyncio.run(main()))


def _state(aid: str, ts: int, tick: int) -> dict[str, Any]:
    """A public state as the bridge publishes it (``aoc/<id>/state``) for a point at ``ts``."""
    seen = datetime.fromtimestamp(ts / 1000, UTC)
    return {
        "ambulance_id": aid, "location": {"lat": 13.75, "lon": round(100.5 + tick * 1e-4, 6)},
        "speed": 40.0, "heading": 90, "state": "GREEN",
        "last_seen": seen.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts % 1000:03d}Z",
        "online": True, "covered_distance": round(tick * 11.1, 1), "avg_speed": 40.0,
        "estimated_time": None,
    }


# --- clients -------------------------------------------------------------------------------


class _Tally:
    """What one client saw: the newest ``last_seen`` per ambulance, and how many points."""

    __slots__ = ("events", "latest", "points", "repeats")

    def __init__(self) -> None:
        self.latest: dict[str, str] = {}  # ISO times of one format order as strings
        self.points = 0  # states newer than the ambulance's previous one: points seen
        self.repeats = 0  # states not newer (must stay 0 at 1 Hz)
        self.events = 0


def _clients(*, url: str, count: int, prefix: str, selection: list[str] | None, ready: Any,
             go: _Go, stop: Any, out: Any) -> None:
    """One process holding ``count`` clients of the live stream until ``stop`` is set."""

    device = _new_hist()
    server = _new_hist()
    measure_from = [float("inf")]  # wall ms from which staleness counts (after the warm-up)

    def handler(tally: _Tally, sampled: bool) -> Any:
        # Python clients are the costly part of this benchmark: the per-state
        # work is kept small, and one client in SAMPLE_EVERY times its states.
        async def on_states(data: dict[str, Any]) -> None:
            now = time.time() * 1000
            tally.events += 1
            timed = sampled and now >= measure_from[0]
            if timed:
                _record(server, now - _epoch_ms(data["at"]))
            latest = tally.latest
            for state in data["states"]:
                aid = state["ambulance_id"]
                if not aid.startswith(prefix):
                    continue
                seen = state["last_seen"]
                if seen > latest.get(aid, ""):
                    latest[aid] = seen
                    tally.points += 1
                    if timed:
                        _record(device, now - _epoch_ms(seen))
                else:
                    tally.repeats += 1

        return on_states

    async def main() -> dict[str, Any]:
        tallies = [_Tally() for _ in range(count)]
        clients = []
        wanted = {"ambulances": "*" if selection is None else selection}
        for n, tally in enumerate(tallies):
            client = socketio.AsyncClient(reconnection=False)
            client.on(contract.LIVE_STATES_EVENT, handler=handler(tally, n % SAMPLE_EVERY == 0))
            await client.connect(url, transports=["websocket"], wait_timeout=30)
            answer = await client.call(contract.LIVE_SUBSCRIBE_EVENT, wanted, timeout=30)
            if "error" in answer:
                raise RuntimeError(f"live_subscribe refused: {answer}")
            clients.append(client)
        ready.put(os.getpid())
        await asyncio.to_thread(go.wait)
        measure_from[0] = go.at.value * 1000
        await asyncio.to_thread(stop.wait)
        for client in clients:
            await client.disconnect()
        return {
            "latest": [{aid: _epoch_ms(seen) for aid, seen in t.latest.items()} for t in tallies],
            "points": [t.points for t in tallies],
            "repeats": sum(t.repeats for t in tallies),
            "events": [t.events for t in tallies],
            "device": device.tobytes(),
            "server": server.tobytes(),
        }

    out.put(asyncio.run(main()))


def _node_clients(*, url: str, count: int, prefix: str, selection: list[str] | None,
                  ready: Any, go: _Go, stop: Any, out: Any) -> None:
    """As ``_clients``, with the stock socket.io-client in Node (``tests/js/live_bench.mjs``).

    Node parses and dispatches the stream at a fraction of python-socketio's
    cost, so the clients' own CPU weighs less on the server's figures.
    """
    js = Path(__file__).resolve().parent.parent / "tests" / "js"
    args = ["node", "live_bench.mjs", "--url", url, "--clients", str(count), "--prefix", prefix,
            "--sample-every", str(SAMPLE_EVERY)]
    if selection is not None:
        args.append("--select")
    with subprocess.Popen(args, cwd=js, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as node:
        assert node.stdin is not None and node.stdout is not None
        if selection is not None:
            node.stdin.write(json.dumps(selection) + "\n")
            node.stdin.flush()
        line = json.loads(node.stdout.readline() or '{"event": "exit"}')
        if line.get("event") != "ready":
            raise RuntimeError(f"live_bench.mjs: {line}")
        ready.put(node.pid)
        go.wait()
        node.stdin.write(json.dumps({"cmd": "go", "from": go.at.value * 1000}) + "\n")
        node.stdin.flush()
        stop.wait()
        node.stdin.write('{"cmd": "stop"}\n')
        node.stdin.flush()
        summary = json.loads(node.stdout.readline())
    hists = {}
    for name in ("device", "server"):
        hist = _new_hist()
        for ms, n in summary[name]:
            hist[min(ms, BUCKETS - 1)] += n
        hists[name] = hist.tobytes()
    out.put({**{k: summary[k] for k in ("latest", "points", "repeats", "events")}, **hists})


class _Go:
    """A start signal carrying a number: the wall time from which staleness counts, or
    (``legacy_emit``) how many events to emit."""

    def __init__(self, ctx: SpawnContext) -> None:
        self._event = ctx.Event()
        self.at = ctx.Value("d", 0.0)

    def set(self, at: float) -> None:
        self.at.value = at
        self._event.set()

    def wait(self) -> None:
        self._event.wait()


# --- the run -------------------------------------------------------------------------------


def _split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


@contextlib.contextmanager
def _topology(
    process: str, interval_ms: int, keep: Path | None
) -> Iterator[tuple[stack_mod.Stack | None, str, dict[str, int], str]]:
    """The running stack, the Socket.IO URL its dashboards use, its processes' pids, Redis.

    ``feed``: Redis and ``aoc realtime`` only (no stack): the publishers feed
    the live stream through Redis as ``aoc bridge`` does.
    """
    env = {"AOC_LIVE_INTERVAL_MS": str(interval_ms)}
    if process == "feed":
        with contextlib.ExitStack() as exits:
            workdir = keep or Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="aoc-")))
            redis = exits.enter_context(services.redis(workdir / "redis"))
            realtime = services.aoc(
                "realtime", workdir / "aoc-realtime", mqtt_port=services.free_port(),
                redis_port=redis.port, env={**env, "AOC_LOG_LEVEL": "WARNING"},
            )
            exits.enter_context(realtime)
            assert redis.proc is not None and realtime.proc is not None
            pids = {"redis": redis.proc.pid, "aoc-realtime": realtime.proc.pid}
            url = f"http://127.0.0.1:{realtime.env['AOC_SOCKETIO_PORT']}"
            yield None, url, pids, f"redis://127.0.0.1:{redis.port}/0"
        return
    command = "serve" if process == "serve" else "bridge"
    with stack_mod.running(command=command, env=env, keep=keep) as running:
        if process == "serve":
            yield running, running.socketio_url, running.pids(), ""
            return
        workdir = running.workdir / "aoc-realtime"
        realtime = services.aoc(
            "realtime",
            workdir,
            mqtt_port=running.mqtt_port,
            redis_port=running.redis.port,
            env={**env, "AOC_LOG_LEVEL": "WARNING",
                 "AOC_DATA_DIR": running.app.env["AOC_DATA_DIR"]},
        )
        with realtime:
            assert realtime.proc is not None
            pids = {**running.pids(), "aoc-realtime": realtime.proc.pid}
            yield running, f"http://127.0.0.1:{realtime.env['AOC_SOCKETIO_PORT']}", pids, ""


def run(
    *,
    ambulances: int = 1000,
    rate: float = 1.0,
    clients: int = 200,
    client_processes: int = 4,
    publishers: int = 2,
    duration: float = 30.0,
    warmup: float = 5.0,
    interval_ms: int = 100,
    process: str = "serve",
    selection: bool = False,
    node: bool = False,
    keep: Path | None = None,
    progress: Any = print,
) -> dict[str, Any]:
    """One measured run of the live stream; the figures as a JSON-able dict."""
    prefix = f"CO-{uuid.uuid4().hex[:6]}-"
    ids = [f"{prefix}{n:05d}" for n in range(ambulances)]
    progress(f"coalesce: starting the stack ({process}) ...")
    with _topology(process, interval_ms, keep) as (running, url, stack_pids, redis):
        if running is not None:
            asyncio.run(running.probe())
        redis_url = redis or None
        ready, results = _SPAWN.Queue(), _SPAWN.Queue()
        go, stop = _Go(_SPAWN), _SPAWN.Event()
        per = [len(part) for part in _split(["x"] * clients, client_processes)]
        chosen = ids if selection else None
        holders: list[SpawnProcess] = [
            _SPAWN.Process(target=_node_clients if node else _clients, name=f"clients-{i}",
                           kwargs={
                "url": url, "count": n, "prefix": prefix, "selection": chosen, "ready": ready,
                "go": go, "stop": stop, "out": results,
            })
            for i, n in enumerate(per)
        ]
        for proc in holders:
            proc.start()
        progress(f"coalesce: connecting {clients} clients from {len(holders)} processes ...")
        client_pids = {f"clients-{i}": ready.get(timeout=300) for i in range(len(holders))}
        published, go_publish = _SPAWN.Queue(), _Go(_SPAWN)
        senders = [
            _SPAWN.Process(target=_publisher, name=f"publisher-{i}", kwargs={
                "port": 0 if running is None else running.mqtt_port, "redis_url": redis_url,
                "ids": part, "rate": rate, "duration": duration,
                "ready": ready, "go": go_publish, "out": published,
            })
            for i, part in enumerate(_split(ids, publishers))
        ]
        for proc in senders:
            proc.start()
        for _ in senders:
            ready.get(timeout=120)
        start = time.time() + 0.5
        go_publish.set(start)
        measured_from = start + warmup
        go.set(measured_from)
        progress(f"coalesce: {ambulances} ambulances at {rate:g} Hz from {len(senders)}"
                 f" processes for {duration:g}s (first {warmup:g}s warm-up) ...")
        pids = {**stack_pids, **client_pids}
        pids.update({p.name: p.pid for p in senders if p.pid is not None})
        time.sleep(max(0.0, measured_from - time.time()))
        cpu_start = {name: stack_mod.cpu_seconds(pid) for name, pid in pids.items()}
        window_start = time.time()
        time.sleep(max(0.0, start + duration - time.time()))
        cpu_end = {name: stack_mod.cpu_seconds(pid) for name, pid in pids.items()}
        window = time.time() - window_start
        sent = [published.get(timeout=120) for _ in senders]
        time.sleep(3.0)  # the last intervals reach the clients
        stop.set()
        seen = [results.get(timeout=120) for _ in holders]
        for proc in (*senders, *holders):
            proc.join(30)
    return _figures(
        ids=ids, sent=sent, seen=seen, cpu_start=cpu_start, cpu_end=cpu_end, window=window,
        params={"ambulances": ambulances, "rate": rate, "clients": clients,
                "client_processes": len(holders), "publishers": len(senders),
                "duration": duration, "warmup": warmup, "interval_ms": interval_ms,
                "process": process, "selection": selection,
                "clients_impl": "node" if node else "python"},
    )


def _figures(*, ids: list[str], sent: list[dict[str, Any]], seen: list[dict[str, Any]],
             cpu_start: dict[str, float | None], cpu_end: dict[str, float | None],
             window: float, params: dict[str, Any]) -> dict[str, Any]:
    published = sum(s["published"] for s in sent)
    last = {aid: ts for s in sent for aid, ts in s["last"].items()}
    device, server = _new_hist(), _new_hist()
    points: list[int] = []
    events: list[int] = []
    final_wrong = 0
    for part in seen:
        _merge(device, array("q", part["device"]))
        _merge(server, array("q", part["server"]))
        points.extend(part["points"])
        events.extend(part["events"])
        for latest in part["latest"]:
            final_wrong += sum(1 for aid in ids if latest.get(aid) != last.get(aid))
    clients = len(points)
    missing = [published - n for n in points]
    cpu = {
        name: round((cpu_end[name] - start) / window * 100, 1)  # type: ignore[operator]
        for name, start in cpu_start.items()
        if start is not None and cpu_end.get(name) is not None
    }
    return {
        "params": params,
        "published": published,
        "publishers_behind_s": max(s["behind_s"] for s in sent),
        "clients": clients,
        "complete_clients": sum(1 for m in missing if m == 0),
        "missing_points": sum(missing),
        "final_state_wrong": final_wrong,
        "repeated_states": sum(part["repeats"] for part in seen),
        "events_per_client_per_s": round(median(events) / params["duration"], 2),
        "staleness_device_ms": hist_percentiles(device),
        "staleness_server_ms": hist_percentiles(server),
        "cpu_percent": cpu,
        "window_s": round(window, 2),
    }


def report(figures: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    p = figures["params"]
    rows = []
    for label, key in (("device ts -> receipt", "staleness_device_ms"),
                       ("server at -> receipt", "staleness_server_ms")):
        h = figures[key]
        rows.append([label, str(h["n"]), *(str(h[k]) for k in ("p50", "p95", "p99", "max"))])
    lines = [
        f"live stream: {p['ambulances']} ambulances at {p['rate']:g} Hz, {figures['clients']}"
        f" {p['clients_impl']} clients ({'selection' if p['selection'] else 'fleet'}),"
        f" interval {p['interval_ms']} ms,"
        f" aoc {p['process']}, {p['duration']:g}s",
        f"  published {figures['published']} points; clients complete"
        f" {figures['complete_clients']}/{figures['clients']}; points missing (all clients)"
        f" {figures['missing_points']}; final states wrong {figures['final_state_wrong']}",
        f"  events per client per second (median) {figures['events_per_client_per_s']};"
        f" publishers ended {figures['publishers_behind_s']:.2f}s behind schedule",
        table(["staleness (ms)", "n", "p50", "p95", "p99", "max"], rows),
        "  CPU % of a core: " + "  ".join(f"{k} {v}" for k, v in figures["cpu_percent"].items()),
    ]
    return "\n".join(lines)


# --- the legacy rooms: our emit path against stock python-socketio ---------------------------


def _legacy_server(*, variant: str, port: int, ready: Any, go: _Go, out: Any) -> None:
    """One process serving Socket.IO: ours (``create_sio``) or stock; emits on ``go``."""

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with SQLiteDocumentStore(Path(tmp) / "s.sqlite3") as store:
                if variant == "aoc":
                    settings = Settings(_env_file=None, legacy_mode=True)  # type: ignore[call-arg]
                    sio = create_sio(SocketGate(settings, store))
                else:
                    sio = socketio.AsyncServer(async_mode="asgi")

                    async def join(sid: str, room: object) -> None:
                        await sio.enter_room(sid, str(room))
                        await sio.emit(contract.EVENT, f"room joined: {room}", to=sid)

                    sio.on(contract.JOIN_EVENT, handler=join)
                app = socketio.ASGIApp(sio)
                embedded = server(app, host="127.0.0.1", port=port)
                bound = asyncio.Event()
                embedded.on_bound = bound.set
                task = asyncio.create_task(embedded.serve())
                await bound.wait()
                ready.put(port)
                await asyncio.to_thread(go.wait)
                count = go.at.value
                started = time.perf_counter()
                for n in range(int(count)):
                    body = {"ambulance_id": f"L{n % 100}", "tracking_latitude": 13.7563,
                            "tracking_longitude": 100.5018, "tracking_speed": 45.5,
                            "tracking_heading": 180, "ts": 1764390814123 + n, "seq": n}
                    await sio.emit(contract.EVENT, json.dumps(body, separators=(",", ":")),
                                   room=contract.TRACKING_ROOM)
                out.put({"emit_s": time.perf_counter() - started})
                await asyncio.sleep(30)  # until killed: clients drain meanwhile
                embedded.stop()
                await task

    asyncio.run(main())


def _legacy_clients(*, url: str, count: int, events: int, ready: Any, out: Any) -> None:
    """One process holding ``count`` clients in room ``tracking``, each counting its events."""

    async def main() -> dict[str, Any]:
        done = asyncio.Event()
        got = [0] * count
        finished: list[float] = []
        clients = []
        for i in range(count):
            client = socketio.AsyncClient(reconnection=False)

            async def on_data(data: str, i: int = i) -> None:
                if data.startswith("room joined"):
                    return
                got[i] += 1
                if got[i] == events:
                    finished.append(time.time())
                    if len(finished) == count:
                        done.set()

            client.on(contract.EVENT, handler=on_data)
            await client.connect(url, transports=["websocket"], wait_timeout=30)
            await client.emit(contract.JOIN_EVENT, contract.TRACKING_ROOM)
            clients.append(client)
        await asyncio.sleep(1.0)  # the joins are in
        ready.put(os.getpid())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(120):
                await done.wait()
        for client in clients:
            await client.disconnect()
        return {"received": sum(got), "last_at": max(finished) if finished else None}

    out.put(asyncio.run(main()))


def legacy_emit(*, clients: int = 200, client_processes: int = 4, events: int = 1000,
                runs: int = 3, progress: Any = print) -> dict[str, Any]:
    """Deliveries per second to room ``tracking``: our server against stock, alternating.

    Each run: one server process emits ``events`` tracking bodies to room
    ``tracking``, awaiting each emit as the bridge does, to ``clients``
    clients held by ``client_processes`` processes; a run's rate is the
    deliveries over the time from the first emit to the last receipt.
    """
    rates: dict[str, list[float]] = {"aoc": [], "stock": []}
    lost: dict[str, int] = {"aoc": 0, "stock": 0}
    for n in range(runs):
        for variant in ("aoc", "stock") if n % 2 == 0 else ("stock", "aoc"):
            port = services.free_port()
            ready, out, go = _SPAWN.Queue(), _SPAWN.Queue(), _Go(_SPAWN)
            srv = _SPAWN.Process(target=_legacy_server, kwargs={
                "variant": variant, "port": port, "ready": ready, "go": go, "out": out,
            })
            srv.start()
            ready.get(timeout=60)
            per = [len(p) for p in _split(["x"] * clients, client_processes)]
            holders = [
                _SPAWN.Process(target=_legacy_clients, kwargs={
                    "url": f"http://127.0.0.1:{port}", "count": k, "events": events,
                    "ready": ready, "out": out,
                })
                for k in per
            ]
            for proc in holders:
                proc.start()
            for _ in holders:
                ready.get(timeout=300)
            started = time.time()
            go.set(events)
            answers = [out.get(timeout=300) for _ in range(len(holders) + 1)]
            srv.kill()
            for proc in (srv, *holders):
                proc.join(30)
            done = [a for a in answers if "received" in a]
            received = sum(a["received"] for a in done)
            last = max((a["last_at"] or time.time()) for a in done)
            rate = received / (last - started)
            rates[variant].append(rate)
            lost[variant] += clients * events - received
            progress(f"legacy tracking room, run {n + 1}, {variant}: {rate:,.0f} deliveries/s"
                     f" ({received}/{clients * events})")
    return {
        "clients": clients, "events": events, "runs": runs,
        "deliveries_per_s": {k: round(median(v)) for k, v in rates.items()},
        "ratio_aoc_to_stock": round(median(rates["aoc"]) / median(rates["stock"]), 2),
        "lost": lost,
        "runs_per_s": {k: [round(r) for r in v] for k, v in rates.items()},
    }
