"""Settings, read once at the entry point and passed down.

Every variable is prefixed ``AOC_`` and may also come from an optional ``.env``
file in the working directory. Defaults run the whole system on one machine
with no secrets: SQLite and a local directory instead of MongoDB and S3.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import storage
from bridge.subscriptions import DEFAULT_SHARE_GROUP

ENV_PREFIX = "AOC_"
# A TCP port to listen on or connect to.
Port = Annotated[int, Field(ge=1, le=65535)]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Settings that only the long-running services (``aoc.safety.SERVICES``) read:
# their HTTP and Socket.IO servers, the bridge's tuning, the object store. An
# invalid value of one is an error there, and a warning in any other command
# (`aoc simulate` does not fail on AOC_HTTP_PORT=abc); see ``aoc.startup``.
SERVICE_FIELDS = frozenset({
    "cors_origins", "http_port", "socketio_port", "bridge_http_port",
    "mqtt_queue_size", "mqtt_queue_bytes",
    "objects_url", "s3_endpoint_url", "s3_region", "s3_access_key", "s3_secret_key",
    "objects_public_url", "spool_dir", "spool_max_bytes", "redis_url",
    "speed_orange_kmh", "speed_red_kmh", "crash_dedup_seconds", "max_clock_ahead_seconds",
    "google_maps_key", "max_image_bytes", "max_upload_files", "dead_letter_payload_bytes",
    "http_max_connections", "socketio_max_connections", "http_body_timeout",
    "http_body_min_rate", "http_header_timeout", "max_concurrent_uploads",
    "dead_letter_max_count", "dead_letter_max_age_days", "dead_letter_rate",
    "dead_letter_burst", "dead_letter_prune_seconds", "device_rate", "device_burst",
    "retention_tracking_days", "retention_snapshots_days", "retention_crashes_days",
    "retention_audit_days", "retention_reports_days", "retention_sweep_seconds",
    "retention_batch_size",
    "batch_size", "batch_wait_ms", "batch_max_bytes", "snap_workers", "snap_buffer_bytes",
    "image_url_ttl_seconds", "metrics_token", "metrics_networks", "restart_count",
    "dashboard_tile_url", "dashboard_tile_attribution", "dashboard_offline_seconds",
    "dashboard_socketio_url", "dashboard_dir",
    "share_group", "bridges",
    "live_interval_ms", "dispatch_wait_seconds",
    "geofence_margin_m", "arrival_radius_m", "eta_window_seconds", "eta_min_speed_kmh",
    "offline_after_seconds", "overspeed_alarm", "geofence_alarms", "places_refresh_seconds",
    "stop_speed_kmh", "stop_min_seconds",
})


# Other variables a setting is read from too. AOC_RETENTION_DEAD_LETTERS_DAYS is the
# name the retention settings' pattern (and the history spec) gives the dead letters'
# bound; the older name keeps working. Both set: that setting's error.
ALIASES: Mapping[str, tuple[str, ...]] = {
    "dead_letter_max_age_days": ("AOC_RETENTION_DEAD_LETTERS_DAYS",),
}


def geofence_alarm_rules(text: str) -> frozenset[tuple[str, str]]:
    """``AOC_GEOFENCE_ALARMS``, e.g. ``restricted:enter,hospital:exit`` (place kinds or ids)."""
    rules = set()
    for item in text.split(","):
        if not item.strip():
            continue
        selector, _, event = item.strip().rpartition(":")
        if not selector or event not in ("enter", "exit"):
            raise ValueError(f"expected <place kind or id>:<enter|exit>, got {item.strip()!r}")
        rules.add((selector, event))
    return frozenset(rules)


class Settings(BaseSettings):
    """All configuration of every AOC process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        # Settings(name=...) still works for the fields read under ALIASES.
        populate_by_name=True,
    )

    # Network: bind to loopback by default; operators opt in to exposure.
    bind_host: str = "127.0.0.1"
    # Where the Mosquitto of `aoc up` listens (MQTT and WebSocket); unset:
    # bind_host. Devices may need the broker on the network while the HTTP and
    # Socket.IO ports stay behind a reverse proxy on loopback.
    mqtt_bind_host: str | None = None
    # Browser origins (scheme://host[:port]) allowed to call the HTTP API and
    # Socket.IO, comma-separated; empty: same origin only; "*": any.
    cors_origins: str = ""
    http_port: Port = 5000
    socketio_port: Port = 5050
    # `aoc bridge` alone serves /healthz, /readyz and /metrics here.
    bridge_http_port: Port = 5001
    # The HTTP API's address as browsers reach it (scheme://host[:port][/path]),
    # which the image links of the read API are built on; empty: taken from each
    # request, whose Host header the client writes (development only).
    public_url: str = ""

    # The dispatch dashboard at /dashboard (``api.routes.dashboard``). Map tiles
    # from this URL template ({z}/{x}/{y}, as Leaflet takes it); empty: no tiles,
    # a plain background with country outlines and a scale (closed networks).
    dashboard_tile_url: str = ""
    dashboard_tile_attribution: str = ""
    # An ambulance not heard from for this long shows as offline.
    dashboard_offline_seconds: float = Field(default=120.0, gt=0)
    # The Socket.IO server as browsers reach it; empty: the page's own host on
    # socketio_port.
    dashboard_socketio_url: str = ""
    # Where the page and its npm packages are; empty: the repository's
    # dashboard/ folder (installed in place). The Docker image sets its own.
    dashboard_dir: str = ""

    # MQTT broker (Mosquitto).
    mqtt_host: str = "127.0.0.1"
    mqtt_port: Port = 1883
    mqtt_ws_port: Port = 9001
    # The bridge's broker account (``broker.accounts``); unset: anonymous.
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    # The legacy shim's account: the only one allowed to publish legacy bodies.
    shim_mqtt_username: str | None = None
    shim_mqtt_password: SecretStr | None = None
    # The broker's account manager (Mosquitto's dynamic security plugin), used
    # by `aoc device`, `aoc dashboard` and `aoc up`'s first start.
    mqtt_admin_username: str = "admin"
    mqtt_admin_password: SecretStr | None = None
    # `aoc up`'s own broker: accounts and ACLs on (false: anonymous, for
    # throwaway experiments only; refused in production).
    broker_auth: bool = True
    # Generated credentials of `aoc up` (mode 0600); empty: data_dir/credentials.json.
    credentials_file: Path | None = None
    # Broker connections over TLS: MQTT on mqtt_tls_port, WebSocket (wss) on
    # mqtt_wss_port, with this certificate and key (`aoc tls init` makes a
    # development pair). Clients verify the server against mqtt_ca_file.
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    mqtt_tls_port: Port = 8883
    mqtt_wss_port: Port = 9443
    # Host names (comma-separated) the `aoc tls init` certificate also names,
    # besides localhost, 127.0.0.1 and ::1.
    tls_hostnames: str = ""
    # Broker limits: connections at once (-1: none).
    mqtt_max_connections: int = Field(default=20000, ge=-1)
    mqtt_client_id: str = "aoc-bridge"
    # Bridges sharing the device stream (``bridge.subscriptions``): each takes
    # the group's messages in turn on ``$share/<group>/...``; empty: this bridge
    # takes every message (one bridge). Every member needs its own client id.
    share_group: str = ""
    # How many bridges `aoc up` runs: `aoc serve`'s and bridges - 1 `aoc bridge`
    # processes, on share_group (or DEFAULT_SHARE_GROUP when it is empty).
    bridges: int = Field(default=1, ge=1, le=32)
    mqtt_keepalive: int = 30
    # Received messages held in memory before the bridge stops reading its
    # socket (backpressure: the broker keeps the rest queued, nothing is dropped).
    mqtt_queue_size: int = Field(default=10000, gt=0)
    # ... and payload bytes held so, whichever bound comes first (one message
    # larger than this still gets through, alone).
    mqtt_queue_bytes: int = Field(default=16 * 1024 * 1024, gt=0)

    # Where the embedded defaults keep their files.
    data_dir: Path = Path("./data")

    # Document store: "sqlite:///path/to.db" or "mongodb://..." (empty: SQLite in data_dir).
    store_url: str = ""
    mongodb_database: str = "aoc_v2"
    # Object storage: "file:///path" or "s3://bucket" (empty: data_dir/objects).
    objects_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    # Public base URL of object links handed to browsers (a published bucket);
    # empty: S3 links are presigned, directory objects are served by the HTTP API.
    objects_public_url: str = ""
    # Where image links point: "store", the object store's own links (above);
    # "api", always the HTTP API's signed /files links under public_url (when
    # browsers cannot reach the object store, as with docker-compose's MinIO).
    image_links: Literal["store", "api"] = "store"
    # While object storage is down, snapshots wait in this local spool (empty:
    # data_dir/spool); past spool_max_bytes the bridge holds its batches. 0: no spool.
    spool_dir: Path | None = None
    spool_max_bytes: int = Field(default=1024**3, ge=0)

    redis_url: str = "redis://127.0.0.1:6379/0"

    # Domain rules.
    speed_orange_kmh: float = 80.0
    speed_red_kmh: float = 120.0
    crash_dedup_seconds: float = 60.0
    # How far ahead of the receipt time a device clock may be; a message stamped
    # later than that is taken at its receipt time (the contract says why).
    max_clock_ahead_seconds: float = Field(default=5.0, ge=0)
    google_maps_key: SecretStr | None = None
    # Dispatch (bridge.dispatch, README "Dispatch"). An ambulance leaves a place
    # only when a point is this far outside it (hysteresis against GPS jitter).
    geofence_margin_m: float = Field(default=30.0, ge=0, le=10_000)
    # A destination point is reached within this radius, unless it has its own.
    arrival_radius_m: float = Field(default=50.0, gt=0, le=50_000)
    # The ETA's speed: a moving average over about this many seconds, and the
    # floor that a stopped vehicle's estimate uses.
    eta_window_seconds: float = Field(default=300.0, gt=0, le=86_400)
    eta_min_speed_kmh: float = Field(default=10.0, gt=0, le=300)
    # No message for this long (not parked at a station): an offline alarm.
    offline_after_seconds: float = Field(default=300.0, ge=10, le=7 * 86_400)
    # Which overspeed episodes are alarms: above the red or orange limit, or none.
    overspeed_alarm: Literal["red", "orange", "off"] = "red"
    # Geofence events that are alarms: "<place kind or id>:<enter|exit>", comma-separated.
    geofence_alarms: str = ""
    # How often a bridge reads the places again (changes by `aoc places` or the API).
    places_refresh_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Trips and stops (bridge.trips, README "History: trips and stops"): a stop is
    # at least this long below this speed; a trip is what lies between stops.
    stop_speed_kmh: float = Field(default=5.0, gt=0, le=300)
    stop_min_seconds: float = Field(default=300.0, ge=0, le=86_400)

    # Input limits.
    max_image_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    max_upload_files: int = Field(default=10, gt=0)
    dead_letter_payload_bytes: int = Field(default=4096, gt=0)

    # HTTP servers: bounds that keep one client from holding the shared event
    # loop or every file descriptor. A connection past a server's bound gets a
    # 503 (uvicorn's limit_concurrency), a body slower than http_body_timeout a
    # 408, headers slower than http_header_timeout a closed connection, a legacy
    # upload past max_concurrent_uploads a 503 with Retry-After.
    http_max_connections: int = Field(default=1000, gt=0)
    # Dashboards hold one Socket.IO connection each for hours: room for many.
    socketio_max_connections: int = Field(default=4000, gt=0)
    # The Socket.IO live stream (docs/socketio.md): one live_states event per
    # interval of this many milliseconds, with the latest state of each
    # ambulance updated in it. Shorter: fresher and more events per client.
    live_interval_ms: int = Field(default=100, gt=0, le=60_000)
    # How long a dispatch request (a destination, an alarm's acknowledgement)
    # waits for the bridge to apply it before answering 202 pending. 0: never waits.
    dispatch_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    http_body_timeout: float = Field(default=60.0, gt=0)
    # Each byte of a body earns time: 1 s per this many bytes (16 KiB/s, 128
    # kbit/s: a camera on a poor cellular link finishes a 50 MB upload). 0: none.
    http_body_min_rate: float = Field(default=16384.0, ge=0)
    http_header_timeout: float = Field(default=10.0, gt=0)
    # Each legacy upload holds about 7x its size in memory while it is encoded.
    max_concurrent_uploads: int = Field(default=2, gt=0)

    # Dead-letter bounds. Dead letters are diagnostics that any client can
    # trigger at will, so they must not fill the disk or hold good messages:
    # at most dead_letter_rate records a second (bursts of dead_letter_burst)
    # are written per bridge, the rest counted and dropped; records older than
    # dead_letter_max_age_days, or beyond the dead_letter_max_count newest,
    # are pruned every dead_letter_prune_seconds. 10,000 records of at most a
    # 4 KiB payload are about 50 MB; 7 days spans a weekend before anyone looks.
    dead_letter_max_count: int = Field(default=10_000, gt=0)
    dead_letter_max_age_days: float = Field(
        default=7.0, gt=0,
        validation_alias=AliasChoices(
            "AOC_DEAD_LETTER_MAX_AGE_DAYS", *ALIASES["dead_letter_max_age_days"]
        ),
    )
    dead_letter_rate: float = Field(default=10.0, gt=0)
    dead_letter_burst: int = Field(default=200, gt=0)
    dead_letter_prune_seconds: float = Field(default=60.0, gt=0)

    # Retention (``bridge.retention``): records older than this many days are
    # deleted, per kind; 0 keeps them forever, the default: nothing is deleted
    # unless configured. Snapshots: records and their images. Reports: trips,
    # stops, speed violations and dispatch events, which may outlive the
    # points. Dead letters keep dead_letter_max_age_days. At most 50 years:
    # MongoDB's TTL index takes a 32-bit number of seconds.
    retention_tracking_days: float = Field(default=0.0, ge=0, le=18_250)
    retention_snapshots_days: float = Field(default=0.0, ge=0, le=18_250)
    retention_crashes_days: float = Field(default=0.0, ge=0, le=18_250)
    retention_audit_days: float = Field(default=0.0, ge=0, le=18_250)
    retention_reports_days: float = Field(default=0.0, ge=0, le=18_250)
    # How often `aoc serve`/`aoc bridge` sweep, and records per step (one short
    # transaction each, a pause between: the bridge's writes go in between).
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    retention_batch_size: int = Field(default=500, gt=0, le=10_000)

    # Per-ambulance rate limit at each bridge (``bridge.ratelimit``): tracking
    # and snapshots over device_rate messages a second (bursts of device_burst)
    # are dead-lettered; crashes and statuses never are. A device sends about
    # one point a second, so 20/s only cuts a device that is broken or hostile;
    # the burst, ten minutes of 1 Hz points, lets a device replay its offline
    # buffer after a dead zone (or the broker a bridge outage's backlog) whole.
    # 0: no limit.
    device_rate: float = Field(default=20.0, ge=0)
    device_burst: int = Field(default=3600, gt=0)

    # Bridge batching: a batch is what is queued when the bridge is ready for
    # it (while one batch is stored the next accumulates), up to this many
    # messages; with a wait, the bridge also waits up to that long for more
    # (0: never waits: a lone message is stored at once).
    batch_size: int = Field(default=200, gt=0)
    batch_wait_ms: int = Field(default=0, ge=0)
    # ... or when its payloads reach this many bytes (snapshots count only
    # their metadata: their images are stored by the snapshot lane).
    batch_max_bytes: int = Field(default=1024 * 1024, gt=0)

    # The bridge's snapshot lane: snapshots parsed and uploaded at once, and the
    # raw snapshot payloads held from receipt to acknowledgement. Past that
    # bound the bridge stops reading from the broker until some are stored.
    snap_workers: int = Field(default=2, gt=0)
    snap_buffer_bytes: int = Field(default=160 * 1024 * 1024, gt=0)

    # --- Security -----------------------------------------------------------
    # "production" refuses to start with a default or empty secret.
    env: Literal["development", "production"] = "development"
    # Signs image URLs (HMAC); empty: generated once into data_dir/secret_key
    # (development only).
    secret_key: SecretStr | None = None
    # How long a signed image URL handed to a dashboard stays valid.
    image_url_ttl_seconds: int = Field(default=3600, gt=0)
    # Legacy mode: the legacy HTTP endpoints and Socket.IO without a token,
    # for clients in legacy_networks (comma-separated CIDRs) only.
    legacy_mode: bool = False
    legacy_networks: str = "127.0.0.1/32,::1/128"
    # /metrics: this bearer token; unset: clients in metrics_networks only.
    metrics_token: SecretStr | None = None
    metrics_networks: str = "127.0.0.1/32,::1/128"
    # Who `aoc device|dashboard|token` records as the actor in the audit log
    # (empty: the operating-system user).
    operator: str = ""

    # Set by `aoc up` for the processes it restarts; exported as a metric.
    restart_count: int = Field(default=0, ge=0)

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        secret = [name for name, info in cls.model_fields.items()
                  if SecretStr in (info.annotation, *get_args(info.annotation))]
        return {**data, **secrets_from_files(secret, data, os.environ)}

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        env_file = cls.model_config.get("env_file")
        file = dotenv_values(env_file) if isinstance(env_file, str | Path) else {}
        given = {key.upper() for key, value in {**file, **os.environ}.items() if value}
        data = dict(data)
        for name, aliases in ALIASES.items():
            own = f"{ENV_PREFIX}{name.upper()}"
            # pydantic keys the value by the variable it was read from: back to the field's
            # name, so that errors (``aoc.startup``) name the setting.
            found = [data.pop(key) for key in list(data) if key.upper() in (own, *aliases)]
            if found:
                data.setdefault(name, found[0])
            also = [alias for alias in aliases if alias in given]
            if also and own in given:
                problem = f"{' and '.join(also)} is set too: keep one of them"
                data[name] = Conflicting(problem, data.get(name))
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _unreadable_secret(cls, value: Any) -> Any:
        # The error is the field's own: one line naming its variable, never the other values.
        if isinstance(value, UnreadableSecret | Conflicting):
            raise ValueError(value.problem)
        return value

    # Checked here, so that a mistake is one line naming its variable
    # (``aoc.startup``), not a failure deep inside a command.
    @field_validator("store_url")
    @classmethod
    def _store_url(cls, url: str) -> str:
        problem = url and storage.document_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    @field_validator("objects_url")
    @classmethod
    def _objects_url(cls, url: str) -> str:
        problem = url and storage.object_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    @field_validator("geofence_alarms")
    @classmethod
    def _geofence_alarms(cls, text: str) -> str:
        geofence_alarm_rules(text)  # raises ValueError naming the bad item
        return text

    @field_validator("share_group")
    @classmethod
    def _share_group(cls, group: str) -> str:
        if any(char in group for char in "/+#") or group != group.strip():
            raise ValueError("expected one MQTT topic level: no '/', '+', '#' or spaces")
        return group

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        expected = "redis://host:6379/0, rediss://... or unix:///path"
        return _scheme(url, ("redis", "rediss", "unix"), expected)

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint_url(cls, url: str | None) -> str | None:
        return url and _scheme(url, ("http", "https"), "http://host:port or https://host")

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, path: Path) -> Path:
        if path.exists() and not path.is_dir():
            raise ValueError("it is a file: expected a directory (made if missing)")
        return path

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return level.upper()

    @property
    def resolved_mqtt_bind_host(self) -> str:
        """The address Mosquitto's listeners bind, defaulting to ``bind_host``."""
        return self.mqtt_bind_host or self.bind_host

    @property
    def resolved_share_group(self) -> str:
        """The bridges' share group: ``share_group``, or the default one for several bridges."""
        if self.share_group or self.bridges == 1:
            return self.share_group
        return DEFAULT_SHARE_GROUP

    @property
    def cors_origin_list(self) -> list[str]:
        """``cors_origins`` split at commas, blanks dropped.

        A trailing slash is dropped too: a browser's ``Origin`` has none.
        """
        origins = (origin.strip().rstrip("/") for origin in self.cors_origins.split(","))
        return [origin for origin in origins if origin]

    @field_validator("public_url", "dashboard_socketio_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        """An http(s) base URL without query or fragment, its trailing slash dropped."""
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or (
            parts.fragment
        ):
            raise ValueError(f"{value!r} is not an http(s)://host[:port][/path] URL")
        return value.rstrip("/")

    @property
    def resolved_credentials_file(self) -> Path:
        """Where `aoc up` keeps generated credentials, defaulting to one under ``data_dir``."""
        return (self.credentials_file or self.data_dir / "credentials.json").resolve()

    @property
    def resolved_store_url(self) -> str:
        """The document store URL, defaulting to SQLite under ``data_dir``."""
        return self.store_url or f"sqlite:///{(self.data_dir / 'aoc.sqlite3').resolve()}"

    @property
    def resolved_spool_dir(self) -> Path:
        """The object spool directory, defaulting to one under ``data_dir``."""
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def resolved_objects_url(self) -> str:
        """The object storage URL, defaulting to a directory under ``data_dir``."""
        return self.objects_url or f"file://{(self.data_dir / 'objects').resolve()}"


def _scheme(url: str, schemes: tuple[str, ...], expected: str) -> str:
    """``url`` if it starts with one of ``schemes`` and has a valid port, else ``ValueError``."""
    if url.split("://", 1)[0].lower() not in schemes or "://" not in url:
        raise ValueError(f"expected {expected}")
    try:
        urlsplit(url).port  # noqa: B018  (it raises for a port out of range or not a number)
    except ValueError:
        why = f"its port is not an integer from 1 to 65535: expected {expected}"
        raise ValueError(why) from None
    return url


@dataclass(frozen=True, slots=True)
class UnreadableSecret:
    """In place of a secret whose ``AOC_<NAME>_FILE`` failed: why (the field's error)."""

    problem: str


@dataclass(frozen=True, slots=True)
class Conflicting:
    """In place of a setting also given under another of its variables (``ALIASES``)."""

    problem: str
    value: Any  # as read under the setting's own variable, shown in the error

    def __repr__(self) -> str:
        return repr(self.value)


def secrets_from_files(
    names: list[str], given: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, str | UnreadableSecret]:
    """The secrets ``names`` read from the files ``AOC_<NAME>_FILE`` names (Docker secrets).

    docker-compose mounts a secret as a file (``/run/secrets/<name>``), so the
    value stays out of the container's environment (``docker inspect``,
    ``/proc/<pid>/environ``). Only the process environment names such files;
    one trailing newline is dropped. A secret given both ways, or a file that
    cannot be read, is that setting's error (an ``UnreadableSecret``).
    """
    found: dict[str, str | UnreadableSecret] = {}
    for name in names:
        variable = f"{ENV_PREFIX}{name.upper()}_FILE"
        path = environ.get(variable, "")
        if not path:
            continue
        if given.get(name) not in (None, ""):
            found[name] = UnreadableSecret(f"{variable} is set too: keep one of them")
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            found[name] = UnreadableSecret(f"{variable}={path}: cannot read it: {exc}")
            continue
        found[name] = text.removesuffix("\n").removesuffix("\r")
    return found
