"""Scenario: two bridges on one shared subscription, one SIGKILLed mid-stream and restarted.

Each bridge is an `aoc bridge` process with a client id of its own (a
persistent session per member) in group ``aoc``, on one store. The broker
hands each message to one member; the versioned state in the store keeps
every ambulance's aggregates exact whichever member stores which point, and
in whatever order: the state counts every stored point, late ones too, in
device-time order (``tests.faults.devices.check_aggregates``).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

import aiomqtt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aoc import supervise
from aoc.config import Settings
from storage.base import AMBULANCES, IMAGE_HISTORIES, TRACKINGS
from tests import services
from tests.faults.conftest import Rig
from tests.faults.devices import T0_MS, Fleet, check_aggregates, point_id, wait_until
from tests.images import TINY_JPEG

pytestmark = pytest.mark.faults

DEVICES, POINTS = 20, 100
GROUP = "aoc"


def member(rig: Rig, name: str) -> services.AocService:
    """An `aoc bridge` in the group, with its own session (client id) and spool."""
    service = rig.aoc(
        "bridge",
        name,
        AOC_MQTT_CLIENT_ID=f"{rig.client_id}-{name}",
        AOC_SHARE_GROUP=GROUP,
        AOC_SPOOL_DIR=str(rig.workdir / name / "spool"),
    )
    assert isinstance(service, services.AocService)
    return service


async def received(bridge: services.Service) -> float:
    """``aoc_messages_received_total{kind="tracking"}`` on the bridge's /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{bridge.port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aoc_messages_received_total" and sample.labels == {
                "kind": "tracking"
            }:
                return float(sample.value)
    return 0.0


async def stored_exactly(rig: Rig, fleet: Fleet, sent: int) -> int:
    """Wait for every acknowledged point; check ids and aggregates; the late points."""
    assert len(fleet.acked) == sent
    try:
        await wait_until(lambda: rig.count(TRACKINGS) >= sent, timeout=60)
    except AssertionError:
        missing = set(fleet.acked) - {d["_id"] for d in await rig.documents(TRACKINGS)}
        raise AssertionError(f"{len(missing)} never stored: {sorted(missing)[:10]}") from None
    await asyncio.sleep(1.0)  # a late duplicate would land now
    docs = await rig.documents(TRACKINGS)
    assert len(docs) == sent
    assert {doc["_id"] for doc in docs} == set(fleet.acked)
    states = {doc["_id"]: doc for doc in await rig.documents(AMBULANCES)}
    assert check_aggregates(states, docs, late=True) == sent
    return sum(1 for doc in docs if doc["late"])


async def test_two_bridges_share_the_load_each_point_once(rig: Rig) -> None:
    """Test that both members take part, and between them take each point exactly once."""
    a, b = member(rig, "a").start(), member(rig, "b").start()
    fleet = Fleet(rig.mosquitto.port)
    ids = [f"H{n:02d}" for n in range(DEVICES)]
    await asyncio.wait_for(fleet.run(ids, POINTS, pace=0.01), 90)
    sent = DEVICES * POINTS
    late = await stored_exactly(rig, fleet, sent)
    got_a, got_b = await received(a), await received(b)
    print(f"shared: sent {sent}, bridge a took {got_a:.0f}, bridge b {got_b:.0f}, late {late}")
    assert got_a > 0 and got_b > 0
    assert got_a + got_b == sent  # none delivered twice


async def test_a_sigkilled_member_restarted_under_its_id_loses_nothing(rig: Rig) -> None:
    """Test that killing one of two members mid-stream loses and double-counts nothing.

    What the killed member held unacknowledged stays in its session (Mosquitto
    gives it to no other member), as does its share of what comes while it is
    down; restarted under the same client id, as `aoc up` does, it gets them.
    """
    a, b = member(rig, "a").start(), member(rig, "b").start()
    fleet = Fleet(rig.mosquitto.port)
    ids = [f"J{n:02d}" for n in range(DEVICES)]
    stream = asyncio.create_task(fleet.run(ids, POINTS, pace=0.01))
    await wait_until(lambda: rig.count(TRACKINGS) >= 500, timeout=60, what="500 points stored")
    a.kill()
    stored_at_kill = rig.count(TRACKINGS)
    await asyncio.sleep(1.0)  # its share queues in its session meanwhile
    a.start()
    restarted = time.monotonic()
    await asyncio.wait_for(stream, 90)
    sent = DEVICES * POINTS
    late = await stored_exactly(rig, fleet, sent)
    print(
        f"shared, one killed: sent {sent}, stored before the kill {stored_at_kill},"
        f" caught up {time.monotonic() - restarted:.1f}s after the restart,"
        f" b took {await received(b):.0f}, a after its restart {await received(a):.0f},"
        f" late {late}"
    )
    assert await received(a) > 0  # its queue came back to it
    assert point_id(ids[0], POINTS - 1) in fleet.acked


async def test_a_retired_member_hands_over_its_queue_and_leaves_the_group(rig: Rig) -> None:
    """Test `aoc bridge --retire` when scaling down from two bridges to one, under load.

    A member stopped for good would strand its share: Mosquitto keeps
    routing it to the session. Retired while devices keep publishing, it
    leaves the group first (so its sessions go quiet), stores what they held
    and ends them; everything published meanwhile goes to the member that
    stays. Nothing is lost, and every state is exact.
    """
    a, b = member(rig, "a").start(), member(rig, "b").start()
    b.stop()  # a clean stop: its persistent sessions, still in the group, stay
    fleet = Fleet(rig.mosquitto.port)
    await asyncio.wait_for(fleet.run([f"R{n:02d}" for n in range(10)], 30), 60)
    stranded = 10 * 30 - rig.count(TRACKINGS)
    assert stranded > 0  # b's share, queued in its session: never stored while b is away
    retire = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aoc.cli", "bridge", "--retire",
        env={**os.environ, **b.env}, cwd=b.workdir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    retiring = asyncio.create_task(retire.communicate())
    streamed = await asyncio.wait_for(stream_until(fleet, retiring), 90)
    output, _ = await retiring
    assert retire.returncode == 0, output.decode()
    taken = re.search(rb"retired bridge \S+-b: (\d+) queued message", output)
    assert taken is not None and int(taken.group(1)) > 0, output.decode()
    late = await stored_exactly(rig, fleet, 10 * 30 + streamed)
    print(
        f"retired: b's sessions held {int(taken.group(1))}, late {late};"
        f" a took {await received(a):.0f}"
    )


async def stream_until(fleet: Fleet, finished: asyncio.Future[object]) -> int:
    """Points from 10 more devices, in rounds, until ``finished`` and one round after; how many."""
    ids, sent = [f"S{n:02d}" for n in range(10)], 0
    while True:
        last = finished.done()
        async with asyncio.TaskGroup() as group:
            for aid in ids:
                group.create_task(fleet.device(aid, range(sent // 10, sent // 10 + 5), pace=0.02))
        sent += 5 * len(ids)
        if last:
            return sent


async def test_aoc_up_retires_the_members_beyond_aoc_bridges(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test `aoc up`'s scaling down: members an earlier start ran beyond AOC_BRIDGES are retired.

    Member 2 (``<id>-2``, as `aoc up` names it) stopped with its share of the
    points in its session; started with AOC_BRIDGES=2, `aoc up` retires it,
    so what it held is stored, and records the new count.
    """
    member(rig, "a").start()
    stranded = rig.aoc(
        "bridge", "member-2",
        AOC_MQTT_CLIENT_ID=f"{rig.client_id}-2", AOC_SHARE_GROUP=GROUP,
        AOC_SPOOL_DIR=str(rig.data_dir / "spool-2"),
    ).start()
    stranded.stop()
    fleet = Fleet(rig.mosquitto.port)
    await asyncio.wait_for(fleet.run([f"U{n:02d}" for n in range(10)], 30), 60)
    assert rig.count(TRACKINGS) < 300  # member 2's share waits in its session
    creds = rig.workdir / "credentials.json"
    creds.write_text(json.dumps({"bridge_members": 3}))
    for name, value in stranded.env.items():
        monkeypatch.setenv(name, value)  # the broker, Redis and store of the rig
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        bridges=2,
        mqtt_client_id=rig.client_id,
        credentials_file=creds,
        data_dir=rig.data_dir,
    )
    await supervise.retire_members(settings, {})
    await stored_exactly(rig, fleet, 300)
    assert json.loads(creds.read_text())["bridge_members"] == 2


async def retire(service: services.Service, *args: str) -> tuple[int, str]:
    """`aoc bridge --retire` of ``service``'s member: its exit code and output."""
    service.workdir.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aoc.cli", "bridge", "--retire", *args,
        env={**os.environ, **service.env}, cwd=service.workdir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_retire_waits_for_the_spool_and_fails_clearly_while_it_cannot_empty_it(
    rig: Rig,
) -> None:
    """Test that a retired member leaves no acknowledged image in its spool.

    A member with a dead object store stores and acknowledges a snapshot (its
    images go to its spool) and is stopped. Retired while the store is still
    dead, `aoc bridge --retire` says so in one line and exits 1 after its
    --timeout, the spool intact; retired once the store answers, it uploads
    the spool, then ends the sessions.
    """
    dead = services.free_port()  # nothing listens: the object store is down
    spool = rig.workdir / "b" / "spool"
    outage = dict(
        AOC_OBJECTS_URL="s3://fake-bucket", AOC_S3_ENDPOINT_URL=f"http://127.0.0.1:{dead}",
        AOC_S3_ACCESS_KEY="fake-key", AOC_S3_SECRET_KEY="fake-secret-0000",
    )
    b = rig.aoc(
        "bridge", "b", AOC_MQTT_CLIENT_ID=f"{rig.client_id}-b", AOC_SHARE_GROUP=GROUP,
        AOC_SPOOL_DIR=str(spool), **outage,
    ).start()
    async with aiomqtt.Client("127.0.0.1", rig.mosquitto.port, timeout=10) as device:
        body = {"images": [{"name": "front.jpg", "data": base64.b64encode(TINY_JPEG).decode()}],
                "ts": T0_MS}
        await device.publish("aoc/RT01/snap", json.dumps(body), qos=1, timeout=10)
    await wait_until(lambda: rig.count(IMAGE_HISTORIES) >= 1, timeout=30, what="snap stored")
    b.stop()
    assert len(list(spool.glob("*.spool"))) == 1  # acknowledged, only on the member's disk

    code, output = await retire(b, "--timeout", "8")
    assert code == 1, output
    assert f"cannot retire bridge {rig.client_id}-b: not done within 8s: 1 acknowledged " \
        f"image(s) still in its spool {spool}" in output, output
    assert "retiring: 1 object(s)" in output  # progress in the log
    assert len(list(spool.glob("*.spool"))) == 1

    for name in outage:  # the object store answers again (a directory, here)
        b.env.pop(name)
    code, output = await retire(b)
    assert code == 0, output
    assert f"retired bridge {rig.client_id}-b: 0 queued message(s)" in output, output
    assert not list(spool.glob("*.spool"))
    [history] = await rig.documents(IMAGE_HISTORIES)
    stored = list((rig.data_dir / "objects").rglob("*.jpg"))
    assert [p.read_bytes() for p in stored] == [TINY_JPEG], (history, stored)


async def test_retire_warns_when_the_broker_has_no_session_for_the_id(rig: Rig) -> None:
    """Test that retiring an id the broker has no session for (a typo) says so, not "retired"."""
    nobody = rig.aoc(
        "bridge", "typo", AOC_MQTT_CLIENT_ID=f"{rig.client_id}-typo",
        AOC_SPOOL_DIR=str(rig.workdir / "typo" / "spool"),
    )
    code, output = await retire(nobody)
    assert code == 0, output
    assert f"warning: the broker had no session for bridge {rig.client_id}-typo " \
        "(session present: False)" in output, output
    assert "retired bridge" not in output


async def test_retire_leaves_a_group_the_member_joined_under_an_earlier_name(rig: Rig) -> None:
    """Test `aoc bridge --retire --group OLD` after AOC_SHARE_GROUP changed from OLD.

    The session still subscribed in the old group keeps getting its share of
    a stream that never pauses, so it is never quiet: retire gives up after
    its --timeout, saying so. Told the old name, it leaves that group too.
    """
    b = rig.aoc(
        "bridge", "b", AOC_MQTT_CLIENT_ID=f"{rig.client_id}-b", AOC_SHARE_GROUP="old",
        AOC_SPOOL_DIR=str(rig.workdir / "b" / "spool"),
    ).start()
    b.stop()
    b.env["AOC_SHARE_GROUP"] = GROUP  # the name changed since
    streaming = asyncio.Event()

    async def stream() -> None:
        async with aiomqtt.Client("127.0.0.1", rig.mosquitto.port, timeout=10) as device:
            n = 0
            while not streaming.is_set():
                body = {"lat": 13.75, "lon": 100.5, "speed": 10.0, "ts": T0_MS + n * 1000}
                await device.publish("aoc/OLD01/tracking", json.dumps(body), qos=1, timeout=10)
                n += 1
                await asyncio.sleep(0.2)

    devices = asyncio.create_task(stream())
    try:
        code, output = await retire(b, "--timeout", "10")
        assert code == 1, output
        assert "not done within 10s: its sessions still get or hold messages" in output, output
        code, output = await retire(b, "--group", "old", "--timeout", "60")
        assert code == 0, output
        assert f"retired bridge {rig.client_id}-b:" in output, output
    finally:
        streaming.set()
        await devices


def _locked(spool: Path) -> bool:
    """Whether a process holds the spool's lock (a bridge, or a retirement, runs on it)."""
    fd = os.open(spool / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def test_aoc_up_stopping_stops_a_retirement_in_progress(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that `aoc up`'s stop ends the retirement it runs beside its children.

    Member 2 holds an acknowledged image in its spool and the object store is
    down, so its retirement would wait (up to its timeout). Once `aoc up`
    stops, the retiring process gets SIGTERM and exits, keeping the spool
    and the sessions, and the count of members is kept for the next start.
    """
    dead = services.free_port()
    outage = dict(
        AOC_OBJECTS_URL="s3://fake-bucket", AOC_S3_ENDPOINT_URL=f"http://127.0.0.1:{dead}",
        AOC_S3_ACCESS_KEY="fake-key", AOC_S3_SECRET_KEY="fake-secret-0000",
    )
    spool = rig.data_dir / "spool-2"
    stranded = rig.aoc(
        "bridge", "member-2", AOC_MQTT_CLIENT_ID=f"{rig.client_id}-2", AOC_SHARE_GROUP=GROUP,
        AOC_SPOOL_DIR=str(spool), **outage,
    ).start()
    async with aiomqtt.Client("127.0.0.1", rig.mosquitto.port, timeout=10) as device:
        body = {"images": [{"name": "front.jpg", "data": base64.b64encode(TINY_JPEG).decode()}],
                "ts": T0_MS}
        await device.publish("aoc/RT02/snap", json.dumps(body), qos=1, timeout=10)
    await wait_until(lambda: rig.count(IMAGE_HISTORIES) >= 1, timeout=30, what="snap stored")
    stranded.stop()
    creds = rig.workdir / "credentials.json"
    creds.write_text(json.dumps({"bridge_members": 3}))
    for name, value in stranded.env.items():
        monkeypatch.setenv(name, value)  # the rig's broker, Redis and store; the dead S3
    monkeypatch.delenv("AOC_SPOOL_DIR")  # `aoc up` names member 2's: spool-2 beside spool
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        bridges=2,
        mqtt_client_id=rig.client_id,
        credentials_file=creds,
        data_dir=rig.data_dir,
    )
    stopping = asyncio.Event()
    retiring = asyncio.create_task(supervise.retire_members(settings, {}, stopping))
    await wait_until(lambda: _locked(spool), timeout=30, what="the retirement to run")
    stopping.set()  # `aoc up` stops
    await asyncio.wait_for(retiring, 60)
    assert not _locked(spool)  # the retiring process is gone
    assert len(list(spool.glob("*.spool"))) == 1
    assert json.loads(creds.read_text())["bridge_members"] == 3  # the next start tries again
