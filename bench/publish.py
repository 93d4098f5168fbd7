"""A publisher process of ``aoc bench``: several paho-mqtt clients sending tracking points.

``python -m bench.publish '<json>'`` (see ``bench.children`` for the protocol).
Config: ``port``, ``clients``, ``id_prefix`` and ``ambulances`` (this
process's ambulance ids are ``<id_prefix><n:05d>``, dealt to its clients in
turn), ``mode`` and:

- ``flood``: ``count`` points in all, as fast as the broker acknowledges, each
  client keeping ``window`` QoS 1 publishes in flight. Device times are in
  the past, one millisecond apart per client, and every point has a ``seq``:
  ids are unique (nothing is taken for a redelivery). Latency means nothing here.
- ``paced``: every ambulance sends ``rate`` points a second for ``duration``
  seconds, the ambulances' phases spread evenly over the period (``phase``
  shifts this process's share), with ``ts`` the wall-clock millisecond of the
  publish: a receiver's latency is its clock minus ``ts`` (same machine, same
  clock; ``ts`` is rounded down, so a latency reads up to 1 ms high).

Each client's network runs on paho's own thread (``loop_start``); the main
thread generates and publishes. The result: published, acked (PUBACKs
received), the wall-clock times of the first publish and last PUBACK, and
for ``paced`` how far behind its schedule the process fell (if it did, the
publisher, not the system under test, limited the rate).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.children import emit_result, serve_protocol, stop_requested
from bridge import contract
from bridge.contract import Kind

_PAYLOAD = '{"lat":%.6f,"lon":100.5,"speed":45.5,"heading":90,"ts":%d,"seq":%d,"accuracy":5}'


class _Client:
    """One paho client, its window of unacknowledged publishes, its PUBACK count."""

    def __init__(self, port: int, client_id: str, window: int) -> None:
        self.acked = 0
        self.last_ack = 0.0
        self.window = threading.BoundedSemaphore(window) if window else None
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        # 0: no paho window. Ours (the semaphore) bounds a flood; a paced run has none. With
        # a paho window, every PUBACK scans all the messages in flight (paho 2.2's
        # _update_inflight): quadratic, and the publisher became the ceiling.
        self.paho.max_inflight_messages_set(0)
        self.paho.max_queued_messages_set(0)
        self.paho.on_publish = self._on_publish
        connected = threading.Event()
        self.paho.on_connect = lambda *_args: connected.set()
        self.paho.connect("127.0.0.1", port, keepalive=60)
        self.paho.loop_start()
        if not connected.wait(20):
            raise RuntimeError(f"{client_id}: no CONNACK within 20s")

    def _on_publish(self, _client: object, _userdata: object, _mid: int, *_rest: object) -> None:
        self.acked += 1  # only paho's network thread writes it
        self.last_ack = time.time()
        if self.window is not None:
            self.window.release()

    def publish(self, topic: str, payload: bytes) -> None:
        if self.window is not None:
            self.window.acquire()
        self.paho.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def _flood(clients: list[_Client], ids: list[str], config: dict[str, Any]) -> dict[str, Any]:
    count = int(config["count"])
    topics = [contract.topic(aid, Kind.TRACKING) for aid in ids]
    k = len(clients)
    shares = [count // k + (1 if i < count % k else 0) for i in range(k)]
    # Client c sends ids c, c+K, c+2K, ...: no two clients share an ambulance.
    own = [list(range(c, len(ids), len(clients))) or [c % len(ids)] for c in range(len(clients))]
    base = int(time.time() * 1000) - count - 10_000
    started = time.time()

    def run(c: int) -> None:
        client, mine = clients[c], own[c]
        for seq in range(shares[c]):
            n = mine[seq % len(mine)]
            payload = (_PAYLOAD % (13.7 + seq * 1e-6, base + seq, seq)).encode()
            client.publish(topics[n], payload)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"published": count, "first": started, "offered_rate": None, "behind_max_s": 0.0}


def _paced(clients: list[_Client], ids: list[str], config: dict[str, Any]) -> dict[str, Any]:
    rate, duration = float(config["rate"]), float(config["duration"])
    period = 1.0 / rate
    n = len(ids)
    topics = [contract.topic(aid, Kind.TRACKING) for aid in ids]
    # Ambulance i sends at start + k*period + offset[i]: evenly spread over the period.
    offsets = [(i / n + float(config.get("phase", 0.0)) / n) * period for i in range(n)]
    ticks = max(1, round(duration * rate))
    stop = stop_requested()
    start = time.time() + 0.05
    published = 0
    behind_max = 0.0
    late = 0  # publishes more than 10 ms behind schedule
    last_ts = [0] * n
    for k in range(ticks):
        if stop.is_set():
            break
        for i in range(n):
            due = start + k * period + offsets[i]
            now = time.time()
            if due > now:
                time.sleep(due - now)
                now = time.time()
            elif now - due > 0.01:
                late += 1
                behind_max = max(behind_max, now - due)
            ts = max(int(now * 1000), last_ts[i] + 1)  # unique per ambulance
            last_ts[i] = ts
            payload = (_PAYLOAD % (13.7 + k * 1e-5, ts, k)).encode()
            clients[i % len(clients)].publish(topics[i], payload)
            published += 1
    return {
        "published": published,
        "first": start,
        "offered_rate": n * rate,
        "behind_max_s": behind_max,
        "late": late,
    }


def main(config: dict[str, Any]) -> None:
    port = int(config["port"])
    ids = [f"{config['id_prefix']}{n:05d}" for n in range(int(config["ambulances"]))]
    window = int(config.get("window", 0)) if config["mode"] == "flood" else 0
    name = str(config.get("name", "pub"))
    clients = [
        _Client(port, f"{name}-{c}-{time.monotonic_ns()}", window)
        for c in range(int(config["clients"]))
    ]
    serve_protocol()
    result = (_flood if config["mode"] == "flood" else _paced)(clients, ids, config)
    published = int(result["published"])
    deadline = time.monotonic() + float(config.get("ack_timeout", 120.0))
    while sum(c.acked for c in clients) < published and time.monotonic() < deadline:
        time.sleep(0.01)
    result["acked"] = sum(c.acked for c in clients)
    result["last_ack"] = max(c.last_ack for c in clients)
    for client in clients:
        client.close()
    emit_result(result)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
