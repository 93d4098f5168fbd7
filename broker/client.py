"""An asyncio MQTT 3.1.1 client that acknowledges QoS 1 messages only when told to.

Why this exists: the bridge must send PUBACK for a message only after it is
durably stored, so that a bridge crash before storage makes the broker redeliver
it from the persistent session. aiomqtt 2.x acknowledges on receipt, before user
code runs, so this adapter sits on paho-mqtt 2.x with ``manual_ack=True``.

Why no thread: paho's own ``loop_start()`` runs the network on a thread, and
MQTT on threads next to an asyncio server means callbacks racing the event loop
and locks held across it. Here the event loop drives paho's socket, as
in paho's ``examples/loop_asyncio.py``: ``on_socket_open``/``on_socket_close``
register it with ``add_reader``, ``on_socket_(un)register_write`` with
``add_writer``, and a task calls ``loop_misc()`` every second for keepalive.
Every paho callback therefore runs on the event loop thread. paho's connect
would block the loop (``socket.create_connection``), so asyncio opens the TCP
connection under ``asyncio.timeout`` and hands it to paho. Over WebSocket, paho
still does the short HTTP upgrade synchronously (bounded by ``connect_timeout``).
With ``tls`` (an ``ssl.SSLContext``, ``aoc.tls.client_context``) the TLS
handshake runs on the event loop too, before paho gets the socket; the context
decides verification (the system's one verifies the certificate and the host name).

Semantics the callers rely on:

- ``messages()`` yields in broker order. The queue stops *reading the socket*
  when ``queue_size`` messages, or ``queue_bytes`` of payload, wait (TCP
  backpressure up to the broker, whose in-flight window then also fills)
  instead of dropping: a slow consumer never loses a message. The bounds are
  soft: one packet may go past them (so a payload larger than ``queue_bytes``
  still gets through, alone), and until
  a (re)connection's SUBACK has arrived reading never pauses, so the broker's
  in-flight window (``max_inflight_messages``) may come on top once.
- ``ack(message)`` acknowledges only a message received on the *current*
  connection (checked by identity, not just by packet id, because the broker
  reuses ids). After a reconnect an older message's ack is ignored (logged at
  DEBUG): the broker redelivers every unacknowledged QoS 1 message of a
  persistent session with ``dup=True``, and that copy is the one to ack, so
  consumers must store idempotently. Acks may go out of receipt order; Mosquitto
  accepts that.
- ``publish()`` returns once the broker acknowledged (PUBACK, or the bytes were
  written for QoS 0) and raises ``MqttError`` on timeout or when the connection
  drops first; unacknowledged publishes are then dropped, never silently resent,
  so the caller alone decides whether to retry.
- Connections are re-established forever with jittered, capped exponential
  backoff; subscriptions are renewed on each connection (and ``unsubscriptions``
  dropped from the session, for filters an older version subscribed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, LogLevel, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Message", "MqttClient", "MqttError"]

_TICK = 1.0  # how often loop_misc() runs: paho's own loops tick once a second
_CLOSE_TIMEOUT = 2.0  # how long a clean DISCONNECT may take before the socket is just closed
_READ_BATCH = 100  # packets read per readiness event before yielding to other tasks
_RECV_CHUNK = 256 * 1024  # bytes asked of one recv(): a socket rarely holds more
# No cap on in-flight publishes (paho's default is 20): every publish() caller is
# already waiting for its PUBACK, and paho rescans its whole queue on each PUBACK
# when a cap is set, which made a 20,000-message burst 3x slower.
_MAX_INFLIGHT = 0


class MqttError(Exception):
    """Connecting or publishing failed, or the connection dropped; the text says why."""


@dataclass(frozen=True, slots=True)
class Message:
    """One PUBLISH received from the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    dup: bool


class _Paho(paho.Client):
    """paho's client, using a socket that asyncio already connected."""

    ready_socket: socket.socket | None = None
    # Bytes received but not yet read by paho, from ``_read_at`` on (one connection's).
    _read: bytes = b""
    _read_at: int = 0

    def _create_socket_connection(self) -> socket.socket:
        sock, self.ready_socket = self.ready_socket, None
        if sock is None:  # paho would connect with a blocking call on the event loop
            raise ConnectionError("no connected socket was handed to paho")
        self._read, self._read_at = b"", 0  # never an old connection's bytes
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho reads a packet in several recv() calls (its first byte, each byte
        # of its length, the rest): at a thousand small packets a second each
        # way, those system calls were a tenth of the event loop (issue 11).
        # So one recv() takes what the socket holds and paho reads from that.
        # A recv() asks for at most _RECV_CHUNK: paho asks for the whole rest
        # of a packet at once, and a 70 MB snapshot allocated 70 MB each time.
        if self._read_at >= len(self._read):
            data = super()._sock_recv(_RECV_CHUNK)  # BlockingIOError: nothing yet
            if len(data) <= bufsize:
                return data  # b"": the connection is closed
            self._read, self._read_at = data, 0
        start = self._read_at
        self._read_at = start + bufsize
        return self._read[start : self._read_at]

    def buffered(self) -> bool:
        """Whether bytes already received wait to be read (the socket's readiness says nothing)."""
        return self._read_at < len(self._read)

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        # The socket handed over is TLS already, its handshake done without blocking.
        if not isinstance(tcp_sock, ssl.SSLSocket):
            raise ConnectionError("TLS is on but the socket handed to paho is not a TLS socket")
        return tcp_sock


async def _ready(
    watch: Callable[..., object], unwatch: Callable[[ssl.SSLSocket], object], sock: ssl.SSLSocket
) -> None:
    """Wait until ``sock`` is readable (``loop.add_reader``) or writable (``add_writer``)."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    watch(sock, wake)
    try:
        await ready
    finally:
        unwatch(sock)


def _backoff(attempt: int, low: float, high: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): capped, equal jitter."""
    ceiling = min(high, low * 2 ** min(attempt - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


class MqttClient:
    """An MQTT connection with manual QoS 1 acknowledgement, driven by asyncio."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        clean_session: bool = False,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        manual_ack: bool = True,
        subscriptions: Sequence[tuple[str, int]] = (),
        unsubscriptions: Sequence[str] = (),
        will: tuple[str, bytes, int, bool] | None = None,  # topic, payload, qos, retain
        queue_size: int = 10000,
        queue_bytes: int = 16 * 1024 * 1024,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        transport: Literal["tcp", "websockets"] = "tcp",
        logger: logging.Logger | None = None,
        connect_timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if queue_bytes < 1:
            raise ValueError(f"queue_bytes must be at least 1, not {queue_bytes}")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        self._host = host
        self._port = port
        self._client_id = client_id
        self._keepalive = keepalive
        self._manual_ack = manual_ack
        self._subscriptions = list(subscriptions)
        # Filters a persistent session may still hold from an older version.
        self._unsubscriptions = list(unsubscriptions)
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._log = logger or logging.getLogger(__name__)

        self._paho = self._make_paho(
            clean_session=clean_session, username=username, password=password,
            will=will, transport=transport,
        )

        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sock: paho.SocketLike | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._sock_closed = asyncio.Event()
        self._has_messages = asyncio.Event()
        self._handshake: asyncio.Future[None] | None = None
        self._subscribe_mid: int | None = None
        self._queue: collections.deque[Message] = collections.deque()
        self._queued_bytes = 0  # payload bytes in ``_queue``
        self._unacked: dict[int, Message] = {}  # mid -> message, current connection only
        self._pending: dict[int, asyncio.Future[None]] = {}  # mid -> publish() waiting
        self._paused = False
        self._paused_ping_at = 0.0  # when _ping_while_paused last sent a PINGREQ
        self._closing = False
        self._closed = False
        self._progress = 0  # packets handled, to tell a productive read from an idle one
        self._last_error: str | None = None  # paho's last error text, the disconnect reason
        self._failure: BaseException | None = None  # why the last connect attempt failed
        self._last_activity = 0.0  # monotonic: the last message received, or CONNACK
        self._session_present: bool | None = None  # the last CONNACK's flag

    def _make_paho(
        self,
        *,
        clean_session: bool,
        username: str | None,
        password: str | None,
        will: tuple[str, bytes, int, bool] | None,
        transport: Literal["tcp", "websockets"],
    ) -> _Paho:
        client = _Paho(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            transport=transport,
            manual_ack=self._manual_ack,
        )
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            client.will_set(topic, payload, qos, retain)
        if self._tls is not None:
            # paho then speaks wss:// over WebSocket; the handshake is ours (_start_tls).
            client.tls_set_context(self._tls)
        client.max_inflight_messages_set(_MAX_INFLIGHT)
        client.connect_timeout = self._connect_timeout  # bounds paho's WebSocket upgrade
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_log = self._on_log
        return client

    # --- public API ----------------------------------------------------------

    async def __aenter__(self) -> MqttClient:
        """Connect, subscribe and start the background tasks.

        Raises ``MqttError`` if no connection succeeds within ``connect_timeout``.
        """
        if self._loop is not None:
            raise RuntimeError("an MqttClient can be entered only once")
        self._loop = asyncio.get_running_loop()
        self._paho.connect_async(self._host, self._port, self._keepalive)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        name = f"mqtt[{self._client_id}]"
        self._tasks = [
            self._group.create_task(self._maintain(), name=f"{name}-connection"),
            self._group.create_task(self._tick(), name=f"{name}-keepalive"),
        ]
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._connected.wait()
        except TimeoutError as exc:
            await self._shutdown()
            raise MqttError(
                f"could not connect to MQTT broker {self._host}:{self._port} "
                f"within {self._connect_timeout}s: {self._failure or 'no answer'}"
            ) from exc
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect cleanly (so no Will is published) and stop the background tasks."""
        await self._shutdown()

    @property
    def unacknowledged(self) -> int:
        """QoS 1 messages of the current connection not yet acknowledged (``manual_ack``)."""
        return len(self._unacked)

    @property
    def last_activity(self) -> float:
        """When (``time.monotonic()``) the last message arrived, or else the session came up."""
        return self._last_activity

    @property
    def client_id(self) -> str:
        """The MQTT client id, which names the session."""
        return self._client_id

    @property
    def session_present(self) -> bool | None:
        """Whether the broker had this client id's session at the last CONNACK (None before)."""
        return self._session_present

    @property
    def connected(self) -> bool:
        """Whether the session is up: CONNACK received and subscriptions granted."""
        return self._connected.is_set()

    # The timeout arguments are part of the agreed API: callers pass one per call.
    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; ``MqttError`` if not within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError as exc:
            raise MqttError(
                f"not connected to {self._host}:{self._port} within {timeout}s: "
                f"{self._failure or 'no answer'}"
            ) from exc

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (for QoS 0: until written).

        Waits for a connection first, all within ``timeout``. Raises ``MqttError``
        on timeout or disconnect, ``ValueError`` for an invalid topic or QoS.
        """
        if self._loop is None or self._closing:
            raise MqttError("the MQTT client is not running")
        mid: int | None = None
        future: asyncio.Future[None] | None = None
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
                info = self._paho.publish(topic, payload, qos=qos, retain=retain)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise MqttError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
                mid, future = info.mid, self._loop.create_future()
                self._pending[mid] = future
                await future
        except TimeoutError as exc:
            raise MqttError(f"publish to {topic!r} not acknowledged within {timeout}s") from exc
        finally:
            if mid is not None and self._pending.get(mid) is future:
                del self._pending[mid]

    def publish_started(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Hand a message to the connection now; the future ends with its acknowledgement.

        ``publish`` without its waits, for a caller sending many at once: one
        coroutine, task and timeout per message cost more than sending it.
        Raises ``MqttError`` when not connected (nothing is sent) or when the
        client refuses the message, ``ValueError`` for an invalid topic or QoS.
        The caller bounds the wait, then calls ``forget`` with the futures.
        """
        if self._loop is None or self._closing or not self._connected.is_set():
            raise MqttError("the MQTT client is not connected")
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[info.mid] = future
        return future

    def forget(self, futures: Iterable[asyncio.Future[None]]) -> None:
        """Stop waiting for these ``publish_started`` acknowledgements (timed out or done)."""
        gone = {id(future) for future in futures}
        for mid in [mid for mid, future in self._pending.items() if id(future) in gone]:
            del self._pending[mid]

    async def messages(self) -> AsyncIterator[Message]:
        """Received messages in broker order; ends once the client is closed and drained."""
        while True:
            if self._queue:
                message = self._queue.popleft()
                self._queued_bytes -= len(message.payload)
                self._resume_reading()
                yield message
            elif self._closed:
                return
            else:
                self._has_messages.clear()
                await self._has_messages.wait()

    def ack(self, message: Message) -> None:
        """Acknowledge ``message`` to the broker (PUBACK for QoS 1).

        A no-op for QoS 0, without ``manual_ack``, and for a message from an
        earlier connection: the broker redelivers that one with ``dup=True``.
        """
        if not self._manual_ack or message.qos == 0:
            return
        if self._unacked.get(message.mid) is not message:
            self._log.debug(
                "ack of %s mid %d ignored: not from the current connection"
                " (the broker redelivers it)",
                message.topic, message.mid,
            )
            return
        del self._unacked[message.mid]
        rc = self._paho.ack(message.mid, message.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._log.debug("ack of mid %d not sent: %s", message.mid, paho.error_string(rc))

    # --- lifecycle -----------------------------------------------------------

    async def _maintain(self) -> None:
        """Connect, wait for the connection to drop, back off, and again, forever."""
        failures = 0
        down_since: float | None = None
        loop = self._require_loop()
        while True:
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failed attempt is retried, never fatal
                failures += 1
                self._failure = exc
                self._drop_socket()
                self._log.debug(
                    "MQTT connect attempt %d to %s:%d failed: %s",
                    failures, self._host, self._port, exc,
                )
            else:
                if down_since is not None:
                    self._log.info(
                        "MQTT reconnected to %s:%d after %.1fs (%d failed attempts)",
                        self._host, self._port, loop.time() - down_since, failures,
                    )
                failures = 0
                await self._lost.wait()
                down_since = loop.time()
            await asyncio.sleep(_backoff(failures + 1, self._reconnect_min, self._reconnect_max))

    async def _connect_once(self) -> None:
        loop = self._require_loop()
        self._lost.clear()
        self._handshake = loop.create_future()
        async with asyncio.timeout(self._connect_timeout):
            self._paho.ready_socket = await self._open_socket()
            rc = self._paho.reconnect()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise MqttError(f"sending CONNECT failed: {paho.error_string(rc)}")
            await self._handshake

    async def _open_socket(self) -> socket.socket:
        loop = self._require_loop()
        addresses = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address found for {self._host}")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            # PUBACKs are tiny and latency-bound; Nagle would hold them back.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock if self._tls is None else await self._start_tls(sock, self._tls)
        raise error

    async def _start_tls(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """The TLS handshake on ``sock``, waiting for readiness on the event loop.

        A certificate that fails verification raises ``ssl.SSLCertVerificationError``
        (an ``OSError``): the attempt fails like a refused connection, with the reason.
        """
        loop = self._require_loop()
        tls_sock = context.wrap_socket(
            sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            while True:
                try:
                    tls_sock.do_handshake()
                    return tls_sock
                except ssl.SSLWantReadError:
                    await _ready(loop.add_reader, loop.remove_reader, tls_sock)
                except ssl.SSLWantWriteError:
                    await _ready(loop.add_writer, loop.remove_writer, tls_sock)
        except BaseException:
            tls_sock.close()
            raise

    async def _tick(self) -> None:
        """paho's keepalive bookkeeping (PINGREQ, dead-broker detection)."""
        while True:
            await asyncio.sleep(_TICK)
            if self._sock is None:
                continue
            if self._paused:
                self._ping_while_paused()
                continue
            try:
                self._paho.loop_misc()
            except Exception:
                self._log.exception("MQTT keepalive tick failed")

    def _ping_while_paused(self) -> None:
        """Keep the connection alive while reading is paused.

        The broker drops a client silent for 1.5 keepalives, and while reading
        is paused nothing else may flow (no acks while the store is down, or
        while the snapshot lane is full): the dropped session is then
        redelivered whole. paho's own check would send a PINGREQ but, with the
        PINGRESP unread, declare the broker dead; so the PINGREQ goes out here
        and is forgotten (its PINGRESP is read, harmlessly, once reading resumes).
        """
        now = time.monotonic()
        if now - self._paused_ping_at < self._keepalive / 2:
            return
        self._paused_ping_at = now
        try:
            self._paho._send_pingreq()
        except Exception:
            self._log.exception("MQTT keepalive while paused failed")
        self._paho._ping_t = 0

    async def _shutdown(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._group is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._group.__aexit__(None, None, None)
            self._group = None
        if self._sock is not None and self._connected.is_set():
            self._paho.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._sock_closed.wait()
        self._drop_socket()
        self._connected.clear()
        self._unacked.clear()
        self._fail_pending("the MQTT client was closed")
        self._closed = True
        self._has_messages.set()

    def _drop_socket(self) -> None:
        """Close the connection at once, without DISCONNECT (as a network failure would)."""
        leftover, self._paho.ready_socket = self._paho.ready_socket, None
        if leftover is not None:
            leftover.close()
        if self._paho.socket() is not None:
            # paho has no public way to drop a connection without sending DISCONNECT.
            self._paho._sock_close()
        self._connected.clear()

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the MQTT client is not entered")
        return self._loop

    # --- socket plumbing (paho callbacks, all on the event loop thread) -------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
        self._sock = sock
        self._paused = False
        self._last_error = None
        # Packet ids belong to one connection: an ack of an older one could
        # acknowledge a different message that reuses its id.
        self._unacked.clear()
        self._sock_closed.clear()
        self._require_loop().add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
        loop = self._require_loop()
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
        self._sock_closed.set()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
        self._require_loop().add_writer(sock, self._on_writable)

    def _on_unregister_write(
        self, client: paho.Client, userdata: Any, sock: paho.SocketLike
    ) -> None:
        self._require_loop().remove_writer(sock)

    def _on_readable(self) -> None:
        try:
            for _ in range(_READ_BATCH):
                before = self._progress
                rc = self._paho.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._progress == before:
                    break  # connection gone, or the socket had nothing more
                if self._sock is None or self._queue_full():
                    break
        except Exception:
            self._log.exception("MQTT read failed")
        if self._sock is not None and not self._paused and self._queue_full():
            # Backpressure: leave the bytes in the socket, the broker stops sending.
            self._require_loop().remove_reader(self._sock)
            self._paused = True
        elif self._buffered():
            self._require_loop().call_soon(self._on_readable)

    def _buffered(self) -> bool:
        """Whether TLS holds decrypted bytes that the socket's readiness no longer signals.

        A TLS record can carry several packets; once the kernel's buffer is
        drained, ``add_reader`` stays silent about the rest (paho's own loop
        checks ``pending()`` for the same reason).
        """
        if self._paho.buffered():
            return True  # received already, for the same reason (``_Paho._sock_recv``)
        pending = getattr(self._sock, "pending", None)
        return pending is not None and pending() > 0

    def _on_writable(self) -> None:
        try:
            self._paho.loop_write()
        except Exception:
            self._log.exception("MQTT write failed")

    def _queue_full(self) -> bool:
        # Until the session is up, CONNACK and SUBACK must get through.
        return self._connected.is_set() and (
            len(self._queue) >= self._queue_size or self._queued_bytes >= self._queue_bytes
        )

    def _resume_reading(self) -> None:
        if self._paused and self._sock is not None and not self._queue_full():
            self._paused = False
            self._require_loop().add_reader(self._sock, self._on_readable)
            if self._buffered():
                self._require_loop().call_soon(self._on_readable)

    # --- MQTT callbacks ------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._settle_handshake(MqttError(f"broker refused the connection: {reason}"))
            return
        self._last_activity = time.monotonic()
        self._session_present = bool(flags.session_present)
        self._log.info(
            "MQTT connected to %s:%d as %s (session present: %s)",
            self._host, self._port, self._client_id, flags.session_present,
        )
        if self._subscriptions:
            rc, mid = self._paho.subscribe(self._subscriptions)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._settle_handshake(MqttError(f"SUBSCRIBE failed: {paho.error_string(rc)}"))
                return
            self._subscribe_mid = mid
        # After the SUBSCRIBE: the broker handles a client's packets in order, so
        # a message published between the two matches the new filter or the old
        # one, never neither (a bridge moving to a shared subscription). What
        # arrives meanwhile is acked too.
        if self._unsubscriptions:
            self._paho.unsubscribe(self._unsubscriptions)
        if not self._subscriptions:
            self._settle_handshake(None)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        for (topic, _), reason in zip(self._subscriptions, reasons, strict=False):
            if reason.is_failure:
                self._log.error("MQTT subscription to %s refused: %s", topic, reason)
        self._settle_handshake(None)

    def _settle_handshake(self, error: MqttError | None) -> None:
        if self._handshake is None or self._handshake.done():
            return
        if error is None:
            self._handshake.set_result(None)
            self._connected.set()
        else:
            self._handshake.set_exception(error)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # Mosquitto refuses these; keep it for a dead letter
            topic = bytes(msg._topic).decode("utf-8", "replace")
        message = Message(
            topic=topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            mid=msg.mid,
            dup=bool(msg.dup),
        )
        self._last_activity = time.monotonic()
        if self._manual_ack and message.qos > 0:
            self._unacked[message.mid] = message
        self._queue.append(message)
        self._queued_bytes += len(message.payload)
        self._progress += 1
        self._has_messages.set()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        self._progress += 1
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return  # its publish() already timed out
        if reason.is_failure:
            future.set_exception(MqttError(f"broker rejected publish mid {mid}: {reason}"))
        else:
            future.set_result(None)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        why = self._last_error or (
            "closed by the broker or the network"
            if str(reason) == "Unspecified error"
            else str(reason)
        )
        # The broker redelivers whatever is unacknowledged; old ids mean nothing now.
        self._unacked.clear()
        self._paho.drop_out_messages()
        self._fail_pending(f"connection lost before the broker acknowledged: {why}")
        self._settle_handshake(MqttError(f"connection closed during the handshake: {why}"))
        self._lost.set()
        if was_connected and not self._closing:
            self._log.warning(
                "MQTT connection to %s:%d lost: %s; reconnecting", self._host, self._port, why
            )

    def _on_log(self, client: paho.Client, userdata: Any, level: int, text: str) -> None:
        if level == LogLevel.MQTT_LOG_ERR:
            self._last_error = text  # reported once, in the disconnect warning
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("paho: %s", text)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(MqttError(why))
