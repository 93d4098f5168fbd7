"""What ``aoc --help`` says of settings: each variable, its default and what it means.

Everything here is read from ``aoc.config.Settings``, so the help cannot drift
from the settings: a field's variable is the env prefix and its name in
capitals, its default the field's, and its meaning the field's ``description``
or, where it has none, the comment written just above it in ``aoc/config.py``
(the first sentence: the rest is for whoever reads the source).
"""

from __future__ import annotations

import argparse
import inspect
import re
import shutil
import textwrap
import typing
from enum import Enum
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from aoc import config, settings_use
from aoc.config import ENV_PREFIX as PREFIX
from aoc.config import Settings
from aoc.startup import variable

DISTRIBUTION = "aoc-tracking"  # the name in pyproject.toml
ENV_FILE = Path(str(Settings.model_config.get("env_file") or ".env"))
_FIELD = re.compile(r"(\w+)\s*:")


def version() -> str:
    """The installed package's version ("unknown" when run from a source tree)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def show(value: Any) -> str:
    """A setting's value as one would write it in ``.env`` (secrets never shown)."""
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        value = value.value
    text = str(value)
    return text if text else "(empty)"


def default(field: str) -> str:
    """The default of ``field``, shown as ``show`` shows values."""
    return show(Settings.model_fields[field].get_default(call_default_factory=True))


def choices(field: str) -> list[str]:
    """The values a ``Literal`` field allows; empty for any other type."""
    annotation = Settings.model_fields[field].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return [str(choice) for choice in typing.get_args(annotation)]
    return []


@cache
def _comments() -> dict[str, str]:
    """Each field's comment block in ``aoc/config.py``: the lines just above it."""
    found: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(config.Settings).splitlines():
        text = line.strip()
        if text.startswith("#"):
            words = text.lstrip("#").strip()
            if not words.startswith("---"):  # a section rule, not a description
                block.append(words)
            continue
        match = _FIELD.match(text)
        if match and match.group(1) in Settings.model_fields:
            found[match.group(1)] = " ".join(block)
        block = []
    return found


def describe(field: str) -> str:
    """What ``field`` means, in a sentence (empty when the source says nothing)."""
    text = Settings.model_fields[field].description or _comments().get(field, "")
    text = text.replace("``", "`")  # reStructuredText's literals, written as the help writes them
    # The first sentence: up to a full stop that ends a word and is followed by a space.
    first = re.split(r"(?<=[a-z0-9)`\"])\.\s", text, maxsplit=1)[0]
    return first.rstrip(".")


def variables_text(fields: list[str], width: int | None = None) -> str:
    """One entry per field: ``AOC_NAME=default``, then its meaning, indented."""
    width = width or _width()
    lines: list[str] = []
    for field in fields:
        allowed = choices(field)
        head = f"  {variable(field)}={default(field)}"
        if allowed:
            head += f"  ({' | '.join(allowed)})"
        lines.append(head)
        meaning = describe(field)
        if meaning:
            lines.extend(
                textwrap.wrap(
                    meaning, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6
                )
            )
    return "\n".join(lines)


def epilog(command: str) -> str:
    """The part of ``aoc <command> --help`` that names the settings it reads."""
    width = _width()
    source = _sources(width)
    if command == "config":
        return f"{source}\nIt reads every {PREFIX}* variable the other commands' --help name."
    fields = settings_use.fields(command)
    if not fields:
        return source
    return f"{source}\n\nenvironment ({PREFIX}*=default):\n{variables_text(fields, width)}"


def _sources(width: int) -> str:
    return textwrap.fill(
        f"Settings come from {PREFIX}* environment variables, then from the file "
        f"{ENV_FILE} in the working directory (the environment wins); `aoc config` "
        "shows the values in effect and where each came from.",
        width=width,
    )


def _width() -> int:
    return min(shutil.get_terminal_size().columns, 100) - 2


def document(
    parser: argparse.ArgumentParser, commands: argparse._SubParsersAction[argparse.ArgumentParser]
) -> None:
    """Give each command's parser (and its subcommands') a description and the settings it reads.

    Called once every command is registered, so that no module has to repeat it.
    """
    parser.epilog = f"{_sources(_width())}\nEach command's --help lists the variables it reads."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for name, command in commands.choices.items():
        _document(command, epilog(name))
    _describe(commands)


def _document(parser: argparse.ArgumentParser, text: str) -> None:
    """Put ``text`` under the help of ``parser`` and of every parser below it."""
    # Raw: the list of variables is laid out already; argparse would refill it.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            _describe(action)
            for sub in action.choices.values():
                _document(sub, text)


def _describe(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """A command's one-line help (in its parent's list) as its own description, if it has none."""
    helps = {action.dest: action.help for action in commands._choices_actions}
    for name, parser in commands.choices.items():
        if parser.description is None:
            parser.description = helps.get(name)
