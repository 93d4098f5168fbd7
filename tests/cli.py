"""Running a real ``aoc`` management command in a subprocess, as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_aoc(command: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``aoc <command> <args>`` with the store in ``data_dir``, as operator ``ops-lead``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AOC_")},
        "AOC_DATA_DIR": str(data_dir),
        "AOC_OPERATOR": "ops-lead",
    }
    return subprocess.run(
        [sys.executable, "-m", "aoc.cli", command, *args],
        cwd=data_dir.parent,  # no .env there
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful ``--json`` run printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
