"""Configuration mistakes and unreachable dependencies at start: one line each, on the real command.

Exit code 2 for a configuration error (a restart cannot cure it), 1 for a
dependency that does not answer at start (a restart with backoff may find
it); the traceback only at ``AOC_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aoc import startup
from aoc.config import SERVICE_FIELDS, Settings
from tests import services
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]
URLS = "sqlite:///relative.db, sqlite:////absolute/path.db, mongodb://... or mongodb+srv://..."
PORTS = "expected an integer from 1 to 65535"


def environment(**env: str) -> dict[str, str]:
    """This process's environment without its AOC settings, plus ``env``."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("AOC_")}
    return {**clean, "PYTHONPATH": str(ROOT), **env}


def aoc(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``aoc`` as a process with only ``env`` as its AOC settings, run in ``cwd`` (no .env)."""
    return subprocess.run(
        [sys.executable, "-m", "aoc.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(**env),
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"AOC_HTTP_PORT": "abc"}, f"AOC_HTTP_PORT='abc' is invalid: {PORTS}"),
        ({"AOC_HTTP_PORT": "99999"}, f"AOC_HTTP_PORT='99999' is invalid: {PORTS}"),
        ({"AOC_MQTT_PORT": "0"}, f"AOC_MQTT_PORT='0' is invalid: {PORTS}"),
        (
            {"AOC_STORE_URL": "postgres://aoc:hunter2@db/aoc"},
            "AOC_STORE_URL='postgres://aoc:***@db/aoc' is invalid: unknown scheme: "
            f"expected {URLS}",
        ),
        (
            {"AOC_STORE_URL": "ftp://files.example/aoc"},
            f"AOC_STORE_URL='ftp://files.example/aoc' is invalid: unknown scheme: expected {URLS}",
        ),
        (
            {"AOC_OBJECTS_URL": "ftp://files.example/aoc"},
            "AOC_OBJECTS_URL='ftp://files.example/aoc' is invalid: unknown scheme: "
            "expected file:///absolute/directory or s3://bucket",
        ),
        (
            {"AOC_REDIS_URL": "http://cache:6379"},
            "AOC_REDIS_URL='http://cache:6379' is invalid: expected redis://host:6379/0, "
            "rediss://... or unix:///path",
        ),
        (
            {"AOC_S3_ENDPOINT_URL": "minio:9000"},
            "AOC_S3_ENDPOINT_URL='minio:9000' is invalid: expected http://host:port or "
            "https://host",
        ),
        (
            {"AOC_LOG_LEVEL": "loud"},
            "AOC_LOG_LEVEL='loud' is invalid: expected one of DEBUG, INFO, WARNING, ERROR, "
            "CRITICAL",
        ),
        (
            {"AOC_ENV": "prod"},
            "AOC_ENV='prod' is invalid: expected one of 'development', 'production'",
        ),
    ],
)
def test_a_misconfiguration_is_one_line_and_exit_2(
    env: dict[str, str], line: str, tmp_path: Path
) -> None:
    """Test that `aoc serve` prints exactly one line: the variable, its value, what is valid."""
    done = aoc("serve", cwd=tmp_path, timeout=60, AOC_DATA_DIR=str(tmp_path), **env)
    assert (done.returncode, done.stderr) == (2, line + "\n")
    assert done.stdout == ""


@pytest.mark.parametrize("command", ["up", "bridge", "api", "realtime"])
def test_every_service_refuses_an_invalid_port(command: str, tmp_path: Path) -> None:
    """Test that each service stops at AOC_HTTP_PORT=abc with the one line, before starting."""
    done = aoc(command, cwd=tmp_path, AOC_DATA_DIR=str(tmp_path), AOC_HTTP_PORT="abc")
    assert (done.returncode, done.stderr) == (2, f"AOC_HTTP_PORT='abc' is invalid: {PORTS}\n")


def test_every_error_gets_its_line(tmp_path: Path) -> None:
    """Test that several mistakes are one line each, in the order of the settings."""
    done = aoc(
        "serve", cwd=tmp_path, AOC_DATA_DIR=str(tmp_path), AOC_HTTP_PORT="99999",
        AOC_BATCH_SIZE="0", AOC_BROKER_AUTH="maybe",
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"AOC_HTTP_PORT='99999' is invalid: {PORTS}",
        "AOC_BROKER_AUTH='maybe' is invalid: expected true or false (1/0, yes/no, on/off)",
        "AOC_BATCH_SIZE='0' is invalid: expected an integer > 0",
    ]


def test_the_traceback_shows_at_debug_only(tmp_path: Path) -> None:
    """Test that AOC_LOG_LEVEL=DEBUG adds pydantic's error and its traceback, the line last."""
    done = aoc(
        "serve", cwd=tmp_path, AOC_DATA_DIR=str(tmp_path), AOC_HTTP_PORT="abc",
        AOC_LOG_LEVEL="debug",
    )
    assert done.returncode == 2
    assert "Traceback" in done.stderr
    assert "http_port" in done.stderr  # pydantic's own words, for a developer
    assert done.stderr.splitlines()[-1] == f"AOC_HTTP_PORT='abc' is invalid: {PORTS}"


def test_simulate_runs_with_an_http_port_it_does_not_use(
    mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test that AOC_HTTP_PORT=abc is a warning for `aoc simulate`, which then publishes."""
    done = aoc(
        "simulate", "--ambulances", "1", "--rate", "5", "--duration", "2", "--snap-every", "999",
        cwd=tmp_path, AOC_DATA_DIR=str(tmp_path), AOC_HTTP_PORT="abc",
        AOC_MQTT_PORT=str(mosquitto.port),
    )
    assert done.returncode == 0, done.stderr
    warning = (
        f"AOC_HTTP_PORT='abc' is invalid: {PORTS} (ignored: `aoc simulate` does not use it)"
    )
    mentions = [line for line in done.stderr.splitlines() if "AOC_HTTP_PORT" in line]
    assert len(mentions) == 1 and mentions[0].endswith(f"WARNING simulate aoc: {warning}")
    sent = re.findall(r"tracking (\d+)", done.stderr)
    assert sent and int(sent[-1]) > 0, done.stderr


def _safe_env(tmp_path: Path) -> dict[str, str]:
    """Settings that development mode has nothing to warn about: stderr holds only the error."""
    return {
        "AOC_DATA_DIR": str(tmp_path),
        "AOC_SECRET_KEY": "s" * 32,
        "AOC_MQTT_USERNAME": "aoc-bridge",
        "AOC_MQTT_PASSWORD": "p" * 16,
        "AOC_MQTT_CLIENT_ID": "aoc-bridge-0123456789abcdef",
        "AOC_REDIS_URL": f"redis://:{'r' * 16}@127.0.0.1:{free_port()}/0",
        "AOC_MQTT_PORT": str(free_port()),
        "AOC_HTTP_PORT": str(free_port()),
        "AOC_SOCKETIO_PORT": str(free_port()),
    }


def test_an_unreachable_mongodb_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Test that `aoc serve` on a MongoDB nobody listens on exits 1 with one line, no traceback.

    Exit 1, not 2: the server may come back, so `aoc up` may restart it (with backoff).
    """
    port = free_port()
    done = aoc(
        "serve", cwd=tmp_path, timeout=60, **_safe_env(tmp_path),
        AOC_STORE_URL=f"mongodb://aoc:hunter2@127.0.0.1:{port}/?authSource=admin",
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"cannot start: AOC_STORE_URL='mongodb://aoc:***@127.0.0.1:{port}/?authSource=admin' "
        f"is unreachable: MongoDB: 127.0.0.1:{port}: [Errno 111] Connection refused"
    ]


def test_api_with_its_broker_unreachable_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Test that `aoc api` in legacy mode exits 1 with one line when its broker is down."""
    env = _safe_env(tmp_path)
    port = env["AOC_MQTT_PORT"]
    done = aoc(
        "api", cwd=tmp_path, timeout=60, **env, AOC_LEGACY_MODE="1",
        AOC_SHIM_MQTT_USERNAME="aoc-shim",
        AOC_SHIM_MQTT_PASSWORD="q" * 16,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    # Redis is optional: its absence is one warning line of its own.
    assert [line for line in lines if "redis unavailable" not in line] == [
        f"cannot start: the MQTT broker at AOC_MQTT_HOST='127.0.0.1', AOC_MQTT_PORT={port} is "
        f"unreachable: could not connect to MQTT broker 127.0.0.1:{port} within 10.0s: "
        f"[Errno 111] Connect call failed ('127.0.0.1', {port})"
    ]
    assert len(lines) == 2


def test_serve_and_bridge_with_the_broker_down_log_one_warning_line_per_failure(
    tmp_path: Path,
) -> None:
    """Test that a bridge that cannot reach the broker logs one WARNING line a try, no traceback."""
    running: dict[str, subprocess.Popen[str]] = {}
    logs = {command: tmp_path / f"{command}.log" for command in ("serve", "bridge")}
    try:
        for command, log in logs.items():
            env = _safe_env(tmp_path / command)
            env["AOC_BRIDGE_HTTP_PORT"] = str(free_port())
            (tmp_path / command).mkdir()
            with log.open("w") as out:
                running[command] = subprocess.Popen(
                    [sys.executable, "-m", "aoc.cli", command],
                    stdout=out, stderr=subprocess.STDOUT, text=True,
                    env=environment(**env), cwd=tmp_path / command,
                )
        deadline = time.monotonic() + 60
        while not all("bridge failed (" in log.read_text() for log in logs.values()):
            assert time.monotonic() < deadline, {c: p.read_text() for c, p in logs.items()}
            assert all(proc.poll() is None for proc in running.values())
            time.sleep(0.2)
    finally:
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            proc.wait(30)
    for command, log in logs.items():
        text = log.read_text()
        assert running[command].returncode == 0, text
        assert "Traceback" not in text
        failed = [line for line in text.splitlines() if "bridge failed (" in line]
        assert failed and all(
            f"WARNING {command} aoc.parts: bridge failed (MqttError: could not connect to MQTT "
            "broker 127.0.0.1:" in line
            for line in failed
        ), text
        # Every line is a log line of its own: no continuation (traceback) lines.
        assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in text.splitlines()), text


def test_fields_only_services_read_are_warnings_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that load() tells errors from ignored values by command, defaults standing in."""
    monkeypatch.setenv("AOC_HTTP_PORT", "abc")
    monkeypatch.setenv("AOC_MQTT_PORT", "1884")
    monkeypatch.setenv("AOC_BATCH_SIZE", "-1")
    loaded = startup.load("simulate", _env_file=None)
    assert loaded.errors == []
    assert loaded.ignored == [
        f"AOC_HTTP_PORT='abc' is invalid: {PORTS} (ignored: `aoc simulate` does not use it)",
        "AOC_BATCH_SIZE='-1' is invalid: expected an integer > 0 "
        "(ignored: `aoc simulate` does not use it)",
    ]
    assert (loaded.settings.http_port, loaded.settings.mqtt_port) == (5000, 1884)
    served = startup.load("serve", _env_file=None)
    assert served.ignored == []
    assert [line.split(" is ")[0] for line in served.errors] == [
        "AOC_HTTP_PORT='abc'",
        "AOC_BATCH_SIZE='-1'",
    ]
    monkeypatch.setenv("AOC_MQTT_PORT", "70000")  # simulate reads this one: an error there
    assert startup.load("simulate", _env_file=None).errors == [
        f"AOC_MQTT_PORT='70000' is invalid: {PORTS}"
    ]


def test_service_fields_are_settings() -> None:
    """Test that every name in SERVICE_FIELDS is a setting (a typo would make no warning)."""
    assert set(Settings.model_fields) >= SERVICE_FIELDS
    assert startup.variable("http_port") == "AOC_HTTP_PORT"


def test_a_second_process_on_one_data_directory_is_one_line_and_exit_2(
    mosquitto: services.Service, redis_server: services.Service, tmp_path: Path
) -> None:
    """Test that a second `aoc serve` on a data directory in use stops at once: exit 2.

    A second `make run` in the same folder used to crash-loop on the spool's
    lock, with a traceback each time.
    """
    first = services.aoc(
        "serve", tmp_path, mqtt_port=mosquitto.port, redis_port=redis_server.port
    )
    with first:
        done = aoc(
            "serve",
            cwd=tmp_path,
            AOC_DATA_DIR=str(tmp_path / "data"),
            AOC_MQTT_PORT=str(mosquitto.port),
            AOC_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
            AOC_HTTP_PORT=str(free_port()),
            AOC_SOCKETIO_PORT=str(free_port()),
            AOC_MQTT_CLIENT_ID="aoc-bridge-second",
        )
    assert done.returncode == startup.EXIT_CONFIG, done.stderr
    spool = (tmp_path / "data" / "spool").resolve()
    errors = [line for line in done.stderr.splitlines() if "WARNING" not in line]
    assert errors == [
        f"AOC_DATA_DIR: object spool {spool} is used by another process (another `aoc serve`, "
        "`aoc bridge` or `aoc up` on this data directory?): stop it, or give this process a "
        "directory of its own"
    ]


@pytest.mark.parametrize("command", [("token", "list"), ("token", "add", "kiosk")])
def test_a_management_command_without_its_store_is_one_line_and_exit_1(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """Test `aoc token` with MongoDB down: one line naming the store, no traceback."""
    port = free_port()
    url = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=500"
    done = aoc(*command, cwd=tmp_path, AOC_STORE_URL=url)
    assert done.returncode == startup.EXIT_UNREACHABLE, done.stderr
    assert done.stderr.splitlines() == [
        f"cannot start: AOC_STORE_URL='{url}' is unreachable: MongoDB: "
        f"127.0.0.1:{port}: [Errno 111] Connection refused"
    ]


@pytest.mark.parametrize(
    ("command", "env", "line"),
    [
        ("serve", {"AOC_REDIS_URL": "redis://127.0.0.1:99999/0"},
         "AOC_REDIS_URL='redis://127.0.0.1:99999/0' is invalid: its port is not an integer "
         "from 1 to 65535: expected redis://host:6379/0, rediss://... or unix:///path"),
        ("serve", {"AOC_STORE_URL": "mongodb://127.0.0.1:99999"},
         "AOC_STORE_URL='mongodb://127.0.0.1:99999' is invalid: not a MongoDB URL pymongo "
         "accepts: Port must be an integer between 0 and 65535"),
        ("serve", {"AOC_STORE_URL": "mongodb://"},
         "AOC_STORE_URL='mongodb://' is invalid: not a MongoDB URL pymongo accepts: "
         "Must provide at least one hostname or IP"),
        ("serve", {"AOC_DATA_DIR": "/etc/passwd"},
         "AOC_DATA_DIR='/etc/passwd' is invalid: it is a file: expected a directory "
         "(made if missing)"),
        ("up", {"AOC_BIND_HOST": "localhost"},
         "aoc up: Mosquitto's WebSocket listener needs an IP address to bind, not 'localhost': "
         "set AOC_MQTT_BIND_HOST (or AOC_BIND_HOST) to one"),
        ("up", {"AOC_TLS_CERT_FILE": "/no/cert.pem", "AOC_TLS_KEY_FILE": "/no/key.pem"},
         "AOC_TLS_CERT_FILE='/no/cert.pem' is not a file: run `aoc tls init`, or fix the path"),
        ("serve", {"AOC_HTTP_PORT": "5999", "AOC_SOCKETIO_PORT": "5999"},
         "AOC_HTTP_PORT and AOC_SOCKETIO_PORT are both 5999: each listener needs a port of "
         "its own"),
        ("up", {"AOC_MQTT_PORT": "5998", "AOC_HTTP_PORT": "5998"},
         "AOC_HTTP_PORT and AOC_MQTT_PORT are both 5998: each listener needs a port of its own"),
    ],
)
def test_more_mistakes_are_one_line_and_exit_2(
    command: str, env: dict[str, str], line: str, tmp_path: Path
) -> None:
    """Test mistakes a review found still ending in a traceback (or 60 s of restarts, exit 1)."""
    ports = {
        "AOC_MQTT_PORT": str(free_port()), "AOC_MQTT_WS_PORT": str(free_port()),
        "AOC_HTTP_PORT": str(free_port()), "AOC_SOCKETIO_PORT": str(free_port()),
        "AOC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "AOC_DATA_DIR": str(tmp_path / "data"),
    }
    done = aoc(command, cwd=tmp_path, timeout=90, **{**ports, **env})
    assert done.returncode == startup.EXIT_CONFIG, done.stderr[-600:]
    errors = [text for text in done.stderr.splitlines() if " WARNING " not in text]
    assert "Traceback" not in done.stderr
    assert line in errors, errors


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        ("serve", "AOC_HTTP_PORT"),
        ("serve", "AOC_SOCKETIO_PORT"),
        ("api", "AOC_HTTP_PORT"),
        ("bridge", "AOC_BRIDGE_HTTP_PORT"),
        ("realtime", "AOC_SOCKETIO_PORT"),
    ],
)
def test_a_port_taken_at_start_up_is_one_line_naming_its_variable_and_holder_and_exit_2(
    command: str, variable: str, tmp_path: Path
) -> None:
    """Test that a service run on its own with its port held stops at once, without retrying.

    It used to print a 30-line traceback, then two ERROR lines per restart,
    forever: another program on the port is not cured by waiting.
    """
    env = _safe_env(tmp_path)
    env["AOC_BRIDGE_HTTP_PORT"] = str(free_port())
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env[variable] = str(port)
        done = aoc(command, cwd=tmp_path, timeout=60, **env)
    assert done.returncode == startup.EXIT_CONFIG, done.stderr[-600:]
    # Only the warning that Redis is absent, for a command that would use it at start.
    errors = [line for line in done.stderr.splitlines() if " WARNING " not in line]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"port {port} ({variable}) is in use by pid {os.getpid()} (")
    assert errors[0].endswith(f"): stop it, or set {variable} to a free port")
    assert "Traceback" not in done.stderr


def test_the_dead_letters_bound_is_read_under_its_retention_name_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Test AOC_RETENTION_DEAD_LETTERS_DAYS (the spec's name): read, and both names an error."""
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("AOC_RETENTION_DEAD_LETTERS_DAYS", "3")
    loaded = startup.load("serve", _env_file=None)
    assert (loaded.errors, loaded.settings.dead_letter_max_age_days) == ([], 3.0)
    assert Settings(dead_letter_max_age_days=9).dead_letter_max_age_days == 9.0
    monkeypatch.setenv("AOC_DEAD_LETTER_MAX_AGE_DAYS", "4")
    loaded = startup.load("serve", _env_file=None)
    assert loaded.errors == [
        "AOC_DEAD_LETTER_MAX_AGE_DAYS='4' is invalid: "
        "AOC_RETENTION_DEAD_LETTERS_DAYS is set too: keep one of them"
    ]
    assert loaded.settings.dead_letter_max_age_days == 7.0  # the default stands in
    monkeypatch.delenv("AOC_RETENTION_DEAD_LETTERS_DAYS")
    assert startup.load("serve", _env_file=None).settings.dead_letter_max_age_days == 4.0
    # Given in .env and the environment, under one name each: the same error.
    (tmp_path / ".env").write_text("AOC_RETENTION_DEAD_LETTERS_DAYS=5\n")
    assert len(startup.load("serve").errors) == 1
    monkeypatch.delenv("AOC_DEAD_LETTER_MAX_AGE_DAYS")
    monkeypatch.setenv("AOC_RETENTION_DEAD_LETTERS_DAYS", "-1")
    (tmp_path / ".env").unlink()
    assert startup.load("serve", _env_file=None).errors == [
        "AOC_DEAD_LETTER_MAX_AGE_DAYS='-1' is invalid: expected a number > 0"
    ]
