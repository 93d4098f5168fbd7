"""Broker accounts and their rights, through Mosquitto's dynamic security plugin.

Why this plugin rather than a password file and an ACL file: its accounts,
roles and ACLs change at run time through MQTT messages on
``$CONTROL/dynamic-security/v1`` (no restart, no SIGHUP, and it works when the
broker runs in another container); deleting or disabling an account also
closes that account's open connections at once; and it stores salted
PBKDF2-SHA512 hashes itself, in a JSON file of its own.

This module knows the plugin's protocol and the rights of each kind of account;
``aoc.manage`` decides which accounts exist. Every account gets exactly one
role, named after it, holding all its rights (the issue's table):

- a device ``<id>`` publishes ``aoc/<id>/tracking|snap|crash|status`` and
  nothing else (its Last Will on its own status too: Mosquitto checks a will
  against the same ACLs); it subscribes to nothing;
- the bridge (``aoc-bridge``) publishes ``aoc/+/state`` and ``aoc/+/alert``,
  subscribes to the device topics under ``aoc/`` and to the legacy shim's under
  ``legacy/``, plainly or as ``$share/<group>/...`` when several bridges share
  the stream;
- the legacy shim (``aoc-shim``) publishes ``legacy/+/tracking|snap|crash`` only:
  a root no device may write, so a legacy body can be told apart by its topic;
- a dashboard (``dash-<name>``) subscribes to ``aoc/+/state`` and ``aoc/+/alert``
  and receives them for every ambulance or only for the ones listed; it
  publishes nothing;
- the admin account may only send plugin commands and read their answers.

Everything else is denied: the plugin's defaults are set to deny publishing,
subscribing *and receiving* (its own default lets any client receive whatever
its subscriptions match), so each right above is granted by name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import ssl
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt

from bridge import contract

__all__ = [
    "BRIDGE_USERNAME",
    "CONTROL_TOPIC",
    "DASHBOARD_PREFIX",
    "RESPONSE_TOPIC",
    "SHIM_USERNAME",
    "AccountsError",
    "Acl",
    "DynsecAdmin",
    "DynsecError",
    "admin_acls",
    "bridge_acls",
    "dashboard_acls",
    "dashboard_ambulances",
    "device_acls",
    "initial_config",
    "new_password",
    "role_name",
    "shim_acls",
    "write_initial_config",
]

_CONTROL_ROOT = "$CONTROL/dynamic-security"
CONTROL_TOPIC = f"{_CONTROL_ROOT}/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

# The service accounts' usernames (the admin's is a setting: AOC_MQTT_ADMIN_USERNAME).
BRIDGE_USERNAME = "aoc-bridge"
SHIM_USERNAME = "aoc-shim"
DASHBOARD_PREFIX = "dash-"

# How the plugin itself hashes (mosquitto_ctrl and createClient): PBKDF2-SHA512,
# a 12-byte salt, 101 iterations. Generated passwords carry 192 random bits, so
# a slower hash would only cost CPU at every connect, not make them safer.
_SALT_BYTES = 12
_ITERATIONS = 101
_TIMEOUT = 10.0


class AccountsError(Exception):
    """The broker could not be reached or refused the admin account; the text says why."""


class DynsecError(AccountsError):
    """The plugin refused a command: ``command`` names it, ``error`` is the plugin's reason."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"dynamic security command {command} failed: {error}")
        self.command = command
        self.error = error


@dataclass(frozen=True, slots=True)
class Acl:
    """One ACL entry of a role, as the plugin names it."""

    acltype: str  # publishClientSend, publishClientReceive, subscribePattern, ...
    topic: str
    allow: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype, "topic": self.topic, "allow": self.allow}


def new_password() -> str:
    """A generated password: 192 random bits, URL-safe (no quoting in a shell or a URL)."""
    return secrets.token_urlsafe(24)


def role_name(username: str) -> str:
    """The role holding ``username``'s rights: one per account, named after it."""
    return f"role-{username}"


# --- the rights of each kind of account ----------------------------------------------------


def _send(topics: Iterable[str]) -> list[Acl]:
    return [Acl("publishClientSend", topic) for topic in topics]


def _read(filters: Iterable[str], *, shared: bool = False) -> list[Acl]:
    """Subscribing to ``filters`` and receiving what they match (also as shared subscriptions)."""
    acls: list[Acl] = []
    for topic in filters:
        acls.append(Acl("subscribePattern", topic))
        if shared:
            acls.append(Acl("subscribePattern", f"$share/+/{topic}"))
        acls.append(Acl("publishClientReceive", topic))
    return acls


def device_acls(ambulance_id: str) -> list[Acl]:
    """A device publishes its own four topics, its Last Will included; nothing else."""
    _check_id(ambulance_id)
    return _send(contract.topic(ambulance_id, kind) for kind in contract.DEVICE_KINDS)


def bridge_acls() -> list[Acl]:
    """The bridge publishes state and alerts, and reads every device and legacy topic."""
    device = [contract.subscription(kind) for kind in contract.DEVICE_KINDS]
    legacy = [contract.legacy_subscription(kind) for kind in contract.LEGACY_KINDS]
    dispatch = [f for kind in contract.DISPATCH_KINDS for f in contract.bridge_filters(kind)]
    return [
        *_send(contract.subscription(kind) for kind in contract.BRIDGE_KINDS),
        *_read([*device, *legacy, *dispatch], shared=True),
    ]


def shim_acls() -> list[Acl]:
    """The HTTP API publishes under ``legacy/`` (the legacy shim) and ``dispatch/`` only.

    It reads nothing.
    """
    legacy = [contract.legacy_subscription(kind) for kind in contract.LEGACY_KINDS]
    dispatch = [f for kind in contract.DISPATCH_KINDS for f in contract.bridge_filters(kind)]
    return _send([*legacy, *dispatch])


def dashboard_acls(ambulances: Sequence[str] | None = None) -> list[Acl]:
    """A dashboard reads state and alerts, of ``ambulances`` only when given; it publishes nothing.

    It may subscribe to ``aoc/+/state`` either way: what it receives is limited
    by the receive ACLs, so a dashboard needs not know its list to subscribe.
    """
    filters = [contract.subscription(kind) for kind in contract.BRIDGE_KINDS]
    acls = [Acl("subscribePattern", topic) for topic in filters]
    if ambulances is None:
        return [*acls, *(Acl("publishClientReceive", topic) for topic in filters)]
    for ambulance_id in ambulances:
        _check_id(ambulance_id)
        acls += [
            Acl("publishClientReceive", contract.topic(ambulance_id, kind))
            for kind in contract.BRIDGE_KINDS
        ]
    return acls


def dashboard_ambulances(acls: Iterable[Mapping[str, Any]]) -> list[str] | None:
    """The ambulances a dashboard role's ACLs (as the plugin lists them) let through; None: all."""
    ids: list[str] = []
    for acl in acls:
        if acl.get("acltype") != "publishClientReceive" or not acl.get("allow"):
            continue
        parts = str(acl.get("topic", "")).split("/")
        if len(parts) == 3 and parts[1] == "+":
            return None
        if len(parts) == 3 and parts[1] not in ids:
            ids.append(parts[1])
    return sorted(ids)


def admin_acls() -> list[Acl]:
    """The admin sends plugin commands and reads their answers; nothing else."""
    return [Acl("publishClientSend", f"{_CONTROL_ROOT}/#"), *_read([f"{_CONTROL_ROOT}/#"])]


def _check_id(value: str) -> None:
    # An id becomes an ACL topic: the contract's id rule keeps out + # and /.
    problem = contract.ambulance_id_problem(value)
    if problem is not None:
        raise ValueError(f"invalid ambulance id {value!r}: {problem}")


# Deny unless a role allows: publishing, subscribing and receiving. Unsubscribing
# stays allowed: it grants nothing, and a client must be able to drop a filter.
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


# --- the plugin's file, before the broker first starts -------------------------------------


def _hash(password: str, salt: bytes) -> str:
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return base64.b64encode(digest).decode("ascii")


def initial_config(admin_username: str, admin_password: str) -> dict[str, Any]:
    """The plugin's JSON with only the admin account, its role and the deny-by-default rules.

    The same document ``mosquitto_ctrl dynsec init`` writes, except that its
    admin role also reads every topic (``#`` and ``$SYS/#``), and that it takes
    the password on its command line, where every local user sees it in ``ps``.
    """
    salt = os.urandom(_SALT_BYTES)
    role = role_name(admin_username)
    return {
        "clients": [
            {
                "username": admin_username,
                "textName": "AOC account manager",
                "password": _hash(admin_password, salt),
                "salt": base64.b64encode(salt).decode("ascii"),
                "iterations": _ITERATIONS,
                "roles": [{"rolename": role}],
            }
        ],
        "roles": [{"rolename": role, "acls": [acl.to_json() for acl in admin_acls()]}],
        "defaultACLAccess": dict(DEFAULT_ACL_ACCESS),
    }


def write_initial_config(path: Path, admin_username: str, admin_password: str) -> None:
    """Create the plugin's file at ``path`` (mode 0600); an existing file is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(initial_config(admin_username, admin_password), indent=2) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


# --- the admin client ----------------------------------------------------------------------


class DynsecAdmin:
    """An MQTT connection of the admin account that sends plugin commands and awaits the answers.

    ``async with DynsecAdmin(...) as admin: await admin.command("listClients")``.
    Each command carries a correlation id and waits for its own response; a
    response with an ``error`` raises ``DynsecError`` naming the command.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = _TIMEOUT,
    ) -> None:
        self._host, self._port, self._username = host, port, username
        self._timeout = timeout
        self._client = aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=f"aoc-admin-{uuid.uuid4().hex[:12]}",
            tls_context=ssl_context,
            clean_session=True,
            timeout=timeout,
        )
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DynsecAdmin:
        where = f"the broker at {self._host}:{self._port} as {self._username!r}"
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise AccountsError(f"cannot manage accounts on {where}: {exc}") from exc
        try:
            await self._client.subscribe(RESPONSE_TOPIC, qos=1)
        except aiomqtt.MqttError as exc:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)
            raise AccountsError(f"cannot manage accounts on {where}: {exc}") from exc
        self._reader = asyncio.create_task(self._read(), name="dynsec-responses")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        try:
            async for message in self._client.messages:
                try:
                    body = json.loads(bytes(message.payload))
                    responses = body["responses"]
                except (ValueError, KeyError, TypeError):
                    continue
                for response in responses:
                    future = self._waiting.pop(str(response.get("correlationData")), None)
                    if future is not None and not future.done():
                        future.set_result(response)
        except aiomqtt.MqttError as exc:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(AccountsError(f"lost the broker connection: {exc}"))

    async def command(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one plugin command; its response's ``data`` (``{}`` when it has none)."""
        correlation = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        body = {"commands": [{"command": command, **fields, "correlationData": correlation}]}
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.publish(CONTROL_TOPIC, json.dumps(body), qos=1)
                response = await future
        except TimeoutError:
            raise DynsecError(command, f"no answer within {self._timeout:.0f}s") from None
        except aiomqtt.MqttError as exc:
            raise DynsecError(command, str(exc)) from exc
        finally:
            self._waiting.pop(correlation, None)
        if response.get("error"):
            raise DynsecError(command, str(response["error"]))
        data = response.get("data")
        return data if isinstance(data, dict) else {}

    # --- what aoc.manage uses ---------------------------------------------------------------

    async def set_default_access(self) -> None:
        """Deny by default: publishing, subscribing and receiving (``DEFAULT_ACL_ACCESS``)."""
        acls = [{"acltype": kind, "allow": allow} for kind, allow in DEFAULT_ACL_ACCESS.items()]
        await self.command("setDefaultACLAccess", acls=acls)

    async def put_role(self, rolename: str, acls: Sequence[Acl]) -> None:
        """Create ``rolename`` with exactly ``acls``, or give an existing one exactly those."""
        listed = [acl.to_json() for acl in acls]
        try:
            await self.command("createRole", rolename=rolename, acls=listed)
        except DynsecError as exc:
            if "already exists" not in exc.error:
                raise
            await self.command("modifyRole", rolename=rolename, acls=listed)

    async def get_client(self, username: str) -> dict[str, Any] | None:
        """The plugin's record of ``username`` (its ``roles``, ...), or None if there is none."""
        try:
            data = await self.command("getClient", username=username)
        except DynsecError as exc:
            if "not found" in exc.error:
                return None
            raise
        client = data.get("client")
        return client if isinstance(client, dict) else None

    async def get_role(self, rolename: str) -> dict[str, Any] | None:
        """The plugin's record of ``rolename`` (its ``acls``), or None if there is none."""
        try:
            data = await self.command("getRole", rolename=rolename)
        except DynsecError as exc:
            if "not found" in exc.error:
                return None
            raise
        role = data.get("role")
        return role if isinstance(role, dict) else None

    async def list_clients(self) -> list[dict[str, Any]]:
        """Every account, each with its ``username`` and ``roles``."""
        data = await self.command("listClients", verbose=True, count=-1, offset=0)
        clients = data.get("clients", [])
        return [client for client in clients if isinstance(client, dict)]

    async def put_client(
        self, username: str, password: str, acls: Sequence[Acl], *, textname: str = ""
    ) -> bool:
        """Make ``username`` exist with ``password`` and exactly the rights ``acls``.

        Its role (``role_name``) is created or replaced first. True when the
        account was created, False when an existing one was updated.
        """
        role = role_name(username)
        await self.put_role(role, acls)
        fields = {"username": username, "password": password, "textname": textname}
        roles = [{"rolename": role}]
        if await self.get_client(username) is None:
            await self.command("createClient", **fields, roles=roles)
            return True
        await self.command("modifyClient", **fields, roles=roles)
        return False

    async def create_client(
        self, username: str, password: str, acls: Sequence[Acl], *, textname: str = ""
    ) -> None:
        """Create ``username`` with its role; ``DynsecError`` if the account exists already.

        ``textname`` is the plugin's free-text label of the account: what it is.
        """
        if await self.get_client(username) is not None:
            raise DynsecError("createClient", f"client {username!r} already exists")
        await self.put_role(role_name(username), acls)
        roles = [{"rolename": role_name(username)}]
        await self.command(
            "createClient", username=username, password=password, textname=textname, roles=roles
        )

    async def delete_client(self, username: str) -> None:
        """Delete ``username`` and its role; the broker closes its open connections at once."""
        await self.command("deleteClient", username=username)
        with contextlib.suppress(DynsecError):  # an account made by hand may have no such role
            await self.command("deleteRole", rolename=role_name(username))

    async def set_password(self, username: str, password: str) -> None:
        """Replace ``username``'s password."""
        await self.command("setClientPassword", username=username, password=password)
