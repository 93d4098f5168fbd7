"""The broker accounts of `aoc up`: made at first start, checked at every start.

Two steps around the broker's start (``aoc.supervise`` runs them):

- ``prepare``, before: at first start (no dynamic security file yet) the file
  is written with the admin account only, and passwords are generated for the
  bridge, the legacy shim, the simulator's default devices and a first
  dashboard; they all go into the credentials file (``aoc.credentials``).
  Later starts read them back.
- ``apply``, once the broker listens: through the admin account, the plugin's
  deny-by-default rules are set, the bridge's and the shim's accounts made to
  match the file (created, or given the file's password and current rights),
  and each device and dashboard the file lists is created if missing (one an
  operator removed is gone from the file too, and stays removed).

Why the plugin's file is written here rather than by ``mosquitto_ctrl dynsec
init``: that tool takes the admin password on its command line (visible to
every local user in ``ps``), and gives the admin account read access to every
topic; the file written here holds the same salted PBKDF2-SHA512 hash
(``broker.accounts.initial_config``), and an admin that can only manage accounts.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from aoc import audit, credentials
from aoc.config import Settings
from aoc.manage import DASHBOARD, DEVICE, SERVICE, ManageError, admin_client, audit_store
from broker import accounts

log = logging.getLogger(__name__)

FIRST_DASHBOARD = "dash-first"
# The name of the token (HTTP and Socket.IO) `aoc up` makes at first start.
FIRST_READER = "first"
# The fleet `aoc simulate` runs by default (its --prefix and --ambulances).
SIMULATOR_PREFIX, SIMULATOR_AMBULANCES = "SIM", 10
DYNSEC_FILE = "dynamic-security.json"


def dynsec_file(settings: Settings) -> Path:
    """Where `aoc up`'s broker keeps its accounts (the dynamic security plugin's file)."""
    return settings.data_dir.resolve() / "mosquitto" / DYNSEC_FILE


@dataclass
class Accounts:
    """The accounts `aoc up` makes sure of, with their passwords."""

    bridge: tuple[str, str]
    shim: tuple[str, str] | None
    devices: dict[str, str] = field(default_factory=dict)
    dashboards: dict[str, str] = field(default_factory=dict)
    # The environment `aoc serve` gets: the service accounts the operator did not set.
    env: dict[str, str] = field(default_factory=dict)


def _service(
    creds: credentials.Credentials,
    name: str,
    default_username: str,
    operator: tuple[str, str] | None,
) -> tuple[tuple[str, str], bool]:
    """The account ``name`` (bridge or shim) and whether `aoc up` hands it to `aoc serve`."""
    if operator is not None:
        return operator, False
    found = creds.account(name)
    if found is None:
        found = (default_username, accounts.new_password())
        creds.set_account(name, *found)
    return found, True


def prepare(settings: Settings) -> Accounts:
    """Before the broker starts: its account file at first start, and every password.

    ``ManageError`` (a configuration error) when the broker's account file
    exists but the admin password is known neither from the settings nor from
    the credentials file.
    """
    try:
        with credentials.editing(settings.resolved_credentials_file) as creds:
            return _prepare(settings, creds)
    except credentials.CredentialsError as exc:
        raise ManageError(str(exc), 2) from exc


def _prepare(settings: Settings, creds: credentials.Credentials) -> Accounts:
    dynsec = dynsec_file(settings)
    admin = (
        (settings.mqtt_admin_username, settings.mqtt_admin_password.get_secret_value())
        if settings.mqtt_admin_password is not None
        else creds.account("admin")
    )
    if not dynsec.exists():  # first start
        if admin is None:
            admin = (settings.mqtt_admin_username, accounts.new_password())
            creds.set_account("admin", *admin)
        accounts.write_initial_config(dynsec, *admin)
        log.info("created the broker's account file %s", dynsec)
        # Imported here, at first start only: the running services never load the simulator.
        from sim.fleet import ambulance_ids  # noqa: PLC0415

        for ambulance_id in ambulance_ids(SIMULATOR_PREFIX, SIMULATOR_AMBULANCES):
            creds.devices.setdefault(ambulance_id, accounts.new_password())
        creds.dashboards.setdefault(FIRST_DASHBOARD, accounts.new_password())
    elif admin is None:
        raise ManageError(
            f"the broker's accounts ({dynsec}) exist but not the admin password: set "
            f"AOC_MQTT_ADMIN_PASSWORD, or move {dynsec} away to start over",
            2,
        )
    creds.set_broker(settings.mqtt_host, settings.mqtt_port, settings.mqtt_ws_port)
    bridge, give_bridge = _service(
        creds, "bridge", accounts.BRIDGE_USERNAME,
        _operator(settings.mqtt_username, settings.mqtt_password),
    )
    shim, give_shim = _service(
        creds, "shim", accounts.SHIM_USERNAME,
        _operator(settings.shim_mqtt_username, settings.shim_mqtt_password),
    )
    env: dict[str, str] = _session_env(settings, creds)
    if give_bridge:
        env.update(AOC_MQTT_USERNAME=bridge[0], AOC_MQTT_PASSWORD=bridge[1])
    if give_shim:
        env.update(AOC_SHIM_MQTT_USERNAME=shim[0], AOC_SHIM_MQTT_PASSWORD=shim[1])
    return Accounts(
        bridge=bridge,
        shim=shim,
        devices=dict(creds.devices),
        dashboards=dict(creds.dashboards),
        env=env,
    )


def _session_env(settings: Settings, creds: credentials.Credentials) -> dict[str, str]:
    """The bridge's MQTT client id, unless the operator set one: made once, unguessable.

    Any account may connect with any client id, and a connection with the id
    of the bridge's persistent session takes that session over (a clean start
    wipes what the broker queued for it). The plugin cannot tie ids to
    accounts, so the id `aoc up` gives its bridge is not the well-known default.
    """
    if "mqtt_client_id" in settings.model_fields_set:
        return {}
    client_id = creds.data.get("bridge_client_id")
    if not isinstance(client_id, str) or not client_id:
        client_id = f"{settings.mqtt_client_id}-{secrets.token_hex(8)}"
        creds.data["bridge_client_id"] = client_id
    return {"AOC_MQTT_CLIENT_ID": client_id}


def serve_env(settings: Settings) -> dict[str, str]:
    """For a broker `aoc up` did not start: the service accounts the credentials file holds.

    Those the operator set are left to the settings, as at any start.
    """
    try:
        creds = credentials.load(settings.resolved_credentials_file)
    except credentials.CredentialsError as exc:
        raise ManageError(str(exc), 2) from exc
    env: dict[str, str] = {}
    client_id = creds.data.get("bridge_client_id")
    chosen = "mqtt_client_id" in settings.model_fields_set
    if isinstance(client_id, str) and client_id and not chosen:
        env["AOC_MQTT_CLIENT_ID"] = client_id  # the session the bridge had
    bridge, shim = creds.account("bridge"), creds.account("shim")
    if bridge is not None and not settings.mqtt_username:
        env.update(AOC_MQTT_USERNAME=bridge[0], AOC_MQTT_PASSWORD=bridge[1])
    if shim is not None and not settings.shim_mqtt_username:
        env.update(AOC_SHIM_MQTT_USERNAME=shim[0], AOC_SHIM_MQTT_PASSWORD=shim[1])
    return env


def _operator(username: str | None, password: SecretStr | None) -> tuple[str, str] | None:
    """An account the operator configured (username and password), else None."""
    if username and password is not None:
        return username, password.get_secret_value()
    return None


async def apply(settings: Settings, wanted: Accounts) -> list[str]:
    """Once the broker listens: make its accounts match ``wanted``; the usernames created.

    Each creation is recorded in the audit log, as `aoc device add` would.
    """
    created: list[tuple[str, str]] = []  # (username, audit action)
    async with admin_client(settings) as admin:
        await admin.set_default_access()
        services = [(wanted.bridge, accounts.bridge_acls())]
        if wanted.shim is not None:
            services.append((wanted.shim, accounts.shim_acls()))
        for (username, password), acls in services:
            if await admin.put_client(username, password, acls, textname=SERVICE):
                created.append((username, "service.add"))
        for kind, listed in ((DEVICE, wanted.devices), (DASHBOARD, wanted.dashboards)):
            for username, password in listed.items():
                acls = (
                    accounts.device_acls(username)
                    if kind == DEVICE
                    else accounts.dashboard_acls(None)
                )
                # A role follows this version's rights; an account is made only if missing.
                await admin.put_role(accounts.role_name(username), acls)
                if await admin.get_client(username) is None:
                    await admin.create_client(username, password, acls, textname=kind)
                    created.append((username, f"{kind.split()[-1]}.add"))
    if created:
        actor = audit.operator(settings.operator)
        async with audit_store(settings) as store:
            for username, action in created:
                await audit.record(
                    store, actor=actor, action=action, target=username, details={"via": "aoc up"}
                )
    return [username for username, _ in created]


async def first_token(settings: Settings) -> None:
    """At first start, a dispatch token for every ambulance, kept in the credentials file.

    So that the first dashboard, or a curl of the read API, works without
    anyone running `aoc token add`; a dispatch token, so that the dashboard
    can also acknowledge alarms and set destinations. One the operator
    revoked is not replaced.
    """
    from api import tokens  # noqa: PLC0415  (the API's modules, only when needed)

    path = settings.resolved_credentials_file
    try:
        if credentials.load(path).data.get("api_token"):
            return
        async with audit_store(settings) as store:
            token = await tokens.create_token(
                store, FIRST_READER, None, audit.operator(settings.operator), dispatch=True
            )
        with credentials.editing(path) as creds:
            creds.data["api_token"] = token
    except credentials.CredentialsError as exc:
        raise ManageError(str(exc), 2) from exc
    except tokens.TokenError as exc:  # made before, and its file entry lost since
        log.warning(
            "no first token in %s: %s (`aoc token add <name> --dispatch` makes one)", path, exc
        )
        return
    log.info("created the dispatch token %r (in %s)", FIRST_READER, path)


# --- a broker in another container (docker-compose) -------------------------------------------


def add_parser(commands: Any) -> None:
    """``aoc accounts init|apply``: the broker's accounts where `aoc up` does not run."""
    parser = commands.add_parser(
        "accounts", help="set up the broker's service accounts (docker-compose)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser(
        "init", help="write the broker's account file with the admin account, if missing"
    )
    actions.add_parser(
        "apply", help="create or update the bridge's and the shim's accounts from the settings"
    )


async def command(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``aoc accounts <action>``; the exit code (one line on stderr if not 0)."""
    try:
        if args.action == "init":
            path = dynsec_file(settings)
            made = init_file(settings)
            print(f"{'created' if made else 'kept'} the broker's account file {path}")
        else:
            created = await apply_services(settings)
            print(f"service accounts in place (created: {', '.join(created) or 'none'})")
    except ManageError as exc:
        print(f"aoc accounts {args.action}: {exc}", file=sys.stderr)
        return exc.exit_code
    except accounts.AccountsError as exc:
        print(f"aoc accounts {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _required(variable: str, value: str | SecretStr | None) -> str:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not text:
        raise ManageError(f"{variable} is empty: the broker's accounts are made from it", 2)
    return text


def init_file(settings: Settings) -> bool:
    """The plugin's file with only the configured admin (whether it was created).

    Run before the broker's first start, as the user the broker runs as (the
    plugin rewrites the file at each change). An existing file is kept: it
    holds every account made since.
    """
    password = _required("AOC_MQTT_ADMIN_PASSWORD", settings.mqtt_admin_password)
    path = dynsec_file(settings)
    if path.exists():
        return False
    accounts.write_initial_config(path, settings.mqtt_admin_username, password)
    return True


async def apply_services(settings: Settings) -> list[str]:
    """The bridge's and (when configured) the shim's accounts from the settings; those created.

    Their passwords are the operator's (the environment, or secrets), so no
    credentials file is written; a password changed there is set again here.
    """
    bridge = (
        _required("AOC_MQTT_USERNAME", settings.mqtt_username),
        _required("AOC_MQTT_PASSWORD", settings.mqtt_password),
    )
    shim = _operator(settings.shim_mqtt_username, settings.shim_mqtt_password)
    return await apply(settings, Accounts(bridge=bridge, shim=shim))
