"""Render a runnable copy of the project's ``mosquitto.conf``.

Mosquitto reads no environment variables, so the ports and paths that differ
between a developer's machine, a test and a container are substituted into a
copy of the checked-in file; nothing else in it changes.
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path

PROJECT_CONF = Path(__file__).resolve().parent.parent / "mosquitto.conf"


def render(
    *,
    mqtt_port: int,
    ws_port: int,
    data_dir: Path,
    source: Path = PROJECT_CONF,
    extra: str = "",
) -> str:
    """The text of ``source`` with listener ports, persistence path and user replaced.

    ``data_dir`` receives Mosquitto's persistence file. The broker runs as the
    current user, so it can read and write the files that user prepared
    (Mosquitto started as root would otherwise switch to the ``mosquitto`` user).
    """
    text = source.read_text()
    ports = iter((mqtt_port, ws_port))

    def listener(match: re.Match[str]) -> str:
        return f"listener {next(ports)}"

    text = re.sub(r"^listener \d+", listener, text, count=2, flags=re.MULTILINE)
    location = f"persistence_location {data_dir.resolve()}/"
    text = re.sub(r"^persistence_location .*$", location, text, flags=re.MULTILINE)
    text += f"\n# Added by broker.conf.render\nuser {getpass.getuser()}\n{extra}\n"
    return text


def write(
    path: Path, *, mqtt_port: int, ws_port: int, data_dir: Path, extra: str = ""
) -> Path:
    """Render the configuration into ``path`` and create ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(render(mqtt_port=mqtt_port, ws_port=ws_port, data_dir=data_dir, extra=extra))
    return path
