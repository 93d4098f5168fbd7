"""What each AOC process starts, in what order, and how it stops.

``aoc serve`` runs every part in one process (the one-machine default);
``aoc bridge``, ``aoc api`` and ``aoc realtime`` run one part each, for
scale-out, and then reach each other through Mosquitto and Redis only.

Start order: storage, then the MQTT clients, then the consumers and servers.
Stop order (first SIGINT/SIGTERM): HTTP servers stop accepting and finish
their requests, the bridge finishes and acknowledges its batch, then MQTT
disconnects and storage closes, as the exit stack unwinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import socketio
from fastapi import FastAPI

from aoc import logs, metrics
from aoc.config import Settings
from aoc.servers import EmbeddedServer, server
from api import ApiDeps, create_app, create_realtime_app, create_sio
from api.routes.health import create_probe_app
from bridge.deadletters import DeadLetters
from bridge.processor import Processor
from bridge.service import MAIN_SUBSCRIPTIONS, SNAP_SUBSCRIPTIONS, Bridge, Emitter
from bridge.speed import SpeedRules
from bridge.validate import Limits
from broker.client import MqttClient
from storage import open_document_store, open_object_store
from storage.base import DocumentStore, ObjectStore, StoreUnavailable
from storage.cache import StateCache
from storage.spool import SpoolingObjectStore

log = logging.getLogger(__name__)


def _stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _open_storage(
    settings: Settings, stack: AsyncExitStack, *, spool: bool = True
) -> tuple[DocumentStore, ObjectStore, StateCache]:
    store = open_document_store(settings.resolved_store_url, database=settings.mongodb_database)
    await stack.enter_async_context(store)
    objects = open_object_store(
        settings.resolved_objects_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
        public_url=settings.objects_public_url or None,
    )
    if spool and settings.spool_max_bytes:
        # Snapshots wait on local disk while object storage is down instead of
        # holding the bridge's batches (tracking and crash alerts) behind it.
        objects = SpoolingObjectStore(
            objects, spool_dir=settings.resolved_spool_dir, max_bytes=settings.spool_max_bytes
        )
    await stack.enter_async_context(objects)
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
    subscriptions: Sequence[tuple[str, int]] = MAIN_SUBSCRIPTIONS,
) -> MqttClient:
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    return MqttClient(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        client_id=client_id,
        # The bridge's session outlives it, so the broker queues what it misses.
        clean_session=not consumer,
        manual_ack=consumer,
        subscriptions=subscriptions if consumer else (),
        # Sessions of older versions took snapshots on the main connection too.
        unsubscriptions=[f for f, _ in SNAP_SUBSCRIPTIONS]
        if consumer and subscriptions == MAIN_SUBSCRIPTIONS
        else (),
        username=settings.mqtt_username,
        password=password,
        keepalive=settings.mqtt_keepalive,
        queue_size=settings.mqtt_queue_size,
        queue_bytes=settings.mqtt_queue_bytes,
    )


def _api_deps(
    settings: Settings,
    *,
    store: DocumentStore,
    objects: ObjectStore,
    cache: StateCache,
    mqtt: MqttClient,
    publisher: MqttClient | None = None,
    snap_mqtt: MqttClient | None = None,
) -> ApiDeps:
    """What the HTTP routes need; readiness reports on ``mqtt`` (and ``snap_mqtt``)."""

    async def broker() -> None:
        if not mqtt.connected:
            raise ConnectionError("not connected to the MQTT broker")
        if snap_mqtt is not None and not snap_mqtt.connected:
            raise ConnectionError("snapshot connection to the MQTT broker is down")

    checks = {"broker": broker, "store": store.ping, "objects": objects.ping, "redis": cache.ping}
    return ApiDeps(
        settings=settings,
        store=store,
        objects=objects,
        cache=cache,
        publisher=publisher,
        ready_checks=checks,
    )


async def _bridge_connections(
    settings: Settings, stack: AsyncExitStack, *, publisher_id: str
) -> tuple[MqttClient, MqttClient, MqttClient]:
    """The bridge's MQTT connections, open until ``stack`` closes: main, snapshots, outbound."""
    consumer = await stack.enter_async_context(
        _mqtt(settings, client_id=settings.mqtt_client_id, consumer=True)
    )
    snap_consumer = await stack.enter_async_context(_snap_mqtt(settings))
    publisher = await stack.enter_async_context(
        _mqtt(settings, client_id=publisher_id, consumer=False)
    )
    return consumer, snap_consumer, publisher


def _snap_mqtt(settings: Settings) -> MqttClient:
    """The bridge's connection for snapshots: a persistent session of its own."""
    return _mqtt(
        settings,
        client_id=f"{settings.mqtt_client_id}-snap",
        consumer=True,
        subscriptions=SNAP_SUBSCRIPTIONS,
    )


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
) -> Bridge:
    processor = Processor(
        store=store,
        objects=objects,
        rules=SpeedRules.from_settings(settings),
        crash_dedup_s=settings.crash_dedup_seconds,
        maps_key=settings.google_maps_key.get_secret_value() if settings.google_maps_key else None,
        dead_letter_payload_bytes=settings.dead_letter_payload_bytes,
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
        dead_letters=DeadLetters(
            store=store,
            rate=settings.dead_letter_rate,
            burst=settings.dead_letter_burst,
            max_count=settings.dead_letter_max_count,
            max_age=timedelta(days=settings.dead_letter_max_age_days),
            prune_every=settings.dead_letter_prune_seconds,
        ),
        batch_size=settings.batch_size,
        batch_wait=settings.batch_wait_ms / 1000,
        batch_max_bytes=settings.batch_max_bytes,
        snap_workers=settings.snap_workers,
        snap_buffer_bytes=settings.snap_buffer_bytes,
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


async def _run_until_stopped(
    stop: asyncio.Event, *, servers: list[EmbeddedServer], bridge: Bridge | None
) -> None:
    """Run the servers and the bridge until a signal, then stop them in order."""

    async def stopper() -> None:
        await stop.wait()
        log.info("stopping")
        for item in servers:
            item.stop()
        if bridge is not None:
            bridge.stop()

    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(stopper(), name="stop-on-signal")
        tasks = [group.create_task(s.serve(), name=f"http-{s.config.port}") for s in servers]
        if bridge is not None:
            tasks.append(group.create_task(bridge.run(), name="bridge"))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # One part ending on its own (a server that failed to bind) ends them all.
        stop.set()
        await watcher


async def serve(settings: Settings) -> None:
    """Bridge, HTTP API and Socket.IO server in one process."""
    stop = _stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    async with AsyncExitStack() as stack:
        store, objects, cache = await _open_storage(settings, stack)
        consumer, snap_consumer, publisher = await _bridge_connections(
            settings, stack, publisher_id=f"aoc-api-{os.getpid()}"
        )
        sio = create_sio()
        bridge = _bridge(
            settings,
            mqtt=consumer,
            snap_mqtt=snap_consumer,
            publisher=publisher,
            store=store,
            objects=objects,
            cache=cache,
            emitter=sio,
        )
        deps = _api_deps(
            settings,
            store=store,
            objects=objects,
            cache=cache,
            mqtt=consumer,
            publisher=publisher,
            snap_mqtt=snap_consumer,
        )
        servers = [
            _http_server(create_app(deps), settings),
            _socketio_server(create_realtime_app(sio), settings),
        ]
        log.info(
            "serving: HTTP on %s:%d, Socket.IO on %s:%d, MQTT broker %s:%d",
            settings.bind_host,
            settings.http_port,
            settings.bind_host,
            settings.socketio_port,
            settings.mqtt_host,
            settings.mqtt_port,
        )
        await _run_until_stopped(stop, servers=servers, bridge=bridge)


async def run_bridge(settings: Settings) -> None:
    """The bridge alone; it reaches Socket.IO servers through Redis."""
    stop = _stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    async with AsyncExitStack() as stack:
        store, objects, cache = await _open_storage(settings, stack)
        consumer, snap_consumer, publisher = await _bridge_connections(
            settings, stack, publisher_id=f"aoc-bridge-out-{os.getpid()}"
        )
        emitter = socketio.AsyncRedisManager(
            settings.redis_url,
            # An unreachable (not refusing) Redis must not hang the consume loop.
            redis_options={"socket_connect_timeout": 2, "socket_timeout": 5},
            write_only=True,
            logger=logs.throttled("socketio.fan_out", seconds=60.0),
        )
        bridge = _bridge(
            settings,
            mqtt=consumer,
            snap_mqtt=snap_consumer,
            publisher=publisher,
            store=store,
            objects=objects,
            cache=cache,
            emitter=emitter,
        )
        # Probes and metrics, so the bridge is observable without the HTTP API.
        probes = create_probe_app(
            _api_deps(
                settings,
                store=store,
                objects=objects,
                cache=cache,
                mqtt=consumer,
                snap_mqtt=snap_consumer,
            )
        )
        http = _server(
            probes,
            settings,
            port=settings.bridge_http_port,
            max_connections=settings.http_max_connections,
        )
        await _run_until_stopped(stop, servers=[http], bridge=bridge)


async def run_api(settings: Settings) -> None:
    """The HTTP read API and legacy shim alone."""
    stop = _stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    async with AsyncExitStack() as stack:
        # It writes no objects; the bridge owns the spool (and may share data_dir).
        store, objects, cache = await _open_storage(settings, stack, spool=False)
        publisher = await stack.enter_async_context(
            _mqtt(settings, client_id=f"aoc-api-{os.getpid()}", consumer=False)
        )
        deps = _api_deps(
            settings, store=store, objects=objects, cache=cache, mqtt=publisher, publisher=publisher
        )
        app_server = _http_server(create_app(deps), settings)
        await _run_until_stopped(stop, servers=[app_server], bridge=None)


async def run_realtime(settings: Settings) -> None:
    """A Socket.IO server alone, fed by bridges through Redis."""
    stop = _stop_on_signals()
    metrics.PROCESS_RESTARTS.set(settings.restart_count)
    sio = create_sio(client_manager=socketio.AsyncRedisManager(settings.redis_url))
    rt = _socketio_server(create_realtime_app(sio), settings)
    with contextlib.suppress(asyncio.CancelledError):
        await _run_until_stopped(stop, servers=[rt], bridge=None)
