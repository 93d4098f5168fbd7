"""The MQTT adapter against a real Mosquitto running the project's mosquitto.conf."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import Message, MqttClient, MqttError
from broker.client import _Paho
from tests import services

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefix() -> str:
    """A topic prefix, and client id stem, that no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


def client(
    broker: services.Service, client_id: str, *subscriptions: str, **options: Any
) -> MqttClient:
    """A fast-reconnecting client for ``broker``; ``subscriptions`` at QoS 1."""
    options.setdefault("reconnect_min", 0.05)
    options.setdefault("reconnect_max", 0.5)
    options.setdefault("connect_timeout", 5.0)
    return MqttClient(
        host="127.0.0.1",
        port=broker.port,
        client_id=client_id,
        subscriptions=[(topic, 1) for topic in subscriptions],
        **options,
    )


async def take(mqtt: MqttClient, count: int, seconds: float = 10.0) -> list[Message]:
    """The next ``count`` messages, without acknowledging them."""
    received: list[Message] = []
    async with asyncio.timeout(seconds):
        async for message in mqtt.messages():
            received.append(message)
            if len(received) == count:
                break
    return received


async def until(mqtt: MqttClient, marker: bytes, seconds: float = 10.0) -> list[Message]:
    """Every message before the one whose payload is ``marker``, acknowledging all."""
    received: list[Message] = []
    async with asyncio.timeout(seconds):
        async for message in mqtt.messages():
            mqtt.ack(message)
            if message.payload == marker:
                return received
            received.append(message)
    raise AssertionError("the message iterator ended early")


async def publish_all(broker: services.Service, topic: str, payloads: Sequence[bytes]) -> None:
    async with client(broker, f"pub-{uuid.uuid4().hex[:8]}", clean_session=True) as pub:
        for payload in payloads:
            await pub.publish(topic, payload, qos=1)


@contextlib.asynccontextmanager
async def crash_client(options: dict[str, Any]) -> AsyncIterator[asyncio.subprocess.Process]:
    """``tests.broker.crash_client`` as a child process, SIGKILLed on the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.broker.crash_client", json.dumps(options),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def step(proc: asyncio.subprocess.Process, name: str) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        line = await proc.stdout.readline()
    assert line, f"crash client exited with {await proc.wait()} before {name!r}"
    report: dict[str, Any] = json.loads(line)
    assert report["step"] == name
    return report


async def test_publish_qos1_returns_after_puback_and_subscriber_receives_bytes_intact(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that a QoS 1 publish is at the broker when it returns, and arrives unchanged."""
    payload = bytes(range(256)) * 4 + b"\x00\xff"
    topic = f"{prefix}/data"
    async with client(mosquitto, f"{prefix}-sub", topic) as sub, client(
        mosquitto, f"{prefix}-pub", clean_session=True
    ) as pub:
        assert sub.connected and pub.connected
        await pub.publish(topic, payload, qos=1, retain=True)
        # Returned only after PUBACK: a client that connects now finds it retained.
        async with client(mosquitto, f"{prefix}-late", topic, clean_session=True) as late:
            [retained] = await take(late, 1)
        [message] = await take(sub, 1)
        await pub.publish(topic, b"", qos=1, retain=True)  # clear the retained message

    assert retained.payload == payload and retained.retain
    assert message == Message(topic=topic, payload=payload, qos=1, retain=False,
                              mid=message.mid, dup=False)


async def test_publish_started_sends_at_once_and_each_future_ends_with_its_puback(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that publish_started sends many messages without waiting, and each future settles."""
    topics = [f"{prefix}/state/{n}" for n in range(50)]
    async with client(mosquitto, f"{prefix}-sub", f"{prefix}/state/+") as sub, client(
        mosquitto, f"{prefix}-pub", clean_session=True
    ) as pub:
        futures = [pub.publish_started(t, t.encode(), qos=1, retain=True) for t in topics]
        async with asyncio.timeout(10):
            await asyncio.gather(*futures)
        received = await take(sub, len(topics))
        pub.forget(futures)  # all done: nothing left to forget, and no error
        for topic in topics:
            await pub.publish(topic, b"", qos=1, retain=True)  # clear the retained messages
    assert sorted(m.payload.decode() for m in received) == sorted(topics)
    assert all(f.done() and f.exception() is None for f in futures)


async def test_publish_started_refuses_while_disconnected(
    tmp_path: Path, prefix: str
) -> None:
    """Test that publish_started raises MqttError at once, sending nothing, when not connected."""
    with services.mosquitto(tmp_path) as broker:
        async with client(broker, f"{prefix}-pub", clean_session=True) as pub:
            broker.stop()
            async with asyncio.timeout(5):
                while pub.connected:  # noqa: ASYNC110 (the API has no wait-for-disconnect)
                    await asyncio.sleep(0.01)
            with pytest.raises(MqttError, match="not connected"):
                pub.publish_started(f"{prefix}/x", b"lost")


async def test_str_payload_and_qos0_publish(mosquitto: services.Service, prefix: str) -> None:
    """Test that a str payload is sent as UTF-8 and a QoS 0 publish returns once written."""
    topic = f"{prefix}/text"
    async with client(mosquitto, f"{prefix}-sub", topic) as sub, client(
        mosquitto, f"{prefix}-pub", clean_session=True
    ) as pub:
        await pub.publish(topic, "ambulance ✚ 332", qos=0)
        [message] = await take(sub, 1)
        sub.ack(message)  # a no-op for QoS 0, and must not fail
    assert message.payload == "ambulance ✚ 332".encode()
    assert message.qos == 0


async def test_manual_ack_after_crash_redelivers_exactly_the_unacked(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that after a SIGKILL only the unacknowledged messages come back, as duplicates."""
    topic, client_id = f"{prefix}/tracking", f"{prefix}-bridge"
    options = {"port": mosquitto.port, "client_id": client_id, "subscribe": topic, "expect": 10}
    async with crash_client(options) as proc:
        await step(proc, "subscribed")
        await publish_all(mosquitto, topic, [str(n).encode() for n in range(10)])
        report = await step(proc, "ready")
        assert report["received"] == list(range(10))
        assert report["acked"] == [0, 2, 4, 6, 8]
        proc.kill()  # a crash: no DISCONNECT, the session keeps the unacked ones
        await proc.wait()

    async with client(mosquitto, client_id, topic) as bridge:
        await publish_all(mosquitto, topic, [b"marker"])
        redelivered = await until(bridge, b"marker")

    assert [int(m.payload) for m in redelivered] == [1, 3, 5, 7, 9]
    assert all(m.dup and m.qos == 1 for m in redelivered)


async def test_ack_of_a_message_from_before_a_reconnect_is_ignored(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that acking a stale message after a reconnect neither fails nor acks its copy."""
    topic = f"{prefix}/snap"
    async with client(mosquitto, f"{prefix}-bridge", topic) as bridge:
        await publish_all(mosquitto, topic, [b"one"])
        [stale] = await take(bridge, 1)
        sock = bridge._paho.socket()  # the network fails under the client
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        [copy] = await take(bridge, 1)  # the broker redelivers after the reconnect
        await bridge.wait_connected(5)
        bridge.ack(stale)  # same mid, older connection: ignored
        bridge.ack(stale)
        assert copy.payload == b"one" and copy.dup and copy.mid == stale.mid
        assert copy is not stale
        sock = bridge._paho.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the copy is still unacked: it comes back again
        [again] = await take(bridge, 1)
        bridge.ack(again)
        await publish_all(mosquitto, topic, [b"marker"])
        assert await until(bridge, b"marker") == []


async def test_messages_published_while_offline_arrive_on_return(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that a persistent session receives what was published while it was away."""
    topic, client_id = f"{prefix}/crash", f"{prefix}-bridge"
    async with client(mosquitto, client_id, topic):
        pass  # a clean disconnect: the session and its subscription stay
    await publish_all(mosquitto, topic, [b"a", b"b", b"c"])
    async with client(mosquitto, client_id, topic) as bridge:
        await publish_all(mosquitto, topic, [b"marker"])
        missed = await until(bridge, b"marker")
    assert [m.payload for m in missed] == [b"a", b"b", b"c"]


async def test_burst_of_20000_arrives_complete_and_in_order(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that 20,000 QoS 1 messages reach one subscriber, all and in order."""
    count, topic = 20_000, f"{prefix}/burst"
    async with client(mosquitto, f"{prefix}-sub", topic) as sub, client(
        mosquitto, f"{prefix}-pub", clean_session=True
    ) as pub:
        started = time.monotonic()
        consumer = asyncio.create_task(take_and_ack(sub, count))
        await asyncio.gather(*(pub.publish(topic, b"%d" % n) for n in range(count)))
        received = await consumer
        elapsed = time.monotonic() - started
    assert [int(m.payload) for m in received] == list(range(count))
    assert elapsed < 20, f"burst took {elapsed:.1f}s"


async def take_and_ack(mqtt: MqttClient, count: int) -> list[Message]:
    received = []
    async with asyncio.timeout(60):
        async for message in mqtt.messages():
            mqtt.ack(message)
            received.append(message)
            if len(received) == count:
                break
    return received


async def test_slow_consumer_applies_backpressure_and_loses_nothing(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that a full queue pauses reading instead of dropping, and resumes."""
    count, topic = 300, f"{prefix}/slow"
    async with client(mosquitto, f"{prefix}-sub", topic, queue_size=10) as sub:
        await publish_all(mosquitto, topic, [b"%d" % n for n in range(count)])
        received: list[int] = []
        longest = 0
        async with asyncio.timeout(20):
            async for message in sub.messages():
                longest = max(longest, len(sub._queue))
                received.append(int(message.payload))
                sub.ack(message)
                if len(received) % 50 == 0:
                    await asyncio.sleep(0.05)  # a slow store
                if len(received) == count:
                    break
    assert received == list(range(count))
    # Bounded: at most the queue size plus what one socket read brought in.
    assert longest < 10 + 100


async def test_broker_restart_reconnects_by_itself(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Test that after a broker restart the client reconnects, resubscribes and publishes."""
    topic = f"{prefix}/status"
    with services.mosquitto(tmp_path) as broker:
        async with client(broker, f"{prefix}-a", topic) as sub, client(
            broker, f"{prefix}-b", clean_session=True
        ) as pub:
            with caplog.at_level(logging.WARNING, logger="broker.client"):
                # SIGTERM, then the same ports again; in a thread, so the
                # clients see the connection drop while it happens.
                await asyncio.to_thread(broker.restart)
                await sub.wait_connected(10)
                await pub.wait_connected(10)
                await pub.publish(topic, b"after restart", timeout=10)
                [message] = await take(sub, 1)
    assert message.payload == b"after restart"
    lost = [r for r in caplog.records if r.name == "broker.client" and "lost" in r.message]
    assert len(lost) == 2, [r.message for r in lost]  # once per client, not once per retry
    assert all(r.levelno == logging.WARNING for r in lost)


async def test_kill9_of_the_broker_keeps_persisted_queued_messages(
    tmp_path: Path, prefix: str
) -> None:
    """Test that messages queued for an offline session survive a broker SIGKILL."""
    topic, client_id = f"{prefix}/tracking", f"{prefix}-bridge"
    with services.mosquitto(tmp_path) as broker:
        async with client(broker, client_id, topic):
            pass
        published = time.time()
        await publish_all(broker, topic, [b"1", b"2", b"3"])
        await saved_after(broker, published)
        broker.kill()
        broker.start()
        async with client(broker, client_id, topic) as bridge:
            await publish_all(broker, topic, [b"marker"])
            survived = await until(bridge, b"marker")
    assert [m.payload for m in survived] == [b"1", b"2", b"3"]


async def saved_after(broker: services.Service, moment: float) -> None:
    """Wait for Mosquitto's next autosave after ``moment``.

    ``autosave_interval 1`` saves about every 2 s, not 1 s: Mosquitto 2.0 saves
    once more than ``interval`` whole seconds have passed. The file is written
    aside and renamed, so a newer mtime means a complete save.
    """
    database = broker.workdir / "data" / "mosquitto.db"
    async with asyncio.timeout(10):
        # A file has no event to wait on.
        while not (database.exists() and database.stat().st_mtime > moment + 0.01):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_last_will_is_published_when_the_client_dies(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that a SIGKILLed client's Will reaches a subscriber, retained."""
    topic = f"aoc/{prefix}/status"
    options = {"port": mosquitto.port, "client_id": f"{prefix}-device",
               "will": [topic, "offline", 1, True]}
    async with client(mosquitto, f"{prefix}-watch", topic, clean_session=True) as watcher:
        async with crash_client(options) as proc:
            await step(proc, "subscribed")
            proc.kill()
            await proc.wait()
        [will] = await take(watcher, 1)
    async with client(mosquitto, f"{prefix}-late", topic, clean_session=True) as late:
        [retained] = await take(late, 1)
        await late.publish(topic, b"", retain=True)  # clear it
    assert will.payload == b"offline" and will.topic == topic
    assert retained.payload == b"offline" and retained.retain


async def test_clean_exit_does_not_publish_the_will(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that leaving the context sends DISCONNECT, so the Will is not published."""
    topic = f"aoc/{prefix}/status"
    async with client(mosquitto, f"{prefix}-watch", topic, clean_session=True) as watcher:
        async with client(mosquitto, f"{prefix}-device", will=(topic, b"offline", 1, False)):
            pass
        await publish_all(mosquitto, topic, [b"marker"])
        assert await until(watcher, b"marker") == []


async def test_publish_to_a_down_broker_raises_within_its_timeout(
    tmp_path: Path, prefix: str
) -> None:
    """Test that publish() raises MqttError after its timeout while the broker is down."""
    with services.mosquitto(tmp_path) as broker:
        async with client(broker, f"{prefix}-pub", clean_session=True) as pub:
            broker.stop()
            async with asyncio.timeout(5):
                while pub.connected:  # noqa: ASYNC110 (the API has no wait-for-disconnect)
                    await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(MqttError, match=r"within 1\.0s"):
                await pub.publish(f"{prefix}/x", b"lost", timeout=1.0)
            assert 0.9 <= time.monotonic() - started < 2.0
            with pytest.raises(MqttError):
                await pub.wait_connected(0.2)


async def test_connecting_to_nothing_raises_mqtt_error(prefix: str) -> None:
    """Test that entering the client fails with MqttError when no broker listens."""
    nobody = MqttClient(host="127.0.0.1", port=services.free_port(), client_id=f"{prefix}-x",
                        reconnect_min=0.05, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(MqttError, match="could not connect"):
        async with nobody:
            pass
    assert time.monotonic() - started < 3.0
    assert not nobody.connected


async def test_publish_with_an_invalid_topic_is_a_clear_error(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that a wildcard topic is refused with ValueError and the client keeps working."""
    topic = f"{prefix}/ok"
    async with client(mosquitto, f"{prefix}-pub", topic, clean_session=True) as pub:
        with pytest.raises(ValueError, match="topic"):
            await pub.publish(f"{prefix}/+/bad", b"x")
        await pub.publish(topic, b"still fine")
        [message] = await take(pub, 1)
    assert message.payload == b"still fine"


async def test_websocket_transport(mosquitto: services.Service, prefix: str) -> None:
    """Test connect, publish and receive over the WebSocket listener, as dashboards do."""
    topic = f"aoc/{prefix}/state"
    ws_port = mosquitto.extra_ports[0]
    options: dict[str, Any] = {"transport": "websockets", "clean_session": True}
    async with MqttClient(host="127.0.0.1", port=ws_port, client_id=f"{prefix}-dash",
                          subscriptions=[(topic, 1)], **options) as dash, \
            MqttClient(host="127.0.0.1", port=ws_port, client_id=f"{prefix}-pub",
                       **options) as pub:
        payload = json.dumps({"ambulance_id": prefix, "speed": 45.5}).encode()
        await pub.publish(topic, payload)
        [message] = await take(dash, 1)
    assert message.payload == payload and message.topic == topic


async def test_messages_iterator_ends_when_the_client_closes(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that a consumer's ``async for`` finishes once the client is closed."""
    mqtt = client(mosquitto, f"{prefix}-sub", f"{prefix}/x", clean_session=True)
    async with mqtt:
        consumer = asyncio.create_task(take(mqtt, 1))
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(consumer, 2) == []
    with pytest.raises(MqttError):
        await mqtt.publish(f"{prefix}/x", b"closed")


async def test_queue_is_bounded_by_bytes_too(mosquitto: services.Service, prefix: str) -> None:
    """Test that payload bytes waiting pause reading like a count does, and nothing is lost."""
    count, topic, size = 60, f"{prefix}/bytes", 10_000
    payloads = [b"%04d" % n + bytes(size - 4) for n in range(count)]
    async with client(mosquitto, f"{prefix}-sub", topic, queue_bytes=3 * size) as sub:
        await publish_all(mosquitto, topic, payloads)
        received: list[int] = []
        most = 0
        async with asyncio.timeout(20):
            async for message in sub.messages():
                most = max(most, sum(len(m.payload) for m in sub._queue) + size)
                received.append(int(message.payload[:4]))
                sub.ack(message)
                if len(received) % 10 == 0:
                    await asyncio.sleep(0.05)  # a slow store
                if len(received) == count:
                    break
    assert received == list(range(count))
    # The bound, plus the one packet that may arrive past it.
    assert most <= 4 * size


async def test_a_paused_consumer_keeps_its_connection(
    mosquitto: services.Service, prefix: str
) -> None:
    """Test that a consumer whose reading is paused longer than its keepalive stays connected.

    While paused (a full queue: the store down, the snapshot lane full) it sent
    nothing, so the broker dropped it after 1.5 keepalives, and everything in
    flight came again, duplicated, on the next connection.
    """
    topic = f"{prefix}/paused"
    payloads = [b"%d" % n for n in range(5)]
    async with client(mosquitto, f"{prefix}-slow", topic, keepalive=2, queue_size=1) as sub:
        await publish_all(mosquitto, topic, payloads)
        await asyncio.sleep(7)  # paused: over three keepalives without reading
        received = await take(sub, len(payloads))
        for message in received:
            sub.ack(message)
        with pytest.raises(TimeoutError):
            await take(sub, 1, seconds=1.5)  # nothing comes again
    assert [m.payload for m in received] == payloads
    assert not any(m.dup for m in received)


def test_paho_reads_many_packets_from_one_recv() -> None:
    """Test that paho's small reads are served from one recv() of what the socket holds."""
    class Counting:
        """A socket end that counts its recv() calls."""

        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.calls = sock, 0

        def recv(self, size: int) -> bytes:
            self.calls += 1
            return self.sock.recv(size)

        def close(self) -> None:
            """paho closes its socket when collected: the ``with`` below closes this one."""

    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        paho_client = _Paho(CallbackAPIVersion.VERSION2, client_id="dummy-reader")
        counting = Counting(ours)
        paho_client._sock = counting  # type: ignore[assignment]
        sent = bytes(range(200)) * 3
        theirs.sendall(sent)
        time.sleep(0.05)  # let the bytes cross the socket pair (not a timed assertion)
        got = b""
        while paho_client.buffered() or not got:
            got += paho_client._sock_recv(1 if len(got) % 3 else 7)
        assert got == sent
        assert counting.calls == 1
        with pytest.raises(BlockingIOError):
            paho_client._sock_recv(1)  # all read: the socket is asked again, and has nothing
