"""The dashboard's own cost with a large fleet, in headless Chromium.

The page is loaded from a running ``aoc serve``; then, in the page, ``ambulances``
ambulances are each updated once a second (queued as the transport hands updates
on, spread over ten slices a second), for ``seconds``. Generated in the page, the
updates measure the page alone (applying, drawing the map and the list), not the
pipeline. Printed per run, and the medians: the interval between frames (median and
95th percentile; 16.7 ms is 60 frames a second) and the long tasks (over 50 ms) per
second. Headless Chromium draws without a GPU, on a machine shared with others:
compare runs of the same session only.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.stack import Stack
from tests.browser import headless_chromium

WARM_UP_FRAMES = 30  # the first frames lay out the page: not counted

# arguments[0]: ambulances. Starts the load and the frame recorder.
START = """
const N = arguments[0];
const fleet = window.aocDashboard.fleet;
const perf = window.benchPerf = { frames: [], last: performance.now(), longTasks: 0, stop: false };
new PerformanceObserver((list) => { perf.longTasks += list.getEntries().length; })
  .observe({ entryTypes: ["longtask"] });
const tick = (t) => {
  perf.frames.push(t - perf.last);
  perf.last = t;
  if (!perf.stop) requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
let i = 0;
perf.timer = setInterval(() => {
  for (let k = 0; k < N / 10; k++, i++) {
    const n = i % N;
    fleet.queue({
      id: "LOAD" + String(n).padStart(6, "0"),
      lat: 13.5 + (n / N) * 0.6 + (i / N) * 0.0005,
      lon: 100.3 + (((n * 7919) % N) / N) * 0.6,
      speed: (i * 13) % 140, heading: (i * 37) % 360, seen: Date.now(), online: true,
    });
  }
}, 100);
"""
STOP = """
const perf = window.benchPerf;
clearInterval(perf.timer);
perf.stop = true;
return { frames: perf.frames.slice(arguments[0]), longTasks: perf.longTasks,
         fleet: window.aocDashboard.fleet.byId.size,
         rows: document.querySelectorAll("#list .row").length };
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[round(fraction * (len(ordered) - 1))]


def dashboard(running: Stack, *, ambulances: int, seconds: float, runs: int) -> None:
    """Run the page under ``ambulances`` updates a second, ``runs`` times; print the figures."""
    url = f"{running.http_url}/dashboard?token={running.app.token}"
    medians, p95s, long_rates = [], [], []
    driver = headless_chromium()
    try:
        for run in range(1, runs + 1):
            driver.get(url)
            deadline = time.monotonic() + 60
            while not driver.execute_script("return document.getElementById('live').textContent"
                                            " === 'LIVE'"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the dashboard did not go live within 60 s")
                time.sleep(0.2)
            driver.execute_script(START, ambulances)
            time.sleep(seconds)
            got: dict[str, Any] = driver.execute_script(STOP, WARM_UP_FRAMES)
            frames = [float(f) for f in got["frames"]]
            if not frames:
                print(f"run {run}: no frame drawn in {seconds:.0f} s", flush=True)
                continue
            medians.append(statistics.median(frames))
            p95s.append(_percentile(frames, 0.95))
            long_rates.append(got["longTasks"] / seconds)
            print(
                f"run {run}: {got['fleet']} ambulances, {len(frames)} frames, "
                f"frame interval median {medians[-1]:.1f} ms, p95 {p95s[-1]:.1f} ms, "
                f"max {max(frames):.1f} ms, long tasks {long_rates[-1]:.1f}/s, "
                f"{got['rows']} list rows in the page",
                flush=True,
            )
    finally:
        driver.quit()
    if medians:
        print(
            f"median of {len(medians)} runs, {ambulances} updates/s: frame interval "
            f"{statistics.median(medians):.1f} ms, p95 {statistics.median(p95s):.1f} ms, "
            f"long tasks {statistics.median(long_rates):.1f}/s",
            flush=True,
        )
