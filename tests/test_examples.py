"""The copy-paste examples of the README and docs/ (docs/examples/) are right.

They parse (``node --check``, ``sh -n``), the README shows them as they are in
their files, and they work: a device publishes with ``mosquitto_pub`` and its
own account, the stock socket.io-client and MQTT.js dashboards receive the
point, and curl reads it back, against a real ``aoc serve`` on a broker with
accounts and ACLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import accounts
from tests import services

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
JS_MODULES = ROOT / "tests" / "js" / "node_modules"
ADMIN_PASSWORD = "fake-admin-password"  # this test's own broker's
WAIT = 20.0
# A README block shown under a link to its example file.
_SHOWN = re.compile(r"\(docs/examples/([\w.-]+)\):\s*```\w+\n(.*?)```", re.DOTALL)


def _examples(suffix: str) -> list[Path]:
    found = sorted(EXAMPLES.glob(f"*{suffix}"))
    assert found, f"no {suffix} example"
    return found


@pytest.mark.parametrize("example", _examples(".mjs"), ids=lambda p: p.name)
def test_js_examples_parse(example: Path) -> None:
    """Test that each JavaScript example is valid to Node.js (``node --check``)."""
    node = shutil.which("node")
    assert node, "node is not installed: run `make setup`"
    result = subprocess.run([node, "--check", str(example)], capture_output=True, text=True,
                            check=False, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("example", _examples(".sh"), ids=lambda p: p.name)
def test_shell_examples_parse(example: Path) -> None:
    """Test that each shell example is valid to sh (``sh -n``)."""
    result = subprocess.run(["sh", "-n", str(example)], capture_output=True, text=True,
                            check=False, timeout=30)
    assert result.returncode == 0, result.stderr


def test_readme_shows_the_examples_as_they_are() -> None:
    """Test that each example block of the README is its file's lines, in order."""
    shown = _SHOWN.findall((ROOT / "README.md").read_text())
    assert {name for name, _ in shown} == {p.name for p in EXAMPLES.iterdir()}
    for name, block in shown:
        lines = iter((EXAMPLES / name).read_text().splitlines())
        for line in block.strip("\n").splitlines():
            # Each shown line is the file's next one, or a later one (comments left out).
            assert any(line == candidate for candidate in lines), f"{name}: {line!r}"


class Process:
    """A child process whose stdout lines are collected as they come."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    async def wait_for(self, what: str, found: Callable[[str], bool]) -> str:
        async with asyncio.timeout(WAIT):
            while True:
                for line in list(self.lines):
                    if found(line):
                        return line
                assert self.proc.poll() is None, f"exited while waiting for {what}: {self.lines}"
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(example: str, env: dict[str, str], tmp_path: Path) -> Iterator[Process]:
    """A JavaScript example run by Node.js, finding the test clients' npm packages."""
    if not (JS_MODULES / "socket.io-client").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `make setup` (npm ci in tests/js)")
    # As a user runs it: the file in a folder of its own, next to its node_modules.
    folder = tmp_path / "dashboard"
    folder.mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (folder / "node_modules").symlink_to(JS_MODULES)
    shutil.copy(EXAMPLES / example, folder / example)
    node = shutil.which("node")
    assert node
    process = Process([node, example], env, folder)
    try:
        yield process
    finally:
        process.stop()


def run_shell(example: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(EXAMPLES / example)], env={**os.environ, **env},
                          capture_output=True, text=True, check=False, timeout=60)


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


@pytest.fixture
async def broker_with_accounts(
    tmp_path: Path,
) -> AsyncIterator[tuple[services.Service, dict[str, str]]]:
    """A broker with accounts on, and the bridge's, a device's and a dashboard's passwords."""
    if shutil.which("mosquitto_pub") is None:
        pytest.fail("mosquitto_pub is not installed: run `make setup` (mosquitto-clients)")
    with services.mosquitto(tmp_path / "broker", admin_password=ADMIN_PASSWORD) as broker:
        passwords = {name: accounts.new_password() for name in ("bridge", "device", "dashboard")}
        async with accounts.DynsecAdmin(
            host="127.0.0.1", port=broker.port, username=services.ADMIN, password=ADMIN_PASSWORD
        ) as admin:
            await admin.set_default_access()
            await admin.put_client(
                accounts.BRIDGE_USERNAME, passwords["bridge"], accounts.bridge_acls()
            )
            yield broker, passwords | {"admin": ADMIN_PASSWORD}


async def test_the_examples_work_against_a_real_deployment(
    tmp_path: Path,
    broker_with_accounts: tuple[services.Service, dict[str, str]],
    redis_server: services.Service,
) -> None:
    """Test device.sh, both dashboards and read-api.sh end to end, with real accounts."""
    broker, passwords = broker_with_accounts
    ambulance = f"EX-{uuid.uuid4().hex[:8]}"
    async with accounts.DynsecAdmin(
        host="127.0.0.1", port=broker.port, username=services.ADMIN, password=passwords["admin"]
    ) as admin:
        await admin.put_client(ambulance, passwords["device"], accounts.device_acls(ambulance))
        await admin.put_client("dash-wall", passwords["dashboard"], accounts.dashboard_acls())
    serve = services.aoc(
        "serve", tmp_path, mqtt_port=broker.port, redis_port=redis_server.port, legacy=False,
        env={"AOC_MQTT_USERNAME": accounts.BRIDGE_USERNAME,
             "AOC_MQTT_PASSWORD": passwords["bridge"]},
    )
    with serve:
        sio_env = {"SOCKETIO_URL": f"http://127.0.0.1:{serve.env['AOC_SOCKETIO_PORT']}",
                   "TOKEN": serve.token, "AMBULANCE": ambulance}
        mqtt_env = {"MQTT_WS_URL": f"ws://127.0.0.1:{broker.extra_ports[0]}",
                    "MQTT_USERNAME": "dash-wall", "MQTT_PASSWORD": passwords["dashboard"]}
        device_env = {"MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker.port),
                      "AMBULANCE": ambulance, "PASSWORD": passwords["device"]}
        with (
            running("dashboard-socketio.mjs", sio_env, tmp_path) as sio,
            running("dashboard-mqtt.mjs", mqtt_env, tmp_path) as mqtt,
        ):
            for room in (ambulance, f"CRASH_NOTIFY_{ambulance}"):
                await sio.wait_for(f"join {room}", lambda line, r=room: line == f"room joined: {r}")
            # The device's account is what lets it publish: a wrong password is refused.
            refused = run_shell("device.sh", device_env | {"PASSWORD": "fake-wrong-password"})
            assert refused.returncode != 0
            published = run_shell("device.sh", device_env)
            assert published.returncode == 0, published.stderr
            point = _json(await sio.wait_for(
                "the point on Socket.IO",
                lambda line: (_json(line) or {}).get("ambulance_id") == ambulance,
            ))
            state = _json(await mqtt.wait_for(
                "the state on MQTT",
                lambda line: (_json(line) or {}).get("ambulance") == ambulance,
            ))
        assert (point["tracking_latitude"], point["tracking_speed"]) == (13.7563, 45.5)
        assert state["kind"] == "state"
        assert (state["body"]["speed"], state["body"]["location"]) == (
            45.5, {"lat": 13.7563, "lon": 100.5018}
        )
        api_env = {"API": f"http://127.0.0.1:{serve.port}", "TOKEN": serve.token,
                   "AMBULANCE": ambulance}
        read = run_shell("read-api.sh", api_env)
        assert read.returncode == 0, read.stderr
        fleet, track = (json.loads(line) for line in read.stdout.splitlines() if line)
        assert ambulance in [item["ambulance_id"] for item in fleet["items"]]
        [stored] = track["items"]
        assert (stored["speed"], stored["location"]) == (45.5, {"lat": 13.7563, "lon": 100.5018})
        unauthorized = run_shell("read-api.sh", api_env | {"TOKEN": "fake-unknown-token"})
        assert unauthorized.returncode != 0  # curl -f: the 401 fails the script
