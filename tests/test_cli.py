"""The ``aoc`` command line: each command's help names its settings, `--version`, `aoc config`."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from aoc import cli, settings_help, settings_use, show_config
from aoc.config import SERVICE_FIELDS, Settings

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, nested ones included: ``{"device add": parser, ...}``."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}".strip()] = sub
                    walk(f"{prefix}{name} ", sub)

    walk("", cli._parser())
    return found


def _aoc(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run `aoc <args>` with no AOC_ variable but ``env``: its exit code and output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AOC_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "aoc.cli", *args], env={**base, **(env or {})}, cwd=cwd,
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_every_command_is_in_the_table_of_settings() -> None:
    """Test that each top-level command says which settings it reads (none is forgotten)."""
    top = {name for name in _commands() if " " not in name}
    assert top == set(settings_use.COMMANDS)


def test_every_setting_is_read_by_some_command_and_named_right() -> None:
    """Test the table against the model: every field documented somewhere, no stale name."""
    named = set().union(*(used for command, used in settings_use.COMMANDS.items()
                          if command != "config"))
    fields = set(Settings.model_fields)
    assert named - fields == set()
    assert fields - named == set()


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_names_each_variable_with_its_default(command: str) -> None:
    """Test `aoc <command> --help`: its options, each AOC_ variable it reads, its default, .env."""
    parser = _commands()[command]
    text = parser.format_help()
    assert "--help" in text and ".env" in text
    for action in parser._actions:  # every option it has is named
        for option in action.option_strings:
            assert option in text
    top = command.split(maxsplit=1)[0]
    if top == "config":
        assert "every AOC_* variable" in text
        return
    fields = settings_use.fields(top)
    assert fields  # every command reads some
    for field in fields:
        assert f"{settings_help.variable(field)}={settings_help.default(field)}" in text


def test_help_shows_real_defaults_and_meanings() -> None:
    """Test a few entries as an operator reads them in `aoc serve --help` (a real process)."""
    result = _aoc("serve", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "AOC_HTTP_PORT=5000" in text
    assert "AOC_ENV=development  (development | production)" in text
    assert "AOC_MQTT_PASSWORD=(unset)" in text
    # The meaning comes from the comment above the field in aoc/config.py.
    assert "Signs image URLs (HMAC)" in text
    # What `aoc serve` does not read is not listed.
    assert "AOC_TLS_HOSTNAMES" not in text
    assert "AOC_TLS_HOSTNAMES=" in _aoc("tls", "init", "--help").stdout


def test_version_and_top_level_help() -> None:
    """Test `aoc --version` (the package's version) and `aoc --help` (where settings come from)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == settings_help.DISTRIBUTION
    result = _aoc("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"aoc {metadata.version(settings_help.DISTRIBUTION)}"
    assert result.stdout.strip() == f"aoc {project['version']}"
    top = _aoc("--help").stdout
    assert "--version" in top and ".env" in top and "AOC_*" in top


SECRETS = ("fake-pw-from-env", "url-secret", "param-secret", "dotenv-secret", "mongo-secret")


def test_config_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    """Test `aoc config`: no secret in the output, and each value's source (env, .env, default).

    Production mode with default secrets does not stop it: it shows what is wrong.
    """
    (tmp_path / ".env").write_text(
        "AOC_HTTP_PORT=5999\n"
        "AOC_MQTT_PORT=1999\n"  # the environment wins over this one
        "AOC_SECRET_KEY=dotenv-secret\n"
        "AOC_STORE_URL=mongodb://aoc:mongo-secret@db.example:27017/aoc\n"
    )
    env = {
        "AOC_ENV": "production",
        "AOC_MQTT_PORT": "2883",
        "AOC_MQTT_PASSWORD": "fake-pw-from-env",
        "AOC_REDIS_URL": "redis://:url-secret@127.0.0.1:6379/0?password=param-secret&db=1",
        "aoc_operator": "night-shift",  # names match in any case, as Settings reads them
        "AOC_RETENTION_DEAD_LETTERS_DAYS": "3",  # the other name of AOC_DEAD_LETTER_MAX_AGE_DAYS
    }
    text = _aoc("config", env=env, cwd=tmp_path)
    as_json = _aoc("config", "--json", env=env, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert as_json.returncode == 0, as_json.stderr
    for secret in SECRETS:
        assert secret not in text.stdout + text.stderr
        assert secret not in as_json.stdout + as_json.stderr
    found = json.loads(as_json.stdout)
    settings = found["settings"]
    assert found["env_file"] == {"path": str(tmp_path / ".env"), "found": True}
    assert settings["AOC_HTTP_PORT"] == {"value": 5999, "source": ".env"}
    assert settings["AOC_MQTT_PORT"] == {"value": 2883, "source": "environment"}
    assert settings["AOC_SOCKETIO_PORT"] == {"value": 5050, "source": "default"}
    assert settings["AOC_OPERATOR"] == {"value": "night-shift", "source": "environment"}
    assert settings["AOC_MQTT_PASSWORD"] == {"value": "********", "source": "environment"}
    assert settings["AOC_SECRET_KEY"] == {"value": "********", "source": ".env"}
    assert settings["AOC_MQTT_ADMIN_PASSWORD"] == {"value": None, "source": "default"}
    assert settings["AOC_DEAD_LETTER_MAX_AGE_DAYS"] == {"value": 3.0, "source": "environment"}
    assert settings["AOC_REDIS_URL"]["value"] == (
        "redis://:***@127.0.0.1:6379/0?password=********&db=1"
    )
    assert settings["AOC_STORE_URL"]["value"] == "mongodb://aoc:***@db.example:27017/aoc"
    assert set(settings) == {settings_help.variable(f) for f in Settings.model_fields}
    lines = text.stdout.splitlines()
    assert any(line.startswith("AOC_HTTP_PORT=5999 ") and line.endswith("# .env") for line in lines)
    assert any(
        line.startswith("AOC_MQTT_PASSWORD=******** ") and line.endswith("# environment")
        for line in lines
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("mongodb://user:pw@a:1,b:2/db?replicaSet=rs", "mongodb://user:***@a:1,b:2/db?replicaSet=rs"),
        ("mongodb://user@h/db", "mongodb://user@h/db"),
        ("s3://bucket?secret_key=pw&region=x", "s3://bucket?secret_key=********&region=x"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    """Test that a URL's password (user info or a secret parameter) is masked, the rest kept."""
    assert show_config.mask_url(url) == shown


def test_the_table_agrees_with_the_service_only_settings() -> None:
    """Test settings_use against config.SERVICE_FIELDS (whose bad values only services refuse).

    A command that is not a service must read none of them, or it would run on
    a default in place of a value it was given.
    """
    services = {"up", "serve", "bridge", "api", "realtime", "config"}
    for command in set(settings_use.COMMANDS) - services:
        assert set(settings_use.fields(command)) & SERVICE_FIELDS == set(), command


def test_config_shows_even_with_an_invalid_value_and_names_it(tmp_path: Path) -> None:
    """Test `aoc config` with a mistake in a setting every command reads: it still answers.

    An operator runs it to find the mistake; it was refused (exit 2) instead.
    """
    result = _aoc("config", env={"AOC_MQTT_PORT": "abc"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "AOC_MQTT_PORT='abc' is invalid: expected an integer from 1 to 65535 "
        "(the default is shown in its place)"
    ) in result.stderr
    assert re.search(r"^AOC_MQTT_PORT=1883\b", result.stdout, re.MULTILINE)
