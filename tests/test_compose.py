"""The production topology: docker-compose.yml as the real docker-compose reads it, and the image.

``docker-compose config`` parses, validates and interpolates the file without a
Docker engine. Each run gets an empty ``--env-file`` so a developer's ``.env``
cannot hide a missing secret.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aoc import bootstrap
from aoc.config import Settings
from tests import services

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
# `bridge-2`: a second member of the bridges' share group (profile `scale`).
BRIDGES = {"bridge", "bridge-2"}
LONG_RUNNING = {"mosquitto", "redis", "mongo", "minio", "api", "realtime"} | BRIDGES
# The broker's account file before its first start, its service accounts after.
ONE_SHOT = {"broker-init", "accounts"}
SERVICES = LONG_RUNNING | ONE_SHOT
APP_SERVICES = {"bridge", "api", "realtime"}
SECRETS = {
    "MINIO_ROOT_USER": "dummy-user",
    "MINIO_ROOT_PASSWORD": "dummy-password-123",
    "MONGO_ROOT_USER": "dummy-root",
    "MONGO_PASSWORD": "dummy-mongo",
    "REDIS_PASSWORD": "dummy-redis",
    "AOC_SECRET_KEY": "dummy-signing",
    "AOC_MQTT_CLIENT_ID": "dummy-session",
}


# The broker passwords: Docker secrets (files in ./secrets), each read through
# the setting's AOC_<NAME>_FILE, by the services that need it and no other.
SECRET_FILES = {
    "AOC_MQTT_ADMIN_PASSWORD": "mqtt_admin_password",
    "AOC_MQTT_PASSWORD": "mqtt_bridge_password",
    "AOC_SHIM_MQTT_PASSWORD": "mqtt_shim_password",
}
SECRETS_MOUNTED = {
    "broker-init": {"mqtt_admin_password"},
    "accounts": {"mqtt_admin_password", "mqtt_bridge_password", "mqtt_shim_password"},
    "bridge": {"mqtt_bridge_password"},
    "bridge-2": {"mqtt_bridge_password"},
    "api": {"mqtt_shim_password"},
}


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: run `make setup`"
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "--project-directory", str(ROOT),
         "-f", str(COMPOSE), "config"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = compose_config(tmp_path_factory.mktemp("compose"), SECRETS)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def test_the_services(config: dict[str, Any]) -> None:
    """Test the topology: the broker, the three stores, the AOC parts, two one-shot steps."""
    assert set(config["services"]) == SERVICES


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_every_service_restarts_and_has_a_health_check(config: dict[str, Any], name: str) -> None:
    """Test that each service restarts unless stopped and declares a real health check."""
    service = config["services"][name]
    assert service["restart"] == "unless-stopped"
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and len(test) > 1
    assert not service["healthcheck"].get("disable", False)


def test_app_services_wait_for_healthy_dependencies(config: dict[str, Any]) -> None:
    """Test that the AOC services start only once what they use is healthy."""
    services = config["services"]
    expected = {
        "bridge": {"accounts", "redis", "mongo", "minio"},
        "api": {"accounts", "redis", "mongo", "minio"},
        # Tokens are checked in the store.
        "realtime": {"redis", "mongo"},
    }
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        for dependency, condition in depends.items():
            # A one-shot step must have finished; a server must be healthy.
            wanted = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition["condition"] == wanted, (name, dependency)


def test_app_services_run_the_image_with_their_command(config: dict[str, Any]) -> None:
    """Test that bridge, api and realtime are one image built here, each with its own command."""
    services = config["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert Path(service["build"]["context"]) == ROOT
        assert service["image"] == "aoc-tracking:latest"
        assert service["command"] == [name]
        assert service["environment"]["AOC_BIND_HOST"] == "0.0.0.0"


def test_app_services_reach_the_other_services_by_name(config: dict[str, Any]) -> None:
    """Test the settings that point the bridge and the API at the stores and the broker."""
    mongo = (
        f"mongodb://{SECRETS['MONGO_ROOT_USER']}:{SECRETS['MONGO_PASSWORD']}"
        "@mongo:27017/?authSource=admin"
    )
    redis = f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    for name in APP_SERVICES:
        env = config["services"][name]["environment"]
        # Production mode: each refuses to start with an empty or placeholder secret.
        assert env["AOC_ENV"] == "production"
        assert env["AOC_STORE_URL"] == mongo
        assert env["AOC_REDIS_URL"] == redis
        assert env["AOC_SECRET_KEY"] == SECRETS["AOC_SECRET_KEY"]
    for name in ("bridge", "api"):
        env = config["services"][name]["environment"]
        assert env["AOC_OBJECTS_URL"] == "s3://aoc-images"
        assert env["AOC_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AOC_MQTT_HOST"] == "mosquitto"
        # The secrets come from the environment the file was read with.
        assert env["AOC_S3_ACCESS_KEY"] == SECRETS["MINIO_ROOT_USER"]
        assert env["AOC_S3_SECRET_KEY"] == SECRETS["MINIO_ROOT_PASSWORD"]
    services = config["services"]
    root = services["mongo"]["environment"]
    assert root["MONGO_INITDB_ROOT_USERNAME"] == SECRETS["MONGO_ROOT_USER"]
    assert root["MONGO_INITDB_ROOT_PASSWORD"] == SECRETS["MONGO_PASSWORD"]


def _mounted(service: dict[str, Any]) -> set[str]:
    """The secrets a service's containers get in /run/secrets (`config` writes the long form)."""
    return {e["source"] if isinstance(e, dict) else e for e in service.get("secrets", [])}


def test_each_process_gets_exactly_its_broker_account(
    scaled: dict[str, Any], config: dict[str, Any]
) -> None:
    """Test the broker accounts: the bridge's, the shim's for the API, none for Socket.IO.

    Each password is a Docker secret that only the services needing it mount,
    named by AOC_<NAME>_FILE; no broker password is in any environment.
    """
    services = scaled["services"]
    declared = {name: Path(entry["file"]) for name, entry in scaled["secrets"].items()}
    assert declared == {name: ROOT / "secrets" / name for name in SECRET_FILES.values()}
    for name, service in services.items():
        env = service.get("environment", {})
        assert _mounted(service) == SECRETS_MOUNTED.get(name, set()), name
        for variable, secret in SECRET_FILES.items():
            assert not env.get(variable), (name, variable)  # never the value itself
            if f"{variable}_FILE" in env:
                assert env[f"{variable}_FILE"] == f"/run/secrets/{secret}", name
                assert secret in _mounted(service), name
    bridge, api = services["bridge"]["environment"], services["api"]["environment"]
    for env in (bridge, services["bridge-2"]["environment"], services["accounts"]["environment"]):
        assert env["AOC_MQTT_USERNAME"] == "aoc-bridge"
        assert env["AOC_MQTT_PASSWORD_FILE"] == "/run/secrets/mqtt_bridge_password"
    # Its session's id comes from .env: a well-known one could be taken over.
    assert bridge["AOC_MQTT_CLIENT_ID"] == SECRETS["AOC_MQTT_CLIENT_ID"]
    # The API publishes only as the legacy shim; Socket.IO has no broker account.
    assert "AOC_MQTT_USERNAME" not in api and "AOC_MQTT_PASSWORD_FILE" not in api
    assert api["AOC_SHIM_MQTT_USERNAME"] == "aoc-shim"
    assert api["AOC_SHIM_MQTT_PASSWORD_FILE"] == "/run/secrets/mqtt_shim_password"
    realtime = services["realtime"]["environment"]
    assert not any(key.startswith(("AOC_MQTT_USERNAME", "AOC_MQTT_PASSWORD")) for key in realtime)
    # `accounts` makes both accounts from the same files, as the admin.
    accounts = services["accounts"]["environment"]
    assert accounts["AOC_SHIM_MQTT_PASSWORD_FILE"] == api["AOC_SHIM_MQTT_PASSWORD_FILE"]
    assert accounts["AOC_MQTT_ADMIN_PASSWORD_FILE"] == "/run/secrets/mqtt_admin_password"
    assert services["accounts"]["command"] == ["accounts", "apply"]
    assert services["accounts"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert config["services"]["api"]["environment"] == api


def test_the_secret_files_are_what_the_settings_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]
) -> None:
    """Test that a service's *_FILE variables, pointed at files, give the settings their secrets."""
    for name in list(os.environ):
        if name.startswith("AOC_"):
            monkeypatch.delenv(name)
    env = config["services"]["accounts"]["environment"]
    expected: dict[str, str] = {}
    for variable, secret in SECRET_FILES.items():
        path = tmp_path / secret
        path.write_text(f"dummy-{secret}\n")  # as `openssl rand ... > file` writes it
        expected[variable] = f"dummy-{secret}"
        assert env[f"{variable}_FILE"] == f"/run/secrets/{secret}"
        monkeypatch.setenv(f"{variable}_FILE", str(path))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for variable, value in expected.items():
        field = getattr(settings, variable.removeprefix("AOC_").lower())
        assert field is not None and field.get_secret_value() == value


def test_secret_files_stay_out_of_git_and_the_image() -> None:
    """Test that ./secrets is ignored by git and never part of the build context."""
    assert "secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    allowed = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert not any("secrets" in line for line in allowed)
    assert (ROOT / ".dockerignore").read_text().splitlines()[2] == "*"


def test_the_broker_starts_on_the_account_file_broker_init_writes(config: dict[str, Any]) -> None:
    """Test that `broker-init` writes the plugin's file where mosquitto.conf reads it, first."""
    services = config["services"]
    init = services["broker-init"]
    assert init["command"] == ["accounts", "init"]
    assert init["environment"]["AOC_MQTT_ADMIN_PASSWORD_FILE"] == "/run/secrets/mqtt_admin_password"
    # `aoc accounts init` writes AOC_DATA_DIR/mosquitto/<DYNSEC_FILE>: the broker's volume.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in init["volumes"]}
    data = init["environment"]["AOC_DATA_DIR"]
    broker_volume = {v.split(":")[1]: v.split(":")[0] for v in services["mosquitto"]["volumes"]}
    assert mounts[f"{data}/mosquitto"] == broker_volume["/mosquitto/data"]
    conf = (ROOT / "mosquitto.conf").read_text()
    assert f"plugin_opt_config_file /mosquitto/data/{bootstrap.DYNSEC_FILE}\n" in conf
    assert re.search(r"^allow_anonymous false$", conf, re.MULTILINE)
    depends = services["mosquitto"]["depends_on"]
    assert depends == {"broker-init": {"condition": "service_completed_successfully"}}


def test_images_are_pinned(config: dict[str, Any]) -> None:
    """Test that MinIO runs a release tag, and no image is whatever `latest` is on pull day."""
    minio = config["services"]["minio"]["image"]
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", minio), minio
    for name, service in config["services"].items():
        if service["image"] == "aoc-tracking:latest":  # built here, from this checkout
            continue
        _, _, tag = service["image"].partition(":")
        assert tag and tag != "latest", name


def test_image_links_go_through_the_api_on_its_public_url(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    """Test that the API hands out its own links (no browser reaches minio:9000).

    On AOC_PUBLIC_URL when .env sets it; the operator may switch to the store's links.
    """
    api = config["services"]["api"]["environment"]
    assert api["AOC_IMAGE_LINKS"] == "api"
    assert not api["AOC_PUBLIC_URL"]  # unset unless .env says: each request's own URL
    public = "https://aoc.example.org"
    env = {**SECRETS, "AOC_PUBLIC_URL": public, "AOC_IMAGE_LINKS": "store"}
    result = compose_config(tmp_path, env)
    assert result.returncode == 0, result.stderr
    chosen = yaml.safe_load(result.stdout)["services"]["api"]["environment"]
    assert (chosen["AOC_PUBLIC_URL"], chosen["AOC_IMAGE_LINKS"]) == (public, "store")
    # The settings take the file's default as it is.
    settings = Settings(_env_file=None, image_links=api["AOC_IMAGE_LINKS"])  # type: ignore[call-arg]
    assert settings.image_links == "api"


def test_mosquitto_runs_the_project_conf_with_a_data_volume(config: dict[str, Any]) -> None:
    """Test that Mosquitto mounts mosquitto.conf read-only and keeps its persistence on a volume."""
    mosquitto = config["services"]["mosquitto"]
    assert mosquitto["image"] == "eclipse-mosquitto:2"
    volumes = {v.split(":")[1]: v for v in mosquitto["volumes"]}
    conf = volumes["/mosquitto/config/mosquitto.conf"].split(":")
    assert Path(conf[0]) == ROOT / "mosquitto.conf"
    assert conf[2].startswith("ro")
    persistence = re.search(
        r"^persistence_location (\S+)$", (ROOT / "mosquitto.conf").read_text(), re.MULTILINE
    )
    assert persistence and persistence.group(1).rstrip("/") == "/mosquitto/data"
    data_source = volumes["/mosquitto/data"].split(":")[0]
    assert data_source in config["volumes"], "the broker's queue must outlive its container"


def test_stateful_services_keep_data_on_named_volumes(config: dict[str, Any]) -> None:
    """Test that Redis (append-only), MongoDB and MinIO write to named volumes."""
    services = config["services"]
    assert "--appendonly yes" in services["redis"]["command"][-1]
    mounts = {
        "redis": "/data",
        "mongo": "/data/db",
        "minio": "/data",
    }
    for name, target in mounts.items():
        sources = {v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == target}
        assert sources and sources <= set(config["volumes"]), name
    assert services["minio"]["command"][:2] == ["server", "/data"]


def test_published_ports_do_not_collide(config: dict[str, Any]) -> None:
    """Test that no host port is published twice and the stores are not exposed at all."""
    published: list[int] = []
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            host_ip, host_port = _published(port)
            published.append(host_port)
            if name == "minio":
                assert host_ip == "127.0.0.1"
    assert len(published) == len(set(published))
    assert {1883, 9001, 5000, 5050} <= set(published)
    for name in ("redis", "mongo"):
        assert "ports" not in config["services"][name]


def _published(port: dict[str, Any] | str) -> tuple[str, int]:
    """(host address, host port) of a port entry; `config` writes both the long and short forms."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "0.0.0.0")), int(port["published"])
    parts = port.split("/")[0].split(":")
    return (parts[0] if len(parts) == 3 else "0.0.0.0"), int(parts[-2])


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_missing_secret_stops_compose(tmp_path: Path, missing: str) -> None:
    """Test that the file has no default for a secret: without it, `config` fails and says why."""
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = compose_config(tmp_path, env)
    assert result.returncode != 0
    assert missing in result.stderr and "set it in .env" in result.stderr


def _environment_blocks(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "environment" and isinstance(value, dict):
                yield value
            yield from _environment_blocks(value)


def test_no_secret_is_written_in_the_file() -> None:
    """Test that every secret-looking variable in the raw file is an interpolation."""
    raw = yaml.safe_load(COMPOSE.read_text())
    secretive = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|_KEY$|ROOT_USER|TOKEN")
    checked = 0
    for block in _environment_blocks(raw):
        for key, value in block.items():
            if key.endswith("_FILE"):  # the path of a Docker secret, not a secret
                assert re.fullmatch(r"/run/secrets/[a-z_]+", str(value)), key
                continue
            if secretive.search(key):
                checked += 1
                # An emptied value unsets a secret another block gives (AOC_MQTT_PASSWORD: "").
                assert value == "" or re.fullmatch(
                    r"\$\{[A-Z0-9_]+(:\?[^}]+|:-)\}", str(value)
                ), key
    assert checked >= 4


def test_env_example_has_only_placeholders() -> None:
    """Test that .env.example names every required variable with a placeholder, not a secret."""
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    values = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required == set(SECRETS)
    for name in required:
        assert values[name] == "changeme"


def test_dockerfile_builds_every_package_and_runs_unprivileged() -> None:
    """Test that the image copies every package setuptools installs, runs as non-root `aoc`."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["aoc"]' in dockerfile
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*/healthz", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    includes = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))
    assert packages == copied
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert packages <= allowed and {"pyproject.toml", "README.md"} <= allowed
    assert ".env" not in allowed


def _check_command(config: dict[str, Any], name: str) -> str:
    test = config["services"][name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    return str(test[3])


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    path_ok = "/healthz"

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == self.path_ok else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("name", "port", "path"),
    # Readiness, not liveness: the Socket.IO port's too (it probed its home page, /).
    [("api", 5000, "/readyz"), ("bridge", 5001, "/readyz"), ("realtime", 5050, "/readyz")],
)
@pytest.mark.parametrize("status", [200, 503])
def test_http_health_checks_run(
    config: dict[str, Any], name: str, port: int, path: str, status: int
) -> None:
    """Test each HTTP health check command itself: it passes on a 200, fails otherwise."""
    command = _check_command(config, name)
    assert f"'http://127.0.0.1:{port}{path}'" in command
    handler = type("Handler", (_Health,), {"status": status, "path_ok": path})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = command.replace(f":{port}/", f":{server.server_address[1]}/")
        run = [sys.executable, "-c", local]
        result = subprocess.run(run, capture_output=True, timeout=30, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == (status == 200)


def test_no_password_goes_on_a_command_line(config: dict[str, Any]) -> None:
    """Test that no command or health check passes a password as an argument (`ps` shows those)."""
    for name, service in config["services"].items():
        lines = [service.get("command", []), service.get("healthcheck", {}).get("test", [])]
        text = " ".join(" ".join(part) if isinstance(part, list) else part for part in lines)
        assert " -P " not in text and "--requirepass" not in text, name
        assert not any(secret in text for secret in SECRETS.values()), name


def test_the_lone_bridge_subscribes_plainly(config: dict[str, Any]) -> None:
    """Test that the default `bridge` is in no share group (Mosquitto forgets `$share/`
    subscriptions at a restart; a lone member would lose what is published meanwhile)."""
    env = config["services"]["bridge"]["environment"]
    assert env["AOC_SHARE_GROUP"] == ""
    settings = Settings(_env_file=None, share_group=env["AOC_SHARE_GROUP"])  # type: ignore[call-arg]
    assert settings.resolved_share_group == ""


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The configuration with what .env sets to scale (README, Several bridges)."""
    env = {**SECRETS, "COMPOSE_PROFILES": "scale", "AOC_SHARE_GROUP": "aoc"}
    result = compose_config(tmp_path_factory.mktemp("scaled"), env)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def test_bridges_share_one_group_each_under_a_stable_id_of_its_own(
    scaled: dict[str, Any], config: dict[str, Any]
) -> None:
    """Test the scaled bridges: one share group, distinct stable client ids, their own spools.

    The second member is the first's service with its own id (the operator's,
    with ``-2``: stable across re-created containers, unlike a hostname) and
    volume, started only with the ``scale`` profile, and always in a group.
    """
    services = scaled["services"]
    first, second = services["bridge"], services["bridge-2"]
    assert second["profiles"] == ["scale"] and "profiles" not in first
    assert first["command"] == second["command"] == ["bridge"]
    assert first["depends_on"] == second["depends_on"]
    envs = [first["environment"], second["environment"]]
    assert {env["AOC_SHARE_GROUP"] for env in envs} == {"aoc"}
    assert config["services"]["bridge-2"]["environment"]["AOC_SHARE_GROUP"] == "aoc"
    assert [env["AOC_MQTT_CLIENT_ID"] for env in envs] == [
        SECRETS["AOC_MQTT_CLIENT_ID"], SECRETS["AOC_MQTT_CLIENT_ID"] + "-2"
    ]
    assert {k: v for k, v in envs[0].items() if k != "AOC_MQTT_CLIENT_ID"} == {
        k: v for k, v in envs[1].items() if k != "AOC_MQTT_CLIENT_ID"
    }
    spools = [{v.split(":")[0] for v in s["volumes"]} for s in (first, second)]
    assert not spools[0] & spools[1] and spools[0] | spools[1] <= set(scaled["volumes"])


@pytest.mark.parametrize("redis_up", [True, False])
def test_the_realtime_probe_is_readiness_on_the_real_server(
    redis_server: services.Service, tmp_path: Path, redis_up: bool
) -> None:
    """Test that `aoc realtime` answers the /readyz compose probes: 503 naming Redis while its
    Redis (the bridges' events) does not answer, 200 once the store and Redis do.

    Its port served only / and /metrics: the probe could tell it ran, not that it relayed.
    """
    redis_port = redis_server.port if redis_up else services.free_port()
    service = services.aoc("realtime", tmp_path, mqtt_port=services.free_port(),
                           redis_port=redis_port)
    with service:
        port = service.port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as got:
                status, report = got.status, json.load(got)
        except urllib.error.HTTPError as refused:
            status, report = refused.code, json.load(refused)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as got:
            assert json.load(got) == {"status": "ok"}
    if redis_up:
        assert (status, report) == (200, {"store": "ok", "redis": "ok"})
    else:
        assert status == 503, report
        assert report["store"] == "ok"
        assert report["redis"].startswith("Redis: "), report
