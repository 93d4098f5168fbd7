"""Render a runnable copy of the project's ``mosquitto.conf``.

Mosquitto reads no environment variables, so the ports, bind address and paths
that differ between a developer's machine, a test and a container are
substituted into a copy of the checked-in file; nothing else in it changes.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import pwd
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

PROJECT_CONF = Path(__file__).resolve().parent.parent / "mosquitto.conf"

# Where Mosquitto's dynamic security plugin lives: Debian and Ubuntu put it
# under the multiarch directory, the eclipse-mosquitto image (and the
# checked-in file) under /usr/lib.
DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
_PLUGIN_GLOBS = (
    f"/usr/lib/*/{DYNSEC_PLUGIN}",
    f"/usr/lib/{DYNSEC_PLUGIN}",
    f"/usr/local/lib/{DYNSEC_PLUGIN}",
)

# The account Debian's package (and the eclipse-mosquitto image) runs the broker as.
BROKER_USER = "mosquitto"

# A PUBLISH packet's bytes besides its payload: fixed header, topic (at most
# ``aoc/<64-character id>/tracking``), packet id; generously rounded up.
PACKET_OVERHEAD = 1024


def packet_bound(max_payload: int) -> int:
    """The ``max_packet_size`` that admits payloads of up to ``max_payload`` bytes."""
    return max_payload + PACKET_OVERHEAD


def _listener_address(bind_host: str) -> str:
    """What follows the port on a ``listener`` line so that it binds ``bind_host`` only.

    Mosquitto 2.0's WebSocket listener (libwebsockets) ignores an IPv4 address
    and listens on every interface unless the listener is also limited to IPv4;
    it cannot bind a host name at all.
    """
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        raise ValueError(
            f"Mosquitto's WebSocket listener needs an IP address to bind, not {bind_host!r}: "
            "set AOC_MQTT_BIND_HOST (or AOC_BIND_HOST) to one"
        ) from None
    if address.version == 4:
        return f"{bind_host}\nsocket_domain ipv4"
    return bind_host


def dynsec_plugin() -> Path:
    """The installed dynamic security plugin; ``FileNotFoundError`` naming the package if none."""
    for pattern in _PLUGIN_GLOBS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"Mosquitto's dynamic security plugin ({DYNSEC_PLUGIN}) is not installed: "
        "it ships with the mosquitto package (`make run` installs it)"
    )


def _auth(text: str, auth: bool, dynsec_file: Path | None) -> str:
    """The plugin lines pointing at this machine's plugin and ``dynsec_file``; or anonymous."""
    if not auth:
        # A throwaway broker (most tests): anyone may connect, publish and subscribe.
        text = re.sub(r"^(plugin|plugin_opt_\w+) .*\n", "", text, flags=re.MULTILINE)
        return re.sub(r"^allow_anonymous .*$", "allow_anonymous true", text, flags=re.MULTILINE)
    if dynsec_file is None:
        raise ValueError("a broker with authentication needs its dynamic security file")
    text = re.sub(r"^plugin .*$", f"plugin {dynsec_plugin()}", text, flags=re.MULTILINE)
    config = f"plugin_opt_config_file {dynsec_file.resolve()}"
    return re.sub(r"^plugin_opt_config_file .*$", config, text, flags=re.MULTILINE)


class BrokerUser(NamedTuple):
    """Who runs the broker; ``why_root``: why it is root although ``BROKER_USER`` exists."""

    name: str
    why_root: str | None = None


def _permits(path: Path, user: pwd.struct_passwd, groups: set[int], bit: int) -> bool:
    """Whether ``user`` has permission ``bit`` (4 read, 1 search) on ``path`` (mode bits only)."""
    info = path.stat()
    if info.st_uid == user.pw_uid:
        return bool(info.st_mode >> 6 & bit)
    if info.st_gid in groups:
        return bool(info.st_mode >> 3 & bit)
    return bool(info.st_mode & bit)


def _blocker(user: pwd.struct_passwd, owned: Iterable[Path], reads: Iterable[Path]) -> Path | None:
    """The first path keeping ``user`` from the directories it will own or the files it reads."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for given, needs_read in [*((p, False) for p in owned), *((p, True) for p in reads)]:
        path = given.resolve()
        # Directories missing yet are made by root with the default mode: searchable.
        for parent in (p for p in reversed(path.parents) if p.exists()):
            if not _permits(parent, user, groups, 1):
                return parent
        if needs_read and not _permits(path, user, groups, 4):
            return path
    return None


def broker_user(owned: Iterable[Path] = (), reads: Iterable[Path] = ()) -> BrokerUser:
    """Who should run the broker: the current user, but never root when it can be avoided.

    Started as root, Mosquitto keeps root's rights unless told to switch to
    another user (``render``'s ``user``): root uses ``BROKER_USER`` when it
    exists and can reach the directories it will own (``owned``, handed to it
    by ``write``) and read ``reads`` (the TLS certificate and key); otherwise
    root it stays, with ``why_root`` saying what the operator can change.
    """
    current = getpass.getuser()
    if os.geteuid() != 0:
        return BrokerUser(current)
    try:
        user = pwd.getpwnam(BROKER_USER)
    except KeyError:
        return BrokerUser(current)
    blocker = _blocker(user, owned, reads)
    if blocker is not None:
        return BrokerUser(
            current, f"the {BROKER_USER} user may not enter or read {blocker}"
        )
    return BrokerUser(BROKER_USER)


def render(
    *,
    mqtt_port: int,
    ws_port: int,
    bind_host: str,
    data_dir: Path,
    auth: bool = True,
    dynsec_file: Path | None = None,
    source: Path = PROJECT_CONF,
    extra: str = "",
    max_packet_size: int | None = None,
    max_connections: int | None = None,
    user: str | None = None,
) -> str:
    """The text of ``source`` with listeners, persistence path and user replaced.

    Both listeners (MQTT and WebSocket) take their port and listen on
    ``bind_host`` only. The checked-in file names no address, which makes
    Mosquitto listen on every interface: right inside a container, not on a
    developer's machine.

    ``max_packet_size``, when given, replaces the file's (``packet_bound`` of
    the largest payload the settings accept: a maximum-size JSON snapshot).
    ``max_connections``, when given, replaces each listener's.

    ``data_dir`` receives Mosquitto's persistence file. The broker runs as
    ``user`` (default: the current user, who prepared its files; ``broker_user``
    tells when root should hand them to another), who reads and writes them:
    the dynamic security file among them, which the plugin also rewrites.

    ``auth`` (the default) keeps the file's accounts and ACLs: the dynamic
    security plugin of this machine, keeping its accounts in ``dynsec_file``.
    ``auth=False`` is for throwaway brokers only: anonymous, no ACLs.
    """
    text = _auth(source.read_text(), auth, dynsec_file)
    ports = iter((mqtt_port, ws_port))
    bind = _listener_address(bind_host)

    def listener(match: re.Match[str]) -> str:
        return f"listener {next(ports)} {bind}"

    text = re.sub(r"^listener \d+.*$", listener, text, count=2, flags=re.MULTILINE)
    location = f"persistence_location {data_dir.resolve()}/"
    text = re.sub(r"^persistence_location .*$", location, text, flags=re.MULTILINE)
    if max_packet_size is not None:
        bound = f"max_packet_size {max_packet_size}"
        text, found = re.subn(r"^max_packet_size .*$", bound, text, flags=re.MULTILINE)
        if not found:
            text += f"\n{bound}\n"
    if max_connections is not None:
        limit = f"max_connections {max_connections}"
        text = re.sub(r"^max_connections .*$", limit, text, flags=re.MULTILINE)
    text += f"\n# Added by broker.conf.render\nuser {user or getpass.getuser()}\n{extra}\n"
    return text


def write(
    path: Path,
    *,
    mqtt_port: int,
    ws_port: int,
    bind_host: str,
    data_dir: Path,
    auth: bool = True,
    dynsec_file: Path | None = None,
    extra: str = "",
    max_packet_size: int | None = None,
    max_connections: int | None = None,
    user: str | None = None,
) -> Path:
    """Render the configuration into ``path`` and create ``data_dir``.

    With a ``user`` other than the current one (root handing the broker to
    ``BROKER_USER``), that user gets what the broker writes: ``data_dir`` and
    its files (persistence), the dynamic security file and its directory (the
    plugin saves to a new file beside it, then renames it).
    """
    handing_over = user is not None and user != getpass.getuser()
    if handing_over:
        # The broker's user owns the directory these live in: a link it put in
        # place of one would have root create and chown files wherever it points.
        for planted in (data_dir, dynsec_file):
            if planted is not None and planted.is_symlink():
                raise ValueError(
                    f"{planted} is a symbolic link, in a directory the broker's user "
                    f"({user}) owns: refusing to hand what it points to over; remove it"
                )
    data_dir.mkdir(parents=True, exist_ok=True)
    text = render(
        mqtt_port=mqtt_port,
        ws_port=ws_port,
        bind_host=bind_host,
        data_dir=data_dir,
        auth=auth,
        dynsec_file=dynsec_file,
        extra=extra,
        max_packet_size=max_packet_size,
        max_connections=max_connections,
        user=user,
    )
    # A new file renamed over the old: a link the broker's user put there is
    # replaced, never followed (root writes this file at every start).
    fresh = path.with_name(f".{path.name}.new")
    fresh.unlink(missing_ok=True)
    # O_EXCL and O_NOFOLLOW: a link made between the unlink and here is refused.
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    fresh.replace(path)
    if handing_over:
        assert user is not None
        owned = [path, data_dir, *data_dir.iterdir()]
        if dynsec_file is not None:
            owned += [dynsec_file.parent, dynsec_file]
        _hand_over(user, owned)
    return path


def _hand_over(user: str, paths: Iterable[Path]) -> None:
    """Make ``user`` (and its group) own each of ``paths`` that exists; links are not followed."""
    account = pwd.getpwnam(user)
    for path in paths:
        if path.exists() or path.is_symlink():
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)


def tls_listeners(
    *,
    tls_port: int,
    wss_port: int,
    bind_host: str,
    certfile: Path,
    keyfile: Path,
    max_connections: int,
) -> str:
    """MQTT-over-TLS and WebSocket-over-TLS listeners, text for ``render``'s ``extra``.

    They bind like the plain listeners (``socket_domain ipv4`` included: the
    WebSocket quirk holds over TLS too). With ``per_listener_settings false``
    (the project's file) authentication stays global, so these listeners take
    the same accounts; certfile and keyfile are per listener. The broker's
    user must be able to read both files.
    """
    bind = _listener_address(bind_host)
    blocks = [
        f"listener {port} {bind}\nprotocol {protocol}\ncertfile {certfile}\nkeyfile {keyfile}\n"
        f"max_connections {max_connections}"
        for port, protocol in ((tls_port, "mqtt"), (wss_port, "websockets"))
    ]
    return "# TLS listeners (aoc.tls)\n" + "\n".join(blocks) + "\n"
