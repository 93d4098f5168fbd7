"""Render a runnable copy of the project's ``mosquitto.conf``.

Mosquitto reads no environment variables, so the ports, bind address and paths
that differ between a developer's machine, a test and a container are
substituted into a copy of the checked-in file; nothing else in it changes.
"""

from __future__ import annotations

import getpass
import ipaddress
import re
from pathlib import Path

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
) -> str:
    """The text of ``source`` with listeners, persistence path and user replaced.

    Both listeners (MQTT and WebSocket) take their port and listen on
    ``bind_host`` only. The checked-in file names no address, which makes
    Mosquitto listen on every interface: right inside a container, not on a
    developer's machine.

    ``max_packet_size``, when given, replaces the file's (``packet_bound`` of
    the largest payload the settings accept: a maximum-size JSON snapshot).
    ``max_connections``, when given, replaces each listener's.

    ``data_dir`` receives Mosquitto's persistence file. The broker runs as the
    current user, so it can read and write the files that user prepared
    (Mosquitto started as root would otherwise switch to the ``mosquitto`` user):
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
    text += f"\n# Added by broker.conf.render\nuser {getpass.getuser()}\n{extra}\n"
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
) -> Path:
    """Render the configuration into ``path`` and create ``data_dir``."""
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
    )
    path.write_text(text)
    return path


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
