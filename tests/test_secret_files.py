"""Secrets from files: ``AOC_<NAME>_FILE`` (Docker secrets), for every secret setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aoc import startup
from aoc.config import Settings


@pytest.fixture(autouse=True)
def _no_aoc_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AOC_"):
            monkeypatch.delenv(name)


def test_each_secret_setting_is_read_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that the file's text, less one trailing newline, is the secret's value."""
    secrets = {"mqtt_admin_password": "dummy-admin\n", "mqtt_password": "dummy-bridge",
               "shim_mqtt_password": "dummy-shim\r\n", "secret_key": "dummy-key \n\n"}
    for name, text in secrets.items():
        path = tmp_path / name
        path.write_text(text, newline="")
        monkeypatch.setenv(f"AOC_{name.upper()}_FILE", str(path))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.mqtt_admin_password is not None and settings.mqtt_password is not None
    assert settings.shim_mqtt_password is not None and settings.secret_key is not None
    assert settings.mqtt_admin_password.get_secret_value() == "dummy-admin"
    assert settings.mqtt_password.get_secret_value() == "dummy-bridge"
    assert settings.shim_mqtt_password.get_secret_value() == "dummy-shim"
    assert settings.secret_key.get_secret_value() == "dummy-key \n"  # one newline only


def test_an_empty_variable_gives_way_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that AOC_MQTT_PASSWORD="" (docker-compose's way of unsetting) lets the file count."""
    (tmp_path / "pw").write_text("dummy-bridge\n")
    monkeypatch.setenv("AOC_MQTT_PASSWORD", "")
    monkeypatch.setenv("AOC_MQTT_PASSWORD_FILE", str(tmp_path / "pw"))
    password = Settings(_env_file=None).mqtt_password  # type: ignore[call-arg]
    assert password is not None and password.get_secret_value() == "dummy-bridge"


def test_a_missing_file_or_both_ways_is_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test the errors: they name the variable, never show a secret, and refuse the command."""
    missing = tmp_path / "absent"
    monkeypatch.setenv("AOC_MQTT_ADMIN_PASSWORD_FILE", str(missing))
    loaded = startup.load("bridge", _env_file=None)
    assert loaded.errors == [
        f"AOC_MQTT_ADMIN_PASSWORD='***' is invalid: AOC_MQTT_ADMIN_PASSWORD_FILE={missing}: "
        f"cannot read it: [Errno 2] No such file or directory: '{missing}'"
    ]
    (tmp_path / "pw").write_text("dummy-from-file")
    monkeypatch.setenv("AOC_MQTT_ADMIN_PASSWORD_FILE", str(tmp_path / "pw"))
    monkeypatch.setenv("AOC_MQTT_ADMIN_PASSWORD", "dummy-from-env")
    loaded = startup.load("bridge", _env_file=None)
    assert loaded.errors == [
        "AOC_MQTT_ADMIN_PASSWORD='***' is invalid: AOC_MQTT_ADMIN_PASSWORD_FILE is set too: "
        "keep one of them"
    ]
    assert loaded.detail is not None
    assert "dummy-from" not in str(loaded.detail)  # pydantic's own text leaks no value either
