"""What each account may *not* read or write, against a real Mosquitto with dynamic security.

The companion of ``test_accounts``: reading rights (a device, the shim and the
admin receive none of the bridge's output), the admin's and the bridge's
publishing limits, the bridge's retained state, and the dispatch root.

An absence is shown after a barrier: a QoS 1 publish of the silent client's
own, whose PUBACK Mosquitto sends on the same connection after anything it
had already queued there (it writes each connection's packets in order).
"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from broker import accounts
from tests import services
from tests.broker.conftest import WAIT, logged_in, new_id, received_until
from tests.broker.test_accounts import add

# Every filter a nosy client could try: the bridge's outbound topics and everything.
NOSY_FILTERS = ("aoc/+/state", "aoc/+/alert", "#", "aoc/#")


async def assert_silent(listener: aiomqtt.Client, barrier_topic: str) -> None:
    """``listener`` has received nothing: not before its own PUBACK, nor shortly after."""
    await listener.publish(barrier_topic, b"barrier", qos=1)  # awaits the PUBACK
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            async for message in listener.messages:
                raise AssertionError(f"received {message.topic}: {message.payload!r}")


async def test_devices_the_shim_and_the_admin_receive_nothing_of_the_bridge(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that subscribing to state, alert and ``#`` brings those accounts nothing.

    The bridge publishes a retained state before they subscribe and a state and
    an alert after; a dashboard beside them gets all three (the control).
    """
    amb, bridge, shim, dash, boss = (
        new_id(), new_id("bridge"), new_id("shim"), new_id("dash-"), new_id("admin")
    )
    device_pw = await add(admin, amb, accounts.device_acls(amb))
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    shim_pw = await add(admin, shim, accounts.shim_acls())
    dash_pw = await add(admin, dash, accounts.dashboard_acls())
    boss_pw = await add(admin, boss, accounts.admin_acls())
    screen_filters = (f"aoc/{amb}/state", f"aoc/{amb}/alert")
    async with logged_in(secure_broker, bridge, bridge_pw) as publisher:
        await publisher.publish(f"aoc/{amb}/state", b"retained", qos=1, retain=True)
        async with (
            logged_in(secure_broker, amb, device_pw, *NOSY_FILTERS) as device,
            logged_in(secure_broker, shim, shim_pw, *NOSY_FILTERS) as legacy,
            logged_in(secure_broker, boss, boss_pw, *NOSY_FILTERS) as manager,
            logged_in(secure_broker, dash, dash_pw, *screen_filters) as screen,
        ):
            await publisher.publish(f"aoc/{amb}/state", b"live-state", qos=1)
            await publisher.publish(f"aoc/{amb}/alert", b"live-alert", qos=1)
            assert await received_until(screen, f"aoc/{amb}/alert", b"live-alert") == [
                (f"aoc/{amb}/state", b"retained"),
                (f"aoc/{amb}/state", b"live-state"),
                (f"aoc/{amb}/alert", b"live-alert"),
            ]
            await assert_silent(device, f"aoc/{amb}/status")
            await assert_silent(legacy, f"legacy/{amb}/tracking")
            # The admin's own topic is the plugin's: a command it cannot parse is answered
            # on the response topic, which the admin does not subscribe to here (only NOSY).
            await assert_silent(manager, f"{accounts.CONTROL_TOPIC}/noop")
        await publisher.publish(f"aoc/{amb}/state", b"", qos=1, retain=True)  # tidy


async def test_the_admin_cannot_publish_device_topics(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that admin_acls lets the admin send plugin commands only: no tracking, no state."""
    assert {(acl.acltype, acl.topic) for acl in accounts.admin_acls()} == {
        ("publishClientSend", "$CONTROL/dynamic-security/#"),
        ("subscribePattern", "$CONTROL/dynamic-security/#"),
        ("publishClientReceive", "$CONTROL/dynamic-security/#"),
    }
    amb, bridge, dash, boss = new_id(), new_id("bridge"), new_id("dash-"), new_id("admin")
    device_pw = await add(admin, amb, accounts.device_acls(amb))
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    dash_pw = await add(admin, dash, accounts.dashboard_acls())
    boss_pw = await add(admin, boss, accounts.admin_acls())
    async with (
        logged_in(secure_broker, bridge, bridge_pw, "aoc/+/tracking") as sub,
        logged_in(secure_broker, dash, dash_pw, f"aoc/{amb}/state") as screen,
        logged_in(secure_broker, boss, boss_pw) as manager,
        logged_in(secure_broker, amb, device_pw) as device,
        logged_in(secure_broker, bridge, bridge_pw) as publisher,
    ):
        await manager.publish(f"aoc/{amb}/tracking", b"from-admin", qos=1)
        await manager.publish(f"aoc/{amb}/state", b"from-admin", qos=1, retain=True)
        await device.publish(f"aoc/{amb}/tracking", b"from-device", qos=1)
        assert await received_until(sub, f"aoc/{amb}/tracking", b"from-device") == [
            (f"aoc/{amb}/tracking", b"from-device")
        ]
        await publisher.publish(f"aoc/{amb}/state", b"from-bridge", qos=1)
        assert await received_until(screen, f"aoc/{amb}/state", b"from-bridge") == [
            (f"aoc/{amb}/state", b"from-bridge")
        ]


async def test_the_bridge_cannot_publish_tracking_and_its_state_is_retained(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test the bridge's publishing rights: no device topic; a retained state for later screens.

    The listener holds the bridge's own role (it may read every device topic),
    so the only thing keeping the forged point from it is the publish ACL.
    """
    amb, bridge, dash = new_id(), new_id("bridge"), new_id("dash-")
    device_pw = await add(admin, amb, accounts.device_acls(amb))
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    dash_pw = await add(admin, dash, accounts.dashboard_acls())
    async with (
        logged_in(secure_broker, bridge, bridge_pw, "aoc/+/tracking", "aoc/+/status") as sub,
        logged_in(secure_broker, bridge, bridge_pw) as publisher,
        logged_in(secure_broker, amb, device_pw) as device,
    ):
        await publisher.publish(f"aoc/{amb}/tracking", b"from-bridge", qos=1)
        await publisher.publish(f"aoc/{amb}/status", b"from-bridge", qos=1, retain=True)
        await publisher.publish(f"aoc/{amb}/state", b"kept", qos=1, retain=True)
        await device.publish(f"aoc/{amb}/tracking", b"from-device", qos=1)
        assert await received_until(sub, f"aoc/{amb}/tracking", b"from-device") == [
            (f"aoc/{amb}/tracking", b"from-device")
        ]
    # A dashboard that subscribes afterwards gets the state, flagged retained.
    async with logged_in(secure_broker, dash, dash_pw, f"aoc/{amb}/state") as screen:
        async with asyncio.timeout(WAIT):
            message = await anext(aiter(screen.messages))
        assert (message.topic.value, message.payload, message.retain) == (
            f"aoc/{amb}/state", b"kept", True
        )
        async with logged_in(secure_broker, bridge, bridge_pw) as publisher:
            await publisher.publish(f"aoc/{amb}/state", b"", qos=1, retain=True)  # tidy


async def test_only_the_shim_writes_the_dispatch_root(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that the API's account publishes ``dispatch/<id>/...`` and a device cannot.

    The bridge-role listener reads that root shared, as the bridges do.
    """
    amb, bridge, shim = new_id(), new_id("bridge"), new_id("shim")
    device_pw = await add(admin, amb, accounts.device_acls(amb))
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    shim_pw = await add(admin, shim, accounts.shim_acls())
    filters = ("$share/bridges/dispatch/+/destination", "$share/bridges/dispatch/+/alarm")
    async with (
        logged_in(secure_broker, bridge, bridge_pw, *filters) as sub,
        logged_in(secure_broker, amb, device_pw) as device,
        logged_in(secure_broker, shim, shim_pw) as api,
    ):
        await device.publish(f"dispatch/{amb}/destination", b"from-device", qos=1)
        await device.publish(f"dispatch/{amb}/alarm", b"from-device", qos=1)
        await api.publish(f"dispatch/{amb}/alarm", b"from-api", qos=1)
        await api.publish(f"dispatch/{amb}/destination", b"from-api", qos=1)
        assert await received_until(sub, f"dispatch/{amb}/destination", b"from-api") == [
            (f"dispatch/{amb}/alarm", b"from-api"),
            (f"dispatch/{amb}/destination", b"from-api"),
        ]
