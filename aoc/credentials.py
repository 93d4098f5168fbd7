"""The credentials file of `aoc up`: the generated passwords of a one-machine stack.

``settings.resolved_credentials_file`` (``data_dir/credentials.json`` by
default), mode 0600, JSON::

    {"mqtt": {"host": ..., "port": ..., "ws_port": ...},
     "admin": {"username": ..., "password": ...},
     "bridge": {...}, "shim": {...},
     "devices": {"SIM001": "<password>", ...},
     "dashboards": {"dash-first": "<password>"},
     "api_token": "<token>"}

The broker keeps only hashes; this file is what lets `aoc up` hand the service
accounts to `aoc serve`, and `aoc simulate` and a first dashboard connect
without anyone copying a password. Keys this module does not manage (the API
token) are kept as they are. Changes go through ``editing``, which holds a lock
so that two commands editing at once do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Account", "Credentials", "CredentialsError", "editing", "load", "save"]

Account = tuple[str, str]  # username, password
_SERVICES = ("admin", "bridge", "shim")


class CredentialsError(Exception):
    """The credentials file cannot be read as such; the text names it."""


class Credentials:
    """The contents of the credentials file."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data if data is not None else {}
        self.data.setdefault("devices", {})
        self.data.setdefault("dashboards", {})

    def account(self, name: str) -> Account | None:
        """The ``admin``, ``bridge`` or ``shim`` account, if the file holds it."""
        entry = self.data.get(name)
        if isinstance(entry, dict) and entry.get("username") and entry.get("password"):
            return str(entry["username"]), str(entry["password"])
        return None

    def set_account(self, name: str, username: str, password: str) -> None:
        if name not in _SERVICES:
            raise ValueError(f"not a service account: {name}")
        self.data[name] = {"username": username, "password": password}

    @property
    def devices(self) -> dict[str, str]:
        """Device passwords by ambulance id (the simulator's)."""
        devices: dict[str, str] = self.data["devices"]
        return devices

    @property
    def dashboards(self) -> dict[str, str]:
        """Dashboard passwords by account name (``dash-<name>``)."""
        dashboards: dict[str, str] = self.data["dashboards"]
        return dashboards

    def set_broker(self, host: str, port: int, ws_port: int) -> None:
        self.data["mqtt"] = {"host": host, "port": port, "ws_port": ws_port}


def load(path: Path) -> Credentials:
    """The file's credentials; empty ones when it does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Credentials()
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read the credentials file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CredentialsError(f"the credentials file {path} does not hold a JSON object")
    for key in ("devices", "dashboards"):
        if not isinstance(data.get(key, {}), dict):
            raise CredentialsError(f"the credentials file {path}: {key!r} is not an object")
    return Credentials(data)


def save(path: Path, credentials: Credentials) -> None:
    """Replace the file atomically; it is created with mode 0600 and never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(credentials.data, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)  # O_CREAT's mode does not apply to a leftover file
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


@contextlib.contextmanager
def editing(path: Path) -> Iterator[Credentials]:
    """Load, let the caller change, and save the file, under an exclusive lock.

    The file is saved even when the caller fails midway: its entries mirror
    accounts already made on the broker, which a failure does not undo.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        credentials = load(path)
        try:
            yield credentials
        finally:
            save(path, credentials)
    finally:
        os.close(fd)  # releases the lock
