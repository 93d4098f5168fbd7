"""`aoc device` and `aoc dashboard`: the broker accounts of ambulances and dashboards.

Each command connects to the broker as the admin account
(``AOC_MQTT_ADMIN_USERNAME``/``AOC_MQTT_ADMIN_PASSWORD``, else the one in the
credentials file `aoc up` wrote) and changes accounts through Mosquitto's
dynamic security plugin (``broker.accounts``), which applies the change at once:
a removed device's open connection is closed, and so is one whose password
was rotated. Every change is recorded in the audit log of the document store
(``aoc.audit``), which is therefore opened first: a change that cannot be
recorded is not made.

A generated password is printed once (``--json`` for scripts) and not kept,
except for the accounts the credentials file already holds (the simulator's
devices, the first dashboard): their entry follows the change, so that
`aoc simulate` and `aoc up` keep working.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from aoc import audit, credentials, tls
from aoc.config import Settings
from bridge import contract
from broker import accounts
from broker.accounts import DynsecAdmin
from storage import DocumentStore, open_document_store

__all__ = [
    "DASHBOARD",
    "DEVICE",
    "ManageError",
    "add_dashboard",
    "add_device",
    "add_parsers",
    "admin_client",
    "audit_store",
    "dashboard_username",
    "run",
    "simulator_passwords",
]

log = logging.getLogger(__name__)

# What the plugin's ``textname`` of an account says it is: how `list` tells
# devices and dashboards from each other and from the service accounts.
DEVICE = "aoc device"
DASHBOARD = "aoc dashboard"
SERVICE = "aoc service"


class ManageError(Exception):
    """A command cannot be carried out; the text is the one line the operator sees."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 2: a configuration error (aoc's convention)


# --- connections ---------------------------------------------------------------------------


def admin_account(settings: Settings) -> tuple[str, str]:
    """The admin account: from the settings, else from the credentials file."""
    if settings.mqtt_admin_password is not None:
        return settings.mqtt_admin_username, settings.mqtt_admin_password.get_secret_value()
    path = settings.resolved_credentials_file
    try:
        found = credentials.load(path).account("admin")
    except credentials.CredentialsError as exc:
        raise ManageError(str(exc), 2) from exc
    if found is None:
        raise ManageError(
            "no broker admin password: set AOC_MQTT_ADMIN_PASSWORD, or run `aoc up` once "
            f"(it writes one into {path})",
            2,
        )
    return found


@contextlib.asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[DynsecAdmin]:
    """A connection of the admin account to the configured broker."""
    username, password = admin_account(settings)
    try:
        async with DynsecAdmin(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            username=username,
            password=password,
            ssl_context=tls.client_context(settings),
        ) as admin:
            yield admin
    except accounts.AccountsError as exc:
        raise ManageError(str(exc)) from exc


@contextlib.asynccontextmanager
async def audit_store(settings: Settings) -> AsyncIterator[DocumentStore]:
    """The document store that receives the audit records."""
    store = open_document_store(settings.resolved_store_url, database=settings.mongodb_database)
    async with store:
        yield store


# --- names ---------------------------------------------------------------------------------


def _reserved(settings: Settings) -> set[str]:
    return {accounts.BRIDGE_USERNAME, accounts.SHIM_USERNAME, settings.mqtt_admin_username}


def check_device_id(settings: Settings, ambulance_id: str) -> str:
    """``ambulance_id`` if it may name a device account, else ``ManageError`` saying why."""
    problem = contract.ambulance_id_problem(ambulance_id)
    if problem is None and (
        ambulance_id in _reserved(settings) or ambulance_id.startswith(accounts.DASHBOARD_PREFIX)
    ):
        problem = "it is the name of another kind of account"
    if problem is not None:
        raise ManageError(f"invalid ambulance id {ambulance_id!r}: {problem}", 2)
    return ambulance_id


def dashboard_username(name: str) -> str:
    """The account of dashboard ``name``: ``dash-<name>`` (a name already so prefixed is kept)."""
    base = name.removeprefix(accounts.DASHBOARD_PREFIX)
    if contract.AMBULANCE_ID.fullmatch(base) is None:
        raise ManageError(
            f"invalid dashboard name {name!r}: must match {contract.AMBULANCE_ID.pattern}", 2
        )
    return accounts.DASHBOARD_PREFIX + base


# --- devices -------------------------------------------------------------------------------


async def _kind_of(admin: DynsecAdmin, username: str) -> str | None:
    """What the account ``username`` is (``DEVICE``, ...), None when there is no such account."""
    client = await admin.get_client(username)
    if client is None:
        return None
    return str(client.get("textname") or "")


async def add_device(
    admin: DynsecAdmin, store: DocumentStore, *, actor: str, ambulance_id: str, via: str = ""
) -> str:
    """Create the device account ``ambulance_id``; its generated password."""
    password = accounts.new_password()
    try:
        await admin.create_client(
            ambulance_id, password, accounts.device_acls(ambulance_id), textname=DEVICE
        )
    except accounts.DynsecError as exc:
        if "already exists" in exc.error:
            raise ManageError(
                f"device {ambulance_id} exists already (`aoc device rotate {ambulance_id}` "
                "gives it a new password)"
            ) from exc
        raise
    details = {"via": via} if via else {}
    await audit.record(
        store, actor=actor, action="device.add", target=ambulance_id, details=details
    )
    return password


async def _require(admin: DynsecAdmin, username: str, kind: str, what: str) -> None:
    found = await _kind_of(admin, username)
    if found is None:
        raise ManageError(f"there is no {what} {username}")
    if found != kind:
        raise ManageError(f"{username} is not a {what} account")


async def remove_device(
    admin: DynsecAdmin, store: DocumentStore, settings: Settings, *, actor: str, ambulance_id: str
) -> None:
    await _require(admin, ambulance_id, DEVICE, "device")
    await admin.delete_client(ambulance_id)
    await audit.record(store, actor=actor, action="device.remove", target=ambulance_id)
    with _file_entries(settings) as creds:
        if creds is not None:
            creds.devices.pop(ambulance_id, None)


async def rotate_device(
    admin: DynsecAdmin, store: DocumentStore, settings: Settings, *, actor: str, ambulance_id: str
) -> str:
    await _require(admin, ambulance_id, DEVICE, "device")
    password = accounts.new_password()
    await admin.set_password(ambulance_id, password)
    await audit.record(store, actor=actor, action="device.rotate", target=ambulance_id)
    with _file_entries(settings) as creds:
        if creds is not None and ambulance_id in creds.devices:
            creds.devices[ambulance_id] = password
    return password


async def _accounts_of(admin: DynsecAdmin, kind: str) -> list[str]:
    clients = await admin.list_clients()
    return sorted(str(c["username"]) for c in clients if c.get("textname") == kind)


@contextlib.contextmanager
def _file_entries(settings: Settings) -> Iterator[credentials.Credentials | None]:
    """The credentials file for editing, or None when there is none (nothing to keep in step)."""
    path = settings.resolved_credentials_file
    if not path.exists():
        yield None
        return
    with credentials.editing(path) as creds:
        yield creds


# --- dashboards ----------------------------------------------------------------------------


async def add_dashboard(
    admin: DynsecAdmin,
    store: DocumentStore,
    *,
    actor: str,
    username: str,
    ambulances: Sequence[str] | None,
    via: str = "",
) -> str:
    """Create the dashboard account ``username``; its generated password."""
    password = accounts.new_password()
    try:
        await admin.create_client(
            username, password, accounts.dashboard_acls(ambulances), textname=DASHBOARD
        )
    except accounts.DynsecError as exc:
        if "already exists" in exc.error:
            raise ManageError(f"dashboard {username} exists already") from exc
        raise
    details: dict[str, Any] = {"ambulances": list(ambulances) if ambulances is not None else None}
    if via:
        details["via"] = via
    await audit.record(store, actor=actor, action="dashboard.add", target=username, details=details)
    return password


async def _dashboards(admin: DynsecAdmin) -> list[dict[str, Any]]:
    listed = []
    for username in await _accounts_of(admin, DASHBOARD):
        role = await admin.get_role(accounts.role_name(username))
        ambulances = accounts.dashboard_ambulances(role.get("acls", []) if role else [])
        listed.append({"username": username, "ambulances": ambulances})
    return listed


# --- the command line ----------------------------------------------------------------------


def add_parsers(commands: Any) -> None:
    """The ``device`` and ``dashboard`` subcommands, on ``aoc``'s subparsers."""
    device = commands.add_parser("device", help="broker accounts of ambulances (devices)")
    # Alone, `aoc device` (and `aoc dashboard`) lists the accounts.
    device.set_defaults(json=False)
    actions = device.add_subparsers(dest="action")
    for action, text in (
        ("add", "create a device account; prints its password once"),
        ("remove", "delete a device account; its open connection is closed"),
        ("rotate", "give a device a new password; prints it once"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("id", help="the ambulance id (also its MQTT username)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    listing = actions.add_parser("list", help="the device accounts")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    dashboard = commands.add_parser("dashboard", help="broker accounts of MQTT dashboards")
    dashboard.set_defaults(json=False)
    actions = dashboard.add_subparsers(dest="action")
    add = actions.add_parser("add", help="create a dashboard account; prints its password once")
    add.add_argument("name", help="its account is dash-<name>")
    add.add_argument(
        "--ambulances", default=None, help="comma-separated ids it may see (default: all)"
    )
    remove = actions.add_parser("remove", help="delete a dashboard account")
    remove.add_argument("name")
    listing = actions.add_parser("list", help="the dashboard accounts")
    for sub in (add, remove, listing):
        sub.add_argument("--json", action="store_true", help="machine-readable output")


def _ambulance_list(settings: Settings, value: str | None) -> list[str] | None:
    if value is None:
        return None
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise ManageError("--ambulances names no ambulance", 2)
    return [check_device_id(settings, ambulance_id) for ambulance_id in ids]


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``aoc device|dashboard <action>``; the exit code (one line on stderr if not 0)."""
    args.action = args.action or "list"
    try:
        result, text = await _carry_out(args, settings)
    except ManageError as exc:
        print(f"aoc {args.command} {args.action}: {exc}", file=sys.stderr)
        return exc.exit_code
    except accounts.AccountsError as exc:
        print(f"aoc {args.command} {args.action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else text)
    return 0


async def _carry_out(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any], str]:
    actor = audit.operator(settings.operator)
    if args.command == "device":
        target = check_device_id(settings, args.id) if args.action != "list" else ""
    else:
        target = dashboard_username(args.name) if args.action != "list" else ""
        ambulances = _ambulance_list(settings, getattr(args, "ambulances", None))
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(audit_store(settings))
        admin = await stack.enter_async_context(admin_client(settings))
        if args.command == "device":
            return await _device(
                args.action,
                admin=admin,
                store=store,
                settings=settings,
                actor=actor,
                ambulance_id=target,
            )
        if args.action == "add":
            password = await add_dashboard(
                admin, store, actor=actor, username=target, ambulances=ambulances
            )
            scope = ", ".join(ambulances) if ambulances is not None else "every ambulance"
            text = (
                f"dashboard {target} added (state and alerts of {scope}).\n"
                f"MQTT username {target}\npassword {password}\n"
                "The password is shown only this once."
            )
            return {"username": target, "password": password, "ambulances": ambulances}, text
        if args.action == "remove":
            await _require(admin, target, DASHBOARD, "dashboard")
            await admin.delete_client(target)
            await audit.record(store, actor=actor, action="dashboard.remove", target=target)
            with _file_entries(settings) as creds:
                if creds is not None:
                    creds.dashboards.pop(target, None)
            return {"removed": target}, f"dashboard {target} removed"
        listed = await _dashboards(admin)
        lines = [
            f"{d['username']}\t{','.join(d['ambulances']) if d['ambulances'] is not None else '*'}"
            for d in listed
        ]
        return {"dashboards": listed}, "\n".join(lines) or "(no dashboards)"


async def _device(
    action: str,
    *,
    admin: DynsecAdmin,
    store: DocumentStore,
    settings: Settings,
    actor: str,
    ambulance_id: str,
) -> tuple[dict[str, Any], str]:
    if action == "list":
        ids = await _accounts_of(admin, DEVICE)
        return {"devices": ids}, "\n".join(ids) or "(no devices)"
    if action == "remove":
        await remove_device(admin, store, settings, actor=actor, ambulance_id=ambulance_id)
        return {"removed": ambulance_id}, f"device {ambulance_id} removed; its connections closed"
    if action == "add":
        password = await add_device(admin, store, actor=actor, ambulance_id=ambulance_id)
        done = "added"
    else:
        password = await rotate_device(
            admin, store, settings, actor=actor, ambulance_id=ambulance_id
        )
        done = "has a new password (the old one no longer works)"
    topics = ", ".join(contract.topic(ambulance_id, kind) for kind in contract.DEVICE_KINDS)
    text = (
        f"device {ambulance_id} {done}; it may publish {topics}.\n"
        f"MQTT username {ambulance_id}\npassword {password}\n"
        "The password is shown only this once."
    )
    return {"username": ambulance_id, "password": password}, text


# --- the simulator -------------------------------------------------------------------------


async def simulator_passwords(settings: Settings, ids: Sequence[str]) -> dict[str, str] | None:
    """The passwords of ``ids`` for `aoc simulate`; None when there is no credentials file.

    Ids the file does not hold yet are created through the admin account when
    the admin's password is known (and recorded in the file); otherwise
    ``ManageError`` says what to do.
    """
    path = settings.resolved_credentials_file
    if not path.exists():
        return None  # no `aoc up` here: a broker without accounts
    try:
        known = credentials.load(path).devices
    except credentials.CredentialsError as exc:
        raise ManageError(str(exc), 2) from exc
    missing = [ambulance_id for ambulance_id in ids if ambulance_id not in known]
    if missing:
        await _create_for_simulator(settings, path, missing)
        known = credentials.load(path).devices
    return {ambulance_id: known[ambulance_id] for ambulance_id in ids}


async def _create_for_simulator(settings: Settings, path: Path, missing: list[str]) -> None:
    try:
        admin_account(settings)
    except ManageError:
        raise ManageError(
            f"{path} holds no password for {_few(missing)} and no admin account to create "
            "them: run fewer ambulances, or set AOC_MQTT_ADMIN_PASSWORD",
            2,
        ) from None
    actor = audit.operator(settings.operator)
    async with audit_store(settings) as store, admin_client(settings) as admin:
        with credentials.editing(path) as creds:
            for ambulance_id in missing:
                if await admin.get_client(ambulance_id) is not None:
                    raise ManageError(
                        f"device {ambulance_id} has an account whose password is not in {path}: "
                        f"`aoc device remove {ambulance_id}`, or simulate other ids (--prefix)"
                    )
                creds.devices[ambulance_id] = await add_device(
                    admin, store, actor=actor, ambulance_id=ambulance_id, via="aoc simulate"
                )
    log.info("created device accounts for %s (in %s)", _few(missing), path)


def _few(ids: Sequence[str]) -> str:
    return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
