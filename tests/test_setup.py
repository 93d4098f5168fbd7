"""Fresh-machine set-up: which Debian packages `make setup` and `make run` ask apt for.

Each case builds a PATH of stub commands (present or not), then runs
``scripts/missing-packages`` itself, or the Makefile's apt rules with a
fake ``apt-get`` that records how it was called (and, to check the root
decision, a fake ``id`` and a fake ``sudo`` that records, then runs its command).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "missing-packages"
TEST_PAIRS = ["docker-compose:docker-compose", "node:nodejs", "npm:npm"]
# What the Makefile's recipes run besides the commands under test.
TOOLS = ("mkdir", "touch")
# The browser tests' commands, present unless a case is about them.
BROWSER = ("chromium", "chromedriver")


def _stub(directory: Path, name: str, body: str = "exit 0") -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _bin(tmp_path: Path, *present: str) -> Path:
    """A directory holding stubs of ``present`` (and the tools recipes need): a whole PATH."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in present:
        _stub(directory, name)
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real is not None
        (directory / tool).symlink_to(real)
    return directory


def _missing(path: Path, *pairs: str) -> list[str]:
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT), *pairs],
        env={"PATH": str(path)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def test_prints_only_the_package_of_a_missing_command(tmp_path: Path) -> None:
    """Test that node and npm from elsewhere (NodeSource) are not asked for: only docker-compose."""
    path = _bin(tmp_path, "node", "npm")
    assert _missing(path, *TEST_PAIRS) == ["docker-compose"]


def test_prints_each_missing_package_once_in_order(tmp_path: Path) -> None:
    """Test that each missing command names its own package (node's is nodejs)."""
    path = _bin(tmp_path, "npm")
    assert _missing(path, *TEST_PAIRS) == ["docker-compose", "nodejs"]


def test_prints_nothing_when_every_command_is_there(tmp_path: Path) -> None:
    """Test that a machine with every command gets no package to install."""
    path = _bin(tmp_path, "docker-compose", "node", "npm")
    assert _missing(path, *TEST_PAIRS) == []


def test_refuses_a_pair_without_a_package(tmp_path: Path) -> None:
    """Test that a malformed argument is an error, not a silently skipped check."""
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT), "node"], env={"PATH": str(_bin(tmp_path))},
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "COMMAND:PACKAGE" in result.stderr


def _make_apt(tmp_path: Path, path: Path, *, as_user: str | None = None) -> list[list[str]]:
    """Run the Makefile's apt rules in a copy of the project; the calls to ``apt-get``.

    ``as_user``: the uid a fake ``id`` prints, for the Makefile to decide on
    sudo itself; by default ``SUDO=`` is passed and ``id`` is not asked.
    """
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    shutil.copy(SCRIPT, project / "scripts" / SCRIPT.name)
    calls = tmp_path / "apt-calls"
    _stub(path, "apt-get", f'echo "$*" >> {calls}')
    make = shutil.which("make")
    assert make is not None, "make is part of the README's commands: set-up installs it"
    if as_user is None:
        overrides = ["SUDO="]
    else:
        _stub(path, "id", f'[ "$1" = -u ] && echo {as_user}')
        overrides = []
    subprocess.run(
        [make, "--no-print-directory", "-C", str(project), ".stamps/apt-test", *overrides],
        env={"PATH": str(path)},
        capture_output=True,
        check=True,
    )
    assert (project / ".stamps" / "apt-run").exists()
    assert (project / ".stamps" / "apt-test").exists()
    return _lines(calls)


def _lines(calls: Path) -> list[list[str]]:
    return [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


def _fake_sudo(tmp_path: Path, path: Path) -> Path:
    """A fake ``sudo`` on ``path`` that records its arguments, then runs them; the record."""
    calls = tmp_path / "sudo-calls"
    _stub(path, "sudo", f'echo "$*" >> {calls}\nexec "$@"')
    return calls


def test_make_as_root_calls_apt_without_sudo(tmp_path: Path) -> None:
    """Test that root (``id -u`` is 0) runs apt-get itself, even where sudo exists."""
    path = _bin(tmp_path, "mosquitto", "mosquitto_pub", "python3", "node", "npm", *BROWSER)
    sudo = _fake_sudo(tmp_path, path)
    calls = _make_apt(tmp_path, path, as_user="0")
    assert calls == [
        ["update", "-qq"], ["install", "-y", "-qq", "redis-server"],
        ["update", "-qq"], ["install", "-y", "-qq", "docker-compose"],
    ]
    assert _lines(sudo) == []


def test_make_as_a_user_calls_apt_through_sudo(tmp_path: Path) -> None:
    """Test that a normal user (``id -u`` is 1000) gets every apt-get call through sudo."""
    path = _bin(tmp_path, "mosquitto", "mosquitto_pub", "python3", "node", "npm", *BROWSER)
    sudo = _fake_sudo(tmp_path, path)
    calls = _make_apt(tmp_path, path, as_user="1000")
    expected = [
        ["update", "-qq"], ["install", "-y", "-qq", "redis-server"],
        ["update", "-qq"], ["install", "-y", "-qq", "docker-compose"],
    ]
    assert calls == expected
    assert _lines(sudo) == [["apt-get", *call] for call in expected]


def test_make_asks_apt_for_the_missing_package_alone(tmp_path: Path) -> None:
    """Test that `make setup` on a NodeSource machine installs docker-compose, not npm."""
    path = _bin(
        tmp_path, "mosquitto", "mosquitto_pub", "redis-server", "python3", "node", "npm", *BROWSER
    )
    calls = _make_apt(tmp_path, path)
    assert calls == [["update", "-qq"], ["install", "-y", "-qq", "docker-compose"]]


def test_make_setup_installs_the_mqtt_clients_the_examples_use(tmp_path: Path) -> None:
    """Test that `make setup` installs mosquitto_pub (docs/examples/device.sh runs it in tests)."""
    path = _bin(
        tmp_path, "mosquitto", "redis-server", "python3", "docker-compose", "node", "npm", *BROWSER
    )
    calls = _make_apt(tmp_path, path)
    assert calls == [["update", "-qq"], ["install", "-y", "-qq", "mosquitto-clients"]]


def test_make_setup_installs_chromium_and_its_driver(tmp_path: Path) -> None:
    """Test that `make setup` installs Debian's chromium and chromium-driver (browser tests)."""
    path = _bin(
        tmp_path, "mosquitto", "mosquitto_pub", "redis-server", "python3", "docker-compose",
        "node", "npm",
    )
    calls = _make_apt(tmp_path, path)
    assert calls == [["update", "-qq"], ["install", "-y", "-qq", "chromium", "chromium-driver"]]


def test_make_run_installs_npm_for_the_dashboard(tmp_path: Path) -> None:
    """Test that `make run`'s packages include Node.js and npm: the dashboard's libraries."""
    path = _bin(
        tmp_path, "mosquitto", "mosquitto_pub", "redis-server", "python3", "docker-compose",
        *BROWSER,
    )
    calls = _make_apt(tmp_path, path)
    assert calls == [["update", "-qq"], ["install", "-y", "-qq", "nodejs", "npm"]]


def test_make_asks_apt_for_what_make_run_needs(tmp_path: Path) -> None:
    """Test that a missing redis-server and venv module are installed, and nothing else."""
    path = _bin(
        tmp_path, "mosquitto", "mosquitto_pub", "docker-compose", "node", "npm", *BROWSER
    )
    _stub(path, "python3", "exit 1")  # `python3 -c "import ensurepip"` fails: no venv module
    calls = _make_apt(tmp_path, path)
    assert calls == [["update", "-qq"], ["install", "-y", "-qq", "redis-server", "python3-venv"]]


def test_make_does_not_call_apt_when_nothing_is_missing(tmp_path: Path) -> None:
    """Test that a machine with every command needs neither apt nor root."""
    path = _bin(
        tmp_path, "mosquitto", "mosquitto_pub", "redis-server", "python3", "docker-compose",
        "node", "npm", *BROWSER,
    )
    assert _make_apt(tmp_path, path) == []


def test_the_script_is_posix_shell() -> None:
    """Test that the script parses under dash (Debian's /bin/sh), not only bash."""
    dash = shutil.which("dash")
    assert dash is not None, "dash is Debian's /bin/sh: every Debian machine has it"
    subprocess.run([dash, "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_building_the_package_warns_of_nothing(tmp_path: Path) -> None:
    """Test `pip install -e .`'s build: no setuptools warning (the licence was a deprecated table).

    The build runs as pip runs it, with the newest setuptools in an isolated
    environment, on a copy of the metadata (pyproject.toml, README.md) and empty
    packages, so the source tree gets no build directories.
    """
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("aoc", "api", "bridge", "broker", "storage", "sim"):
        (source / package).mkdir()
        (source / package / "__init__.py").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "--disable-pip-version-check",
         str(source), "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""},
    )
    output = result.stdout + result.stderr
    # `make test` installs from the package index too: this needs no more than it.
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if "Warning" in line or "deprecated" in line]
    assert warnings == []
