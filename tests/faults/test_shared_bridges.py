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
import json
import os
import re
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aoc import supervise
from aoc.config import Settings
from storage.base import AMBULANCES, TRACKINGS
from tests import services
from tests.faults.conftest import Rig
from tests.faults.devices import Fleet, check_aggregates, point_id, wait_until

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
