"""`aoc accounts init|apply`: the broker's service accounts where `aoc up` does not run.

docker-compose runs them around its own broker container: ``init`` before the
broker's first start, ``apply`` once it listens, with passwords from the
environment.
"""

from __future__ import annotations

from pathlib import Path

from tests import services
from tests.broker.conftest import client
from tests.broker.test_manage import aoc, audit_trail, refused, settings_env

ADMIN_PASSWORD = "fake-compose-admin"


def offline_env(data: Path, **extra: str) -> dict[str, str]:
    """The environment of a command that needs no broker (``init``, or one refused before)."""
    return {**settings_env(services.Service("none", [], services.free_port(), data), data), **extra}


async def granted(broker: services.Service, username: str, password: str, topic: str) -> int:
    """The QoS the broker grants ``username`` subscribing to ``topic`` (128: refused)."""
    async with client(broker, username, password) as connected:
        result = await connected.subscribe(topic, qos=1)
    assert isinstance(result, tuple | list)
    return int(getattr(result[0], "value", result[0]))


async def test_init_then_apply_makes_the_service_accounts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = offline_env(data, AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD)
    code, out, err = await aoc(env, "accounts", "init", cwd=tmp_path)
    assert code == 0, err
    dynsec = data / "mosquitto" / services.DYNSEC_FILE
    assert out.strip() == f"created the broker's account file {dynsec}"
    assert (dynsec.stat().st_mode & 0o777) == 0o600
    code, out, err = await aoc(env, "accounts", "init", cwd=tmp_path)
    assert (code, out.strip()) == (0, f"kept the broker's account file {dynsec}")

    # The broker starts on that file: only the admin exists so far.
    with services.mosquitto(data / "mosquitto", admin_password=ADMIN_PASSWORD) as broker:
        env = settings_env(
            broker,
            data,
            AOC_MQTT_ADMIN_PASSWORD=ADMIN_PASSWORD,
            AOC_MQTT_USERNAME="aoc-bridge",
            AOC_MQTT_PASSWORD="fake-bridge-1",
        )
        await refused(broker, "aoc-bridge", "fake-bridge-1")
        code, out, err = await aoc(env, "accounts", "apply", cwd=tmp_path)
        assert (code, out.strip()) == (0, "service accounts in place (created: aoc-bridge)"), err
        # The bridge's rights, not more: it reads device topics, not the dashboards'.
        assert await granted(broker, "aoc-bridge", "fake-bridge-1", "aoc/+/tracking") == 1
        assert await granted(broker, "aoc-bridge", "fake-bridge-1", "aoc/+/state") == 0x80

        # A password changed in the environment is set again; the old one is refused.
        env["AOC_MQTT_PASSWORD"] = "fake-bridge-2"
        env.update(AOC_SHIM_MQTT_USERNAME="aoc-shim", AOC_SHIM_MQTT_PASSWORD="fake-shim-1")
        code, out, err = await aoc(env, "accounts", "apply", cwd=tmp_path)
        assert (code, out.strip()) == (0, "service accounts in place (created: aoc-shim)"), err
        await refused(broker, "aoc-bridge", "fake-bridge-1")
        assert await granted(broker, "aoc-bridge", "fake-bridge-2", "aoc/+/crash") == 1
    trail = await audit_trail(data)
    assert [(action, target) for _, action, target in trail] == [
        ("service.add", "aoc-bridge"),
        ("service.add", "aoc-shim"),
    ]


async def test_a_missing_password_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = offline_env(tmp_path / "data")
    code, out, err = await aoc(env, "accounts", "init", cwd=tmp_path)
    assert (code, out) == (2, "")
    assert err.strip() == (
        "aoc accounts init: AOC_MQTT_ADMIN_PASSWORD is empty: "
        "the broker's accounts are made from it"
    )
    code, _, err = await aoc(
        {**env, "AOC_MQTT_ADMIN_PASSWORD": ADMIN_PASSWORD}, "accounts", "apply", cwd=tmp_path
    )
    assert code == 2
    assert err.strip() == (
        "aoc accounts apply: AOC_MQTT_USERNAME is empty: the broker's accounts are made from it"
    )
