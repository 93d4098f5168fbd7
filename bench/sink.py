"""The bare subscriber of the raw ceiling: counts tracking messages, does nothing else.

``python -m bench.sink '<json>'``: config ``port``, ``client_id``, ``expect``
(it finishes once that many arrived, or on ``stop``). QoS 1 on a persistent
session (``clean_session=False``), as the bridge subscribes; paho sends each
PUBACK on receipt. The result: received, and the wall-clock times of the
first and last message.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.children import emit_result, stop_requested
from bridge import contract
from bridge.contract import Kind


def main(config: dict[str, Any]) -> None:
    expect = int(config["expect"])
    state = {"received": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_client: object, _userdata: object, _message: object) -> None:
        now = time.time()
        if not state["received"]:
            state["first"] = now
        state["received"] += 1
        state["last"] = now
        if state["received"] >= expect:
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=str(config["client_id"]), clean_session=False
    )
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(contract.subscription(Kind.TRACKING), qos=1)
    client.connect("127.0.0.1", int(config["port"]), keepalive=60)
    client.loop_start()
    if not subscribed.wait(20):
        raise RuntimeError("no SUBACK within 20s")
    print("ready", flush=True)
    stop = stop_requested()
    while not done.is_set() and not stop.is_set():
        done.wait(0.05)
    client.disconnect()
    client.loop_stop()
    emit_result(state)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
