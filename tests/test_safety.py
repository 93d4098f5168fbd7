"""Production mode: every default or empty secret is named, and the process refuses to start."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aoc import safety
from aoc.config import Settings
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]

# A production configuration with nothing to refuse: every secret set and not a placeholder.
SAFE: dict[str, Any] = {
    "env": "production",
    "secret_key": "k" * 43,
    "mqtt_username": "aoc-bridge",
    "mqtt_password": "fake-bridge-1",
    "mqtt_client_id": "aoc-bridge-5f0c2a9e81d4b736",
    "shim_mqtt_username": "aoc-shim",
    "shim_mqtt_password": "fake-shim-1",
    "mqtt_admin_password": "fake-admin-1",
    "store_url": "mongodb://aoc:fake-mongo-1@mongo:27017",
    "redis_url": "redis://:redis-secret-1@redis:6379/0",
    "objects_url": "s3://aoc-images",
    "s3_access_key": "aoc",
    "s3_secret_key": "fake-s3-1",
}


def settings(**changes: Any) -> Settings:
    return Settings(_env_file=None, **{**SAFE, **changes})


def variables(found: list[safety.Problem]) -> list[str]:
    return [problem.variable for problem in found]


@pytest.mark.parametrize("command", ["up", "serve", "bridge", "api", "realtime", "simulate"])
def test_a_complete_production_configuration_has_no_problem(command: str) -> None:
    """Test that nothing is refused when every secret is set (so each refusal below is its own)."""
    assert safety.problems(settings(legacy_mode=True), command) == []


def test_the_defaults_are_each_named() -> None:
    """Test the out-of-the-box settings: every problem listed, one per variable, in order."""
    defaults = Settings(_env_file=None)
    assert variables(safety.problems(defaults, "serve")) == [
        "AOC_SECRET_KEY",
        "AOC_MQTT_USERNAME",
        "AOC_MQTT_PASSWORD",
        "AOC_MQTT_CLIENT_ID",
        "AOC_REDIS_URL",
    ]
    # `aoc up` generates the broker's passwords; the simulator and the account
    # commands use those (from the credentials file).
    assert variables(safety.problems(defaults, "up")) == ["AOC_SECRET_KEY", "AOC_REDIS_URL"]
    assert safety.problems(defaults, "simulate") == []
    assert variables(safety.problems(defaults, "realtime")) == ["AOC_SECRET_KEY", "AOC_REDIS_URL"]


@pytest.mark.parametrize(
    ("changes", "command", "variable"),
    [
        ({"secret_key": ""}, "api", "AOC_SECRET_KEY"),
        ({"secret_key": "changeme"}, "api", "AOC_SECRET_KEY"),
        ({"broker_auth": False}, "up", "AOC_BROKER_AUTH"),
        ({"mqtt_password": None}, "bridge", "AOC_MQTT_PASSWORD"),
        ({"mqtt_password": " "}, "bridge", "AOC_MQTT_PASSWORD"),
        ({"mqtt_username": None}, "bridge", "AOC_MQTT_USERNAME"),
        ({"shim_mqtt_password": None, "legacy_mode": True}, "api", "AOC_SHIM_MQTT_PASSWORD"),
        ({"store_url": "mongodb://mongo:27017"}, "bridge", "AOC_STORE_URL"),
        ({"store_url": "mongodb://aoc:changeme@mongo:27017"}, "bridge", "AOC_STORE_URL"),
        ({"redis_url": "redis://redis:6379/0"}, "realtime", "AOC_REDIS_URL"),
        ({"redis_url": "redis://:ChangeMe@redis:6379/0"}, "realtime", "AOC_REDIS_URL"),
        ({"s3_access_key": None}, "bridge", "AOC_S3_ACCESS_KEY"),
        ({"s3_secret_key": "minioadmin"}, "bridge", "AOC_S3_SECRET_KEY"),
        ({"legacy_mode": True, "legacy_networks": "10.0.0.0/8,0.0.0.0/0"}, "api",
         "AOC_LEGACY_NETWORKS"),
        ({"legacy_mode": True, "legacy_networks": "::/0"}, "serve", "AOC_LEGACY_NETWORKS"),
        # Two halves add up to every address; one public network is enough.
        ({"legacy_mode": True, "legacy_networks": "0.0.0.0/1,128.0.0.0/1"}, "api",
         "AOC_LEGACY_NETWORKS"),
        ({"legacy_mode": True, "legacy_networks": "192.168.0.0/16,8.8.8.0/24"}, "api",
         "AOC_LEGACY_NETWORKS"),
        ({"metrics_networks": "0.0.0.0/0"}, "bridge", "AOC_METRICS_NETWORKS"),
        ({"metrics_token": "changeme"}, "bridge", "AOC_METRICS_TOKEN"),
        ({"secret_key": "x" * 31}, "api", "AOC_SECRET_KEY"),
        ({"mqtt_password": "changeme"}, "accounts", "AOC_MQTT_PASSWORD"),
        ({"mqtt_client_id": "aoc-bridge"}, "bridge", "AOC_MQTT_CLIENT_ID"),
    ],
)
def test_each_unsafe_setting_is_named(changes: dict[str, Any], command: str, variable: str) -> None:
    """Test one unsafe value at a time: exactly its variable is named."""
    assert variables(safety.problems(settings(**changes), command)) == [variable]


def test_what_is_safe_without_a_password_is_not_refused() -> None:
    """Test the exceptions: SQLite and local files have no password; a URL password counts."""
    local = settings(store_url="", objects_url="", s3_access_key=None, s3_secret_key=None)
    assert safety.problems(local, "serve") == []
    assert safety.problems(settings(redis_url="unix:///run/redis.sock"), "serve") == []
    query = settings(redis_url="redis://redis:6379/0?password=redis-secret-1")
    assert safety.problems(query, "serve") == []
    # Outside legacy mode its networks expose nothing.
    assert safety.problems(settings(legacy_networks="0.0.0.0/0"), "api") == []


def test_the_documented_placeholders_are_refused() -> None:
    """Test every value .env.example and docker-compose.yml ship: none passes as a secret.

    Read from the files themselves, so a placeholder added there is covered
    (or this test says which one is not).
    """
    example: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and value.strip():
            example[name.strip()] = value.strip()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

    def interpolated(name: str) -> str:
        """docker-compose's value of ``name`` with .env.example as the .env."""
        raw = str(compose["x-aoc-environment"][name])
        return re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", lambda m: example[m.group(1)], raw)

    refused = {
        problem.variable
        for problem in safety.problems(
            settings(
                store_url=interpolated("AOC_STORE_URL"),
                redis_url=interpolated("AOC_REDIS_URL"),
                s3_access_key=example["MINIO_ROOT_USER"],
                s3_secret_key=example["MINIO_ROOT_PASSWORD"],
            ),
            "bridge",
        )
    }
    assert refused == {"AOC_STORE_URL", "AOC_REDIS_URL", "AOC_S3_ACCESS_KEY", "AOC_S3_SECRET_KEY"}
    # Every other secret .env.example fills in is a placeholder too.
    for name, value in example.items():
        if name.startswith("AOC_") and name.endswith(("PASSWORD", "SECRET_KEY")):
            field = name.removeprefix("AOC_").lower()
            found = variables(safety.problems(settings(**{field: value}), "up"))
            found += variables(safety.problems(settings(**{field: value}), "serve"))
            assert name in found, f"{name}={value} from .env.example passes as a secret"


def test_development_warns_once_and_production_refuses(caplog: pytest.LogCaptureFixture) -> None:
    """Test ``check``: in development one log line naming the variables; in production a refusal."""
    unsafe = {"secret_key": None, "mqtt_password": None}
    with caplog.at_level(logging.INFO, logger="aoc.safety"):
        safety.check(settings(env="development", **unsafe), "bridge")
    assert [record.getMessage() for record in caplog.records] == [
        "development mode; production mode would refuse: AOC_SECRET_KEY, AOC_MQTT_PASSWORD"
    ]
    with pytest.raises(safety.ConfigError) as refused:
        safety.check(settings(**unsafe), "bridge")
    lines = str(refused.value).splitlines()
    assert [line.split()[0] for line in lines] == ["AOC_SECRET_KEY", "AOC_MQTT_PASSWORD"]
    assert all(line.endswith("(refused in production mode)") for line in lines)


def test_unusable_tls_settings_are_refused_in_any_mode(tmp_path: Path) -> None:
    """Test that a missing CA file or a certificate without its key stop development too."""
    missing = tmp_path / "ca.crt"
    with pytest.raises(safety.ConfigError, match="AOC_MQTT_CA_FILE"):
        safety.check(settings(env="development", mqtt_tls=True, mqtt_ca_file=missing), "bridge")
    cert = tmp_path / "server.crt"
    with pytest.raises(safety.ConfigError, match="AOC_TLS_KEY_FILE is empty"):
        safety.check(settings(env="development", tls_cert_file=cert), "up")


def aoc(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``aoc`` as a process with only ``env`` as its AOC settings (run in an empty directory)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("AOC_")}
    return subprocess.run(
        [sys.executable, "-m", "aoc.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        cwd=env.get("AOC_DATA_DIR", "/"),
        check=False,
    )


@pytest.mark.parametrize("command", ["bridge", "serve", "api", "realtime", "up"])
def test_every_entry_point_refuses_defaults_in_production(command: str, tmp_path: Path) -> None:
    """Test the real command line: exit 2 before anything starts, one stderr line per problem."""
    # Should the check let it through, nothing may start on a shared port, and
    # `aoc up` stops at its broker's configuration (a host name cannot be bound).
    ports = {
        name: str(free_port())
        for name in ("AOC_MQTT_PORT", "AOC_MQTT_WS_PORT", "AOC_HTTP_PORT", "AOC_SOCKETIO_PORT",
                     "AOC_BRIDGE_HTTP_PORT")
    }
    done = aoc(
        command, AOC_ENV="production", AOC_DATA_DIR=str(tmp_path), AOC_MQTT_BIND_HOST="localhost",
        AOC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **ports,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    expected = variables(safety.problems(Settings(_env_file=None), command))
    assert expected  # each command has something to refuse out of the box
    assert [line.split()[0] for line in lines] == expected
    assert not (tmp_path / "aoc.sqlite3").exists()  # nothing was opened


def test_production_refuses_only_what_the_command_uses(tmp_path: Path) -> None:
    """Test that production refuses per command: `aoc simulate` needs none of the services' secrets.

    With no secret key, Redis password or bridge account set, `aoc serve`
    would be refused; the simulator runs and ends.
    """
    done = aoc(
        "simulate", "--ambulances", "1", "--duration", "0.5",
        AOC_ENV="production",
        AOC_MQTT_PORT=str(free_port()), AOC_DATA_DIR=str(tmp_path),
    )
    # It ran, found no broker on a closed port and says so with exit code 1 (its
    # errors): not the refusal's exit code 2.
    assert done.returncode == 1, done.stderr
    assert "errors" in done.stderr
    assert "refused in production mode" not in done.stderr

