"""A client process for the crash tests: the test SIGKILLs it, so no DISCONNECT is sent.

Run as ``python -m tests.broker.crash_client '<json options>'``. It prints one
JSON line per step on stdout (``{"step": "subscribed"}``, ``{"step": "ready", ...}``)
and then idles until killed.

Options: ``port``, ``client_id``; ``subscribe`` (a topic filter) with ``expect``
(how many messages to read, acknowledging those whose payload is an even
number, then syncing so the acks have reached the broker); ``will`` (topic,
payload, qos, retain) for a client that only waits to die; ``username`` and
``password`` for a broker with accounts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from broker import MqttClient


def say(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


async def main(options: dict[str, Any]) -> None:
    topic_filter = options.get("subscribe")
    will = options.get("will")
    client = MqttClient(
        host="127.0.0.1",
        port=options["port"],
        client_id=options["client_id"],
        clean_session=False,
        subscriptions=[(topic_filter, 1)] if topic_filter else (),
        will=(will[0], will[1].encode(), will[2], will[3]) if will else None,
        username=options.get("username"),
        password=options.get("password"),
    )
    async with client:
        say("subscribed")
        received: list[int] = []
        acked: list[int] = []
        if options.get("expect"):
            async for message in client.messages():
                number = int(message.payload)
                received.append(number)
                if number % 2 == 0:
                    client.ack(message)
                    acked.append(number)
                if len(received) == options["expect"]:
                    break
            # The broker handles a connection's packets in order: once this
            # PUBACK is back, every ack sent before it has been processed.
            await client.publish(f"{options['client_id']}/sync", b"", qos=1)
        say("ready", received=received, acked=acked)
        await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
