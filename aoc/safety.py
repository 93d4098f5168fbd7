"""Production mode: refuse to start with a default or empty secret.

``problems`` is a pure function of the settings and the command being run; the
entry point (``aoc.cli``) calls ``check`` before it runs anything but `aoc tls
init`. In production (``AOC_ENV=production``) every problem is one line on
stderr naming its variable, and the process exits with 2; in development one
quiet log line names the variables instead, so a laptop's defaults keep working.

What counts as a default: an empty value, or a placeholder that the project
documents (``changeme`` in ``.env.example``, the passwordless URLs of
``docker-compose.yml``, MinIO's built-in ``minioadmin``). A URL of a server
that needs a password (MongoDB, Redis, S3) must carry one.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from aoc import tls
from aoc.config import Settings

log = logging.getLogger(__name__)

# Values the project's examples and images ship with: never a real secret.
PLACEHOLDERS = frozenset({"changeme", "minioadmin"})

# Commands that connect to the broker with the bridge's account (`aoc api`
# publishes only as the legacy shim, in legacy mode). Not `aoc up`,
# `aoc simulate`, `aoc device` or `aoc dashboard`: they use the generated
# passwords of the credentials file (random, never a default) when these are unset.
BROKER_CLIENTS = frozenset({"serve", "bridge"})
# The long-running services: development mode warns at their start only, so
# that management commands print nothing but their answer.
SERVICES = frozenset({"up", "serve", "bridge", "api", "realtime"})
# Commands that touch only the broker (and, for `aoc accounts`, the audit
# log): the rest of the settings is not theirs.
BROKER_ONLY = frozenset({"simulate", "accounts"})
# Commands whose process runs the legacy shim (the legacy HTTP endpoints).
SHIM = frozenset({"serve", "api"})


@dataclass(frozen=True)
class Problem:
    """One setting that production mode refuses: the variable and why."""

    variable: str
    why: str

    def __str__(self) -> str:
        return f"{self.variable} {self.why}"


class ConfigError(Exception):
    """The settings do not allow the command to start; one line per problem."""


def _secret(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


def _weak(variable: str, value: SecretStr | str | None, what: str) -> Problem | None:
    text = _secret(value).strip()
    if not text:
        return Problem(variable, f"is empty: {what}")
    if text.lower() in PLACEHOLDERS:
        return Problem(variable, f"is the documented placeholder {text!r}: {what}")
    return None


def _url_password(url: str) -> str:
    """The password a server URL carries, in its user info or a ``password`` parameter."""
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    return (parse_qs(parts.query).get("password") or [""])[0]


def _url(variable: str, url: str, server: str) -> Problem | None:
    password = _url_password(url)
    if not password:
        return Problem(variable, f"carries no password: give {server} one and put it in the URL")
    if password.lower() in PLACEHOLDERS:
        return Problem(variable, f"carries the documented placeholder password {password!r}")
    return None


def _open_networks(networks: str) -> list[str]:
    """The entries of a comma-separated CIDR list that admit public addresses.

    Legacy mode and unauthenticated /metrics are for a closed network: an entry
    that reaches beyond the private, loopback and link-local ranges (0.0.0.0/0,
    or 0.0.0.0/1 and 128.0.0.0/1 that add up to it) opens them to the Internet.
    """
    wide: list[str] = []
    for entry in (part.strip() for part in networks.split(",")):
        try:
            network = ipaddress.ip_network(entry, strict=False) if entry else None
        except ValueError:
            continue  # the gates report malformed entries themselves
        if network is not None and not (network.is_private or network.is_loopback):
            wide.append(entry)
    return wide


# Shorter than this, a signing key can be guessed offline from one signed link.
MIN_SECRET_KEY_LENGTH = 32


def problems(settings: Settings, command: str) -> list[Problem]:
    """What production mode refuses for ``command`` with ``settings``, in a fixed order.

    Pure: it reads no file and no environment, whatever ``settings.env`` says.
    """
    found: list[Problem | None] = []
    broker_only = command in BROKER_ONLY
    if not broker_only:
        found += _signing_key(settings)
        if not settings.broker_auth:
            found.append(Problem("AOC_BROKER_AUTH", "is off: the broker would admit anyone"))
    found += _broker_accounts(settings, command)
    if settings.metrics_token is not None:
        found.append(_weak("AOC_METRICS_TOKEN", settings.metrics_token, "/metrics's token"))
    if not broker_only:
        found += _storage(settings)
        found += _networks(settings)
    return [problem for problem in found if problem is not None]


def _signing_key(settings: Settings) -> list[Problem | None]:
    key = _secret(settings.secret_key).strip()
    if 0 < len(key) < MIN_SECRET_KEY_LENGTH and key.lower() not in PLACEHOLDERS:
        return [
            Problem(
                "AOC_SECRET_KEY",
                f"is {len(key)} characters: give it {MIN_SECRET_KEY_LENGTH} at least",
            )
        ]
    return [_weak("AOC_SECRET_KEY", settings.secret_key, "it signs image URLs")]


def _broker_accounts(settings: Settings, command: str) -> list[Problem | None]:
    """The account ``command`` logs in with; any other broker password set: no placeholder."""
    found: list[Problem | None] = []
    if command in BROKER_CLIENTS:
        account = settings.mqtt_username or "(none)"
        if not settings.mqtt_username:
            found.append(Problem("AOC_MQTT_USERNAME", "is empty: the broker account to use"))
        found.append(
            _weak("AOC_MQTT_PASSWORD", settings.mqtt_password, f"the password of {account}")
        )
        default_id = Settings.model_fields["mqtt_client_id"].default
        if settings.mqtt_client_id == default_id or settings.mqtt_client_id in PLACEHOLDERS:
            found.append(
                Problem(
                    "AOC_MQTT_CLIENT_ID",
                    f"is {settings.mqtt_client_id!r}: any broker account that knows the id of "
                    "the bridge's session can take it over; give it a random suffix",
                )
            )
    elif settings.mqtt_password is not None:  # `aoc accounts apply` makes the bridge's from it
        found.append(_weak("AOC_MQTT_PASSWORD", settings.mqtt_password, "the bridge's"))
    if command in SHIM and settings.legacy_mode:
        found.append(
            _weak(
                "AOC_SHIM_MQTT_PASSWORD",
                settings.shim_mqtt_password,
                "legacy mode's shim publishes with its own account",
            )
        )
    elif settings.shim_mqtt_password is not None:
        found.append(_weak("AOC_SHIM_MQTT_PASSWORD", settings.shim_mqtt_password, "aoc-shim's"))
    # Unset, the admin's is generated (`aoc up`); set, it must not be a placeholder.
    if settings.mqtt_admin_password is not None:
        found.append(
            _weak(
                "AOC_MQTT_ADMIN_PASSWORD",
                settings.mqtt_admin_password,
                f"the broker's account manager ({settings.mqtt_admin_username})",
            )
        )
    return found


def _networks(settings: Settings) -> list[Problem | None]:
    """Networks let in without a token: legacy mode's, and /metrics's when it has no token."""
    found: list[Problem | None] = []
    gates = (
        ("AOC_LEGACY_NETWORKS", "legacy mode", settings.legacy_networks, settings.legacy_mode),
        ("AOC_METRICS_NETWORKS", "/metrics", settings.metrics_networks,
         settings.metrics_token is None),
    )
    for variable, what, networks, open_ in gates:
        wide = _open_networks(networks) if open_ else []
        if wide:
            reason = f"opens {what} (no token) to public addresses ({', '.join(wide)})"
            found.append(Problem(variable, reason))
    return found


def _storage(settings: Settings) -> list[Problem | None]:
    found: list[Problem | None] = []
    if settings.store_url.startswith("mongodb"):  # SQLite is a local file: no password
        found.append(_url("AOC_STORE_URL", settings.store_url, "MongoDB"))
    if not settings.redis_url.startswith("unix:"):  # a socket file has its permissions
        found.append(_url("AOC_REDIS_URL", settings.redis_url, "Redis (requirepass)"))
    if settings.resolved_objects_url.startswith("s3:"):
        found.append(_weak("AOC_S3_ACCESS_KEY", settings.s3_access_key, "the S3 access key"))
        found.append(_weak("AOC_S3_SECRET_KEY", settings.s3_secret_key, "the S3 secret key"))
    return found


def check(settings: Settings, command: str) -> None:
    """Refuse to start (``ConfigError``) or, in development, log what production would refuse.

    TLS settings that cannot work (``aoc.tls.problems``) are refused in any mode.
    """
    errors = tls.problems(settings)
    unsafe = problems(settings, command)
    if settings.env == "production":
        errors += [f"{problem} (refused in production mode)" for problem in unsafe]
    elif unsafe and command in SERVICES:
        names = ", ".join(dict.fromkeys(problem.variable for problem in unsafe))
        log.warning("development mode; production mode would refuse: %s", names)
    if errors:
        raise ConfigError("\n".join(errors))
