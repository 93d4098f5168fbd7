"""The dashboard at /dashboard in a real browser: headless Chromium against the running stack.

One browser and one `aoc serve` (with Mosquitto and Redis) for the module; each test uses
ambulances of its own. The page reaches Socket.IO through a proxy the tests can cut
(``tests.tcpproxy``), so a lost connection is a real one. Each step saves a screenshot
in the test's own folder (``tmp_path``). Waits poll a condition with a generous timeout;
nothing is timed.

Chromium and its driver are Debian's (`chromium`, `chromium-driver`; `make setup`
installs them), driven by Selenium.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests import services
from tests.browser import headless_chromium
from tests.tcpproxy import CuttableProxy

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WAIT = 30.0  # seconds a condition may take on a loaded two-core machine
BANGKOK = (13.7563, 100.5018)


@dataclass
class Dashboard:
    """The stack, the proxy in front of its Socket.IO port, and the browser showing the page."""

    service: services.AocService
    proxy: CuttableProxy
    driver: WebDriver
    mqtt_port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    @property
    def url(self) -> str:
        return f"{self.http}/dashboard?token={self.service.token}"

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        """The first truthy value of ``condition`` within ``WAIT`` seconds."""
        return WebDriverWait(self.driver, WAIT, poll_frequency=0.1).until(
            lambda _: condition(), message=f"waited {WAIT}s for {what}"
        )

    def shot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def publish(
        self, ambulance_id: str, kind: str, body: dict[str, Any] | bytes, *, retain: bool = False
    ) -> None:
        """One QoS 1 message as a device sends it, returning once the broker has it."""
        payload = body if isinstance(body, bytes) else json.dumps(body)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", self.mqtt_port)
        client.loop_start()
        try:
            info = client.publish(f"aoc/{ambulance_id}/{kind}", payload, qos=1, retain=retain)
            info.wait_for_publish(WAIT)
        finally:
            client.loop_stop()
            client.disconnect()

    def live(self) -> bool:
        return bool(self.js("return document.getElementById('live').textContent === 'LIVE'"))

    def ambulance(self, ambulance_id: str) -> dict[str, Any] | None:
        """The page's model of one ambulance (what its marker and row show)."""
        return self.js(  # type: ignore[no-any-return]
            """const a = window.aocDashboard.fleet.byId.get(arguments[0]);
               const m = window.aocDashboard.fleetMap.markers.get(arguments[0]);
               if (!a || !m) return null;
               const p = m.getLatLng();
               return {lat: p.lat, lon: p.lng, speed: a.speed,
                       shown: window.aocDashboard.fleet.shownState(a)};""",
            ambulance_id,
        )

    def row(self, ambulance_id: str) -> str | None:
        """The text of the ambulance's row in the list, if drawn."""
        return self.js(  # type: ignore[no-any-return]
            """const row = [...document.querySelectorAll('#list .row')]
                   .find((r) => r.dataset.id === arguments[0]);
               return row ? row.innerText : null;""",
            ambulance_id,
        )


def point(i: int, speed: float, t0: int, **extra: Any) -> dict[str, Any]:
    lat, lon = BANGKOK
    return {"lat": lat + i * 0.002, "lon": lon + i * 0.001, "speed": speed, "heading": 45,
            "ts": t0 + i * 1000, "seq": i, **extra}


def fresh_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def board(
    mosquitto: services.Service,
    redis_server: services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dashboard]:
    socketio_port = services.free_port()
    proxy = CuttableProxy(socketio_port)
    service = services.aoc(
        "serve",
        tmp_path_factory.mktemp("dashboard"),
        mqtt_port=mosquitto.port,
        redis_port=redis_server.port,
        legacy=False,
        env={
            "AOC_SOCKETIO_PORT": str(socketio_port),
            "AOC_DASHBOARD_SOCKETIO_URL": f"http://127.0.0.1:{proxy.port}",
        },
    )
    with service:
        driver = headless_chromium()
        try:
            yield Dashboard(service, proxy, driver, mosquitto.port)
        finally:
            driver.quit()
            proxy.close()
    print(service.log_tail(40))


@pytest.fixture(scope="module")
def loaded(board: Dashboard) -> Dashboard:
    """The page, loaded and live."""
    board.driver.get(board.url)
    board.wait(board.live, "the page to be live")
    return board


def test_1_the_page_loads_live_from_local_assets_only(loaded: Dashboard, tmp_path: Path) -> None:
    """Test that the page loads live, its libraries and outlines from this server only."""
    board = loaded
    board.wait(lambda: board.js("const o = window.aocDashboard.fleetMap.outlines;"
                                "return o !== undefined && o.getLayers().length > 100"),
               "the country outlines")
    board.shot(tmp_path, "1-loaded")
    resources = board.js(
        "return performance.getEntriesByType('resource').map((r) => r.name)"
    )
    names = {url.split("?")[0].rsplit("/", 1)[-1] for url in resources}
    assert {"leaflet.js", "uPlot.iife.min.js", "socket.io.min.js", "app.js",
            "countries-50m.json"} <= names
    origins = {url.split("/")[2] for url in resources if url.startswith("http")}
    proxy = f"127.0.0.1:{board.proxy.port}"
    assert origins <= {f"127.0.0.1:{board.service.port}", proxy}, origins
    headers = httpx.get(board.url).headers
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"


def test_2_tracking_moves_the_marker_and_updates_the_list(
    loaded: Dashboard, tmp_path: Path
) -> None:
    """Test that points published over MQTT move the marker and update its row."""
    board = loaded
    aid = fresh_id("DASH-MOVE")
    t0 = int(time.time() * 1000)
    board.publish(aid, "tracking", point(0, 40, t0))
    first = board.wait(lambda: board.ambulance(aid), "the new ambulance's marker")
    assert (round(first["lat"], 4), round(first["lon"], 4)) == (13.7563, 100.5018)
    assert first["shown"] == "GREEN"
    board.js("document.getElementById('filter').value = arguments[0];"
             "document.getElementById('filter').dispatchEvent(new Event('input'));", aid)
    row = board.wait(lambda: board.row(aid), "its row")
    assert "GREEN" in row
    assert "40.0" in row
    board.shot(tmp_path, "2a-first-point")

    board.publish(aid, "tracking", point(5, 130, t0))
    moved = board.wait(
        lambda: (a := board.ambulance(aid)) and a["speed"] == 130 and a, "the marker to move"
    )
    assert (round(moved["lat"], 4), round(moved["lon"], 4)) == (13.7663, 100.5068)
    assert moved["shown"] == "RED"
    board.wait(lambda: "RED" in (board.row(aid) or ""), "its row to turn RED")
    assert "130.0" in (board.row(aid) or "")
    board.shot(tmp_path, "2b-moved")


def test_2b_the_page_is_fed_by_the_live_stream_and_shows_offline_at_once(
    loaded: Dashboard, tmp_path: Path
) -> None:
    """Test that the page subscribes to the fleet's live stream and shows a status live.

    The read API's fleet listing, which the page re-reads every minute, is cut off
    first: the offline status, then the return online, can only come by `live_states`.
    """
    board = loaded
    subscription = board.js("return window.aocDashboard.transport.seen.subscription")
    assert subscription["ambulances"] == "*"
    aid = fresh_id("DASH-OFF")
    # The page's own socket, observed: the states of this ambulance it receives.
    board.js("""window.liveStates = [];
                window.aocDashboard.transport.socket.on('live_states', (e) => {
                  for (const s of e.states) if (s.ambulance_id === arguments[0]) liveStates.push(s);
                });
                window.fleetReads = 0;
                window.realFleet = window.aocDashboard.api.fleet;
                window.aocDashboard.api.fleet = () => {
                  fleetReads += 1;
                  return Promise.reject(new Error('cut off by the test'));
                };""", aid)
    try:
        t0 = int(time.time() * 1000)
        board.publish(aid, "tracking", point(0, 40, t0))
        board.wait(lambda: (a := board.ambulance(aid)) and a["shown"] == "GREEN", "its marker")
        board.js("document.getElementById('filter').value = arguments[0];"
                 "document.getElementById('filter').dispatchEvent(new Event('input'));", aid)
        board.wait(lambda: "GREEN" in (board.row(aid) or ""), "its row")
        assert board.js("return liveStates.length") >= 1
        assert board.js("return liveStates[0].online") is True

        board.publish(aid, "status", b"offline", retain=True)  # as sim/fleet.py and a Last Will
        board.wait(lambda: board.ambulance(aid)["shown"] == "OFFLINE", "it to show offline")
        board.wait(lambda: "OFFLINE" in (board.row(aid) or ""), "its row to show offline")
        assert board.js("return liveStates[liveStates.length - 1].online") is False
        board.shot(tmp_path, "2b-offline")

        board.publish(aid, "status", b"online", retain=True)
        board.wait(lambda: board.ambulance(aid)["shown"] == "GREEN", "it to show online again")
        assert board.js("return window.aocDashboard.transport.seen.events") >= 3
    finally:
        board.js("window.aocDashboard.api.fleet = window.realFleet")


def test_3_a_crash_raises_an_alert_until_dismissed(loaded: Dashboard, tmp_path: Path) -> None:
    """Test that a crash shows an alert naming the ambulance and place, with the static map.

    It arrives while the page gets no animation frames, as in a background tab: the
    alert must not wait for one. Its sound repeats until muted or dismissed.
    """
    board = loaded
    aid = fresh_id("DASH-CRASH")
    t0 = int(time.time() * 1000)
    board.publish(aid, "tracking", point(0, 60, t0))
    board.wait(lambda: board.ambulance(aid), "its marker")
    board.js("window.realFrame = window.requestAnimationFrame;"
             "window.requestAnimationFrame = () => null;")
    board.publish(aid, "crash", {"lat": 13.7, "lon": 100.6, "speed": 95, "heading": 90,
                                 "ts": t0 + 2000})
    banner = board.wait(
        lambda: board.driver.find_elements(By.CSS_SELECTOR, f'.alert[data-ambulance="{aid}"]'),
        "the crash alert",
    )[0]
    assert f"CRASH · {aid}" in banner.text
    assert "13.70000, 100.60000" in banner.text
    link = banner.find_element(By.CSS_SELECTOR, "a.static-map")
    board.wait(lambda: link.get_attribute("href"), "the static map link of the stored record")
    assert link.get_attribute("href").startswith("https://maps.googleapis.com/maps/api/staticmap")
    assert "(1) CRASH" in board.driver.title
    crash_list = board.driver.find_element(By.ID, "crash-list").text
    assert aid in crash_list
    board.js("window.requestAnimationFrame = window.realFrame")
    board.shot(tmp_path, "3a-alert")

    beeping = "return window.aocDashboard.alerts.beeper !== null"
    assert board.js(beeping)
    board.driver.find_element(By.ID, "mute").click()
    assert not board.js(beeping)
    assert board.driver.find_element(By.ID, "mute").text == "Sound off"
    board.driver.find_element(By.ID, "mute").click()
    assert board.js(beeping)

    banner.find_element(By.CSS_SELECTOR, "button.dismiss").click()
    board.wait(
        lambda: not board.driver.find_elements(By.CSS_SELECTOR, f'.alert[data-ambulance="{aid}"]'),
        "the alert to go once dismissed",
    )
    assert aid in board.driver.find_element(By.ID, "crash-list").text  # still listed
    assert not board.js(beeping)
    board.shot(tmp_path, "3b-dismissed")


def test_4_selecting_shows_track_and_chart(loaded: Dashboard, tmp_path: Path) -> None:
    """Test that clicking an ambulance's row shows its track on the map and its speed chart."""
    board = loaded
    aid = fresh_id("DASH-SEL")
    t0 = int(time.time() * 1000) - 60_000
    speeds = [50, 70, 90, 110, 125, 130, 100, 70, 60, 50]
    for i, speed in enumerate(speeds):
        board.publish(aid, "tracking", point(i, speed, t0))
    board.js("document.getElementById('filter').value = arguments[0];"
             "document.getElementById('filter').dispatchEvent(new Event('input'));", aid)
    board.wait(lambda: board.row(aid), "its row")
    row = board.driver.find_element(By.CSS_SELECTOR, f'#list .row[data-id="{aid}"]')
    row.click()
    board.wait(lambda: board.js("return !document.getElementById('detail').hidden"), "the panel")
    assert board.driver.find_element(By.ID, "detail-title").text == aid
    board.wait(lambda: board.js("return window.aocDashboard.detail.points.length") == len(speeds),
               "its track")
    board.wait(lambda: board.js("return window.aocDashboard.fleetMap.track.getLayers().length > 0"),
               "the track on the map")
    assert board.driver.find_elements(By.CSS_SELECTOR, "#chart .uplot canvas")
    plotted = board.js("return window.aocDashboard.detail.chart.data[1]")
    assert plotted == speeds
    episodes = board.driver.find_element(By.ID, "episodes").text
    assert "over 80 km/h" in episodes
    assert "max 130.0 km/h" in episodes
    board.shot(tmp_path, "4-selected")


def test_5_after_a_lost_connection_the_page_holds_every_point(
    loaded: Dashboard, tmp_path: Path
) -> None:
    """Test that points sent while Socket.IO was cut are in the page after the reconnect."""
    board = loaded
    aid = fresh_id("DASH-LOST")
    t0 = int(time.time() * 1000) - 60_000
    board.publish(aid, "tracking", point(0, 40, t0))
    board.wait(lambda: board.ambulance(aid), "its marker")
    board.js("window.aocDashboard.select(arguments[0])", aid)
    held = "return window.aocDashboard.detail.points.map((p) => p.seq)"
    board.wait(lambda: board.js(held) == [0], "the first point in its track")
    for i in range(1, 5):
        board.publish(aid, "tracking", point(i, 40 + i, t0))
    board.wait(lambda: board.js(held) == list(range(5)), "the live points")

    # A crash alerted live, then read back by the resync after the reconnect: one alert.
    board.publish(aid, "crash", {"lat": 13.9, "lon": 100.3, "speed": 88,
                                 "ts": int(time.time() * 1000)})
    banners = f'.alert[data-ambulance="{aid}"]'
    board.wait(lambda: board.driver.find_elements(By.CSS_SELECTOR, banners), "the live alert")
    resyncs = board.js("return window.aocDashboard.resyncs")

    board.proxy.cut()
    board.wait(lambda: not board.live(), "the page to show it is not live")
    assert "NOT LIVE" in board.driver.find_element(By.ID, "live").text
    for i in range(5, 15):
        board.publish(aid, "tracking", point(i, 40 + i, t0))
    # Stored while the page was cut off: the resync must read these back.
    stored = board.wait(
        lambda: len(httpx.get(f"{board.http}/api/v1/ambulances/{aid}/track",
                              params={"limit": 100}, headers=board.service.auth_headers)
                    .json()["items"]) == 15,
        "the points to be stored",
    )
    assert stored
    board.wait(lambda: board.proxy.refused > 0, "the page to try reconnecting")
    board.shot(tmp_path, "5a-not-live")
    assert board.js(held) == list(range(5))  # nothing came while cut

    board.proxy.restore()
    for i in range(15, 20):  # while the page reconnects and resyncs
        board.publish(aid, "tracking", point(i, 40 + i, t0))
    board.wait(board.live, "the page to be live again")
    board.wait(lambda: board.js(held) == list(range(20)), "every point in the page")
    board.wait(lambda: board.js("return window.aocDashboard.resyncs") > resyncs, "the resync")
    assert len(board.driver.find_elements(By.CSS_SELECTOR, banners)) == 1
    assert board.driver.find_element(By.ID, "crash-list").text.count(aid) == 1
    latest = board.wait(
        lambda: (a := board.ambulance(aid)) and a["speed"] == 59 and a, "the latest position"
    )
    assert round(latest["lat"], 4) == round(BANGKOK[0] + 19 * 0.002, 4)
    board.shot(tmp_path, "5b-resynced")


def test_5b_a_token_limited_to_some_ambulances_shows_them_only(
    loaded: Dashboard, tmp_path: Path
) -> None:
    """Test that a page with a limited token goes live on its own ambulance, and its crashes."""
    board = loaded
    mine, other = fresh_id("DASH-MINE"), fresh_id("DASH-OTHER")
    t0 = int(time.time() * 1000)
    for aid in (mine, other):
        board.publish(aid, "tracking", point(0, 30, t0))
    token = services.api_token(board.service.env, rooms=[mine])
    board.driver.get(f"{board.http}/dashboard?token={token}")
    board.wait(board.live, "the limited page to be live")
    board.wait(lambda: board.ambulance(mine), "its own ambulance")
    # Live on its own ambulance: a new point moves it.
    board.wait(lambda: board.js("return window.aocDashboard.transport.limited"), "limited mode")
    # Refused the fleet, it subscribed to its own ambulance by id.
    answer = board.js("return window.aocDashboard.transport.seen.subscription")
    assert answer["ambulances"] == [mine]
    board.publish(mine, "tracking", point(3, 50, t0))
    board.wait(lambda: (a := board.ambulance(mine)) and a["speed"] == 50, "its live point")
    board.publish(mine, "crash", {"lat": 13.8, "lon": 100.4, "speed": 70, "ts": t0 + 4000})
    board.wait(
        lambda: board.driver.find_elements(By.CSS_SELECTOR, f'.alert[data-ambulance="{mine}"]'),
        "its crash alert (live_alert)",
    )
    board.shot(tmp_path, "5b-limited")
    assert board.ambulance(other) is None
    assert board.js("return window.aocDashboard.fleet.byId.size") == 1
    # Reloaded: its recent crashes come from its own ambulances' lists (the fleet-wide
    # list is refused to a limited token).
    board.driver.refresh()
    board.wait(board.live, "the reloaded page to be live")
    board.wait(lambda: mine in board.driver.find_element(By.ID, "crash-list").text,
               "its crash in the recent crashes")


def test_6_a_page_without_a_valid_token_is_refused(board: Dashboard, tmp_path: Path) -> None:
    """Test that /dashboard without a token, or with a wrong one, is refused."""
    for url in (f"{board.http}/dashboard", f"{board.http}/dashboard?token=fake-token"):
        answer = httpx.get(url)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        board.driver.get(url)
        board.wait(lambda: board.driver.find_elements(By.TAG_NAME, "h1"), "the refusal")
        assert board.driver.find_element(By.TAG_NAME, "h1").text == "A token is required"
        assert not board.driver.find_elements(By.ID, "map")
    board.shot(tmp_path, "6-refused")
