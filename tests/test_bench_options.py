"""``aoc bench``'s options and exit status, without starting any server.

Bad counts are refused by argparse before the stack starts; a stage that
could not determine its loss fails the run. Fast: no stage runs here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.suite import StageResult, verdict

ROOT = Path(__file__).resolve().parent.parent


def aoc_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aoc.cli", "bench", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--runs", "0"], "argument --runs: must be at least 1, got 0"),
        (["--messages", "-5"], "argument --messages: must be at least 1, got -5"),
        (["--live-clients", "two"], "argument --live-clients: not a whole number: 'two'"),
        (["--watchers", "-1"], "argument --watchers: must be 0 or more, got -1"),
        (["--duration", "0"], "argument --duration: must be above 0, got 0"),
        (["--drain-timeout", "nan"], "argument --drain-timeout: must be above 0, got nan"),
    ],
)
def test_bad_counts_are_one_argparse_error_before_anything_starts(
    arguments: list[str], message: str
) -> None:
    """Test that a count below its minimum exits 2 with one clear line, and no stage starts."""
    done = aoc_bench(*arguments)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"aoc bench: error: {message}"
    assert "Traceback" not in done.stderr and "stage " not in done.stderr
    assert done.stdout == ""


def test_help_shows_the_defaults() -> None:
    """Test that --help names each option's default."""
    done = aoc_bench("--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for shown in ("(default: 3)", "(default: 20000)", "(default: 1800.0)", "(default: table)"):
        assert shown in text, shown
    assert "--runs RUNS ceiling/pipeline run pairs (medians shown) (default: 3)" in text


def test_a_stage_that_could_not_count_its_loss_fails_the_run() -> None:
    """Test the exit status: 0 only when every stage counted 0 lost; else 1 and a line why."""
    assert verdict([StageResult("throughput", lost=0), StageResult("live", lost=0)]) == (0, [])
    still = StageResult("latency", lost=None, undetermined="12 acknowledged points still stored")
    assert verdict([StageResult("throughput", lost=0), still]) == (
        1,
        ["stage latency: loss NOT DETERMINED (12 acknowledged points still stored)"],
    )
    silent = StageResult("shim")  # a stage that ended without counting
    assert verdict([silent]) == (
        1,
        ["stage shim: loss NOT DETERMINED (the stage did not count it)"],
    )
    assert verdict([StageResult("fanout", lost=3)]) == (
        1,
        ["stage fanout: LOST 3 (acknowledged, not stored)"],
    )
