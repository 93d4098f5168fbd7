"""The simulator: its motion model and frames offline, its traffic against a real Mosquitto.

Every payload it publishes must pass the bridge's own validation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import math
import os
import random
import struct
import subprocess
import sys
import textwrap
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from aoc import credentials
from bridge.messages import Crash, Snap, Status, Tracking
from bridge.validate import Limits, parse
from broker import accounts
from sim import jpeg, motion
from sim.fleet import SimStats, simulate
from storage.base import AUDIT, Query
from storage.sqlite import SQLiteDocumentStore
from tests import services

LIMITS = Limits(max_image_bytes=5 * 1024 * 1024, max_upload_files=10)
JPEG_MAGIC = b"\xff\xd8\xff"


# -- the motion model, without MQTT ---------------------------------------------------------


def drive(seed: int, seconds: int, dt: float = 1.0) -> list[motion.Point]:
    vehicle = motion.Vehicle(random.Random(seed))
    return [vehicle.step(dt) for _ in range(int(seconds / dt))]


def metres(a: motion.Point, b: motion.Point) -> float:
    north = (a.lat - b.lat) * 111_320
    east = (a.lon - b.lon) * 111_320 * math.cos(math.radians(a.lat))
    return math.hypot(north, east)


def test_speeds_cross_both_thresholds_and_stop_at_lights() -> None:
    """Test that an hour of driving crosses 80 and 120 km/h and also stands still at times."""
    for seed in range(4):
        speeds = [p.speed_kmh for p in drive(seed, 3600)]
        assert max(speeds) > 120, seed
        assert any(80 < s <= 120 for s in speeds), seed
        assert sum(s < 0.5 for s in speeds) > 5, seed  # red lights
        assert min(speeds) >= 0 and max(speeds) <= 150, seed


def test_motion_is_continuous_and_stays_around_bangkok() -> None:
    """Test that no step jumps further than its speed allows and the fleet stays in the city."""
    points = drive(1, 7200, dt=0.5)
    for before, after in itertools.pairwise(points):
        # No further than 0.5 s at the higher of the two speeds allows, plus float error.
        fastest = max(before.speed_kmh, after.speed_kmh) / 3.6
        assert metres(before, after) <= fastest * 0.5 + 0.01
        assert 0 <= after.heading < 360
    for p in points:
        assert abs(p.lat - motion.CENTER_LAT) < 0.15
        assert abs(p.lon - motion.CENTER_LON) < 0.15
    assert metres(points[0], points[-1]) > 500 or len({(p.lat, p.lon) for p in points}) > 1000


def test_accelerations_are_bounded() -> None:
    """Test that speed changes at most as fast as the model's hard braking."""
    points = drive(2, 3600)
    for before, after in itertools.pairwise(points):
        change = abs(after.speed_kmh - before.speed_kmh) / 3.6
        assert change <= motion.HARD_BRAKE + 1e-6


def test_same_seed_same_route() -> None:
    """Test that the model is deterministic for a seed and differs between seeds."""
    assert drive(5, 600) == drive(5, 600)
    assert drive(5, 600) != drive(6, 600)


# -- frames -------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> list[int]:
    """Walk a baseline JPEG's marker segments up to the scan; fail on any malformed one."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    markers, i = [], 2
    while True:
        assert data[i] == 0xFF, f"no marker at {i}"
        marker = data[i + 1]
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return markers
        i += 2 + length


def test_frames_are_valid_distinct_jpegs() -> None:
    """Test that each frame is a well-formed 96x64 baseline JPEG and comments make them differ."""
    plain = jpeg.frame()
    first, second = jpeg.frame("A1 shot 1"), jpeg.frame("A1 shot 2")
    for data in (plain, first, second):
        markers = jpeg_segments(data)
        assert markers[0] == 0xE0  # JFIF APP0 stays first
        assert 0xC0 in markers and 0xC4 in markers and 0xDB in markers
        sof = data.index(b"\xff\xc0")
        height, width = struct.unpack(">HH", data[sof + 5 : sof + 9])
        assert (width, height) == (96, 64)
    assert 0xFE not in jpeg_segments(plain)
    assert b"A1 shot 1" in first and first != second
    assert len(first) < 2048


# -- against Mosquitto ----------------------------------------------------------------------


class Received(list[aiomqtt.Message]):
    """Messages collected by a subscriber; ``until`` waits for a condition on them."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()

    async def add(self, message: aiomqtt.Message) -> None:
        async with self.changed:
            self.append(message)
            self.changed.notify_all()

    async def until(self, predicate: Callable[[Received], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: predicate(self))

    async def settle(self, count: int) -> None:
        """Wait for ``count`` messages (QoS 1 delivery lags the publisher a little), then a bit."""
        await self.until(lambda r: len(r) >= count, 5.0)
        await asyncio.sleep(0.1)  # so that anything unexpected beyond ``count`` shows up too

    def with_payload(self, body: bytes) -> int:
        """How many messages carry exactly ``body``."""
        return sum(payload(m) == body for m in self)


@contextlib.asynccontextmanager
async def collect(port: int, prefix: str) -> AsyncIterator[Received]:
    """Every message on ``aoc/<prefix>*/...`` while the block runs (QoS 1, retained included)."""
    received = Received()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"t-{uuid.uuid4().hex}") as client:
        await client.subscribe("aoc/+/#", qos=1)

        async def pump() -> None:
            async for message in client.messages:
                if message.topic.value.split("/")[1].startswith(prefix):
                    await received.add(message)

        task = asyncio.create_task(pump())
        try:
            yield received
        finally:
            # Bounded, so a failing test fails instead of hanging in teardown; leaving the
            # client is bounded by its own timeout (10 s).
            task.cancel()
            await asyncio.wait({task}, timeout=10.0)


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[asyncio.Task[SimStats]]:
    """``simulate(**kwargs)`` in a task, cancelled (bounded) when the block ends however it ends."""
    task = asyncio.create_task(simulate(**kwargs))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=30.0)


async def interrupt(task: asyncio.Task[SimStats], times: int = 1) -> None:
    """Cancel ``task`` as Ctrl-C does (``times`` over) and check that it ends, cancelled."""
    for _ in range(times):
        task.cancel()
        await asyncio.sleep(0)  # a second Ctrl-C lands while the first is being handled
    # A guard against a hang, not a timing assertion: signing off takes well under a second.
    await asyncio.wait({task}, timeout=30.0)
    assert task.cancelled()


def payload(message: aiomqtt.Message) -> bytes:
    assert isinstance(message.payload, bytes | bytearray)
    return bytes(message.payload)


def by_kind(received: Received) -> dict[str, list[aiomqtt.Message]]:
    kinds: dict[str, list[aiomqtt.Message]] = defaultdict(list)
    for message in received:
        kinds[message.topic.value.split("/")[2]].append(message)
    return kinds


def prefix() -> str:
    return f"T{uuid.uuid4().hex[:6]}x"


async def test_fleet_traffic_passes_the_bridge_validation(mosquitto: services.Service) -> None:
    """Test topics, payload validity, seq order, both snapshot forms, crashes and statuses."""
    ids = prefix()
    async with collect(mosquitto.port, ids) as received:
        stats = await simulate(
            host="127.0.0.1",
            port=mosquitto.port,
            ambulances=3,
            rate=10,
            duration=2.0,
            snap_every=0.3,
            crash_probability=0.15,
            seed=7,
            id_prefix=ids,
            progress=False,
        )
        await received.settle(stats.sent)

    assert stats.errors == 0
    kinds = by_kind(received)
    assert set(kinds) == {"tracking", "snap", "crash", "status"}
    assert {kind: len(kinds[kind]) for kind in kinds} == stats.counts()
    assert stats.tracking >= 3 * 10 * 2 // 2  # 10 Hz for 2 s each, with room for a slow machine
    senders = {m.topic.value.split("/")[1] for m in received}
    assert senders == {f"{ids}001", f"{ids}002", f"{ids}003"}

    now = datetime.now(UTC)
    seqs: dict[str, list[int]] = defaultdict(list)
    destinations = 0
    for message in kinds["tracking"]:
        parsed = parse(message.topic.value, payload(message), now, LIMITS)
        assert isinstance(parsed, Tracking), parsed
        assert parsed.seq is not None and parsed.accuracy is not None
        assert parsed.altitude is not None and parsed.heading is not None
        assert abs((parsed.ts - now).total_seconds()) < 30
        seqs[parsed.ambulance_id].append(parsed.seq)
        destinations += parsed.destination is not None
    for sequence in seqs.values():
        assert sequence == list(range(len(sequence)))  # in order, none lost, none repeated
    assert destinations >= 3

    for message in kinds["crash"]:
        parsed = parse(message.topic.value, payload(message), now, LIMITS)
        assert isinstance(parsed, Crash), parsed

    forms: Counter[str] = Counter()
    for message in kinds["snap"]:
        body = payload(message)
        if body.startswith(JPEG_MAGIC):
            forms["raw"] += 1
            jpeg_segments(body)
        else:
            forms["json"] += 1
            images = json.loads(body)["images"]
            assert all(base64.b64decode(i["data"]).startswith(JPEG_MAGIC) for i in images)
        parsed = parse(message.topic.value, body, now, LIMITS)
        assert isinstance(parsed, Snap), parsed
        assert [image.ext for image in parsed.images] == ["jpg"]
    assert forms["raw"] >= 1 and forms["json"] >= 1
    assert len({payload(m) for m in kinds["snap"]}) == len(kinds["snap"])  # no two shots alike

    statuses: dict[str, list[bool]] = defaultdict(list)
    for message in kinds["status"]:
        parsed = parse(message.topic.value, payload(message), now, LIMITS)
        assert isinstance(parsed, Status), parsed
        statuses[parsed.ambulance_id].append(parsed.online)
    assert all(flags == [True, False] for flags in statuses.values())
    assert len(statuses) == 3


async def test_status_is_retained_offline_after_a_run(mosquitto: services.Service) -> None:
    """Test that a subscriber arriving after the run finds each ambulance's retained `offline`."""
    ids = prefix()
    stats = await simulate(
        host="127.0.0.1", port=mosquitto.port, ambulances=2, rate=5, duration=0.5,
        seed=1, id_prefix=ids, progress=False,
    )
    assert stats.status == 4
    async with collect(mosquitto.port, ids) as received:
        await received.settle(2)
    assert sorted((m.topic.value, payload(m), m.retain) for m in received) == [
        (f"aoc/{ids}001/status", b"offline", True),
        (f"aoc/{ids}002/status", b"offline", True),
    ]


async def test_shared_connections_send_what_dedicated_ones_send(
    mosquitto: services.Service,
) -> None:
    """Test that a seed fixes the traffic whether ambulances share connections or not."""
    runs: list[dict[str, list[dict[str, object]]]] = []
    for max_connections in (5, 2):
        ids = prefix()
        async with collect(mosquitto.port, ids) as received:
            stats = await simulate(
                host="127.0.0.1", port=mosquitto.port, ambulances=5, rate=10, duration=1.0,
                snap_every=0, crash_probability=0.0, seed=99, id_prefix=ids, progress=False,
                max_connections=max_connections,
            )
            await received.settle(stats.sent)
        assert stats.errors == 0 and stats.snap == 0 and stats.crash == 0
        assert stats.status == 10  # online and offline, published explicitly on shared links
        tracks: dict[str, list[dict[str, object]]] = defaultdict(list)
        for message in by_kind(received)["tracking"]:
            body = json.loads(payload(message))
            body.pop("ts")
            tracks[message.topic.value.split("/")[1].removeprefix(ids)].append(body)
        runs.append(tracks)
    first, second = runs
    assert set(first) == set(second) == {"001", "002", "003", "004", "005"}
    for key in first:
        common = min(len(first[key]), len(second[key]))
        assert common >= 5
        assert first[key][:common] == second[key][:common]


async def test_last_will_marks_a_killed_device_offline(mosquitto: services.Service) -> None:
    """Test that a simulator killed outright leaves `offline` retained through its Last Will."""
    ids = prefix()
    code = textwrap.dedent(
        f"""
        import asyncio
        from sim.fleet import simulate
        asyncio.run(simulate(host="127.0.0.1", port={mosquitto.port}, ambulances=2, rate=2,
                             duration=None, seed=3, id_prefix="{ids}", progress=False))
        """
    )
    async with collect(mosquitto.port, ids) as received:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        try:
            await received.until(lambda r: sum(m.topic.value.endswith("/tracking") for m in r) >= 2)
        finally:
            proc.kill()  # SIGKILL: no clean disconnect, so only the will can say offline
            await proc.wait()
        await received.until(lambda r: r.with_payload(b"offline") >= 2)
    offline = {m.topic.value for m in received if payload(m) == b"offline"}
    assert offline == {f"aoc/{ids}001/status", f"aoc/{ids}002/status"}


async def test_cancellation_publishes_offline(mosquitto: services.Service) -> None:
    """Test that cancelling a run with no duration (Ctrl-C) still says `offline` for each device."""
    ids = prefix()
    async with (
        collect(mosquitto.port, ids) as received,
        running(
            host="127.0.0.1", port=mosquitto.port, ambulances=2, rate=5, duration=None,
            seed=2, id_prefix=ids, progress=False,
        ) as task,
    ):
        await received.until(lambda r: r.with_payload(b"online") >= 2)
        await asyncio.sleep(0.5)
        await interrupt(task)
        await received.until(lambda r: r.with_payload(b"offline") >= 2, 15.0)
    offline = {m.topic.value for m in received if payload(m) == b"offline"}
    assert offline == {f"aoc/{ids}001/status", f"aoc/{ids}002/status"}


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.003, 0.01, 0.05])
async def test_cancellation_while_connecting_publishes_offline(
    mosquitto: services.Service, delay: float
) -> None:
    """Test that a Ctrl-C landing mid-connect still says `offline` and leaves no connection open.

    Cut inside aiomqtt's connect, a link used to leave a live connection behind: no `offline`,
    and no Last Will either, as that socket never closed.
    """
    ids = prefix()
    async with (
        collect(mosquitto.port, ids) as received,
        running(
            host="127.0.0.1", port=mosquitto.port, ambulances=2, rate=20, duration=None,
            seed=4, id_prefix=ids, progress=False,
        ) as task,
    ):
        await asyncio.sleep(delay)
        await interrupt(task)
        await received.until(lambda r: r.with_payload(b"offline") >= 2, 15.0)
    offline = {m.topic.value for m in received if payload(m) == b"offline"}
    assert offline == {f"aoc/{ids}001/status", f"aoc/{ids}002/status"}


async def test_second_cancellation_does_not_cut_the_sign_off_short(
    mosquitto: services.Service,
) -> None:
    """Test that a second Ctrl-C still lets every ambulance of a shared connection say `offline`."""
    ids = prefix()
    async with (
        collect(mosquitto.port, ids) as received,
        running(
            host="127.0.0.1", port=mosquitto.port, ambulances=4, rate=5, duration=None,
            seed=5, id_prefix=ids, progress=False, max_connections=1,
        ) as task,
    ):
        await received.until(lambda r: r.with_payload(b"online") >= 4)
        await interrupt(task, times=3)
        # A shared connection has no will: these are the explicit publishes.
        await received.until(lambda r: r.with_payload(b"offline") >= 4, 15.0)
    offline = {m.topic.value for m in received if payload(m) == b"offline"}
    assert offline == {f"aoc/{ids}00{i}/status" for i in range(1, 5)}


async def test_unreachable_broker_is_counted_not_raised() -> None:
    """Test that a broker that is not there makes errors in the stats, not an exception."""
    stats = await simulate(
        host="127.0.0.1", port=services.free_port(), ambulances=2, rate=1, duration=1.0,
        seed=1, progress=False,
    )
    assert stats.errors >= 2 and stats.tracking == 0
    assert stats.elapsed == pytest.approx(1.0, abs=0.5)


async def test_a_broker_stopped_mid_run_is_no_refused_account(tmp_path: Path) -> None:
    """Test a broker that stops during a run: failures counted, not blamed on the accounts.

    A publish on the connection the broker closed fails with paho's error 4
    (not connected), which was taken for CONNACK code 4 (bad username or
    password): the run stopped with ``AccountRefused``.
    """
    ids = prefix()
    broker = services.mosquitto(tmp_path / "broker").start()
    task: asyncio.Task[SimStats] | None = None
    try:
        async with collect(broker.port, ids) as received:
            task = asyncio.create_task(simulate(
                host="127.0.0.1", port=broker.port, ambulances=2, rate=5, duration=3.0,
                snap_every=0, seed=1, id_prefix=ids, progress=False,
            ))
            await received.until(lambda r: len(by_kind(r)["tracking"]) >= 2)
        broker.stop()
        async with asyncio.timeout(30):
            stats = await task
    finally:
        broker.stop()
        if task is not None and not task.done():  # the test failed: don't leave it running
            task.cancel()
            await asyncio.wait({task}, timeout=30.0)
    assert stats.tracking >= 2
    assert stats.errors > 0


async def test_progress_line_only_when_asked(mosquitto: services.Service) -> None:
    """Test the live progress line: rewritten in place when forced, then erased; else silent."""
    forced, quiet = io.StringIO(), io.StringIO()
    for stream, force in ((forced, True), (quiet, False)):
        await simulate(
            host="127.0.0.1", port=mosquitto.port, ambulances=1, rate=5, duration=0.7,
            seed=1, id_prefix=prefix(), stream=stream, force_progress=force,
        )
    text = forced.getvalue()
    assert text.startswith("\r\x1b[K[simulate]") and text.endswith("\r\x1b[K")
    assert "tracking" in text and "msg/s" in text and "errors 0" in text
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ambulances": 0},
        {"rate": 0},
        {"rate": -1},
        {"duration": -1},
        {"crash_probability": 1.5},
        {"id_prefix": "bad/prefix"},
        {"id_prefix": "x" * 70},
        {"id_prefix": "CRASH_NOTIFY_"},
        {"id_prefix": "A" * 62, "ambulances": 5},  # "A" * 62 + "005": 65 characters
    ],
)
async def test_impossible_arguments_are_refused(kwargs: dict[str, object]) -> None:
    """Test that arguments that cannot make valid traffic raise ValueError before connecting."""
    arguments: dict[str, object] = {
        "host": "127.0.0.1", "port": 1, "ambulances": 1, "rate": 1.0, "duration": 0.1,
        "progress": False, **kwargs,
    }
    with pytest.raises(ValueError):
        await simulate(**arguments)  # type: ignore[arg-type]


def test_stats_summary() -> None:
    """Test the summary line the CLI prints."""
    stats = SimStats(tracking=10, snap=2, crash=1, status=4, errors=0, elapsed=2.0)
    assert stats.sent == 17
    assert stats.counts() == {"tracking": 10, "snap": 2, "crash": 1, "status": 4}
    assert "tracking 10" in str(stats) and "8.5 msg/s" in str(stats)


# -- the simulator stays out of the runtime -----------------------------------------------

_SIM_LOADED = "print(sorted(m for m in sys.modules if m == 'sim' or m.startswith('sim.')))"


def _modules_after(code: str) -> list[str]:
    """The ``sim`` modules loaded by ``code`` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\n{_SIM_LOADED}"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    loaded: list[str] = json.loads(result.stdout.strip().replace("'", '"'))
    return loaded


@pytest.mark.parametrize("command", ["serve", "bridge", "api", "realtime", "up", "simulate"])
def test_the_runtime_does_not_import_the_simulator(command: str) -> None:
    """Test that the lifecycle, `aoc up` and the parsed command line load nothing of `sim`."""
    code = textwrap.dedent(
        f"""
        import aoc.lifecycle, aoc.supervise
        from aoc import cli
        cli._parser().parse_args([{command!r}])
        """
    )
    assert _modules_after(code) == []


def test_the_check_sees_the_simulator_once_loaded() -> None:
    """Test the check itself: `aoc simulate`'s import does show up."""
    assert "sim.fleet" in _modules_after("from sim.fleet import simulate")


# -- with accounts, as `aoc up` runs the broker -------------------------------------------

ADMIN_PASSWORD = "fake-simulate-admin"


@pytest.fixture(scope="module")
def secure_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    """A broker with accounts on (the dynamic security plugin), only ``admin`` at first."""
    with services.mosquitto(
        tmp_path_factory.mktemp("secure-mosquitto"), admin_password=ADMIN_PASSWORD
    ) as service:
        yield service


async def _aoc_simulate(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    """Run `aoc simulate <args>`: its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aoc.cli", "simulate", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _env(broker: services.Service, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOC_")}
    return {**env, "AOC_MQTT_PORT": str(broker.port), "AOC_DATA_DIR": str(data_dir),
            "AOC_LOG_LEVEL": "WARNING"}


async def test_simulate_logs_in_as_each_device_and_creates_missing_ones(
    secure_mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test `aoc simulate` with the credentials file `aoc up` writes: every device gets through.

    Two ids have accounts already (their passwords in the file); the third is
    created through the file's admin account, recorded in the file and audited.
    A bridge account receives every ambulance's traffic: each logged in as itself.
    """
    ids = prefix()
    data = tmp_path / "data"
    path = data / "credentials.json"
    bridge, bridge_pw = f"bridge-{ids}", accounts.new_password()
    async with accounts.DynsecAdmin(
        host="127.0.0.1", port=secure_mosquitto.port, username=services.ADMIN,
        password=ADMIN_PASSWORD,
    ) as admin:
        await admin.set_default_access()
        await admin.create_client(bridge, bridge_pw, accounts.bridge_acls())
        with credentials.editing(path) as creds:
            creds.set_account("admin", services.ADMIN, ADMIN_PASSWORD)
            for n in ("001", "002"):
                creds.devices[ids + n] = accounts.new_password()
                await admin.create_client(
                    ids + n, creds.devices[ids + n], accounts.device_acls(ids + n)
                )
    received = Received()
    async with aiomqtt.Client(
        "127.0.0.1", secure_mosquitto.port, username=bridge, password=bridge_pw
    ) as bridge_client:
        await bridge_client.subscribe("aoc/+/tracking", qos=1)
        await bridge_client.subscribe("aoc/+/status", qos=1)

        async def pump() -> None:
            async for message in bridge_client.messages:
                await received.add(message)

        task = asyncio.create_task(pump())
        try:
            code, err = await _aoc_simulate(
                _env(secure_mosquitto, data), tmp_path,
                "--ambulances", "3", "--prefix", ids, "--rate", "5", "--duration", "1",
                "--snap-every", "0", "--seed", "1",
            )
            assert code == 0, err
            assert "errors 0" in err
            await received.until(
                lambda r: {m.topic.value for m in r if payload(m) == b"offline"}
                == {f"aoc/{ids}{n}/status" for n in ("001", "002", "003")}
            )
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=10.0)
    senders = {m.topic.value.split("/")[1] for m in received if "tracking" in m.topic.value}
    assert senders == {f"{ids}001", f"{ids}002", f"{ids}003"}
    assert f"{ids}003" in credentials.load(path).devices
    async with SQLiteDocumentStore(data / "aoc.sqlite3") as store:
        page = await store.find(Query(AUDIT, limit=10))
    assert [(d["action"], d["target"], d["details"]) for d in page.items] == [
        ("device.add", f"{ids}003", {"via": "aoc simulate"})
    ]


async def test_simulate_without_a_way_to_make_accounts_fails_with_one_line(
    secure_mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test ids the credentials file lacks, with no admin password anywhere: exit 2, one line."""
    data = tmp_path / "data"
    with credentials.editing(data / "credentials.json") as creds:
        creds.devices["SIM001"] = "whatever"
    code, err = await _aoc_simulate(
        _env(secure_mosquitto, data), tmp_path, "--ambulances", "3", "--duration", "1"
    )
    assert code == 2
    assert err.strip().splitlines() == [
        f"aoc simulate: {data / 'credentials.json'} holds no password for SIM002, SIM003 and "
        "no admin account to create them: run fewer ambulances, or set AOC_MQTT_ADMIN_PASSWORD"
    ]


async def test_with_accounts_each_ambulance_gets_its_own_connection(
    secure_mosquitto: services.Service,
) -> None:
    """Test that passwords override max_connections: a shared link could publish for one id only."""
    ids = prefix()
    bridge, bridge_pw = f"bridge-{ids}", accounts.new_password()
    passwords = {ids + n: accounts.new_password() for n in ("001", "002")}
    async with accounts.DynsecAdmin(
        host="127.0.0.1", port=secure_mosquitto.port, username=services.ADMIN,
        password=ADMIN_PASSWORD,
    ) as admin:
        await admin.create_client(bridge, bridge_pw, accounts.bridge_acls())
        for ambulance_id, password in passwords.items():
            await admin.create_client(ambulance_id, password, accounts.device_acls(ambulance_id))
    received = Received()
    async with aiomqtt.Client(
        "127.0.0.1", secure_mosquitto.port, username=bridge, password=bridge_pw
    ) as bridge_client:
        await bridge_client.subscribe("aoc/+/tracking", qos=1)

        async def pump() -> None:
            async for message in bridge_client.messages:
                await received.add(message)

        task = asyncio.create_task(pump())
        try:
            stats = await simulate(
                host="127.0.0.1", port=secure_mosquitto.port, ambulances=2, rate=5,
                duration=1.0, snap_every=0, crash_probability=0.0, seed=5, id_prefix=ids,
                progress=False, max_connections=1, passwords=passwords,
            )
            await received.settle(stats.tracking)
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=10.0)
    assert stats.errors == 0
    senders = Counter(m.topic.value.split("/")[1] for m in received)
    assert set(senders) == set(passwords)
    assert sum(senders.values()) == stats.tracking


async def test_a_refused_account_stops_simulate_with_one_line(
    secure_mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test a wrong password in the file, and no file at all: exit 1 and one line, no endless retry.

    The run is asked for an hour: only the refusal can end it within the test.
    """
    ids = prefix()
    data = tmp_path / "data"
    async with accounts.DynsecAdmin(
        host="127.0.0.1", port=secure_mosquitto.port, username=services.ADMIN,
        password=ADMIN_PASSWORD,
    ) as admin:
        await admin.create_client(f"{ids}001", "right", accounts.device_acls(f"{ids}001"))
    args = ("--ambulances", "1", "--prefix", ids, "--duration", "3600")
    code, err = await _aoc_simulate(_env(secure_mosquitto, data), tmp_path, *args)
    assert code == 1
    path = data / "credentials.json"
    assert [line for line in err.splitlines() if line.startswith("aoc simulate:")] == [
        "aoc simulate: the broker refused the account of (anonymous) (wrong password, or no "
        f"such account); without {path} (`aoc up` writes it) the devices connect anonymously"
    ]
    with credentials.editing(path) as creds:
        creds.devices[f"{ids}001"] = "wrong"
    code, err = await _aoc_simulate(_env(secure_mosquitto, data), tmp_path, *args)
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("aoc simulate:")] == [
        f"aoc simulate: the broker refused the account of {ids}001 (wrong password, or no "
        f"such account); the passwords come from {path}"
    ]
