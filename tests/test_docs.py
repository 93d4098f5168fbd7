"""The documentation names only what exists: linked files, repository paths, `aoc` commands."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest

from aoc.cli import _parser
from aoc.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Documents that lived outside the repository once; a reference to one must
# name a file of the repository (docs/legacy.md, say), not the outside one.
OUTSIDE_DOCUMENTS = ("STYLE.md", "LEGACY.md")

# [text](target) and ![alt](target), and reference definitions "[name]: target".
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
# A path in backticks that looks like one of the repository's files.
_CODE_PATH = re.compile(r"`([\w.-]+(?:/[\w.-]+)*\.(?:py|md|conf|toml|ya?ml|json|sh|js))`")
# The default AOC_DATA_DIR, relative to the working directory.
DATA_DIR = Settings.model_fields["data_dir"].default.as_posix()
# `aoc <subcommand>` in prose, commands and comments.
_AOC_COMMAND = re.compile(r"`aoc ([a-z][a-z-]*)")


def _repository_files() -> list[str]:
    """Tracked and new (not ignored) files, so an unsaved rename is caught before a commit."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def _links(text: str) -> list[str]:
    return _LINK.findall(text) + _REFERENCE.findall(text)


def _is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) and not target.startswith(
        ("#", "//")
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(doc: Path) -> None:
    """Test that every relative link of the README and docs/ opens an existing file."""
    missing = []
    for target in _links(doc.read_text()):
        if not _is_relative(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_repository_paths_named_in_docs_exist(doc: Path) -> None:
    """Test that a file named in backticks (`bridge/contract.py`) is in the repository."""
    names = set(_repository_files())
    basenames = {Path(name).name for name in names}
    missing = []
    for path in _CODE_PATH.findall(doc.read_text()):
        # A path is from the repository root or the document's folder; a bare
        # file name (`mosquitto.conf`) may be any of the repository's files.
        beside = (doc.parent / path).resolve()
        found = path in names or beside.is_file() or ("/" not in path and path in basenames)
        # What the system writes under the default AOC_DATA_DIR at run time (git ignores it).
        found = found or path.startswith(f"{DATA_DIR}/")
        if not found:
            missing.append(path)
    assert missing == []


def test_no_file_refers_to_documents_outside_the_repository() -> None:
    """Test that STYLE.md or LEGACY.md is named only when the repository has such a file."""
    files = _repository_files()
    present = {Path(name).name for name in files}
    this = Path(__file__).resolve().relative_to(ROOT).as_posix()
    hits = []
    for name in files:
        if name == this:
            continue
        try:
            text = (ROOT / name).read_text()
        except UnicodeDecodeError:
            continue  # binary
        for document in OUTSIDE_DOCUMENTS:
            if document not in present and document in text:
                hits.append(f"{name}: {document}")
    assert hits == []


def test_aoc_commands_named_in_docs_and_config_exist() -> None:
    """Test that every `aoc <command>` the docs or mosquitto.conf name is a real subcommand."""
    sources = [*DOCS, ROOT / "mosquitto.conf", ROOT / "Makefile"]
    named = {
        (source.relative_to(ROOT).as_posix(), command)
        for source in sources
        for command in _AOC_COMMAND.findall(source.read_text())
    }
    assert named, "the docs name no aoc command: the pattern is broken"
    unknown = []
    for source, command in sorted(named):
        # --help: a command with actions of its own (`aoc token add`) parses alone only so;
        # it exits 0 for a real command, 2 for an unknown one.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                _parser().parse_args([command, "--help"])
        except SystemExit as exc:
            if exc.code != 0:
                unknown.append(f"{source}: aoc {command}")
    assert unknown == []
