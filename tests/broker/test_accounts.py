"""Each account's rights, against a real Mosquitto running the dynamic security plugin.

A publish the ACLs deny is acknowledged and dropped by Mosquitto (MQTT 3.1.1
has no way to say no), so every denial is shown where it matters: a
subscriber allowed to receive the topic does not get it, while a control
message published afterwards does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiomqtt
import pytest

from broker import accounts
from tests import services
from tests.broker.conftest import WAIT, client, logged_in, new_id, received_until
from tests.broker.test_client import crash_client, step

JS_DIR = Path(__file__).resolve().parents[1] / "js"


async def add(admin: accounts.DynsecAdmin, username: str, acls: list[accounts.Acl]) -> str:
    password = accounts.new_password()
    await admin.create_client(username, password, acls)
    return password


async def test_a_device_publishes_only_its_own_device_topics(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that a device cannot publish as another device, nor the bridge's state or alert."""
    me, other, bridge, dash = new_id(), new_id(), new_id("bridge"), new_id("dash-")
    mine = await add(admin, me, accounts.device_acls(me))
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    dash_pw = await add(admin, dash, accounts.dashboard_acls())
    async with (
        logged_in(secure_broker, bridge, bridge_pw, "aoc/+/tracking", "aoc/+/status") as sub,
        logged_in(secure_broker, dash, dash_pw, "aoc/+/state", "aoc/+/alert") as screen,
        logged_in(secure_broker, me, mine) as device,
        logged_in(secure_broker, bridge, bridge_pw) as publisher,
    ):
        await device.publish(f"aoc/{other}/tracking", b"forged", qos=1)
        await device.publish(f"aoc/{other}/status", b"offline", qos=1, retain=True)
        await device.publish(f"aoc/{me}/state", b"forged-state", qos=1, retain=True)
        await device.publish(f"aoc/{me}/alert", b"forged-alert", qos=1)
        await device.publish(f"aoc/{me}/tracking", b"mine", qos=1)
        assert await received_until(sub, f"aoc/{me}/tracking", b"mine") == [
            (f"aoc/{me}/tracking", b"mine")
        ]
        # The bridge's own state reaches the dashboard; the device's forgery did not.
        await publisher.publish(f"aoc/{me}/state", b"real-state", qos=1)
        assert await received_until(screen, f"aoc/{me}/state", b"real-state") == [
            (f"aoc/{me}/state", b"real-state")
        ]


async def test_a_device_last_will_works_on_its_own_status_only(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that a will on the device's own status is delivered and one on another's is not."""
    me, other, bridge = new_id(), new_id(), new_id("bridge")
    mine = await add(admin, me, accounts.device_acls(me))
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    async with logged_in(secure_broker, bridge, bridge_pw, "aoc/+/status") as sub:
        for target, payload in ((other, "forged-will"), (me, "own-will")):
            options = {
                "port": secure_broker.port, "client_id": new_id("dev"),
                "username": me, "password": mine,
                "will": [f"aoc/{target}/status", payload, 1, False],
            }
            async with crash_client(options) as proc:
                await step(proc, "subscribed")
                proc.kill()  # no DISCONNECT: the broker publishes the will
                await proc.wait()
        assert await received_until(sub, f"aoc/{me}/status", b"own-will") == [
            (f"aoc/{me}/status", b"own-will")
        ]


async def test_a_dashboard_publishes_nothing(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that a dashboard's state, alert and device-topic publishes reach nobody."""
    amb, bridge, dash, watcher = new_id(), new_id("bridge"), new_id("dash-"), new_id("dash-")
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    dash_pw = await add(admin, dash, accounts.dashboard_acls())
    watcher_pw = await add(admin, watcher, accounts.dashboard_acls())
    async with (
        logged_in(secure_broker, watcher, watcher_pw, "aoc/+/state", "aoc/+/alert") as screen,
        logged_in(secure_broker, bridge, bridge_pw, "aoc/+/tracking") as sub,
        logged_in(secure_broker, dash, dash_pw) as rogue,
        logged_in(secure_broker, bridge, bridge_pw) as publisher,
    ):
        await rogue.publish(f"aoc/{amb}/state", b"forged", qos=1, retain=True)
        await rogue.publish(f"aoc/{amb}/alert", b"forged", qos=1)
        await rogue.publish(f"aoc/{amb}/tracking", b"forged", qos=1)
        await publisher.publish(f"aoc/{amb}/alert", b"real", qos=1)
        assert await received_until(screen, f"aoc/{amb}/alert", b"real") == [
            (f"aoc/{amb}/alert", b"real")
        ]
        device_pw = await add(admin, amb, accounts.device_acls(amb))
        async with logged_in(secure_broker, amb, device_pw) as device:
            await device.publish(f"aoc/{amb}/tracking", b"real", qos=1)
        assert await received_until(sub, f"aoc/{amb}/tracking", b"real") == [
            (f"aoc/{amb}/tracking", b"real")
        ]


async def test_a_limited_dashboard_receives_only_its_ambulances(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that a dashboard limited to one ambulance gets its state and alerts, not others'.

    It subscribes to the same ``aoc/+/state`` filter as any dashboard; an
    unlimited dashboard beside it receives both ambulances.
    """
    seen, hidden, bridge = new_id(), new_id(), new_id("bridge")
    limited, unlimited = new_id("dash-"), new_id("dash-")
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    limited_pw = await add(admin, limited, accounts.dashboard_acls([seen]))
    unlimited_pw = await add(admin, unlimited, accounts.dashboard_acls())
    filters = ("aoc/+/state", "aoc/+/alert")
    async with (
        logged_in(secure_broker, limited, limited_pw, *filters) as narrow,
        logged_in(secure_broker, unlimited, unlimited_pw, *filters) as wide,
        logged_in(secure_broker, bridge, bridge_pw) as publisher,
    ):
        for amb in (hidden, seen):
            await publisher.publish(f"aoc/{amb}/state", b"s", qos=1)
            await publisher.publish(f"aoc/{amb}/alert", b"a", qos=1)
        expected = [(f"aoc/{amb}/{kind}", p) for amb in (hidden, seen) for kind, p in
                    (("state", b"s"), ("alert", b"a"))]
        assert await received_until(wide, f"aoc/{seen}/alert", b"a") == expected
        assert await received_until(narrow, f"aoc/{seen}/alert", b"a") == expected[2:]
    role = await admin.get_role(accounts.role_name(limited))
    assert role is not None
    assert accounts.dashboard_ambulances(role["acls"]) == [seen]


async def test_the_shim_writes_legacy_topics_only_and_the_bridge_reads_them_shared(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test the shim's rights (legacy/ only) and the bridge's shared subscriptions."""
    amb, bridge, shim, dash = new_id(), new_id("bridge"), new_id("shim"), new_id("dash-")
    bridge_pw = await add(admin, bridge, accounts.bridge_acls())
    shim_pw = await add(admin, shim, accounts.shim_acls())
    dash_pw = await add(admin, dash, accounts.dashboard_acls())
    shared = ("$share/bridges/legacy/+/tracking", "$share/bridges/aoc/+/tracking")
    async with (
        logged_in(secure_broker, bridge, bridge_pw, *shared) as sub,
        logged_in(secure_broker, dash, dash_pw, f"aoc/{amb}/state") as watcher,
        logged_in(secure_broker, shim, shim_pw) as legacy,
        logged_in(secure_broker, bridge, bridge_pw) as bridge_out,
    ):
        await legacy.publish(f"aoc/{amb}/tracking", b"as-a-device", qos=1)
        await legacy.publish(f"aoc/{amb}/state", b"forged", qos=1)
        await legacy.publish(f"legacy/{amb}/tracking", b"legacy-body", qos=1)
        assert await received_until(sub, f"legacy/{amb}/tracking", b"legacy-body") == [
            (f"legacy/{amb}/tracking", b"legacy-body")
        ]
        # The bridge's state is what a dashboard sees; the shim's forgery is not.
        await bridge_out.publish(f"aoc/{amb}/state", b"bridge-state", qos=1)
        assert await received_until(watcher, f"aoc/{amb}/state", b"bridge-state") == [
            (f"aoc/{amb}/state", b"bridge-state")
        ]


async def test_anonymous_and_wrong_passwords_are_refused(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that MQTT without an account, or with a wrong password, is refused at CONNECT."""
    amb = new_id()
    password = await add(admin, amb, accounts.device_acls(amb))
    for username, secret in ((None, None), (amb, "wrong"), ("nobody", password)):
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with client(secure_broker, username, secret):
                pass
    async with client(secure_broker, amb, password):
        pass  # the control: the right password gets in


async def _node_mqtt(url: str, *extra: str) -> list[dict[str, object]]:
    """The events of the stock npm ``mqtt`` client connecting to ``url`` (then closing)."""
    node = shutil.which("node")
    assert node, "node is not installed: run `make setup`"
    assert (JS_DIR / "node_modules" / "mqtt").is_dir(), "run `make setup` (npm ci in tests/js)"
    proc = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / "mqtt_client.mjs"), "--url", url, *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=JS_DIR,
    )
    assert proc.stdout is not None and proc.stdin is not None
    events: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(WAIT):
            while not any(e["event"] in ("connect", "error") for e in events):
                events.append(json.loads(await proc.stdout.readline()))
    finally:
        proc.stdin.close()
        async with asyncio.timeout(WAIT):
            await proc.wait()
    return events


async def test_anonymous_websocket_clients_are_refused(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test MQTT over WebSocket with the stock npm client: refused without an account."""
    url = f"ws://127.0.0.1:{secure_broker.extra_ports[0]}"
    events = await _node_mqtt(url)
    assert events[-1]["event"] == "error"
    assert "Not authorized" in str(events[-1]["message"])
    dash = new_id("dash-")
    password = await add(admin, dash, accounts.dashboard_acls())
    events = await _node_mqtt(url, "--username", dash, "--password", password)
    assert events[-1] == {"event": "connect"}


async def _closed(connection: aiomqtt.Client) -> None:
    """Until the broker has closed ``connection`` (its message loop ends with an error)."""
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(WAIT):
            async for _ in connection.messages:
                pass


async def test_a_removed_device_is_cut_off_at_once_with_the_broker_running(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that deleting a device closes its open connection and refuses it from then on."""
    amb, bystander = new_id(), new_id()
    password = await add(admin, amb, accounts.device_acls(amb))
    other_pw = await add(admin, bystander, accounts.device_acls(bystander))
    async with (
        logged_in(secure_broker, bystander, other_pw) as unaffected,
        logged_in(secure_broker, amb, password, "aoc/x/never") as device,
    ):
        await admin.delete_client(amb)
        await _closed(device)
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with client(secure_broker, amb, password):
                pass
        assert secure_broker.proc is not None and secure_broker.proc.poll() is None
        await unaffected.publish(f"aoc/{bystander}/tracking", b"still-here", qos=1)
    assert await admin.get_client(amb) is None
    assert await admin.get_role(accounts.role_name(amb)) is None


async def test_a_new_password_refuses_the_old_one(
    secure_broker: services.Service, admin: accounts.DynsecAdmin
) -> None:
    """Test that rotating a password closes the open connection and refuses the old password."""
    amb = new_id()
    old = await add(admin, amb, accounts.device_acls(amb))
    new = accounts.new_password()
    async with logged_in(secure_broker, amb, old, "aoc/x/never") as device:
        await admin.set_password(amb, new)
        await _closed(device)
    with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with client(secure_broker, amb, old):
            pass
    async with client(secure_broker, amb, new) as device:
        await device.publish(f"aoc/{amb}/status", b"online", qos=1)


async def test_plugin_errors_name_the_command(admin: accounts.DynsecAdmin) -> None:
    """Test that a refused command raises DynsecError naming it and the plugin's reason."""
    with pytest.raises(accounts.DynsecError, match="deleteClient failed: Client not found"):
        await admin.command("deleteClient", username=new_id())
    amb = new_id()
    await add(admin, amb, accounts.device_acls(amb))
    with pytest.raises(accounts.DynsecError, match="already exists"):
        await add(admin, amb, accounts.device_acls(amb))


async def test_a_wrong_admin_password_is_a_clear_error(secure_broker: services.Service) -> None:
    """Test that the admin client refused at CONNECT raises AccountsError naming the broker."""
    with pytest.raises(accounts.AccountsError, match=f"127.0.0.1:{secure_broker.port} as 'admin'"):
        async with accounts.DynsecAdmin(
            host="127.0.0.1", port=secure_broker.port, username="admin", password="fake-wrong"
        ):
            pass


def test_the_initial_file_holds_a_pbkdf2_hash_and_denies_by_default(tmp_path: Path) -> None:
    """Test the plugin file written before first start: hash, admin rights, defaults, mode."""
    path = tmp_path / "dynsec.json"
    accounts.write_initial_config(path, "boss", "s3cret")
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "s3cret" not in text
    config = json.loads(text)
    assert config["defaultACLAccess"] == {
        "publishClientSend": False, "publishClientReceive": False,
        "subscribe": False, "unsubscribe": True,
    }
    (admin,) = config["clients"]
    assert admin["username"] == "boss" and admin["iterations"] == 101
    topics = {acl["topic"] for role in config["roles"] for acl in role["acls"]}
    assert topics == {"$CONTROL/dynamic-security/#"}
    with pytest.raises(FileExistsError):
        accounts.write_initial_config(path, "boss", "other")
