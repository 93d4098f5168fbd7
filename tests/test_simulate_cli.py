"""`aoc simulate` as an operator runs it: arguments, progress, the summary, exit codes.

Each test runs the real command in a subprocess against a real Mosquitto, or a
port where nothing listens. Without a credentials file the devices connect
anonymously, as to the test broker.
"""

from __future__ import annotations

import asyncio
import os
import pty
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aoc import cli
from sim import fleet
from tests import services

ROOT = Path(__file__).resolve().parent.parent
# A progress line, and the summary, which says "done:" (a last progress line may read the same).
COUNTS = r" *[\d.]+s  tracking \d+  snap \d+  crash \d+  status \d+ "
PROGRESS = re.compile(r"\[simulate\] (done: )?" + COUNTS)
SUMMARY = re.compile(r"\[simulate\] done:" + COUNTS)


def _env(port: int, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOC_")}
    return {
        **env, "PYTHONPATH": str(ROOT), "AOC_MQTT_PORT": str(port),
        "AOC_DATA_DIR": str(tmp_path / "data"), "AOC_LOG_LEVEL": "INFO",
    }


def _simulate(port: int, tmp_path: Path, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `aoc simulate <args>` to its end: its exit code and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "aoc.cli", "simulate", *args], env=_env(port, tmp_path),
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout, check=False,
    )
    return result.returncode, result.stderr


async def _until_tracking(stderr: asyncio.StreamReader) -> list[str]:
    """Lines of a running `aoc simulate`'s stderr up to a progress line that counts tracking."""
    lines: list[str] = []
    async with asyncio.timeout(30):
        while not any(re.search(r"tracking [1-9]", line) for line in lines):
            line = (await stderr.readline()).decode()
            assert line, f"aoc simulate ended first: {''.join(lines)}"
            lines.append(line)
    return lines


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--ambulances", "0"], "--ambulances"),
        (["--ambulances", "two"], "--ambulances"),
        (["--rate", "-1"], "--rate"),
        (["--rate", "0"], "--rate"),
        (["--rate", "nan"], "--rate"),
        (["--duration", "-5"], "--duration"),
        (["--crash-probability", "1.5"], "--crash-probability"),
        (["--give-up-after", "0"], "--give-up-after"),
        (["--prefix", "bad/prefix"], "bad/prefix"),
        (["--prefix", "A" * 62, "--ambulances", "5"], "id prefix"),  # "A" * 62 + "005": 65
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], named: str, tmp_path: Path) -> None:
    """Test that impossible arguments end with argparse's usage and exit code 2, no traceback."""
    # Port 1: were anything to connect, it would fail; nothing must get that far.
    code, err = _simulate(1, tmp_path, *args, "--duration", "0.1")
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("usage: aoc simulate")
    last = err.strip().splitlines()[-1]
    assert last.startswith("aoc simulate: error: ") and named in last


def test_unreachable_broker_gives_up_with_one_line(tmp_path: Path) -> None:
    """Test a port where nothing listens: one warning for the cause, then exit 1 and one line.

    Twenty ambulances retry for two seconds: before, every connection logged every
    retry, and the run never ended.
    """
    port = services.free_port()
    code, err = _simulate(port, tmp_path, "--ambulances", "20", "--give-up-after", "2")
    lines = err.strip().splitlines()
    assert code == 1, err
    assert "Traceback" not in err
    assert len(lines) <= 3, err  # "simulating ...", the warning, the last line
    assert sum("WARNING" in line for line in lines) == 1, err
    assert "Connection refused" in lines[-2]
    assert lines[-1].startswith(f"aoc simulate: cannot reach the broker at 127.0.0.1:{port}: ")
    assert lines[-1].endswith("giving up")


def test_a_run_with_errors_exits_non_zero(tmp_path: Path) -> None:
    """Test a run that ends (its duration) while the broker is unreachable: the summary, exit 1."""
    code, err = _simulate(services.free_port(), tmp_path, "--ambulances", "2", "--duration", "1")
    assert code == 1, err
    summaries = [line for line in err.splitlines() if SUMMARY.search(line)]
    assert len(summaries) == 1, err
    errors = int(summaries[0].rsplit("errors", 1)[1])
    assert errors >= 2  # each connection failed at least once


def test_summary_printed_once_and_exit_zero(mosquitto: services.Service, tmp_path: Path) -> None:
    """Test a clean run: one summary line (it was printed twice), errors 0, exit code 0."""
    code, err = _simulate(
        mosquitto.port, tmp_path, "--ambulances", "2", "--rate", "5", "--duration", "1",
        "--snap-every", "0", "--prefix", "CLI1",
    )
    assert code == 0, err
    summaries = [line for line in err.splitlines() if SUMMARY.search(line)]
    assert len(summaries) == 1, err
    assert summaries[0].startswith("[simulate]") and summaries[0].endswith("errors 0")
    assert "simulation stopped" not in err


def test_progress_lines_when_stderr_is_a_pipe(mosquitto: services.Service, tmp_path: Path) -> None:
    """Test progress while it runs when stderr is not a terminal: a line every --progress-every.

    Before, progress showed only on a terminal, so a run under a supervisor, a
    CI job or any tool that captures stderr showed nothing until the end.
    """
    code, err = _simulate(
        mosquitto.port, tmp_path, "--ambulances", "1", "--rate", "5", "--duration", "1.6",
        "--snap-every", "0", "--progress-every", "0.5", "--prefix", "CLI2",
    )
    assert code == 0, err
    progress = [line for line in err.splitlines() if PROGRESS.search(line)]
    # At 0.5, 1.0 and 1.5 s, then the summary; each its own line, growing.
    assert len(progress) >= 4, err
    assert SUMMARY.search(progress[-1]) and not any(map(SUMMARY.search, progress[:-1]))
    tracked = [int(re.findall(r"tracking (\d+)", line)[0]) for line in progress]
    assert tracked == sorted(tracked) and tracked[-1] > tracked[0]
    assert "\r" not in err


def test_live_progress_line_on_a_terminal(mosquitto: services.Service, tmp_path: Path) -> None:
    """Test stderr on a terminal: one line rewritten in place, erased, then the summary once."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aoc.cli", "simulate", "--ambulances", "1", "--rate", "5",
         "--duration", "1.6", "--snap-every", "0", "--prefix", "CLI3"],
        env=_env(mosquitto.port, tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=child,
    )
    os.close(child)
    chunks: list[bytes] = []
    while True:  # until the child closes the terminal (EIO on Linux)
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=30) == 0
    out = b"".join(chunks).decode()
    # Each line is drawn over an erased one: at 0.5, 1.0 and 1.5 s, then the summary.
    assert out.count("[simulate]") == out.count("\r\x1b[K[simulate]") >= 3, out
    # After the last erase: the summary alone, once, on a line of its own.
    tail = out.rsplit("\r\x1b[K", 1)[1]
    assert SUMMARY.match(tail) and tail.endswith("errors 0\r\n"), out
    assert tail.count("\n") == 1 and "simulation stopped" not in out


async def test_broker_gone_mid_run_gives_up_as_unreachable(tmp_path: Path) -> None:
    """Test a broker stopped during a run: it gives up as unreachable, with the summary, exit 1.

    Before, a publish on the closed connection failed with paho's code 4 (not
    connected), which was taken for a CONNACK refusing the account: the run
    ended blaming a wrong password.
    """
    broker = services.mosquitto(tmp_path / "broker").start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aoc.cli", "simulate", "--ambulances", "2", "--rate", "5",
            "--snap-every", "0", "--give-up-after", "2", "--progress-every", "0.3",
            "--prefix", "CLI4", env=_env(broker.port, tmp_path), cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        lines = await _until_tracking(proc.stderr)
        broker.stop()
        async with asyncio.timeout(60):
            _, rest = await proc.communicate()
    finally:
        broker.stop()
    err = "".join(lines) + rest.decode()
    assert proc.returncode == 1, err
    assert "refused the account" not in err
    assert "Traceback" not in err
    final = err.strip().splitlines()
    assert final[-1].startswith(f"aoc simulate: cannot reach the broker at 127.0.0.1:{broker.port}")
    assert SUMMARY.search(final[-2]), err  # what it sent before the broker went away


def test_give_up_default_is_bounded() -> None:
    """Test that the command's default gives up (the library's default retries for ever)."""
    args = cli._parser().parse_args(["simulate"])
    assert 0 < args.give_up_after <= 60


async def test_ctrl_c_prints_the_summary_once_and_exits_130(
    mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test Ctrl-C (SIGINT) in a run without --duration: offline said, then one summary, 130."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aoc.cli", "simulate", "--ambulances", "2", "--rate", "5",
        "--snap-every", "0", "--progress-every", "0.3", "--prefix", "CLI5",
        env=_env(mosquitto.port, tmp_path), cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines = await _until_tracking(proc.stderr)
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        _, rest = await proc.communicate()
    assert proc.returncode == 130
    err = "".join(lines) + rest.decode()
    last = err.strip().splitlines()[-1]
    # The summary comes after the sign-off: two online and two offline statuses.
    assert SUMMARY.match(last) and "status 4 " in last, err
    assert "simulation stopped" not in err and "Traceback" not in err


async def test_give_up_comes_once_the_limit_has_passed_not_a_backoff_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that a connection refused for ``give_up_after`` seconds gives up then, as it says.

    The jitter is pinned to its longest (delays 0.5, 1, 2, 4 s): the retry
    after 3.5 s then came at 7.5 s, and a limit of 4 s was reported as "failing
    for 8 s" ("--give-up-after 5" gave up after 10 s). Only the program's own
    count of seconds is checked.
    """
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the fleet's jitter
    limit = 4
    with pytest.raises(fleet.BrokerUnreachable) as raised:
        await fleet.simulate(
            ambulances=1, rate=1.0, duration=60, host="127.0.0.1", port=services.free_port(),
            progress=False, give_up_after=limit,
        )
    failing = re.search(r"failing for (\d+) s\)", str(raised.value))
    assert failing is not None, raised.value
    assert limit <= int(failing.group(1)) <= limit + 1, raised.value
