"""TLS: `aoc tls init`, the broker's TLS listeners, every MQTT client over TLS (real Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from aoc import supervise, tls
from aoc.config import Settings
from broker import MqttClient, MqttError
from broker import conf as broker_conf
from sim.fleet import simulate
from tests import services
from tests.broker.test_conf import other_local_addresses

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "tests" / "js"
WAIT = 15.0


@dataclass
class TlsBroker:
    """A Mosquitto with plain and TLS listeners, and the settings its clients use."""

    service: services.Service
    settings: Settings  # clients: mqtt_tls on, mqtt_port = the TLS port, the CA trusted
    issued: tls.Issued

    @property
    def tls_port(self) -> int:
        return self.settings.mqtt_tls_port

    @property
    def wss_port(self) -> int:
        return self.settings.mqtt_wss_port


def settings_for(issued: tls.Issued, **overrides: Any) -> Settings:
    """Client and broker settings for the certificate ``issued`` on fresh ports."""
    tls_port, wss_port = services.free_port(), services.free_port()
    values: dict[str, Any] = {
        "mqtt_tls": True,
        "mqtt_ca_file": issued.ca_cert,
        "tls_cert_file": issued.cert,
        "tls_key_file": issued.key,
        "mqtt_tls_port": tls_port,
        "mqtt_wss_port": wss_port,
        "mqtt_port": tls_port,  # clients over TLS connect to the TLS port (documented)
        "mqtt_ws_port": services.free_port(),
        **overrides,
    }
    return Settings(_env_file=None, **values)


def start_broker(
    workdir: Path, settings: Settings, max_connections: int | None = None
) -> services.Service:
    """Mosquitto with the project's file: its plain listeners and ``tls.broker_listeners``.

    Rendered as `aoc up` renders it (the plain ports here are the tests' own).
    """
    plain, ws = services.free_port(), services.free_port()
    limit = settings.mqtt_max_connections if max_connections is None else max_connections
    broker_settings = settings.model_copy(
        update={"mqtt_port": plain, "mqtt_ws_port": ws, "mqtt_max_connections": limit}
    )
    conf = broker_conf.write(
        workdir / "mosquitto.conf",
        mqtt_port=plain,
        ws_port=ws,
        bind_host="127.0.0.1",
        data_dir=workdir / "data",
        extra=tls.broker_listeners(broker_settings),
        max_connections=limit,
        auth=False,  # anonymous: these tests are about the transport
    )
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    assert mosquitto, "mosquitto is not installed: run `make setup`"
    # Started once the last listener (wss) accepts: Mosquitto binds them all
    # before it serves any. Only that one is probed: Mosquitto 2.0.11 uncounts a
    # connection closed before CONNECT twice, which would lift max_connections.
    service = services.Service(
        "mosquitto", [mosquitto, "-c", str(conf)], settings.mqtt_wss_port, workdir
    )
    service.start()
    service.port = plain
    return service


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> tls.Issued:
    """A development CA and server certificate for the local names."""
    directory = tmp_path_factory.mktemp("tls")
    return tls.init(directory, tls.server_names(Settings(_env_file=None)))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> tls.Issued:
    """Another development CA: what a client must not trust the broker with."""
    return tls.init(tmp_path_factory.mktemp("other"), ["localhost"])


@pytest.fixture(scope="module")
def broker(
    issued: tls.Issued, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsBroker]:
    settings = settings_for(issued)
    service = start_broker(tmp_path_factory.mktemp("tls-broker"), settings)
    try:
        yield TlsBroker(service, settings, issued)
    finally:
        service.stop()


def strict_context(settings: Settings) -> ssl.SSLContext:
    """The system's client context, with Python 3.13's stricter X.509 checks on as well."""
    context = tls.client_context(settings)
    assert context is not None
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def paho_round_trip(host: str, port: int, context: ssl.SSLContext) -> bytes:
    """Connect the stock paho client over TLS to ``host`` (its server name), publish, receive."""
    topic = f"t{uuid.uuid4().hex[:10]}/tls"
    got: list[bytes] = []
    arrived, subscribed = threading.Event(), threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"paho-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.tls_set_context(context)
    client.on_message = lambda c, u, msg: (got.append(bytes(msg.payload)), arrived.set())
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(host, port, keepalive=10)  # raises on a certificate that fails verification
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        assert subscribed.wait(WAIT)
        client.publish(topic, b"over tls", qos=1)
        assert arrived.wait(WAIT)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


# --- `aoc tls init` ---------------------------------------------------------------


def aoc_tls_init(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aoc.cli", "tls", "init", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AOC_DATA_DIR": str(directory.parent), **env},
        cwd=directory.parent,
        check=False,
    )


def alt_names(path: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


def test_tls_init_twice_keeps_the_ca_and_names_every_host(tmp_path: Path) -> None:
    """Test `aoc tls init`: names, 0600 keys, env lines; run again it keeps the CA, --force not."""
    directory = tmp_path / "tls"
    first = aoc_tls_init(directory, "--json", "--hostname", "tracker.example", "10.0.0.5",
                         AOC_TLS_HOSTNAMES="broker.example, 192.0.2.10")
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert made["new_ca"] is True
    assert alt_names(made["cert"]) == [
        "localhost", "127.0.0.1", "::1", "broker.example", "192.0.2.10", "tracker.example",
        "10.0.0.5",
    ]
    for key in (made["ca_key"], made["key"]):
        assert stat.S_IMODE(Path(key).stat().st_mode) == 0o600
    assert made["env"] == {
        "AOC_TLS_CERT_FILE": str(directory.resolve() / "server.crt"),
        "AOC_TLS_KEY_FILE": str(directory.resolve() / "server.key"),
        "AOC_MQTT_CA_FILE": str(directory.resolve() / "ca.crt"),
    }
    ca_before = Path(made["ca_cert"]).read_bytes()
    cert_before = Path(made["cert"]).read_bytes()

    again = aoc_tls_init(directory)  # the text output
    assert again.returncode == 0, again.stderr
    assert "CA kept" in again.stdout
    for line in made["env"].items():
        assert "=".join(line) in again.stdout.splitlines()
    assert Path(made["ca_cert"]).read_bytes() == ca_before
    assert Path(made["cert"]).read_bytes() != cert_before
    # The new server certificate is signed by the kept CA.
    context = ssl.create_default_context(cafile=made["ca_cert"])
    assert context.get_ca_certs()[0]["subject"] == x509_subject(made["ca_cert"])
    assert issuer_of(made["cert"]) == x509.load_pem_x509_certificate(ca_before).subject

    forced = aoc_tls_init(directory, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["new_ca"] is True
    assert Path(made["ca_cert"]).read_bytes() != ca_before


def test_tls_init_refuses_half_a_ca(tmp_path: Path) -> None:
    """Test that a CA certificate without its key is not silently replaced (exit 2)."""
    directory = tmp_path / "tls"
    assert aoc_tls_init(directory).returncode == 0
    (directory / tls.CA_KEY).unlink()
    ca_before = (directory / tls.CA_CERT).read_bytes()
    refused = aoc_tls_init(directory)
    assert refused.returncode == 2
    assert "--force" in refused.stderr
    assert (directory / tls.CA_CERT).read_bytes() == ca_before


def test_tls_init_runs_in_production_without_secrets(tmp_path: Path) -> None:
    """Test that `aoc tls init` is not refused by production mode: it makes what safety needs."""
    done = aoc_tls_init(tmp_path / "tls", AOC_ENV="production")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tls" / tls.SERVER_CERT).exists()


def x509_subject(path: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The subject of the certificate at ``path`` as ``ssl`` reports it."""
    context = ssl.create_default_context(cafile=path)
    subject: tuple[tuple[tuple[str, str], ...], ...] = context.get_ca_certs()[0]["subject"]
    return subject


def issuer_of(path: str) -> x509.Name:
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).issuer


# --- clients over TLS ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_paho_verifies_the_generated_certificate(broker: TlsBroker, host: str) -> None:
    """Test stock paho trusting the generated CA: verified for ``host``, then a round trip."""
    assert paho_round_trip(host, broker.tls_port, strict_context(broker.settings)) == b"over tls"


def test_a_client_trusting_another_ca_is_refused(broker: TlsBroker, other_ca: tls.Issued) -> None:
    """Test that paho trusting another CA gets a verification failure, not a connection."""
    context = strict_context(settings_for(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        paho_round_trip("localhost", broker.tls_port, context)


def test_the_system_context_checks_the_host_name(tmp_path: Path) -> None:
    """Test hostname verification: a certificate of the trusted CA for another name is refused."""
    elsewhere = tls.init(tmp_path / "tls", ["broker.example"])
    settings = settings_for(elsewhere)
    service = start_broker(tmp_path / "broker", settings)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|IP address"):
            paho_round_trip("127.0.0.1", settings.mqtt_tls_port, strict_context(settings))
    finally:
        service.stop()


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
async def test_the_mqtt_adapter_connects_over_tls(broker: TlsBroker, transport: str) -> None:
    """Test MqttClient (bridge, shim) with the system's context over MQTT and WebSocket TLS.

    Many messages flow while its queue holds one: reading pauses and resumes
    with TLS records still buffered, and none may be lost or stuck.
    """
    port = broker.tls_port if transport == "tcp" else broker.wss_port
    topic = f"t{uuid.uuid4().hex[:10]}/burst"
    consumer = MqttClient(
        host="localhost", port=port, client_id=f"c-{uuid.uuid4().hex[:8]}",
        subscriptions=[(topic, 1)], transport=transport,  # type: ignore[arg-type]
        tls=tls.client_context(broker.settings), queue_size=1, connect_timeout=5,
    )
    publisher = MqttClient(
        host="127.0.0.1", port=broker.tls_port, client_id=f"p-{uuid.uuid4().hex[:8]}",
        clean_session=True, manual_ack=False, tls=tls.client_context(broker.settings),
        connect_timeout=5,
    )
    async with consumer, publisher:
        await asyncio.gather(*(publisher.publish(topic, str(i).encode()) for i in range(300)))
        received: list[bytes] = []
        async with asyncio.timeout(WAIT):
            async for message in consumer.messages():
                received.append(message.payload)
                consumer.ack(message)
                await asyncio.sleep(0)  # a slow consumer: the queue stays full
                if len(received) == 300:
                    break
    assert sorted(received, key=int) == [str(i).encode() for i in range(300)]


async def test_the_mqtt_adapter_refuses_an_untrusted_broker(
    broker: TlsBroker, other_ca: tls.Issued
) -> None:
    """Test MqttClient trusting another CA: no connection, and the error says why."""
    client = MqttClient(
        host="localhost", port=broker.tls_port, client_id=f"u-{uuid.uuid4().hex[:8]}",
        tls=tls.client_context(settings_for(other_ca)), connect_timeout=2,
    )
    with pytest.raises(MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with client:
            pass


async def test_the_simulator_publishes_over_tls(broker: TlsBroker, other_ca: tls.Issued) -> None:
    """Test `aoc simulate`'s fleet with the system's context; with another CA it sends nothing."""
    stats = await simulate(
        host="localhost", port=broker.tls_port, ambulances=2, rate=10.0, duration=1.0,
        snap_every=0, progress=False, tls=tls.client_context(broker.settings),
    )
    assert stats.tracking > 0
    assert stats.errors == 0
    refused = await simulate(
        host="localhost", port=broker.tls_port, ambulances=1, rate=10.0, duration=1.0,
        snap_every=0, progress=False, tls=tls.client_context(settings_for(other_ca)),
    )
    assert refused.sent == 0
    assert refused.errors > 0


def test_the_bridge_connects_over_tls(broker: TlsBroker, tmp_path: Path) -> None:
    """Test a real `aoc bridge` with AOC_MQTT_TLS: ready once its TLS connection is up."""
    env = {
        "AOC_MQTT_TLS": "true",
        "AOC_MQTT_CA_FILE": broker.issued.ca_cert,
        "AOC_MQTT_HOST": "localhost",
    }
    bridge = services.aoc(
        "bridge", tmp_path, mqtt_port=broker.tls_port, redis_port=services.free_port(), env=env
    )
    with bridge:  # start() waits for /readyz to report the broker ok
        assert bridge.proc is not None and bridge.proc.poll() is None


# --- the npm `mqtt` client over wss ----------------------------------------------------


async def node_mqtt(url: str, *args: str) -> asyncio.subprocess.Process:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "mqtt").is_dir():
        pytest.fail("node or tests/js/node_modules is missing: run `make setup`")
    proc = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / "mqtt_client.mjs"), "--url", url, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=JS_DIR,
    )
    return proc


async def next_event(proc: asyncio.subprocess.Process, *kinds: str) -> dict[str, Any]:
    """The next printed event whose kind is one of ``kinds``."""
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError("the node client exited")
            event: dict[str, Any] = json.loads(line)
            if event["event"] in kinds:
                return event


async def send(proc: asyncio.subprocess.Process, **command: Any) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(command).encode() + b"\n")
    await proc.stdin.drain()


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def test_the_npm_mqtt_client_connects_over_wss(broker: TlsBroker) -> None:
    """Test the stock npm `mqtt` client on wss://localhost with the CA: subscribe, publish, get."""
    proc = await node_mqtt(f"wss://localhost:{broker.wss_port}", "--ca", broker.issued.ca_cert)
    try:
        assert (await next_event(proc, "connect", "error"))["event"] == "connect"
        topic = f"t{uuid.uuid4().hex[:10]}/wss"
        await send(proc, cmd="subscribe", topics=[topic])
        await next_event(proc, "subscribed")
        await send(proc, cmd="publish", topic=topic, payload="hello", id=1)
        message = await next_event(proc, "message")
        assert (message["topic"], message["payload"]) == (topic, "hello")
    finally:
        await stop(proc)


async def test_the_npm_mqtt_client_refuses_wss_without_the_ca(broker: TlsBroker) -> None:
    """Test that without the CA the npm client does not connect: the certificate is not trusted."""
    proc = await node_mqtt(f"wss://localhost:{broker.wss_port}")
    try:
        event = await next_event(proc, "connect", "error")
        assert event["event"] == "error"
        assert "certificate" in event["message"]
    finally:
        await stop(proc)


# --- the broker's TLS listeners ---------------------------------------------------------


def test_tls_listeners_bind_the_configured_address(issued: tls.Issued, tmp_path: Path) -> None:
    """Test the rendered TLS listeners: bind address (with the WebSocket IPv4 quirk), cert, key."""
    settings = settings_for(
        issued, bind_host="127.0.0.1", mqtt_port=services.free_port(), mqtt_max_connections=50
    )
    lines = tls.broker_listeners(settings).splitlines()
    tls_port, wss_port = settings.mqtt_tls_port, settings.mqtt_wss_port
    cert, key = Path(issued.cert).resolve(), Path(issued.key).resolve()
    for port, protocol in ((tls_port, "mqtt"), (wss_port, "websockets")):
        start = lines.index(f"listener {port} 127.0.0.1")
        assert lines[start + 1 : start + 6] == [
            "socket_domain ipv4",
            f"protocol {protocol}",
            f"certfile {cert}",
            f"keyfile {key}",
            "max_connections 50",
        ]
    ipv6 = settings.model_copy(update={"mqtt_bind_host": "::1"})
    assert f"listener {tls_port} ::1" in tls.broker_listeners(ipv6).splitlines()
    no_cert = settings.model_copy(update={"tls_cert_file": None, "tls_key_file": None})
    assert tls.broker_listeners(no_cert) == ""
    same_port = settings.model_copy(update={"mqtt_port": tls_port})
    with pytest.raises(ValueError, match="AOC_MQTT_TLS_PORT"):
        tls.broker_listeners(same_port)
    missing = settings.model_copy(update={"tls_key_file": tmp_path / "nope.key"})
    with pytest.raises(ValueError, match="AOC_TLS_KEY_FILE"):
        tls.broker_listeners(missing)


def test_the_tls_listeners_accept_only_on_the_bind_address(broker: TlsBroker) -> None:
    """Test the running broker: TLS and wss accept on 127.0.0.1, refuse on other local addresses."""
    others = other_local_addresses()
    assert others, "no local IPv4 address besides 127.0.0.1 (Linux always has 127.0.0.2)"
    for port in (broker.tls_port, broker.wss_port):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        for address in others:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, port), timeout=5).close()


async def test_aoc_up_plans_tls_listeners_with_a_certificate(
    issued: tls.Issued, tmp_path: Path
) -> None:
    """Test `aoc up`'s broker configuration: TLS listeners with a certificate, none without."""
    settings = settings_for(
        issued, mqtt_port=services.free_port(), data_dir=tmp_path / "data", mqtt_max_connections=7
    )
    await supervise.plan(settings)
    text = (tmp_path / "data" / "mosquitto" / "mosquitto.conf").read_text()
    assert f"listener {settings.mqtt_tls_port} 127.0.0.1" in text
    assert f"listener {settings.mqtt_wss_port} 127.0.0.1" in text
    # Every listener, plain and TLS, carries the configured bound.
    listeners = [line for line in text.splitlines() if line.startswith("listener ")]
    limits = [line for line in text.splitlines() if line.startswith("max_connections ")]
    assert limits == ["max_connections 7"] * len(listeners) == ["max_connections 7"] * 4
    plain = settings.model_copy(update={"tls_cert_file": None, "tls_key_file": None})
    await supervise.plan(plain)
    text = (tmp_path / "data" / "mosquitto" / "mosquitto.conf").read_text()
    assert "certfile" not in text


# --- connection limits ------------------------------------------------------------------


async def test_the_broker_refuses_connections_past_its_limit(
    issued: tls.Issued, tmp_path: Path
) -> None:
    """Test max_connections on a real broker: a third client is refused, plain and over TLS."""
    settings = settings_for(issued)
    service = start_broker(tmp_path / "broker", settings, max_connections=2)
    try:
        tls_context = strict_context(settings)
        for port, context in ((service.port, None), (settings.mqtt_tls_port, tls_context)):
            clients = [
                MqttClient(
                    host="localhost", port=port, client_id=f"l{n}-{uuid.uuid4().hex[:6]}",
                    clean_session=True, manual_ack=False, tls=context, connect_timeout=3,
                )
                for n in range(3)
            ]
            async with clients[0], clients[1]:
                with pytest.raises(MqttError):
                    async with clients[2]:
                        pass
    finally:
        service.stop()


# --- several packets in one TLS record (a fake broker) ------------------------------------


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT packet: its type nibble and its body."""
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header >> 4, await reader.readexactly(length)


def publish_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH (remaining length under 128)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    return bytes([0x30, len(body)]) + body


async def test_the_mqtt_adapter_reads_packets_buffered_in_one_tls_record_fake_broker(
    issued: tls.Issued,
) -> None:
    """Test reading resumed with packets already decrypted and no bytes left in the socket.

    Mosquitto writes one TLS record per packet; another broker may send many in
    one. This fake broker does: 50 PUBLISH packets in a single write, one record.
    With a queue of one message, reading pauses after the first; the other 49
    wait inside TLS, where the socket's readiness never reports them.
    """
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(issued.cert, issued.key)
    topic = "fake/record"
    burst = b"".join(publish_packet(topic, str(i).encode()) for i in range(50))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        _, subscribe = await read_packet(reader)
        writer.write(b"\x90\x03" + subscribe[:2] + b"\x00")  # SUBACK, QoS 0 granted
        await writer.drain()
        writer.write(burst)
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, _ = await read_packet(reader)
                if kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    settings = settings_for(issued)
    consumer = MqttClient(
        host="localhost", port=port, client_id="record", clean_session=True,
        subscriptions=[(topic, 0)], tls=tls.client_context(settings), queue_size=1,
        connect_timeout=5,
    )
    received: list[bytes] = []
    try:
        async with consumer, asyncio.timeout(WAIT):
            async for message in consumer.messages():
                received.append(message.payload)
                if len(received) == 50:
                    break
    finally:
        server.close()
    assert received == [str(i).encode() for i in range(50)]
