"""What each AOC process starts, in what order, and how it stops.

``aoc serve`` runs every part in one process (the one-machine default);
``aoc bridge``, ``aoc api`` and ``aoc realtime`` run one part each, for
scale-out, and then reach each other through Mosquitto and Redis only.

Start order: storage, then the parts, each supervised by ``aoc.parts``: the
bridge with its three MQTT connections (outbound, consumer, snapshots) and
the HTTP servers. A part that fails is restarted alone while the others
serve, at start-up too: with the broker down, ``aoc serve`` answers
``/healthz`` (``/readyz``: 503) while its bridge retries. An HTTP or
Socket.IO port that another process holds at start-up is a configuration
error (one line naming the variable and the holder, exit 2: no restart cures
it); one taken later, while its server restarts, is retried in the process
until it is free, one line per attempt.
Stop order (first SIGINT/SIGTERM): HTTP servers stop accepting and finish
their requests, the bridge finishes and acknowledges its batch and closes its
consumer connections, then its outbound one (the last batch's states and
alerts go out on it), and storage closes as the exit stack unwinds. A part
that fails while stopping makes the command exit non-zero
(``aoc.parts.StopFailed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import socketio
from fastapi import FastAPI

from aoc import logs, metrics, ports, tls
from aoc.config import Settings
from aoc.parts import Parts, Running, Start, stop_on_signals
from aoc.safety import ConfigError
from aoc.servers import EmbeddedServer, server
from aoc.startup import Unreachable, setting, variable
from api import (
    ApiDeps,
    RevocationSweep,
    SocketGate,
    create_app,
    create_realtime_app,
    create_sio,
)
from api.deps import Publisher, ReadyCheck
from api.live import LiveRedisManager, LiveStream
from api.realtime import REVOCATION_SWEEP_SECONDS
from api.routes.health import create_probe_app
from bridge.deadletters import DeadLetters
from bridge.dispatch import Dispatch, DispatchRules
from bridge.processor import Processor
from bridge.ratelimit import DeviceLimiter
from bridge.retention import RetentionSweep, days_from_settings
from bridge.service import Bridge, Emitter
from bridge.speed import SpeedRules
from bridge.subscriptions import MAIN_KINDS, SNAP_KINDS, every_form, stale, subscriptions
from bridge.trips import TripRules, Trips
from bridge.validate import Limits
from broker.client import MqttClient, MqttError
from storage import open_document_store, open_object_store
from storage.base import DocumentStore, ObjectStore, StoreUnavailable
from storage.cache import StateCache
from storage.spool import SpoolingObjectStore, SpoolInUse

log = logging.getLogger(__name__)

# The longest wait between a share group member's attempts to reconnect (see ``_mqtt``).
GROUP_RECONNECT_MAX_S = 2.0

# A part failing with these waits for a dependency (the broker, a store): one
# warning line per restart, no traceback (``aoc.parts``).
OUTAGES: tuple[type[Exception], ...] = (MqttError, StoreUnavailable)


def _check_ports(settings: Settings, who: str, *names: str) -> None:
    """``ConfigError`` (exit 2, one line) if a port of the settings ``names`` cannot be listened on.

    Checked once, before anything starts: a port another process holds is
    not cured by retrying (a second `aoc serve`, another program on 8000).
    """
    binds = [ports.Bind(variable(n), settings.bind_host, getattr(settings, n)) for n in names]
    try:
        ports.check(binds, who)
    except ports.Unavailable as exc:
        raise ConfigError(str(exc)) from exc


async def _open_documents(settings: Settings, stack: AsyncExitStack) -> DocumentStore:
    """The document store, open until ``stack`` closes."""
    url = settings.resolved_store_url
    store = open_document_store(url, database=settings.mongodb_database)
    try:
        await stack.enter_async_context(store)
    except StoreUnavailable as exc:  # exit 1, one line: `aoc up` may restart with backoff
        raise Unreachable(setting(settings, "store_url", url), exc) from exc
    return store


async def _open_storage(
    settings: Settings, stack: AsyncExitStack, *, spool: bool = True
) -> tuple[DocumentStore, ObjectStore, StateCache]:
    store = await _open_documents(settings, stack)
    objects = open_object_store(
        settings.resolved_objects_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
        public_url=settings.objects_public_url or None,
        # Presigned S3 links handed to dashboards live as long as signed /files links.
        presign_seconds=settings.image_url_ttl_seconds,
    )
    if spool and settings.spool_max_bytes:
        # Snapshots wait on local disk while object storage is down instead of
        # holding the bridge's batches (tracking and crash alerts) behind it.
        objects = SpoolingObjectStore(
            objects, spool_dir=settings.resolved_spool_dir, max_bytes=settings.spool_max_bytes
        )
        metrics.watch_spool(objects)
    try:
        await stack.enter_async_context(objects)
    except SpoolInUse as exc:  # no restart cures it: a configuration error
        variable = "AOC_SPOOL_DIR" if settings.spool_dir else "AOC_DATA_DIR"
        raise ConfigError(
            f"{variable}: {exc} (another `aoc serve`, `aoc bridge` or `aoc up` on this data "
            "directory?): stop it, or give this process a directory of its own"
        ) from exc
    except StoreUnavailable as exc:  # no spool (`aoc api`): it must answer at start
        url = settings.resolved_objects_url
        raise Unreachable(setting(settings, "objects_url", url), exc) from exc
    cache = StateCache(settings.redis_url)
    try:
        await cache.open()
    except StoreUnavailable as exc:  # the cache is optional: reads fall back to the store
        log.warning("redis unavailable at start-up, continuing without the cache: %s", exc)
    stack.push_async_callback(cache.close)
    return store, objects, cache


def _mqtt(
    settings: Settings,
    *,
    client_id: str,
    consumer: bool,
    snapshots: bool = False,
    retiring: bool = False,
    leaving: tuple[str, ...] = (),
    shim: bool = False,
) -> MqttClient:
    """A connection of the bridge's account, or (``shim``) of the legacy shim's.

    A ``consumer`` holds a persistent session subscribed to the main lane's
    kinds, or (``snapshots``) to the snapshot lane's, in the form of
    ``settings.resolved_share_group`` (``bridge.subscriptions``); the other
    forms are dropped from the session at each connection. A ``retiring``
    consumer drops every form it can know, those of the groups ``leaving``
    too: the broker routes it nothing new, and it gets only what its session
    holds (``retire_bridge``).
    The shim's account is the only one that may publish under ``legacy/``, and
    it may publish nothing else: the broker's ACLs tell a legacy body from a
    device's by that root (``bridge.contract``).
    """
    username, secret = (
        (settings.shim_mqtt_username, settings.shim_mqtt_password)
        if shim
        else (settings.mqtt_username, settings.mqtt_password)
    )
    password = secret.get_secret_value() if secret else None
    group = settings.resolved_share_group
    kinds = SNAP_KINDS if snapshots else MAIN_KINDS
    others = () if snapshots else SNAP_KINDS
    wanted = () if retiring or not consumer else subscriptions(kinds, group)
    dropped = (
        list(dict.fromkeys(
            f for g in (group, *leaving) for f in every_form(kinds, g) + every_form(others, g)
        ))
        if retiring
        else stale(kinds, group, others=others)
    )
    return MqttClient(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        client_id=client_id,
        # The bridge's session outlives it, so the broker queues what it misses.
        clean_session=not consumer,
        manual_ack=consumer,
        subscriptions=wanted,
        # Sessions of older versions took snapshots on the main connection too.
        unsubscriptions=dropped if consumer else (),
        username=username,
        password=password,
        keepalive=settings.mqtt_keepalive,
        queue_size=settings.mqtt_queue_size,
        queue_bytes=settings.mqtt_queue_bytes,
        tls=tls.client_context(settings),
        # Mosquitto forgets shared subscriptions when it restarts: until a
        # member is back, the group's messages go to nobody. So members retry often.
        reconnect_max=GROUP_RECONNECT_MAX_S if consumer and group else 30.0,
    )


def _api_deps(
    settings: Settings,
    *,
    store: DocumentStore,
    objects: ObjectStore,
    cache: StateCache,
    broker: ReadyCheck | None,
    publisher: Publisher | None = None,
) -> ApiDeps:
    """What the HTTP routes need; readiness asks ``broker`` (if any) about the MQTT side."""
    checks: dict[str, ReadyCheck] = {} if broker is None else {"broker": broker}
    checks.update(store=store.ping, objects=objects.ping, redis=cache.ping)
    return ApiDeps(
        settings=settings,
        store=store,
        objects=objects,
        cache=cache,
        publisher=publisher,
        ready_checks=checks,
    )


def _snap_mqtt(
    settings: Settings, *, retiring: bool = False, leaving: tuple[str, ...] = ()
) -> MqttClient:
    """The bridge's connection for snapshots: a persistent session of its own."""
    return _mqtt(
        settings,
        client_id=_snap_client_id(settings),
        consumer=True,
        snapshots=True,
        retiring=retiring,
        leaving=leaving,
    )


def _snap_client_id(settings: Settings) -> str:
    return f"{settings.mqtt_client_id}-snap"


def _bridge(
    settings: Settings,
    *,
    mqtt: MqttClient,
    snap_mqtt: MqttClient,
    publisher: MqttClient,
    store: DocumentStore,
    objects: ObjectStore,
    cache: StateCache,
    emitter: Emitter | None,
    live: Emitter | None,
) -> Bridge:
    processor = Processor(
        store=store,
        objects=objects,
        rules=SpeedRules.from_settings(settings),
        crash_dedup_s=settings.crash_dedup_seconds,
        maps_key=settings.google_maps_key.get_secret_value() if settings.google_maps_key else None,
        dead_letter_payload_bytes=settings.dead_letter_payload_bytes,
        # Other members of the group move the same ambulances: plan from the store.
        shared=bool(settings.resolved_share_group),
        dispatch=Dispatch(DispatchRules.from_settings(settings)),
        trips=Trips(TripRules.from_settings(settings)),
    )
    return Bridge(
        mqtt=mqtt,
        snap_mqtt=snap_mqtt,
        publisher=publisher,
        processor=processor,
        store=store,
        limits=Limits.from_settings(settings),
        cache=cache,
        emitter=emitter,
        live=live,
        dead_letters=DeadLetters(
            store=store,
            rate=settings.dead_letter_rate,
            burst=settings.dead_letter_burst,
            max_count=settings.dead_letter_max_count,
            max_age=timedelta(days=settings.dead_letter_max_age_days),
            prune_every=settings.dead_letter_prune_seconds,
        ),
        device_limit=(
            DeviceLimiter(rate=settings.device_rate, burst=settings.device_burst)
            if settings.device_rate
            else None
        ),
        batch_size=settings.batch_size,
        batch_wait=settings.batch_wait_ms / 1000,
        batch_max_bytes=settings.batch_max_bytes,
        snap_workers=settings.snap_workers,
        snap_buffer_bytes=settings.snap_buffer_bytes,
        places_every=settings.places_refresh_seconds,
        offline_after=settings.offline_after_seconds,
    )


def _server(app: Any, settings: Settings, *, port: int, max_connections: int) -> EmbeddedServer:
    """A server of ``app`` on ``port`` with the HTTP bounds of ``settings``.

    Every port gets the header and body timeouts (Socket.IO's long-polling
    POSTs have bodies too); WebSocket connections are not timed, only counted,
    since each dashboard holds one for hours.
    """
    return server(
        app,
        host=settings.bind_host,
        port=port,
        max_connections=max_connections,
        body_timeout=settings.http_body_timeout,
        body_min_rate=settings.http_body_min_rate,
        header_timeout=settings.http_header_timeout,
    )


def _http_server(app: FastAPI, settings: Settings) -> EmbeddedServer:
    return _server(
        app, settings, port=settings.http_port, max_connections=settings.http_max_connections
    )


def _socketio_server(app: socketio.ASGIApp, settings: Settings) -> EmbeddedServer:
    return _server(
        app,
        settings,
        port=settings.socketio_port,
        max_connections=settings.socketio_max_connections,
    )


def _require_connected(client: MqttClient, connection: str) -> None:
    """Readiness of one MQTT connection: ``ConnectionError`` unless it is up."""
    if not client.connected:
        raise ConnectionError(f"not connected to the MQTT broker ({connection})")


def _connected(client: MqttClient) -> ReadyCheck:
    async def check() -> None:
        _require_connected(client, "outbound")

    return check


@dataclass(frozen=True, slots=True)
class _Connections:
    """The running bridge's MQTT connections."""

    publisher: MqttClient
    consumer: MqttClient
    snap_consumer: MqttClient
    # The legacy shim's (legacy mode only): its requests publish on it.
    shim: MqttClient | None = None


class _BridgeWiring:
    """The bridge and what it is made of: one builder for ``aoc serve`` and ``aoc bridge``.

    Storage lasts as long as the process. The MQTT connections and the
    ``Bridge`` are made afresh at each (re)start of the bridge part
    (``start``), so a broker that is down at start-up fails that part alone:
    it is retried while the HTTP servers answer. A restarted bridge gets the
    messages its failed predecessor held unacknowledged, since the broker
    redelivers them on new connections of the same persistent sessions.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: DocumentStore,
        objects: ObjectStore,
        cache: StateCache,
        publisher_id: str,
        emitter: Emitter,
        live: Emitter,
        shim: bool = False,
        retiring: bool = False,
        leaving: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        # Leaving the share group for good: subscribed to nothing (``retire_bridge``),
        # and unsubscribed from the groups ``leaving`` too (earlier AOC_SHARE_GROUPs).
        self.retiring = retiring
        self.leaving = leaving
        # Whether this process runs the legacy shim (`aoc serve` in legacy mode):
        # only then does it log in with the shim's account too.
        self.shim = shim
        self.store = store
        self.objects = objects
        self.cache = cache
        self.publisher_id = publisher_id
        self.emitter = emitter
        # Where the live stream's feed goes: this process's stream, or Redis.
        self.live = live
        self._connections: _Connections | None = None  # the running bridge's
        self._running = asyncio.Event()  # set while ``_connections`` is

    @contextlib.asynccontextmanager
    async def start(self) -> AsyncIterator[Running]:
        """A new bridge on new MQTT connections, closed once it has ended."""
        async with AsyncExitStack() as stack:
            # Entered first, closed last: the bridge's last batch publishes on it.
            publisher = await stack.enter_async_context(
                _mqtt(self.settings, client_id=self.publisher_id, consumer=False)
            )
            consumer = await stack.enter_async_context(
                _mqtt(
                    self.settings,
                    client_id=self.settings.mqtt_client_id,
                    consumer=True,
                    retiring=self.retiring,
                    leaving=self.leaving,
                )
            )
            snap_consumer = await stack.enter_async_context(
                _snap_mqtt(self.settings, retiring=self.retiring, leaving=self.leaving)
            )
            shim = (
                await stack.enter_async_context(
                    _mqtt(
                        self.settings,
                        client_id=f"{self.publisher_id}-shim",
                        consumer=False,
                        shim=True,
                    )
                )
                if self.shim
                else None
            )
            bridge = _bridge(
                self.settings,
                mqtt=consumer,
                snap_mqtt=snap_consumer,
                publisher=publisher,
                store=self.store,
                objects=self.objects,
                cache=self.cache,
                emitter=self.emitter,
                live=self.live,
            )
            self._connections = _Connections(publisher, consumer, snap_consumer, shim)
            self._running.set()
            try:
                yield Running(bridge.run, bridge.stop)
            finally:
                self._running.clear()
                self._connections = None

    async def drained(self, quiet: float) -> None:
        """Wait until both consumer sessions hold nothing and got nothing for ``quiet`` seconds.

        Mosquitto sends a session's queue as soon as it connects, as fast as
        acknowledgements free its in-flight window: a connected session that
        has acknowledged everything and received nothing for a while is empty.
        """
        while True:
            connections = self._connections
            if connections is not None:
                now = time.monotonic()
                consumers = (connections.consumer, connections.snap_consumer)
                if all(
                    c.connected and not c.unacknowledged and now - c.last_activity >= quiet
                    for c in consumers
                ):
                    return
            await asyncio.sleep(0.1)

    def absent_sessions(self) -> list[str]:
        """The consumers' client ids whose session the broker did not have when they connected."""
        connections = self._connections
        if connections is None:
            return []
        return [
            c.client_id
            for c in (connections.consumer, connections.snap_consumer)
            if c.session_present is False
        ]

    async def broker_ready(self) -> None:
        """Readiness: the bridge runs and its three MQTT connections are up."""
        connections = self._connections
        if connections is None:
            raise ConnectionError("the bridge is not running (starting or restarting)")
        _require_connected(connections.consumer, "consumer")
        _require_connected(connections.snap_consumer, "snapshots")
        _require_connected(connections.publisher, "outbound")
        if connections.shim is not None:
            _require_connected(connections.shim, "legacy shim")

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
    ) -> None:
        """Publish on the legacy shim's connection (its ``Publisher``), made with the bridge's.

        While the bridge (re)starts there is none: it is waited for within
        ``timeout``, as ``MqttClient.publish`` waits for a reconnection. Made
        with the bridge's, it publishes only once the bridge has subscribed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._running.wait()
        except TimeoutError as exc:
            raise MqttError(
                f"no connection to the MQTT broker within {timeout}s: the bridge is not running"
            ) from exc
        assert self._connections is not None
        if self._connections.shim is None:
            raise MqttError(
                "the HTTP API has no MQTT account (AOC_SHIM_MQTT_USERNAME) and legacy mode is off"
            )
        await self._connections.shim.publish(
            topic, payload, qos=qos, retain=retain, timeout=max(deadline - loop.time(), 0.0)
        )

    def api_deps(self, *, publisher: bool) -> ApiDeps:
        """The HTTP routes' dependencies; ``publisher``: whether they may publish."""
        return _api_deps(
            self.settings,
            store=self.store,
            objects=self.objects,
            cache=self.cache,
            broker=self.broker_ready,
            publisher=self if publisher else None,
        )


async def _wire_bridge(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    publisher_id: str,
    emitter: Emitter,
    retiring: bool = False,
    leaving: tuple[str, ...] = (),
    live: Emitter,
) -> _BridgeWiring:
    """Open storage until ``stack`` closes; the bridge part opens its MQTT connections."""
    store, objects, cache = await _open_storage(settings, stack)
    return _BridgeWiring(
        settings,
        store=store,
        objects=objects,
        cache=cache,
        publisher_id=publisher_id,
        emitter=emitter,
        retiring=retiring,
        leaving=leaving,
        live=live,
    )


@contextlib.asynccontextmanager
async def _serving(server: EmbeddedServer, bound: asyncio.Event | None) -> AsyncIterator[Running]:
    if bound is not None:
        server.on_bound = bound.set
    yield Running(server.serve, server.stop)


def _server_part(make: Callable[[], EmbeddedServer], bound: asyncio.Event | None = None) -> Start:
    """A server part: a new server at each (re)start (uvicorn's state is per run).

    ``bound`` is set once one of its servers listens on its port.
    """
    return lambda: _serving(make(), bound)


@contextlib.asynccontextmanager
async def _sweeping(sio: socketio.AsyncServer, gate: SocketGate) -> AsyncIterator[Running]:
    sweep = RevocationSweep(sio, gate, every=REVOCATION_SWEEP_SECONDS)
    yield Running(sweep.run, sweep.stop)


def _revocations_part(sio: socketio.AsyncServer, gate: SocketGate) -> Start:
    """The part that closes the Socket.IO connections of revoked tokens."""
    return lambda: _sweeping(sio, gate)


@contextlib.asynccontextmanager
async def _streaming(live: LiveStream) -> AsyncIterator[Running]:
    yield Running(live.run, live.stop)


def _live_part(live: LiveStream) -> Start:
    """The part that sends the live stream's events every interval (``api.live``)."""
    return lambda: _streaming(live)


@contextlib.asynccontextmanager
async def _retaining(sweep: RetentionSweep) -> AsyncIterator[Running]:
    yield Running(sweep.run, sweep.stop)


def _retention_part(settings: Settings, store: DocumentStore, objects: ObjectStore) -> Start:
    """The part that deletes what is older than the retention bounds (``bridge.retention``).

    Run beside every bridge: with several, each sweeps (deleting is idempotent).
    """
    return lambda: _retaining(
        RetentionSweep(
            store=store,
            objects=objects,
            days=days_from_settings(settings),
            every=settings.retention_sweep_seconds,
            batch=settings.retention_batch_size,
        )
    )


def _live_stream(settings: Settings) -> LiveStream:
    return LiveStream(interval=settings.live_interval_ms / 1000)


def _fan_in(settings: Settings) -> LiveRedisManager | None:
    """Socket.IO's manager for `aoc serve`: through Redis whenever its bridge is in a group.

    The other members of the group (`aoc up`'s AOC_BRIDGES, or `aoc bridge`
    processes elsewhere) emit through Redis; alone, the bridge emits here.
    """
    return LiveRedisManager(settings.redis_url) if settings.resolved_share_group else None


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Bridge, HTTP API and Socket.IO server in one process, until ``stop`` (default: a signal)."""
    _check_ports(settings, "aoc serve", "http_port", "socketio_port")
    stop = stop or stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    async with AsyncExitStack() as stack:
        store, objects, cache = await _open_storage(settings, stack)
        # Socket.IO checks tokens in the store the bridge writes to, and is its emitter.
        gate = SocketGate(settings, store)
        live = _live_stream(settings)
        sio = create_sio(
            gate,
            cors_origins=settings.cors_origin_list,
            dashboard_port=settings.http_port,
            client_manager=_fan_in(settings),
            live=live,
        )
        wiring = _BridgeWiring(
            settings,
            store=store,
            objects=objects,
            cache=cache,
            publisher_id=f"aoc-api-{os.getpid()}",
            emitter=sio,
            live=live,  # in this process: no detour through Socket.IO
            shim=api_publishes(settings),
        )
        deps = wiring.api_deps(publisher=True)
        app = create_app(deps)
        # One process: the Socket.IO port is ready when the HTTP API is.
        realtime = create_realtime_app(sio, settings, ready_checks=deps.ready_checks)
        parts = Parts(stop, outages=OUTAGES)
        sio_bound, http_bound = asyncio.Event(), asyncio.Event()
        # Stopped in reverse: HTTP finishes the legacy requests (they publish on
        # the bridge's connection), then the bridge finishes its batch and sends
        # its fan-out (alerts first) to dashboards still connected to Socket.IO.
        parts.add(
            "socketio", _server_part(lambda: _socketio_server(realtime, settings), sio_bound)
        )
        parts.add("revocations", _revocations_part(sio, gate))
        parts.add("live", _live_part(live))
        parts.add("retention", _retention_part(settings, store, objects))
        parts.add("bridge", wiring.start)
        parts.add("http", _server_part(lambda: _http_server(app, settings), http_bound))

        async def announce() -> None:  # once both ports are ours, not before
            await asyncio.gather(sio_bound.wait(), http_bound.wait())
            log.info(
                "serving: HTTP on %s:%d, Socket.IO on %s:%d, MQTT broker %s:%d",
                settings.bind_host,
                settings.http_port,
                settings.bind_host,
                settings.socketio_port,
                settings.mqtt_host,
                settings.mqtt_port,
            )

        announcing = asyncio.create_task(announce())
        try:
            await parts.run()
        finally:
            announcing.cancel()


def _redis_emitter(settings: Settings) -> socketio.AsyncRedisManager:
    """How a bridge without a Socket.IO server of its own reaches every one: through Redis."""
    return socketio.AsyncRedisManager(
        settings.redis_url,
        # An unreachable (not refusing) Redis must not hang the consume loop.
        redis_options={"socket_connect_timeout": 2, "socket_timeout": 5},
        write_only=True,
        logger=logs.throttled("socketio.fan_out", seconds=60.0),
    )


async def run_bridge(settings: Settings) -> None:
    """The bridge alone; it reaches Socket.IO servers through Redis."""
    _check_ports(settings, "aoc bridge", "bridge_http_port")
    stop = stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    async with AsyncExitStack() as stack:
        emitter = _redis_emitter(settings)
        # The live feed goes through Redis too; each `aoc realtime` intercepts it.
        wiring = await _wire_bridge(
            settings,
            stack,
            publisher_id=f"aoc-bridge-out-{os.getpid()}",
            emitter=emitter,
            live=emitter,
        )
        # Probes and metrics, so the bridge is observable without the HTTP API.
        probes = create_probe_app(wiring.api_deps(publisher=False))
        parts = Parts(stop, outages=OUTAGES)
        parts.add("retention", _retention_part(settings, wiring.store, wiring.objects))
        parts.add("bridge", wiring.start)
        parts.add(
            "http",
            _server_part(
                lambda: _server(
                    probes,
                    settings,
                    port=settings.bridge_http_port,
                    max_connections=settings.http_max_connections,
                )
            ),
        )
        await parts.run()


# How long a retiring bridge's sessions must stay empty before they are ended.
RETIRE_QUIET_S = 3.0
# How long `aoc bridge --retire` may take in all (its --timeout): past it, it
# exits non-zero and leaves the sessions, and its spool, for another attempt.
RETIRE_TIMEOUT_S = 600.0
# How often a retiring bridge logs what its spool still holds.
RETIRE_PROGRESS_S = 5.0


class RetireIncomplete(Exception):
    """`aoc bridge --retire` could not finish: one line saying what is left, and where."""


@dataclass(frozen=True, slots=True)
class Retired:
    """What ``retire_bridge`` did."""

    taken: int  # messages the sessions held, stored or dead-lettered
    absent: list[str]  # client ids whose session the broker did not have (a mistyped id?)


async def retire_bridge(
    settings: Settings,
    *,
    quiet: float = RETIRE_QUIET_S,
    timeout: float = RETIRE_TIMEOUT_S,
    leaving: tuple[str, ...] = (),
    stop: asyncio.Event | None = None,
) -> Retired:
    """`aoc bridge --retire`: a member leaves its share group for good; the messages it took.

    Mosquitto queues a persistent member's share while it is away and gives
    its in-flight messages to no other member, so a member that is simply no
    longer started strands what its session holds. This one resumes both
    sessions under ``AOC_MQTT_CLIENT_ID``, drops every subscription it can
    know (plain, group ``aoc``, its own group and the groups ``leaving``: the
    broker then routes it nothing new), stores and acknowledges what the
    sessions held as any bridge would, waits until its object spool has
    uploaded every image (a retired member never runs again to do it), and
    then ends the sessions (a clean start): the broker forgets the member.

    ``RetireIncomplete`` if that takes longer than ``timeout`` seconds or
    ``stop`` (default: a signal) is set first: the sessions are then kept.
    """
    own_stop = stop is None
    stop = stop or stop_on_signals()
    deadline = asyncio.get_running_loop().time() + timeout
    async with AsyncExitStack() as stack:
        wiring = await _wire_bridge(
            settings,
            stack,
            publisher_id=f"aoc-bridge-out-{os.getpid()}",
            emitter=(emitter := _redis_emitter(settings)),
            live=emitter,
            retiring=True,
            leaving=leaving,
        )
        before = _received()
        try:
            async with wiring.start() as running:
                absent = wiring.absent_sessions()
                bridge = asyncio.ensure_future(running.run())
                done = asyncio.create_task(_retired(wiring, quiet), name="retiring-done")
                stopped = asyncio.create_task(stop.wait(), name="retiring-stopped")
                try:
                    left = deadline - asyncio.get_running_loop().time()
                    await asyncio.wait(
                        {bridge, done, stopped},
                        timeout=max(left, 0.0),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    done.cancel()
                    stopped.cancel()
                    running.stop()
                    await bridge  # its failure, if it failed
                if not done.done() or done.cancelled():
                    raise RetireIncomplete(_unfinished(settings, wiring, stop, timeout))
                if own_stop:
                    _ignore_stops()
        except MqttError as exc:
            where = f"{setting(settings, 'mqtt_host')}, {setting(settings, 'mqtt_port')}"
            raise Unreachable(f"the MQTT broker at {where}", exc) from exc
    for client_id in (settings.mqtt_client_id, _snap_client_id(settings)):
        async with _mqtt(settings, client_id=client_id, consumer=False):
            pass  # a clean start ends the session, and its leaving ends the connection
    taken = _received() - before
    log.info(
        "retired the bridge sessions %s and %s", settings.mqtt_client_id, _snap_client_id(settings)
    )
    return Retired(int(taken), absent)


def _ignore_stops() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP from now on, until the process exits.

    What is left of a retirement once its sessions are drained and its spool
    empty is quick; a stop arriving then (`aoc up` stopping) must not turn a
    finished retirement into a failure, which the next start would redo.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.remove_signal_handler(sig)  # then the loop's closing leaves it alone
        signal.signal(sig, signal.SIG_IGN)


async def _retired(wiring: _BridgeWiring, quiet: float) -> None:
    """Until the sessions are quiet and the spool has uploaded all it holds."""
    await wiring.drained(quiet)
    spool = wiring.objects
    if not isinstance(spool, SpoolingObjectStore):
        return
    logged = -RETIRE_PROGRESS_S
    while spool.pending:
        now = time.monotonic()
        if now - logged >= RETIRE_PROGRESS_S:  # progress, every few seconds
            logged = now
            log.info(
                "retiring: %d object(s) (%d bytes) still in the spool %s, waiting for the "
                "object store to take them",
                spool.pending, spool.spooled_bytes, wiring.settings.resolved_spool_dir,
            )
        await asyncio.sleep(0.1)


def _unfinished(
    settings: Settings, wiring: _BridgeWiring, stop: asyncio.Event, timeout: float
) -> str:
    """Why a retirement did not finish: what is left, in one line."""
    why = "stopped" if stop.is_set() else f"not done within {timeout:.0f}s"
    spool = wiring.objects
    if isinstance(spool, SpoolingObjectStore) and spool.pending:
        left = (
            f"{spool.pending} acknowledged image(s) still in its spool "
            f"{settings.resolved_spool_dir} (the object store does not take them)"
        )
    else:
        left = "its sessions still get or hold messages"
    return f"{why}: {left}; its sessions are kept: run it again"


def _received() -> float:
    """Messages this process received and acknowledged so far, of every kind."""
    return sum(
        sample.value
        for family in metrics.MESSAGES_RECEIVED.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def api_publishes(settings: Settings) -> bool:
    """Whether the HTTP API connects to the broker with its account (the shim's).

    In legacy mode (the shim relays devices), and whenever that account is
    configured, since dispatch commands are published with it too. Without
    it, dispatch commands answer 503.
    """
    return settings.legacy_mode or bool(settings.shim_mqtt_username)


async def _shim_publisher(settings: Settings, stack: AsyncExitStack) -> MqttClient:
    """`aoc api`'s connection for the legacy shim, open until ``stack`` closes.

    Unlike the bridge's (a part of `aoc serve`, retried in the process), it is
    made once: a broker down at start is one line and exit 1 (``Unreachable``).
    """
    client = _mqtt(settings, client_id=f"aoc-api-{os.getpid()}", consumer=False, shim=True)
    try:
        return await stack.enter_async_context(client)
    except MqttError as exc:
        where = f"{setting(settings, 'mqtt_host')}, {setting(settings, 'mqtt_port')}"
        raise Unreachable(f"the MQTT broker at {where}", exc) from exc


async def run_api(settings: Settings) -> None:
    """The HTTP read API and legacy shim alone."""
    _check_ports(settings, "aoc api", "http_port")
    stop = stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    async with AsyncExitStack() as stack:
        # It writes no objects; the bridge owns the spool (and may share data_dir).
        store, objects, cache = await _open_storage(settings, stack, spool=False)
        # The legacy shim and dispatch commands publish, with the API's own account.
        publisher = await _shim_publisher(settings, stack) if api_publishes(settings) else None
        deps = _api_deps(
            settings,
            store=store,
            objects=objects,
            cache=cache,
            broker=_connected(publisher) if publisher is not None else None,
            publisher=publisher,
        )
        app = create_app(deps)
        parts = Parts(stop, outages=OUTAGES)
        parts.add("http", _server_part(lambda: _http_server(app, settings)))
        await parts.run()


async def run_realtime(settings: Settings) -> None:
    """A Socket.IO server alone, fed by bridges through Redis; tokens are read from the store."""
    _check_ports(settings, "aoc realtime", "socketio_port")
    stop = stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    async with AsyncExitStack() as stack:
        store = await _open_documents(settings, stack)
        # Only for readiness: the bridges' events come through Redis (LiveRedisManager).
        redis = StateCache(settings.redis_url)
        try:
            await redis.open()
        except StoreUnavailable as exc:  # not ready until it answers; served meanwhile
            log.warning("redis unavailable at start-up: %s", exc)
        stack.push_async_callback(redis.close)
        gate = SocketGate(settings, store)
        live = _live_stream(settings)
        sio = create_sio(
            gate,
            cors_origins=settings.cors_origin_list,
            dashboard_port=settings.http_port,
            client_manager=LiveRedisManager(settings.redis_url),
            live=live,
        )
        # Ready when its clients' tokens can be checked and the bridges' events arrive.
        realtime = create_realtime_app(
            sio, settings, ready_checks={"store": store.ping, "redis": redis.ping}
        )
        parts = Parts(stop, outages=OUTAGES)
        parts.add("socketio", _server_part(lambda: _socketio_server(realtime, settings)))
        parts.add("revocations", _revocations_part(sio, gate))
        parts.add("live", _live_part(live))
        with contextlib.suppress(asyncio.CancelledError):
            await parts.run()
