"""`aoc device` and `aoc dashboard` as an operator runs them, against a broker with accounts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from aoc import credentials
from broker import accounts
from storage.base import AUDIT, Query
from storage.sqlite import SQLiteDocumentStore
from tests import services
from tests.broker.conftest import ADMIN_PASSWORD, WAIT, client, logged_in, new_id, received_until

OPERATOR = "dispatch-lead"


def settings_env(broker: services.Service, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an `aoc` command run against ``broker`` (no other AOC_ variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOC_")}
    return {
        **env,
        "AOC_MQTT_PORT": str(broker.port),
        "AOC_DATA_DIR": str(data_dir),
        "AOC_OPERATOR": OPERATOR,
        **extra,
    }


async def aoc(env: dict[str, str], *args: str, cwd: Path) -> tuple[int, str, str]:
    """Run ``aoc <args>``: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aoc.cli", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ok_json(env: dict[str, str], *args: str, cwd: Path) -> Any:
    code, out, err = await aoc(env, *args, "--json", cwd=cwd)
    assert code == 0, err
    return json.loads(out)


async def audit_trail(data_dir: Path) -> list[tuple[str, str, str]]:
    async with SQLiteDocumentStore(data_dir / "aoc.sqlite3") as store:
        page = await store.find(Query(AUDIT, limit=100))
    return [(d["actor"], d["action"], d["target"]) for d in page.items]


async def refused(broker: services.Service, username: str, password: str) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with client(broker, username, password):
            pass


async def test_device_add_rotate_remove_and_list(
    secure_broker: services.Service, tmp_path: Path
) -> None:
    """Test the device commands end to end: passwords that work, closed connections, audit."""
    env = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD)
    amb = new_id()
    added = await ok_json(env, "device", "add", amb, cwd=tmp_path)
    assert added["username"] == amb
    first = added["password"]
    assert amb in (await ok_json(env, "device", "list", cwd=tmp_path))["devices"]
    code, _, err = await aoc(env, "device", "add", amb, cwd=tmp_path)
    assert code == 1
    assert err.strip().splitlines() == [
        f"aoc device add: device {amb} exists already "
        f"(`aoc device rotate {amb}` gives it a new password)"
    ]

    async with logged_in(secure_broker, amb, first) as device:
        await device.publish(f"aoc/{amb}/tracking", b"1", qos=1)
        rotated = await ok_json(env, "device", "rotate", amb, cwd=tmp_path)
        # The rotation closed the open connection.
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(WAIT):
                async for _ in device.messages:
                    pass
    second = rotated["password"]
    assert second != first
    await refused(secure_broker, amb, first)
    async with logged_in(secure_broker, amb, second) as device:
        assert await ok_json(env, "device", "remove", amb, cwd=tmp_path) == {"removed": amb}
        with pytest.raises(aiomqtt.MqttError):  # cut off at once
            async with asyncio.timeout(WAIT):
                async for _ in device.messages:
                    pass
    await refused(secure_broker, amb, second)
    assert amb not in (await ok_json(env, "device", "list", cwd=tmp_path))["devices"]
    assert [t for t in await audit_trail(tmp_path / "data") if t[2] == amb] == [
        (OPERATOR, "device.add", amb),
        (OPERATOR, "device.rotate", amb),
        (OPERATOR, "device.remove", amb),
    ]
    # The text output names the password once, and says so.
    other = new_id()
    code, out, _ = await aoc(env, "device", "add", other, cwd=tmp_path)
    assert code == 0 and "shown only this once" in out and f"aoc/{other}/tracking" in out


async def test_dashboard_add_list_remove(secure_broker: services.Service, tmp_path: Path) -> None:
    """Test the dashboard commands: limited to some ambulances or not, listed, removed, audited."""
    env = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD)
    name, wide, seen, hidden = new_id("d"), new_id("d"), new_id(), new_id()
    added = await ok_json(
        env, "dashboard", "add", name, "--ambulances", f"{seen},{hidden}", cwd=tmp_path
    )
    assert added["username"] == f"dash-{name}"
    assert added["ambulances"] == [seen, hidden]
    await ok_json(env, "dashboard", "add", wide, cwd=tmp_path)
    listed = {d["username"]: d["ambulances"] for d in
              (await ok_json(env, "dashboard", "list", cwd=tmp_path))["dashboards"]}
    assert listed[f"dash-{name}"] == sorted([seen, hidden])
    assert listed[f"dash-{wide}"] is None
    # The dashboard logs in, subscribes, and publishes nothing that anyone receives.
    async with logged_in(
        secure_broker, f"dash-{name}", added["password"], f"aoc/{seen}/state"
    ) as screen:
        await screen.publish(f"aoc/{seen}/state", b"forged", qos=1)
        await ok_json(env, "dashboard", "remove", name, cwd=tmp_path)
    code, _, err = await aoc(env, "dashboard", "remove", name, cwd=tmp_path)
    assert (code, err.strip()) == (1, f"aoc dashboard remove: there is no dashboard dash-{name}")
    assert [t for t in await audit_trail(tmp_path / "data") if t[2] == f"dash-{name}"] == [
        (OPERATOR, "dashboard.add", f"dash-{name}"),
        (OPERATOR, "dashboard.remove", f"dash-{name}"),
    ]


async def test_configuration_errors_are_one_line_and_exit_2(
    secure_broker: services.Service, tmp_path: Path
) -> None:
    """Test bad ids, names of other accounts and a missing admin password: exit 2, one line."""
    env = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD)
    for bad in ("a/b", "aoc-bridge", "dash-x", "tracking"):
        code, out, err = await aoc(env, "device", "add", bad, cwd=tmp_path)
        assert code == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1 and f"invalid ambulance id {bad!r}" in err
    code, _, err = await aoc(env, "dashboard", "add", "x", "--ambulances", "ok,a+b", cwd=tmp_path)
    assert code == 2 and "invalid ambulance id 'a+b'" in err
    no_admin = settings_env(secure_broker, tmp_path / "data")
    code, _, err = await aoc(no_admin, "device", "list", cwd=tmp_path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "AOC_MQTT_ADMIN_PASSWORD" in err
    wrong = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD="fake-wrong")
    code, _, err = await aoc(wrong, "device", "list", cwd=tmp_path)
    assert code == 1 and "Not authorized" in err and len(err.strip().splitlines()) == 1


async def test_the_admin_comes_from_the_credentials_file_whose_entries_follow(
    secure_broker: services.Service, tmp_path: Path
) -> None:
    """Test commands without AOC_MQTT_ADMIN_PASSWORD, and the file's device entries kept in step.

    A device the file holds (a simulator's) gets its rotated password there and
    leaves the file when removed; the file stays mode 0600.
    """
    data = tmp_path / "data"
    path = data / "credentials.json"
    amb = new_id()
    with credentials.editing(path) as creds:
        creds.set_account("admin", services.ADMIN, ADMIN_PASSWORD)
    env = settings_env(secure_broker, data)
    added = await ok_json(env, "device", "add", amb, cwd=tmp_path)
    assert amb not in credentials.load(path).devices  # shown once, not kept
    with credentials.editing(path) as creds:
        creds.devices[amb] = added["password"]  # as `aoc up` or `aoc simulate` would keep it
    rotated = await ok_json(env, "device", "rotate", amb, cwd=tmp_path)
    assert credentials.load(path).devices[amb] == rotated["password"]
    await ok_json(env, "device", "remove", amb, cwd=tmp_path)
    assert amb not in credentials.load(path).devices
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_device_created_by_the_command_publishes_to_the_bridge(
    secure_broker: services.Service, admin: accounts.DynsecAdmin, tmp_path: Path
) -> None:
    """Test that the account `aoc device add` makes has the device rights, seen by a bridge."""
    env = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD)
    amb, other, bridge = new_id(), new_id(), new_id("bridge")
    password = (await ok_json(env, "device", "add", amb, cwd=tmp_path))["password"]
    bridge_pw = accounts.new_password()
    await admin.create_client(bridge, bridge_pw, accounts.bridge_acls())
    async with (
        logged_in(secure_broker, bridge, bridge_pw, "aoc/+/tracking") as sub,
        logged_in(secure_broker, amb, password) as device,
    ):
        await device.publish(f"aoc/{other}/tracking", b"forged", qos=1)
        await device.publish(f"aoc/{amb}/tracking", b"mine", qos=1)
        assert await received_until(sub, f"aoc/{amb}/tracking", b"mine") == [
            (f"aoc/{amb}/tracking", b"mine")
        ]


async def test_a_bare_command_lists(secure_broker: services.Service, tmp_path: Path) -> None:
    """Test that `aoc device` and `aoc dashboard` alone list the accounts."""
    env = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD)
    amb = new_id()
    await ok_json(env, "device", "add", amb, cwd=tmp_path)
    code, out, err = await aoc(env, "device", cwd=tmp_path)
    assert code == 0, err
    assert amb in out.splitlines()
    code, out, err = await aoc(env, "dashboard", cwd=tmp_path)
    assert code == 0, err


def shown_password(out: str) -> str:
    """The one ``password <secret>`` line of an `add` command's text output."""
    found = re.findall(r"^password (\S+)$", out, flags=re.MULTILINE)
    assert len(found) == 1, out
    password: str = found[0]
    assert out.count(password) == 1, out  # shown once, nowhere else in the text
    return password


async def test_generated_passwords_are_stored_by_the_broker_only_as_hashes(
    secure_broker: services.Service, tmp_path: Path
) -> None:
    """Test the plugin's own file after `aoc device add` and `aoc dashboard add` (text output).

    Each password works (so it is the real one), and the file the broker wrote
    holds the account with a salted hash, never the password's text.
    """
    env = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD)
    amb, name = new_id(), new_id("d")
    code, device_out, err = await aoc(env, "device", "add", amb, cwd=tmp_path)
    assert code == 0, err
    code, dash_out, err = await aoc(env, "dashboard", "add", name, cwd=tmp_path)
    assert code == 0, err
    assert "shown only this once" in dash_out and f"MQTT username dash-{name}" in dash_out
    passwords = {amb: shown_password(device_out), f"dash-{name}": shown_password(dash_out)}
    for username, password in passwords.items():
        async with client(secure_broker, username, password):
            pass
    # The plugin saves its file after each change it makes.
    text = (secure_broker.workdir / services.DYNSEC_FILE).read_text()
    stored = {c["username"]: c for c in json.loads(text)["clients"]}
    for username, password in passwords.items():
        assert password not in text
        assert stored[username]["password"] and stored[username]["salt"]
        assert stored[username]["password"] != password


async def test_the_admin_password_can_come_from_a_docker_secret_file(
    secure_broker: services.Service, tmp_path: Path
) -> None:
    """Test `aoc device add|list` with AOC_MQTT_ADMIN_PASSWORD_FILE, as docker-compose runs it."""
    secret = tmp_path / "mqtt_admin_password"
    secret.write_text(ADMIN_PASSWORD + "\n")
    env = settings_env(secure_broker, tmp_path / "data", AOC_MQTT_ADMIN_PASSWORD_FILE=str(secret))
    amb = new_id()
    await ok_json(env, "device", "add", amb, cwd=tmp_path)
    assert amb in (await ok_json(env, "device", "list", cwd=tmp_path))["devices"]
    secret.write_text("fake-wrong\n")
    code, _, err = await aoc(env, "device", "list", cwd=tmp_path)
    assert code == 1 and "Not authorized" in err
