"""A fleet of simulated ambulances publishing device traffic over MQTT.

Each ambulance follows ``sim.motion`` and publishes, as a real device
would: tracking points at ``rate`` Hz (QoS 1), a camera snapshot every
``snap_every`` seconds (alternately raw JPEG bytes and the JSON/base64 form),
now and then a crash alert, and its retained ``online``/``offline`` status.

Connections: one MQTT client per ambulance up to ``max_connections`` (each
with the ambulance's own Last Will, as on a real device); past that the fleet
shares ``max_connections`` clients, each carrying a fixed set of ambulances so
the order of each ambulance's messages is kept. Every client costs a socket, a
broker session and a few asyncio tasks, and at a thousand ambulances that is
more work on 2 cores than the messages themselves; a shared client has no
per-ambulance will, so ``online``/``offline`` are always also published
explicitly (a clean disconnect never fires a will anyway).

With ``passwords`` (a broker with accounts, as `aoc up` runs it) every
ambulance logs in as its own device account, which may publish only its own
topics: then each has a connection of its own, whatever ``max_connections``.

Everything the fleet does is decided by random generators seeded from ``seed``
and stepped per point, so two runs with one seed send the same sequence of
positions, snapshots and crashes; only the timestamps differ.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from bridge import contract
from bridge.places import Place
from sim import jpeg
from sim.dispatch import Dispatcher
from sim.motion import Point, Vehicle
from sim.places import PlaceVehicle

log = logging.getLogger(__name__)

KINDS = contract.DEVICE_KINDS
_PUBLISH_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 5.0  # paho's socket connect, then again for the CONNACK
_SIGN_OFF_TIMEOUT = 5.0
_MAX_BACKOFF = 10.0
_ERASE_LINE = "\r\x1b[K"
# paho's own log lines about the socket (``failed to receive on socket``) repeat,
# per connection and per retry, what the failure it raises says: the fleet
# reports that once per cause instead. Shown when debugging.
_PAHO_LOG = logging.getLogger(f"{__name__}.paho")
_PAHO_LOG.addFilter(lambda record: log.isEnabledFor(logging.DEBUG))


@dataclass(slots=True)
class SimStats:
    """What a simulation sent: messages per kind, failed publishes, seconds run."""

    tracking: int = 0
    snap: int = 0
    crash: int = 0
    status: int = 0
    errors: int = 0
    elapsed: float = 0.0
    seed: int | None = None

    @property
    def sent(self) -> int:
        return self.tracking + self.snap + self.crash + self.status

    def counts(self) -> dict[str, int]:
        """Messages sent per kind."""
        return {kind: int(getattr(self, kind)) for kind in KINDS}

    def __str__(self) -> str:
        rate = self.sent / self.elapsed if self.elapsed > 0 else 0.0
        kinds = "  ".join(f"{kind} {n}" for kind, n in self.counts().items())
        return f"{self.elapsed:7.1f}s  {kinds}  {rate:7.1f} msg/s  errors {self.errors}"


@dataclass(slots=True)
class _Ambulance:
    """One simulated device: its identity, its motion and its counters."""

    ambulance_id: str
    vehicle: Vehicle | PlaceVehicle
    rng: random.Random
    snap_phase: int  # points before the first snapshot, so shots are staggered
    seq: int = 0
    snaps: int = 0
    destination: tuple[float, float] | None = None
    topics: dict[str, str] = field(default_factory=dict)
    dispatching: asyncio.Task[None] | None = None  # its destination being set (--places)

    def __post_init__(self) -> None:
        self.topics = {kind: contract.topic(self.ambulance_id, kind) for kind in KINDS}


class _Fleet:
    """The publishing side: timing, payloads and counters for every ambulance."""

    def __init__(
        self,
        *,
        rate: float,
        snap_every: float,
        crash_probability: float,
        stats: SimStats,
        time_scale: float = 1.0,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.period = 1.0 / rate
        self.step = self.period * time_scale  # simulated seconds per point
        self.dispatcher = dispatcher
        # Snapshots and crashes are counted in points, not wall time, to stay deterministic.
        self.snap_points = max(1, round(snap_every * rate)) if snap_every > 0 else 0
        self.crash_probability = crash_probability
        self.stats = stats
        self.refused: list[str] = []  # accounts the broker refused at CONNECT
        self.unreachable: str | None = None  # why a connection kept failing, once given up
        self._causes: set[str] = set()

    def first_time(self, cause: str) -> bool:
        """Whether ``cause`` of a failure comes up for the first time in this run.

        A broker that is down fails every connection at every retry, for the
        same reason: one line says it, ``SimStats.errors`` counts the rest.
        """
        if cause in self._causes:
            return False
        self._causes.add(cause)
        return True

    async def drive(self, amb: _Ambulance, client: aiomqtt.Client, start: float) -> None:
        """Publish ``amb``'s points until cancelled; ``start`` staggers it among the fleet."""
        loop = asyncio.get_running_loop()
        deadline = start
        try:
            while True:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                deadline += self.period
                if deadline < loop.time() - self.period:  # fell behind: skip, don't burst
                    deadline = loop.time()
                point = amb.vehicle.step(self.step)
                await self._tracking(amb, client, point)
                if amb.rng.random() < self.crash_probability:
                    await self._crash(amb, client, point)
                if self.snap_points and (amb.seq + amb.snap_phase) % self.snap_points == 0:
                    await self._snap(amb, client)
                if isinstance(amb.vehicle, PlaceVehicle) and amb.vehicle.wants is not None:
                    self._dispatch(amb, amb.vehicle)
        finally:
            if amb.dispatching is not None:
                amb.dispatching.cancel()

    def _dispatch(self, amb: _Ambulance, vehicle: PlaceVehicle) -> None:
        """Set the destination ``vehicle`` wants, then let it go; it stands meanwhile."""
        if self.dispatcher is None:
            vehicle.depart()
        elif amb.dispatching is None or amb.dispatching.done():
            amb.dispatching = asyncio.create_task(
                self._send(amb, vehicle, self.dispatcher), name=f"sim-dispatch-{amb.ambulance_id}"
            )

    @staticmethod
    async def _send(amb: _Ambulance, vehicle: PlaceVehicle, dispatcher: Dispatcher) -> None:
        assert vehicle.wants is not None
        # Set or not (a failure is logged once and counted), the ambulance drives on.
        await dispatcher.set_destination(amb.ambulance_id, vehicle.wants.id)
        vehicle.depart()

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, kind: str, retain: bool = False
    ) -> None:
        # Our own timeout: aiomqtt's is a 3.11 wait_for, which can swallow a cancellation.
        async with asyncio.timeout(_PUBLISH_TIMEOUT):
            await client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)

    async def _tracking(self, amb: _Ambulance, client: aiomqtt.Client, point: Point) -> None:
        rng = amb.rng
        accuracy = rng.uniform(3.0, 12.0)
        # GPS noise of the order of the reported accuracy, not of the road geometry.
        jitter = accuracy / 3 / 111_320
        body: dict[str, Any] = {
            "lat": round(point.lat + rng.gauss(0, jitter), 6),
            "lon": round(point.lon + rng.gauss(0, jitter), 6),
            "speed": round(point.speed_kmh, 1),
            "heading": round((point.heading + rng.uniform(-2, 2)) % 360, 1),
            "ts": int(time.time() * 1000),
            "seq": amb.seq,
            "accuracy": round(accuracy, 1),
            "altitude": round(rng.uniform(1.0, 8.0), 1),  # Bangkok is flat
        }
        # Dispatch gives a new destination now and then; devices repeat it every 10th point.
        if amb.destination is None or rng.random() < 0.002:
            amb.destination = (
                round(point.lat + rng.uniform(-0.05, 0.05), 6),
                round(point.lon + rng.uniform(-0.05, 0.05), 6),
            )
        if amb.seq % 10 == 0:
            body["dest_lat"], body["dest_lon"] = amb.destination
        amb.seq += 1
        await self._publish(client, amb.topics["tracking"], _dumps(body), "tracking")

    async def _crash(self, amb: _Ambulance, client: aiomqtt.Client, point: Point) -> None:
        body = {
            "lat": round(point.lat, 6),
            "lon": round(point.lon, 6),
            "speed": round(point.speed_kmh, 1),
            "heading": round(point.heading, 1),
            "ts": int(time.time() * 1000),
        }
        amb.vehicle.stop_for(amb.rng.uniform(30, 120))
        await self._publish(client, amb.topics["crash"], _dumps(body), "crash")

    async def _snap(self, amb: _Ambulance, client: aiomqtt.Client) -> None:
        amb.snaps += 1
        ts = int(time.time() * 1000)
        image = jpeg.frame(f"{amb.ambulance_id} shot {amb.snaps} at {ts}")
        # Devices send either form; alternate so the bridge sees both.
        if amb.snaps % 2:
            payload = image
        else:
            name = "front.jpg" if amb.snaps % 4 else "rear.jpg"
            data = base64.b64encode(image).decode("ascii")
            payload = _dumps({"images": [{"name": name, "data": data}], "ts": ts})
        await self._publish(client, amb.topics["snap"], payload, "snap")

    async def status(self, amb: _Ambulance, client: aiomqtt.Client, online: bool) -> None:
        """Publish ``amb``'s retained status."""
        payload = b"online" if online else b"offline"
        await self._publish(client, amb.topics["status"], payload, "status", retain=True)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class _Link:
    """One MQTT connection carrying ``ambulances``: reconnected until ``stop``, then signed off.

    Links are told to stop through ``stop`` and are never cancelled: on Python 3.11 a
    cancellation can be lost inside aiomqtt (its ``wait_for`` returns a result that lands
    with the cancel; a ``TaskGroup`` whose child fails at that moment raises the child's
    error instead), which left a link driving on, or gone without a word. Cut
    mid-connect, aiomqtt also leaves a live connection that nobody owns: no ``offline``,
    and no Last Will either, since the socket never closes.
    """

    def __init__(
        self,
        fleet: _Fleet,
        ambulances: list[_Ambulance],
        offsets: list[float],
        stop: asyncio.Event,
        *,
        host: str,
        port: int,
        identifier: str,
        tls: ssl.SSLContext | None,
        username: str | None = None,
        password: str | None = None,
        give_up_after: float | None = None,
    ) -> None:
        self.fleet = fleet
        self.give_up_after = give_up_after
        self.ambulances = ambulances
        self.offsets = offsets
        self.stop = stop
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.identifier = identifier
        self.tls = tls
        # A device's Last Will can name one topic only, so only a dedicated connection has one.
        single = ambulances[0] if len(ambulances) == 1 else None
        self.will = (
            aiomqtt.Will(single.topics["status"], b"offline", qos=1, retain=True)
            if single
            else None
        )
        self.client: aiomqtt.Client | None = None  # set while connected
        self.said_online = False  # whether the broker holds an ``online`` of ours to undo
        # Since when every attempt has failed (None: the last one got through).
        self.failing_since: float | None = None

    async def run(self) -> None:
        """Publish until ``stop`` is set, reconnecting on failures; then say ``offline``.

        A connection that keeps failing for ``give_up_after`` seconds stops the
        whole fleet (``_Fleet.unreachable`` says why): retrying forever would
        only fill the terminal.
        """
        loop = asyncio.get_running_loop()
        backoff = 0.5
        self.failing_since = loop.time()
        while not self.stop.is_set():
            try:
                await self._connect()
                backoff = 0.5
                await self._drive()
            except Exception as exc:  # a lost connection or a failed publish: reconnect
                self.fleet.stats.errors += 1
                if _refused(exc):  # a wrong password never heals: stop the whole fleet
                    log.error(
                        "simulator connection %s: the broker refused the account %s: %s",
                        self.identifier, self.username or "(anonymous)", exc,
                    )
                    self.fleet.refused.append(self.username or "(anonymous)")
                    self.stop.set()
                    return  # nothing to sign off: this account cannot connect
                cause = (str(exc) or type(exc).__name__).rstrip(".")
                if self.failing_since is None:
                    self.failing_since = loop.time()
                failing = loop.time() - self.failing_since
                if self.give_up_after is not None and failing >= self.give_up_after:
                    if self.fleet.unreachable is None:
                        self.fleet.unreachable = f"{cause} (failing for {failing:.0f} s)"
                    self.stop.set()
                elif self.fleet.first_time(cause):  # the next ones are only counted
                    if _only_mqtt_errors(exc):
                        log.warning(
                            "broker %s:%d: %s; retrying%s",
                            self.host, self.port, cause, self._until(),
                        )
                    else:
                        log.error(
                            "simulator connection %s failed; retrying",
                            self.identifier, exc_info=exc,
                        )
                await self._close()
                delay = backoff * random.uniform(0.5, 1.0)
                if self.give_up_after is not None:
                    # Never sleep past the limit: the last attempt comes as it runs
                    # out, and its failure gives up (a doubled delay overshot it by
                    # as much again: "--give-up-after 5" gave up after 10 s).
                    delay = min(delay, max(self.give_up_after - failing, 0.0))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.stop.wait()
                backoff = min(backoff * 2, _MAX_BACKOFF)
        await self._sign_off()

    def _until(self) -> str:
        return f" for up to {self.give_up_after:g} s" if self.give_up_after is not None else ""

    def _new_client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.identifier,
            will=self.will,
            clean_session=True,
            keepalive=30,
            timeout=_CONNECT_TIMEOUT,  # bounds the CONNACK and the DISCONNECT waits
            tls_context=self.tls,
            logger=_PAHO_LOG,
        )

    async def _connect(self) -> None:
        """Connect; a cancellation waits for the attempt to land and keeps what it opened."""
        client = self._new_client()
        # Entering is not cut short (aiomqtt bounds it): see the class docstring.
        entering = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(entering)
        except asyncio.CancelledError:
            await asyncio.wait({entering})
            if not entering.cancelled() and entering.exception() is None:
                self.client = client  # so that whoever cancelled us can close it
            raise
        self.client = client

    async def _drive(self) -> None:
        """Say ``online``, then publish every ambulance's points until ``stop`` is set."""
        client = self.client
        assert client is not None
        for amb in self.ambulances:
            await self.fleet.status(amb, client, online=True)
        self.said_online = True
        self.failing_since = None  # connected and published: the broker is there
        start = asyncio.get_running_loop().time()
        drivers = [
            asyncio.create_task(
                self.fleet.drive(amb, client, start + offset), name=f"sim-{amb.ambulance_id}"
            )
            for amb, offset in zip(self.ambulances, self.offsets, strict=True)
        ]
        stopping = asyncio.create_task(self.stop.wait(), name=f"sim-stop-{self.identifier}")
        try:
            done, _ = await asyncio.wait([*drivers, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*drivers, stopping):
                task.cancel()
            _, stuck = await asyncio.wait([*drivers, stopping], timeout=_PUBLISH_TIMEOUT)
            for task in stuck:  # not expected: every await in a driver obeys cancellation
                log.error("simulator task %s ignored its cancellation", task.get_name())
        for task in drivers:
            if task in done:  # drivers run until cancelled, so this one failed
                if task.cancelled():
                    raise aiomqtt.MqttError(f"{task.get_name()} was cancelled")
                raise task.exception() or aiomqtt.MqttError(f"{task.get_name()} stopped")

    async def _sign_off(self) -> None:
        """Publish ``offline`` for every ambulance and disconnect, bounded; never raises.

        Stopped between connections (after a failure), the link connects once
        more to say it: a device going offline always says so. A link that never
        said ``online`` has nothing to undo.
        """
        if not self.said_online:
            await self._close()
            return
        try:
            async with asyncio.timeout(_SIGN_OFF_TIMEOUT):
                if self.client is None:
                    await self._connect()
                assert self.client is not None
                for amb in self.ambulances:
                    await self.fleet.status(amb, self.client, online=False)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            self.fleet.stats.errors += 1
            cause = str(exc) or type(exc).__name__
            if self.fleet.first_time(f"offline: {cause}"):
                log.warning("could not say offline: %s", cause)
        finally:
            await self._close()

    async def _close(self) -> None:
        """Disconnect cleanly, if connected; bounded by the client's own timeout."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``tasks`` to end even if cancelled meanwhile (their sign-off is bounded)."""
    interrupted: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.wait(tasks)
            break
        except asyncio.CancelledError as exc:  # a second Ctrl-C: still let every link sign off
            interrupted = exc
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator %s crashed", task.get_name(), exc_info=task.exception())
    if interrupted is not None:
        raise interrupted


# CONNACK codes of a refused account: bad username or password, not authorised
# (MQTT 3.1.1's 4 and 5, MQTT 5's 134 and 135, which paho reports for both).
_REFUSED_CODES = frozenset({4, 5, 134, 135})


class AccountRefused(Exception):
    """The broker refused some devices' accounts; the simulation stopped. The text names them."""


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker refusing the account at CONNECT.

    Only a CONNACK (``MqttConnectError``): paho's own error numbers overlap
    the codes, and its 4 (``MQTT_ERR_NO_CONN``, a publish on a connection the
    broker has just closed) is no refusal of an account.
    """
    if not isinstance(exc, MqttConnectError):
        return False
    return getattr(exc.rc, "value", exc.rc) in _REFUSED_CODES


def _only_mqtt_errors(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_mqtt_errors(inner) for inner in exc.exceptions)
    return isinstance(exc, aiomqtt.MqttError | TimeoutError)


class BrokerUnreachable(Exception):
    """A connection kept failing for ``give_up_after`` seconds; the simulation stopped."""


class _Progress(logging.Filter):
    """The live progress line on ``stream``.

    On a terminal it is one line rewritten in place twice a second, erased
    whenever a log record is about to be written to the same stream (so that
    the record starts on a line of its own) and at the end. Elsewhere (a pipe,
    a log file) it is a line of its own every ``every`` seconds.
    """

    def __init__(
        self, stats: SimStats, stream: TextIO, started: float, *, terminal: bool, every: float
    ) -> None:
        super().__init__()
        self.stats, self.stream, self.started = stats, stream, started
        self.terminal = terminal
        self.every = 0.5 if terminal else every
        self.drawn = False  # a partial line is on the terminal
        self.handlers = [
            handler
            for handler in logging.getLogger().handlers
            if getattr(handler, "stream", None) is stream
        ]

    async def run(self) -> None:
        """Write the line every ``every`` seconds until cancelled; then erase it (terminal)."""
        for handler in self.handlers:
            handler.addFilter(self)
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.every)
                self.stats.elapsed = loop.time() - self.started
                if self.terminal:
                    self.stream.write(f"{_ERASE_LINE}[simulate] {self.stats}")
                    self.drawn = True
                else:
                    self.stream.write(f"[simulate] {self.stats}\n")
                self.stream.flush()
        finally:
            for handler in self.handlers:
                handler.removeFilter(self)
            self.erase()

    def erase(self) -> None:
        if self.drawn:
            self.stream.write(_ERASE_LINE)
            self.stream.flush()
            self.drawn = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.erase()  # the next tick draws the line again, under the record
        return True


def check_arguments(
    *,
    ambulances: int,
    rate: float,
    duration: float | None,
    crash_probability: float,
    id_prefix: str,
) -> None:
    """Raise ``ValueError`` for arguments that cannot make valid traffic."""
    if ambulances < 1:
        raise ValueError("ambulances must be at least 1")
    if not 0 < rate < math.inf:
        raise ValueError("rate must be a positive number of points per second")
    if duration is not None and duration < 0:
        raise ValueError("duration must be >= 0 seconds (or None to run until cancelled)")
    if not 0.0 <= crash_probability <= 1.0:
        raise ValueError("crash_probability must be between 0 and 1")
    # The last id is the longest; a reserved prefix (CRASH_NOTIFY_) makes every id reserved.
    problem = contract.ambulance_id_problem(ambulance_ids(id_prefix, ambulances)[-1])
    if problem is not None:
        raise ValueError(f"id prefix {id_prefix!r} would make invalid ambulance ids: {problem}")


def ambulance_ids(prefix: str, ambulances: int) -> list[str]:
    """The fleet's ids: ``prefix`` and 1 to ``ambulances``, zero-padded to at least 3 digits."""
    width = max(3, len(str(ambulances)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, ambulances + 1)]


async def simulate(
    *,
    host: str,
    port: int,
    ambulances: int,
    rate: float,
    duration: float | None,
    passwords: Mapping[str, str] | None = None,
    snap_every: float = 30.0,
    crash_probability: float = 0.0005,
    seed: int | None = None,
    id_prefix: str = "SIM",
    progress: bool = True,
    stream: TextIO | None = None,
    force_progress: bool = False,
    progress_every: float = 10.0,
    max_connections: int = 100,
    tls: ssl.SSLContext | None = None,
    give_up_after: float | None = None,
    stats: SimStats | None = None,
    places: list[Place] | None = None,
    time_scale: float = 1.0,
    dispatcher: Dispatcher | None = None,
) -> SimStats:
    """Run a fleet of ``ambulances`` publishing to ``host:port`` for ``duration`` seconds.

    ``duration=None`` runs until cancelled (Ctrl-C); either way every ambulance
    publishes ``offline`` before its connection closes, within a few seconds
    (a second cancellation does not cut that short). ``snap_every <= 0``
    turns snapshots off. With ``progress``, a live progress line goes to
    ``stream`` (default: stderr): rewritten in place on a terminal (or with
    ``force_progress``), else a line every ``progress_every`` seconds (0:
    none). It is erased at the end: the caller prints the summary it wants.
    Raises ``ValueError`` for impossible arguments; connection failures are
    retried, logged once per cause and counted in ``SimStats.errors``; a
    connection failing for ``give_up_after`` seconds (None: never) stops the
    simulation: ``BrokerUnreachable``. ``passwords`` maps each ambulance id to
    its device account's password (the username is the id); None: anonymous.
    An account the broker refuses stops the simulation: ``AccountRefused``. ``tls``
    (``aoc.tls.client_context``) puts every connection on TLS, verified by that
    context. ``stats``, if given, is filled in as the run goes: what was sent
    is known even when the run is cancelled.

    ``places`` (``sim.places``): the ambulances drive between them instead of
    on Bangkok's grid, and ``dispatcher`` (if any) sets each destination
    before the ambulance leaves. ``time_scale``: simulated seconds per second
    of the run (the vehicles move that much faster; the speeds they report
    are their own).
    """
    check_arguments(
        ambulances=ambulances,
        rate=rate,
        duration=duration,
        crash_probability=crash_probability,
        id_prefix=id_prefix,
    )
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    if stats is None:
        stats = SimStats()
    stats.seed = seed
    if not 0 < time_scale < math.inf:
        raise ValueError("time_scale must be a positive number")
    fleet = _Fleet(
        rate=rate, snap_every=snap_every, crash_probability=crash_probability, stats=stats,
        time_scale=time_scale, dispatcher=dispatcher,
    )
    master = random.Random(seed)

    def vehicle(rng: random.Random) -> Vehicle | PlaceVehicle:
        return PlaceVehicle(rng, places) if places else Vehicle(rng)

    fleet_members = [
        _Ambulance(
            ambulance_id=ambulance_id,
            vehicle=vehicle(random.Random(master.getrandbits(64))),
            rng=random.Random(master.getrandbits(64)),
            snap_phase=master.randrange(fleet.snap_points or 1),
        )
        for ambulance_id in ambulance_ids(id_prefix, ambulances)
    ]
    # Spread the fleet evenly over one period so the broker sees a steady stream.
    offsets = [i * fleet.period / ambulances for i in range(ambulances)]
    if passwords is not None:
        missing = [a.ambulance_id for a in fleet_members if a.ambulance_id not in passwords]
        if missing:
            raise ValueError(f"no password for {', '.join(missing[:3])}")
        max_connections = ambulances  # an account may publish for its own ambulance only
    links = max(1, min(ambulances, max_connections))
    run_id = f"{random.SystemRandom().getrandbits(32):08x}"
    log.info(
        "simulating %d ambulances at %.2f Hz over %d connections to %s:%d (seed %d)",
        ambulances, rate, links, host, port, seed,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = asyncio.Event()
    # With accounts there is one ambulance per link: it logs in as that device.
    logins = [
        (amb.ambulance_id, passwords[amb.ambulance_id]) if passwords is not None else (None, None)
        for amb in fleet_members[:links]
    ]
    tasks = [
        asyncio.create_task(
            _Link(
                fleet,
                fleet_members[k::links],
                offsets[k::links],
                stop,
                host=host,
                port=port,
                identifier=f"{id_prefix}-sim-{run_id}-{k}",
                tls=tls,
                username=logins[k][0],
                password=logins[k][1],
                give_up_after=give_up_after,
            ).run(),
            name=f"sim-link-{k}",
        )
        for k in range(links)
    ]
    # Looked up now, not bound at import: whatever stderr is when the run starts.
    stream = stream or sys.stderr
    terminal = force_progress or stream.isatty()
    reporter = (
        asyncio.create_task(
            _Progress(stats, stream, started, terminal=terminal, every=progress_every).run(),
            name="sim-progress",
        )
        if progress and (terminal or progress_every > 0)
        else None
    )
    try:
        await asyncio.wait(tasks, timeout=duration)
    finally:
        stop.set()
        await _settle(tasks)
        stats.elapsed = loop.time() - started
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        # DEBUG: the caller prints the summary (at INFO it would show twice).
        log.debug("simulation stopped: %s", stats)
    if fleet.unreachable is not None:
        raise BrokerUnreachable(f"cannot reach the broker at {host}:{port}: {fleet.unreachable}")
    if fleet.refused:
        refused = sorted(fleet.refused)
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise AccountRefused(
            f"the broker refused the account of {', '.join(refused[:3])}{more} "
            "(wrong password, or no such account)"
        )
    return stats
