"""What keeps a command from starting, one line each, and its exit code.

Two kinds, told apart by the exit code, on which ``aoc up`` decides whether a
restart can help:

- a configuration error (``EXIT_CONFIG``, 2): an ``AOC_*`` value that is
  invalid (``load``) or unsafe (``aoc.safety``). A restart cannot cure it.
- an unreachable dependency at start (``EXIT_UNREACHABLE``, 1): the document
  store, or the broker of `aoc api`'s legacy shim, does not answer
  (``Unreachable``). A restart with backoff may find it back.

Each line names the variable (``AOC_HTTP_PORT``, not ``http_port``), its value
(passwords masked) and what would be valid; the traceback behind it is logged
at DEBUG only. This module is the one place that turns pydantic's errors into
variable names.
"""

from __future__ import annotations

import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr, ValidationError
from pydantic_core import ErrorDetails

import storage
from aoc import safety
from aoc.config import ENV_PREFIX, SERVICE_FIELDS, Settings
from storage.base import StoreMisconfigured

log = logging.getLogger(__name__)

EXIT_UNREACHABLE = 1
EXIT_CONFIG = 2


def variable(name: str) -> str:
    """The environment variable of the setting ``name``: ``http_port`` -> ``AOC_HTTP_PORT``."""
    return f"{ENV_PREFIX}{name.upper()}"


def shown(name: str, value: object) -> str:
    """``value`` of setting ``name`` as a message may show it: secrets masked, quoted."""
    annotation = Settings.model_fields[name].annotation if name in Settings.model_fields else None
    if SecretStr in (annotation, *typing.get_args(annotation)):
        return "'***'"
    if isinstance(value, str) and "://" in value:
        return repr(storage.redact(value))
    return repr(value)


def _kind(annotation: Any) -> str:
    """What a value of ``annotation`` is, in words."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    words = {
        int: "an integer",
        float: "a number",
        bool: "true or false (1/0, yes/no, on/off)",
        Path: "a path",
        str: "text",
        SecretStr: "text",
    }
    return words.get(annotation, "a valid value")


def _bounds(metadata: list[Any]) -> str:
    """The range of a constrained number, in words: ``from 1 to 65535``, ``> 0``."""
    low = next((f">= {m.ge}" for m in metadata if isinstance(m, Ge)), None)
    low = low or next((f"> {m.gt}" for m in metadata if isinstance(m, Gt)), None)
    high = next((f"<= {m.le}" for m in metadata if isinstance(m, Le)), None)
    high = high or next((f"< {m.lt}" for m in metadata if isinstance(m, Lt)), None)
    if low and high and low.startswith(">=") and high.startswith("<="):
        return f"from {low[3:]} to {high[3:]}"
    return " and ".join(bound for bound in (low, high) if bound)


def describe(error: ErrorDetails) -> str:
    """One line for one of pydantic's errors about ``Settings``."""
    if not error["loc"]:
        return f"invalid settings: {error['msg']}"
    name = str(error["loc"][0])
    where = f"{variable(name)}={shown(name, error['input'])} is invalid"
    if error["type"] == "value_error":  # our validators say what is valid
        return f"{where}: {error.get('ctx', {}).get('error', error['msg'])}"
    info = Settings.model_fields.get(name)
    if info is None:
        return f"{where}: {error['msg']}"
    expected = " ".join(part for part in (_kind(info.annotation), _bounds(info.metadata)) if part)
    return f"{where}: expected {expected}"


@dataclass
class Loaded:
    """The settings a command runs with, and what was wrong in the environment.

    ``errors`` refuse the command (exit 2). ``ignored`` are invalid values of
    settings the command does not read (``config.SERVICE_FIELDS`` outside the
    services): their defaults stand in, with a warning. With errors, ``settings``
    still holds every valid value (for the log level, say), defaults elsewhere.
    """

    settings: Settings
    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    detail: ValidationError | None = None


# The ports each command listens on: two servers of one process (or of `aoc up`'s
# children) cannot share one, and no restart would cure it.
LISTENS: dict[str, tuple[str, ...]] = {
    "serve": ("http_port", "socketio_port"),
    "up": ("http_port", "socketio_port", "mqtt_port", "mqtt_ws_port"),
}
TLS_LISTENS = ("mqtt_tls_port", "mqtt_wss_port")


def clashes(settings: Settings, command: str) -> list[str]:
    """One line per port that two of ``command``'s listeners are given."""
    names = list(LISTENS.get(command, ()))
    if command == "up" and settings.tls_cert_file is not None:
        names += TLS_LISTENS
    by_port: dict[int, list[str]] = {}
    for name in names:
        by_port.setdefault(getattr(settings, name), []).append(variable(name))
    return [
        f"{' and '.join(shared)} are both {port}: each listener needs a port of its own"
        for port, shared in by_port.items()
        if len(shared) > 1
    ]


def load(command: str, **init: Any) -> Loaded:
    """Read the settings for ``command`` (``init``: values that win over the environment)."""
    try:
        settings = Settings(**init)
    except ValidationError as exc:
        detail = exc
    else:
        return Loaded(settings, errors=clashes(settings, command))
    invalid = detail.errors()
    names = {str(error["loc"][0]) for error in invalid if error["loc"]}
    loaded = Loaded(_defaults_for(names, init), detail=detail)
    for error in invalid:
        line = describe(error)
        lenient = command not in safety.SERVICES and error["loc"]
        # `aoc config` is how an operator looks for the mistake: it shows them all.
        if lenient and (error["loc"][0] in SERVICE_FIELDS or command == "config"):
            why = (
                "the default is shown in its place"
                if command == "config"
                else f"ignored: `aoc {command}` does not use it"
            )
            loaded.ignored.append(f"{line} ({why})")
        else:
            loaded.errors.append(line)
    return loaded


def _defaults_for(names: set[str], init: dict[str, Any]) -> Settings:
    """The settings with the defaults of ``names`` instead of their invalid values."""
    defaults = {
        name: Settings.model_fields[name].get_default(call_default_factory=True)
        for name in names
        if name in Settings.model_fields
    }
    try:
        return Settings(**{**init, **defaults})
    except ValidationError:  # an error about no one field: nothing read is trusted
        return Settings.model_construct()


class Unreachable(Exception):
    """A dependency that must answer at start does not: one line, exit 1.

    ``where`` names the settings it was looked for at (``setting``);
    ``reason`` is the driver's error, whose traceback is logged at DEBUG.
    """

    def __init__(self, where: str, reason: BaseException) -> None:
        self.where = where
        self.reason = reason
        why = str(reason).strip().splitlines()
        text = why[0] if why else type(reason).__name__
        state = "is misconfigured" if isinstance(reason, StoreMisconfigured) else "is unreachable"
        super().__init__(f"{where} {state}: {text}")


def setting(settings: Settings, name: str, value: object | None = None) -> str:
    """``AOC_NAME='value'`` for a message; ``value``: the one resolved from it, if not its own."""
    return f"{variable(name)}={shown(name, getattr(settings, name) if value is None else value)}"
