"""Whether a TCP port is free, and which process holds it if not.

``aoc up`` must never take someone else's server for its own: before it
starts a child it checks that the child's ports can be bound, and once a
port answers it checks that the child holds it. Who holds a port is read
from ``/proc`` (Linux): the listening socket's inode in ``/proc/net/tcp*``,
then the process whose file descriptors include it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

_PROC = Path("/proc")
_LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


@dataclass(frozen=True, slots=True)
class Holder:
    """The process listening on a port; ``pid`` None: one this user may not inspect."""

    pid: int | None
    command: str

    def __str__(self) -> str:
        return self.command if self.pid is None else f"pid {self.pid} ({self.command})"


class Bind(NamedTuple):
    """An address a server listens on, and the setting that chooses its port."""

    variable: str
    host: str
    port: int


class Unavailable(Exception):
    """A port a server cannot listen on at start: a configuration error, one line."""


def check(binds: Iterable[Bind], who: str) -> None:
    """``Unavailable`` naming the first of ``binds`` that cannot be listened on, and its holder.

    ``who``: the server that would listen (``aoc-serve``), for an error other than a port in use.
    """
    for variable, host, port in binds:
        error = bind_error(host, port)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            raise Unavailable(
                f"port {port} ({variable}) is in use by "
                f"{holder(port) or 'another program'}: stop it, or set {variable} to a free port"
            )
        raise Unavailable(
            f"{who} cannot listen on {host}:{port} ({variable}): {error.strerror or error}"
        )


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` now; None if it could.

    Bound as uvicorn and Mosquitto bind (``SO_REUSEADDR``), so a port left in
    TIME_WAIT by a previous run counts as free, and one with a listener not.
    """
    try:
        addresses = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc
    return None


def _listening_inodes(port: int) -> set[str] | None:
    """The inodes of the sockets listening on ``port``; None without ``/proc``."""
    found: set[str] = set()
    tables = [_PROC / "net" / "tcp", _PROC / "net" / "tcp6"]
    if not any(table.exists() for table in tables):
        return None
    for table in tables:
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(inode)
    return found


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
        # One line whatever the arguments hold (a `python -c` script has newlines).
        return " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return "?"


def holder(port: int, *, first: Iterable[int] = ()) -> Holder | None:
    """The process listening on TCP ``port``; None if none does, or without ``/proc``.

    The processes in ``first`` are looked at before all others (the child
    expected to hold it: usually the only one looked at).
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    others = (int(p.name) for p in _PROC.iterdir() if p.name.isdigit())
    for pid in (*first, *others):
        with contextlib.suppress(OSError):
            for fd in (_PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return Holder(pid, _command(pid))
    return Holder(None, "a process this user may not inspect")
