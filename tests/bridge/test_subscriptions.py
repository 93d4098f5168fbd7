"""Several bridges on one shared subscription, and what Mosquitto 2.0 does with it.

The forms each session subscribes to and drops, then the real broker (the
project's ``mosquitto.conf``, a private instance: these tests subscribe to
every device topic): members share the stream, a session moving into a group
gets no duplicates and keeps its queue, and the three caveats the README
documents: a persistent member offline keeps receiving its share, in-flight
messages are never reassigned to another member, and a broker restart
forgets shared subscriptions (not plain ones) until their members return.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.contract import Kind, topic
from bridge.subscriptions import (
    DEFAULT_SHARE_GROUP,
    MAIN_KINDS,
    SNAP_KINDS,
    stale,
    subscriptions,
)
from broker.client import Message, MqttClient
from tests import services
from tests.bridge.test_service import until

GROUP = "bridges"


# --- the forms ------------------------------------------------------------------------------


def test_one_bridge_subscribes_plainly_and_a_member_in_its_groups_form() -> None:
    """Test that an empty group is the device filters, a group their $share/<group>/ form."""
    assert [f for f, _ in subscriptions(SNAP_KINDS)] == ["aoc/+/snap", "legacy/+/snap"]
    assert [f for f, _ in subscriptions(SNAP_KINDS, GROUP)] == [
        f"$share/{GROUP}/aoc/+/snap",
        f"$share/{GROUP}/legacy/+/snap",
    ]
    assert {qos for _, qos in subscriptions(MAIN_KINDS, GROUP)} == {1}


def test_a_session_drops_every_other_form_of_its_kinds_and_never_its_own() -> None:
    """Test that a member drops the plain and default-group forms; a lone bridge the shared ones."""
    member = stale(MAIN_KINDS, GROUP, others=SNAP_KINDS)
    assert "aoc/+/tracking" in member
    assert f"$share/{DEFAULT_SHARE_GROUP}/aoc/+/crash" in member
    assert "aoc/+/snap" in member  # an older version's main session took snapshots too
    assert not {f for f, _ in subscriptions(MAIN_KINDS, GROUP)} & set(member)
    assert stale(SNAP_KINDS) == [
        f"$share/{DEFAULT_SHARE_GROUP}/aoc/+/snap",
        f"$share/{DEFAULT_SHARE_GROUP}/legacy/+/snap",
    ]


# --- on Mosquitto ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    """A broker of this module's own: a group on aoc/+/... would take other tests' messages."""
    with services.mosquitto(tmp_path_factory.mktemp("shared-mosquitto")) as service:
        yield service
    print(service.log_tail())


@dataclass
class Member:
    """A bridge's session as the broker sees it: what it received, acknowledged or not."""

    client_id: str
    received: list[Message] = field(default_factory=list)

    def seqs(self) -> list[int]:
        return [int(m.payload) for m in self.received]


@contextlib.asynccontextmanager
async def connected(
    broker: services.Service,
    member: Member,
    *,
    group: str = GROUP,
    ack: bool = True,
) -> AsyncIterator[MqttClient]:
    """``member``'s persistent session on the main lane, as the bridge opens it, collecting."""
    client = MqttClient(
        host="127.0.0.1",
        port=broker.port,
        client_id=member.client_id,
        clean_session=False,
        subscriptions=subscriptions(MAIN_KINDS, group),
        unsubscriptions=stale(MAIN_KINDS, group),
        reconnect_min=0.05,
        reconnect_max=0.5,
    )

    async def collect() -> None:
        async for message in client.messages():
            member.received.append(message)
            if ack:
                client.ack(message)

    async with client:
        task = asyncio.create_task(collect())
        try:
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(broker: services.Service, aid: str, seqs: range) -> None:
    """Points numbered ``seqs`` of ambulance ``aid``, each acknowledged by the broker."""
    async with MqttClient(
        host="127.0.0.1",
        port=broker.port,
        client_id=f"dev-{uuid.uuid4().hex[:8]}",
        clean_session=True,
        manual_ack=False,
    ) as device:
        for seq in seqs:
            await device.publish(topic(aid, Kind.TRACKING), str(seq).encode())


async def forget(broker: services.Service, *members: Member) -> None:
    """End the members' sessions (a clean start): the next test starts from none."""
    for member in members:
        async with MqttClient(
            host="127.0.0.1", port=broker.port, client_id=member.client_id, clean_session=True
        ):
            pass


def members(count: int) -> list[Member]:
    stem = uuid.uuid4().hex[:6]
    return [Member(f"bridge-{stem}-{n}") for n in range(count)]


async def test_members_of_a_group_share_the_stream_each_message_once(
    broker: services.Service,
) -> None:
    """Test that two members get every message exactly once between them, and each some."""
    a, b = members(2)
    aid = f"S{uuid.uuid4().hex[:8]}"
    try:
        async with connected(broker, a), connected(broker, b):
            await publish(broker, aid, range(40))
            await until(lambda: len(a.received) + len(b.received) >= 40, "40 received")
            await asyncio.sleep(0.3)  # a duplicate would arrive now
    finally:
        await forget(broker, a, b)
    assert sorted(a.seqs() + b.seqs()) == list(range(40))
    assert a.received and b.received


async def test_a_session_moving_into_a_group_gets_no_duplicates_and_keeps_its_queue(
    broker: services.Service,
) -> None:
    """Test the move from one bridge to several: the old plain subscription is dropped.

    The session held the plain filters and had 5 points queued while it was
    away; it comes back as a member of a group with another member: the 5
    are delivered, then each new point goes to one member only.
    """
    old, other = members(2)
    aid = f"M{uuid.uuid4().hex[:8]}"
    try:
        async with connected(broker, old, group=""):
            pass  # a clean disconnect: the session and its plain filters stay
        await publish(broker, aid, range(5))  # queued for the away session
        async with connected(broker, other), connected(broker, old):
            await until(lambda: len(old.received) >= 5, "the queued 5")
            await publish(broker, aid, range(5, 45))
            await until(lambda: len(old.received) + len(other.received) >= 45, "45 received")
            await asyncio.sleep(0.3)  # a duplicate would arrive now
    finally:
        await forget(broker, old, other)
    assert old.seqs()[:5] == list(range(5))
    assert sorted(old.seqs() + other.seqs()) == list(range(45))
    assert other.received


async def test_a_persistent_member_that_is_away_keeps_receiving_its_share(
    broker: services.Service,
) -> None:
    """Test Mosquitto caveat (a): the share of a member that left is queued for it, not rerouted.

    The messages are not lost: they wait in its session until it comes back,
    which is why `aoc up` restarts a dead bridge under its own client id and a
    bridge leaving for good is retired (README, "Several bridges").
    """
    away, present = members(2)
    aid = f"A{uuid.uuid4().hex[:8]}"
    try:
        async with connected(broker, away):
            pass  # joined the group, then left without ending its session
        async with connected(broker, present):
            await publish(broker, aid, range(30))
            await until(lambda: len(present.received) >= 10, "the present member's share")
            await asyncio.sleep(0.3)
            assert len(present.received) < 30  # some went to the member that is away
        assert not away.received
        async with connected(broker, away):
            await until(lambda: len(away.received) + len(present.received) >= 30, "all 30")
    finally:
        await forget(broker, away, present)
    assert sorted(away.seqs() + present.seqs()) == list(range(30))


async def test_messages_in_flight_at_a_member_that_left_are_not_given_to_another(
    broker: services.Service,
) -> None:
    """Test Mosquitto caveat (b): unacknowledged messages stay with their member's session.

    The member receives its share without acknowledging (a bridge stopped
    mid-batch) and leaves. More points then reach the other member, never the
    stranded ones; they come back, marked as duplicates, when the member does.
    """
    stuck, other = members(2)
    aid = f"F{uuid.uuid4().hex[:8]}"
    try:
        async with connected(broker, other, ack=True):
            async with connected(broker, stuck, ack=False):
                await publish(broker, aid, range(20))
                await until(lambda: len(stuck.received) + len(other.received) >= 20, "20")
            in_flight = stuck.seqs()
            assert in_flight  # its share, never acknowledged
            before = len(other.received)
            await publish(broker, aid, range(20, 60))
            await until(lambda: len(other.received) >= before + 10, "new points to the other")
            await asyncio.sleep(0.3)  # a reassigned message would have come first
            assert not set(in_flight) & set(other.seqs())
        stuck.received.clear()
        async with connected(broker, stuck, ack=True):
            await until(lambda: set(in_flight) <= set(stuck.seqs()), "the stranded ones back")
            redelivered = [m for m in stuck.received if int(m.payload) in in_flight]
            assert all(m.dup for m in redelivered)
            await until(lambda: len(stuck.received) + len(other.received) >= 60, "all 60")
            await asyncio.sleep(0.3)  # a duplicate would arrive now
    finally:
        await forget(broker, stuck, other)
    # Each acknowledged once, by one member: the in-flight ones by theirs, on its return.
    assert sorted(stuck.seqs() + other.seqs()) == list(range(60))


async def test_a_broker_restart_forgets_shared_subscriptions_until_members_come_back(
    tmp_path: Path,
) -> None:
    """Test Mosquitto caveat (c): its persistence file keeps plain subscriptions, not shared ones.

    Both sessions are away when the broker restarts (it saves them on the way
    down). Points published before they come back are queued for the plain
    session and for no member of the group: acknowledged to the device, then
    delivered to nobody. The README says what this costs and how it is bounded.
    """
    broker = services.mosquitto(tmp_path / "restarted").start()
    plain, shared = members(2)
    try:
        async with connected(broker, plain, group=""), connected(broker, shared):
            pass
        broker.stop()  # a clean stop writes the persistence file
        broker.start()
        await publish(broker, f"B{uuid.uuid4().hex[:8]}", range(10))
        async with connected(broker, plain, group=""), connected(broker, shared):
            await until(lambda: len(plain.received) >= 10, "the plain session's 10")
            await asyncio.sleep(0.3)  # the member's would have come with them
        assert plain.seqs() == list(range(10))
        assert not shared.received
    finally:
        broker.kill()
