"""`aoc config`: the configuration in effect, secrets masked, and where each value came from.

Sources, in the order ``pydantic-settings`` gives them precedence: the
environment, then the ``.env`` file of the working directory, then the default.
An empty value counts as unset in both (``env_ignore_empty``), and variable
names match whatever their case, as ``Settings`` reads them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import SecretStr

import storage
from aoc.config import ALIASES, Settings
from aoc.settings_help import ENV_FILE, show
from aoc.startup import variable

MASK = "********"
ENVIRONMENT, DOTENV, DEFAULT = "environment", str(ENV_FILE), "default"
# Query parameters that carry a secret in a server URL (Redis's ``password``, ...).
_SECRET_PARAMETERS = ("password", "secret", "token")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `aoc config` on the ``aoc`` command's subcommands."""
    parser = commands.add_parser(
        "config", help="the configuration in effect (secrets masked) and where each value came from"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def mask_url(text: str) -> str:
    """``text`` with the password of a URL masked: its user info's, and a secret parameter's."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(storage.redact(text))  # the user info's
    except ValueError:  # not a URL after all (a port that is not a number, ...)
        return text
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = {key for key, _ in pairs if any(s in key.lower() for s in _SECRET_PARAMETERS)}
    if not secret:
        return parts.geturl()
    query = urlencode([(k, MASK if k in secret else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(query=query))


def masked(value: Any) -> Any:
    """``value`` as JSON can carry it, with secrets masked."""
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _given(names: Mapping[str, str | None]) -> dict[str, str]:
    """Non-empty values of ``names``, keyed in lower case (``Settings`` ignores the case)."""
    return {key.lower(): value for key, value in names.items() if value}


def sources(
    environ: Mapping[str, str], dotenv: Mapping[str, str | None]
) -> dict[str, str]:
    """Where each field's value comes from: the environment, the .env file or its default."""
    env, file = _given(environ), _given(dotenv)
    found: dict[str, str] = {}
    for field in Settings.model_fields:
        keys = [name.lower() for name in (variable(field), *ALIASES.get(field, ()))]
        found[field] = (
            ENVIRONMENT if any(key in env for key in keys)
            else DOTENV if any(key in file for key in keys)
            else DEFAULT
        )
    return found


def report(settings: Settings, environ: Mapping[str, str], env_file: Path) -> dict[str, Any]:
    """Every setting: its variable, masked value and source; and the .env file read."""
    dotenv = dotenv_values(env_file) if env_file.is_file() else {}
    origin = sources(environ, dotenv)
    return {
        "env_file": {"path": str(env_file.resolve()), "found": env_file.is_file()},
        "settings": {
            variable(field): {
                "value": masked(getattr(settings, field)),
                "source": origin[field],
            }
            for field in Settings.model_fields
        },
    }


def _text(found: dict[str, Any]) -> str:
    env_file = found["env_file"]
    state = "read" if env_file["found"] else "not found"
    lines = [f"# {env_file['path']}: {state}; secrets are masked"]
    rows = found["settings"]
    # Comments aligned, unless a long value (a URL) would push them all far right.
    width = min(max(len(name) + len(_shown(e["value"])) + 1 for name, e in rows.items()), 48)
    for name, entry in rows.items():
        assignment = f"{name}={_shown(entry['value'])}"
        lines.append(f"{assignment:<{width}}  # {entry['source']}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    # As in .env: unset and empty look alike (both mean the default); booleans in lower case.
    if value is None:
        return ""
    return show(value) if isinstance(value, bool) else str(value)


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the configuration in effect: text like ``.env``, or JSON with ``--json``."""
    found = report(settings, os.environ, ENV_FILE)
    print(json.dumps(found, indent=2) if args.json else _text(found))
    return 0

