"""The benchmark harness runs end to end with tiny numbers and prints its figures.

Only that it runs and reports: no figure is compared with a threshold here
(timings on a shared machine make poor assertions).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env=None if env is None else os.environ | env,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_throughput_prints_each_run_and_the_median() -> None:
    """Test that every message of every run is stored and the median rate is printed."""
    out = _bench("throughput", "--devices", "2", "--messages", "200", "--runs", "2")
    runs = re.findall(r"run (\d): (\d+)/(\d+) stored", out)
    assert runs == [("1", "200", "200"), ("2", "200", "200")], out
    assert re.search(r"median of 2 runs: \d+ msg/s", out), out
    assert "bridge batches:" in out, out  # the bridge's /metrics batch histogram is read


def test_throughput_with_two_bridges_stores_every_message_once() -> None:
    """Test --bridges 2: both `aoc bridge` processes consume, and every message is stored once."""
    out = _bench(
        "throughput", "--process", "bridge", "--bridges", "2", "--devices", "2",
        "--messages", "200", "--runs", "1",
    )
    assert re.findall(r"run (\d): (\d+)/(\d+) stored", out) == [("1", "200", "200")], out
    assert "the store holds" not in out, out  # as many rows as messages: none twice, none lost
    assert re.search(r"aoc-bridge-1 +\d+%", out), out  # the second bridge is measured too


def test_latency_prints_percentiles_for_socketio_and_state() -> None:
    """Test that points reach the Socket.IO room and the state topic, with percentiles."""
    out = _bench("latency", "--devices", "2", "--rate", "20", "--duration", "2")
    socketio = re.search(r"Socket\.IO data \(room tracking\): n=(\d+)\s+p50\s+[\d.]+ ms", out)
    state = re.search(r"aoc/<id>/state:\s+n=(\d+)\s+p50\s+[\d.]+ ms", out)
    assert socketio is not None and int(socketio.group(1)) == 40, out
    assert state is not None and int(state.group(1)) > 0, out
    assert "p99" in out and "max" in out, out


# Small snapshots: the harness is under test here, not the machine.
SMALL_SNAPS = {"AOC_MAX_IMAGE_BYTES": "50000", "AOC_MAX_UPLOAD_FILES": "2"}


def test_latency_under_snapshot_load_prints_idle_and_loaded_medians() -> None:
    """Test that snapshots from publisher processes flow and both phases get medians."""
    out = _bench(
        "latency", "--devices", "2", "--rate", "20", "--duration", "2", "--runs", "2",
        "--snap-publishers", "1", "--snap-interval", "0.2",
        env=SMALL_SNAPS,
    )  # fmt: skip
    assert "under load: 1 processes sending snapshots of 2 x 50000 bytes" in out, out
    assert re.search(r"all \d+ snapshots stored", out), out
    assert re.search(r"^idle\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+0$", out, re.MULTILINE), out
    assert re.search(r"^snapshots\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+0$", out, re.MULTILINE), out


@pytest.mark.parametrize(
    ("scenario", "extra", "stored"),
    [
        ("tracking", ["--count", "3", "--size", "100000"], "all 3 dead_letters stored"),
        ("snapshots", ["--count", "2"], "all 2 ambulance_image_histories stored"),
    ],
)
def test_flood_prints_peak_memory(scenario: str, extra: list[str], stored: str) -> None:
    """Test that a flood is dealt with and the peak RSS of broker and bridge printed."""
    out = _bench("flood", scenario, *extra, env=SMALL_SNAPS)
    assert stored in out, out
    for process in ("mosquitto", "aoc-serve"):
        assert re.search(rf"^{process}\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE), out


def test_soak_samples_memory_of_every_process_and_prints_a_verdict() -> None:
    """Test that a short soak prints an RSS row per process and the growth ratios."""
    # A huge tolerance: ten seconds is all warm-up, and this test is about the harness.
    out = _bench(
        "soak",
        "--ambulances", "3",
        "--duration", "10",
        "--interval", "1",
        "--tolerance", "10000",
    )  # fmt: skip
    for process in ("mosquitto", "redis", "aoc-serve", "simulator"):
        assert re.search(rf"^{process}\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.MULTILINE), out
    assert re.search(r"verdict: memory FLAT after warm-up .*aoc-serve x\d\.\d{3}", out), out
    assert re.search(r"stored [1-9]\d* tracking points", out), out


def test_throughput_over_many_ids_prints_new_and_known() -> None:
    """Test that points spread over many reused ids are all stored, first new then known."""
    out = _bench(
        "throughput", "--devices", "2", "--messages", "100", "--ambulances", "50",
        "--same-ids", "--runs", "2",
    )  # fmt: skip
    runs = re.findall(r"run (\d): (\d+)/(\d+) stored", out)
    assert runs == [("1", "100", "100"), ("2", "100", "100")], out
    assert "the store holds" not in out, out  # each run's own rows, not the earlier runs' too
    assert re.search(r"first run \(new ids\): \d+ msg/s; median .* \(known ids\): \d+", out), out


def test_plan_prints_new_and_known_ids() -> None:
    """Test that the processor-only benchmark prints both rates per run and their medians."""
    out = _bench("plan", "--ambulances", "100", "--messages", "200", "--runs", "2")
    assert len(re.findall(r"run \d: new ids +\d+ msg/s, known ids +\d+ msg/s", out)) == 2, out
    assert re.search(r"median of 2 runs .* new ids take x[\d.]+ the time", out), out


def test_share_prints_both_runs_and_their_verdict() -> None:
    """Test that two processors sharing a stream are compared with one, conflicts counted."""
    out = _bench("share", "--points", "300", "--seed", "7")
    runs = re.findall(r"(one|two) processors?: distance ([\d.]+) m, points counted (\d+)", out)
    assert [name for name, _, _ in runs] == ["one", "two"], out
    assert runs[0][1:] == runs[1][1:], out
    conflicts = re.search(r"300 messages in \d+ batches \(seed 7\); (\d+) conflicts", out)
    assert conflicts is not None and int(conflicts[1]) > 0, out
    assert "every document identical: yes" in out, out


def test_junk_reports_growth_log_lines_and_good_points() -> None:
    """Test that a small flood is all taken and every good point in between is stored."""
    out = _bench("junk", "--messages", "300", "--publishers", "2", "--good", "20")
    assert re.search(r"dead-lettered \(counted\): 300$", out, re.MULTILINE), out
    assert re.search(r"SQLite growth \(db \+ wal\): [\d.]+ MB", out), out
    assert re.search(r"WARNING lines logged: \d+", out), out
    assert "good points stored: 20/20" in out, out
    assert re.search(r'aoc_dead_letters_dropped_total\{reason="rate"\} \d+', out), out


def test_dashboard_prints_frame_intervals() -> None:
    """Test that the dashboard benchmark loads the page in Chromium and prints its frames."""
    out = _bench("dashboard", "--ambulances", "200", "--seconds", "2", "--runs", "1")
    assert re.search(r"run 1: 2\d\d ambulances, \d+ frames", out), out
    assert "median of 1 runs, 200 updates/s" in out


@pytest.mark.parametrize("process", ["serve", "split"])
def test_coalesce_runs_the_pipeline_and_misses_nothing(process: str, tmp_path: Path) -> None:
    """Test `bench coalesce` through the bridge: every point reaches every client, JSON written."""
    figures = tmp_path / "coalesce.json"
    out = _bench(
        "coalesce", "--process", process, "--ambulances", "20", "--clients", "3",
        "--client-processes", "2", "--publishers", "2", "--duration", "3", "--warmup", "1",
        "--json", str(figures),
    )
    live = json.loads(figures.read_text())["live"]
    assert live["published"] == 60 and live["clients"] == 3
    assert (live["missing_points"], live["final_state_wrong"]) == (0, 0), out
    assert "device ts -> receipt" in out and f"aoc {process}" in out


def test_coalesce_with_node_clients_and_the_legacy_comparison(tmp_path: Path) -> None:
    """Test the Node clients of the live stream and the legacy emit comparison's report."""
    figures = tmp_path / "coalesce.json"
    out = _bench(
        "coalesce", "--process", "feed", "--node", "--ambulances", "20", "--clients", "2",
        "--client-processes", "1", "--duration", "2", "--warmup", "0", "--legacy",
        "--legacy-events", "20", "--legacy-runs", "1", "--json", str(figures),
    )
    result = json.loads(figures.read_text())
    assert result["live"]["missing_points"] == 0 and result["live"]["clients"] == 2
    assert result["legacy"]["lost"] == {"aoc": 0, "stock": 0}
    assert "stock python-socketio" in out
