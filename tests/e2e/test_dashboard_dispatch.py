"""Dispatch on the dashboard in a real browser: places, events, alarms, destinations and ETAs.

As tests/e2e/test_dashboard.py: one headless Chromium and one `aoc serve` (with Mosquitto
and Redis) for the module, ambulances of each test's own, a screenshot per step in the
test's folder (``tmp_path``), waits that poll with a generous timeout and nothing timed.
The page is opened with a dispatch token (``services.api_token(..., dispatch=True)``);
the service's own token is read-only. The bridge reads places every 0.3 s here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests import services
from tests.browser import headless_chromium
from tests.e2e.test_dashboard import Dashboard, fresh_id
from tests.tcpproxy import CuttableProxy

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

H_LAT, H_LON, HALF = 18.7897, 98.9737, 0.001  # a square hospital, ~220 m a side
S_LAT, S_LON = 18.8000, 98.9600  # a circular station ~2 km away, where no ambulance goes
M_PER_DEG = 111_195.0


def hospital(place_id: str) -> dict[str, Any]:
    ring = [
        [H_LON - HALF, H_LAT - HALF], [H_LON + HALF, H_LAT - HALF],
        [H_LON + HALF, H_LAT + HALF], [H_LON - HALF, H_LAT + HALF],
        [H_LON - HALF, H_LAT - HALF],
    ]
    return {"type": "Feature", "id": place_id,
            "properties": {"name": f"Hospital {place_id}", "kind": "hospital"},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def station(place_id: str) -> dict[str, Any]:
    # Markup in its name: the tooltip must show it as text.
    return {"type": "Feature", "id": place_id,
            "properties": {"name": f"Station <b>{place_id}</b>", "kind": "station",
                           "radius_m": 150},
            "geometry": {"type": "Point", "coordinates": [S_LON, S_LAT]}}


class DispatchBoard(Dashboard):
    """The dashboard, opened with a dispatch token, and the API with that token."""

    token: str = ""

    @property
    def url(self) -> str:
        return self.url_with(self.token)

    def url_with(self, token: str) -> str:
        return f"{self.http}/dashboard?token={token}"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, f"{self.http}/api/v1{path}", headers=headers,
                             timeout=15, **kwargs)

    def track(self, aid: str, lat: float, speed: float, second: int) -> None:
        """One point on the hospital's meridian, ``second`` s after a start 10 minutes ago."""
        ts = int((time.time() - 600 + second) * 1000)
        self.publish(aid, "tracking", {"lat": lat, "lon": H_LON, "speed": speed,
                                       "heading": 0, "ts": ts})

    def alarm_rows(self, aid: str, kind: str = "crash") -> list[WebElement]:
        return self.driver.find_elements(
            By.CSS_SELECTOR, f'#alarm-list li[data-ambulance="{aid}"][data-kind="{kind}"]'
        )

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def select(self, aid: str) -> None:
        self.js("window.aocDashboard.select(arguments[0])", aid)
        self.wait(lambda: self.text("detail-title") == aid, "its panel")


@pytest.fixture(scope="module")
def board(
    mosquitto: services.Service,
    redis_server: services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DispatchBoard]:
    socketio_port = services.free_port()
    proxy = CuttableProxy(socketio_port)
    service = services.aoc(
        "serve",
        tmp_path_factory.mktemp("dashboard-dispatch"),
        mqtt_port=mosquitto.port,
        redis_port=redis_server.port,
        legacy=False,
        env={
            "AOC_SOCKETIO_PORT": str(socketio_port),
            "AOC_DASHBOARD_SOCKETIO_URL": f"http://127.0.0.1:{proxy.port}",
            "AOC_PLACES_REFRESH_SECONDS": "0.3",
            # Legacy mode off, as on the dashboard's own stack: the API publishes dispatch
            # commands with an MQTT account of its own (the tests' broker takes any).
            "AOC_SHIM_MQTT_USERNAME": "aoc-shim",
            "AOC_SHIM_MQTT_PASSWORD": "fake-shim-pw",
        },
    )
    with service:
        driver = headless_chromium()
        try:
            board = DispatchBoard(service, proxy, driver, mosquitto.port)
            board.token = services.api_token(service.env, dispatch=True)
            yield board
        finally:
            driver.quit()
            proxy.close()
    print(service.log_tail(40))


@pytest.fixture(scope="module")
def places(board: DispatchBoard) -> dict[str, str]:
    """A hospital and a station, imported through the API before the page loads."""
    suffix = uuid.uuid4().hex[:6]
    ids = {"hospital": f"h-{suffix}", "station": f"s-{suffix}"}
    answer = board.api("POST", "/places", json={
        "type": "FeatureCollection",
        "features": [hospital(ids["hospital"]), station(ids["station"])],
    })
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["ids"]["added"]) == sorted(ids.values())
    time.sleep(1.0)  # the bridge reads places every 0.3 s
    return ids


@pytest.fixture(scope="module")
def loaded(board: DispatchBoard, places: dict[str, str]) -> DispatchBoard:
    """The page with the dispatch token, loaded, live and in the dispatch rooms."""
    board.driver.get(board.url)
    board.wait(board.live, "the page to be live")
    board.wait(lambda: board.js("return window.aocDashboard.transport.seen.rooms")
               == {"alarms": "joined", "events": "joined"}, "the alarms and events rooms")
    return board


def test_1_places_are_drawn_and_an_enter_event_is_listed(
    loaded: DispatchBoard, places: dict[str, str], tmp_path: Path
) -> None:
    """Test that the places are on the map, named as text, and entering one is listed live."""
    board = loaded
    drawn = board.wait(lambda: board.js(
        """return window.aocDashboard.places.layer.getLayers().map((l) => ({
             id: l.feature.id, circle: l instanceof L.Circle,
             radius: l instanceof L.Circle ? l.getRadius() : null, colour: l.options.color,
             tip: l.getTooltip().getContent().textContent}));"""), "the places on the map")
    by_id = {d["id"]: d for d in drawn}
    hospital_id, station_id = places["hospital"], places["station"]
    assert by_id[hospital_id]["circle"] is False
    assert by_id[station_id]["circle"] is True
    assert by_id[station_id]["radius"] == 150
    assert by_id[hospital_id]["colour"] != by_id[station_id]["colour"]  # by kind
    assert by_id[station_id]["tip"] == f"Station <b>{station_id}</b> (station)"

    # The station's tooltip on hover, its markup shown as text (no <b> element made).
    # No animation: the point is where the map is now, not where a pan will leave it.
    board.js("window.aocDashboard.fleetMap.map.setView([arguments[0], arguments[1]], 15,"
             " {animate: false})", S_LAT, S_LON)
    map_element = board.driver.find_element(By.ID, "map")

    def hover_station() -> list[Any]:
        # Hovered again at each try: a busy machine may draw the layer after the first move.
        x, y = board.js("const p = window.aocDashboard.fleetMap.map.latLngToContainerPoint("
                        "[arguments[0], arguments[1]]); return [p.x, p.y];", S_LAT, S_LON)
        size = map_element.size
        ActionChains(board.driver).move_to_element_with_offset(
            map_element, int(x - size["width"] / 2), int(y - size["height"] / 2)
        ).perform()
        return board.driver.find_elements(By.CSS_SELECTOR, ".leaflet-tooltip")

    tip = board.wait(hover_station, "the station's tooltip")[0]
    assert f"Station <b>{station_id}</b>" in tip.text
    assert not tip.find_elements(By.TAG_NAME, "b")
    board.shot(tmp_path, "1a-places")

    aid = fresh_id("DD-ENTER")
    metre = 1 / M_PER_DEG
    board.track(aid, H_LAT - HALF - 200 * metre, 30, 0)
    board.wait(lambda: board.ambulance(aid), "its marker")
    board.select(aid)
    board.wait(lambda: board.text("inside") == "In: no place", "it in no place")
    board.track(aid, H_LAT, 20, 20)
    board.wait(lambda: f"enter · Hospital {hospital_id}" in board.text("detail-events"),
               "the enter event, live")
    board.wait(lambda: board.text("inside") == f"In: Hospital {hospital_id}", "it in the place")
    stored = board.api("GET", "/events", params={"ambulance_id": aid}).json()["items"]
    assert [(e["type"], e["place_id"]) for e in stored] == [("enter", hospital_id)]
    board.shot(tmp_path, "1b-enter")


def test_2_a_crash_alarm_is_acknowledged_then_resolved_in_the_panel(
    loaded: DispatchBoard, tmp_path: Path
) -> None:
    """Test that a crash's alarm shows, blinking, and Acknowledge then Resolve change it."""
    board = loaded
    aid = fresh_id("DD-CRASH")
    board.track(aid, H_LAT - 0.02, 50, 0)
    board.wait(lambda: board.ambulance(aid), "its marker")
    board.publish(aid, "crash", {"lat": H_LAT - 0.02, "lon": H_LON, "speed": 0,
                                 "ts": int(time.time() * 1000)})
    row = board.wait(lambda: board.alarm_rows(aid), "the crash alarm in the panel")[0]
    assert row.get_attribute("data-status") == "open"
    assert "fresh" in (row.get_attribute("class") or "")  # new: it blinks
    assert f"CRASH · {aid}" in row.text
    assert "×1 · open" in row.text
    assert "open" in board.text("alarm-count")
    (alarm,) = board.api("GET", "/alarms", params={"ambulance_id": aid}).json()["items"]
    if alarm["address"]:
        assert alarm["address"] in row.text
    # One banner only: the crash's own (the alarm does not add another).
    assert len(board.driver.find_elements(By.CSS_SELECTOR, f'.alert[data-ambulance="{aid}"]')) == 1
    board.shot(tmp_path, "2a-open")

    row.find_element(By.CSS_SELECTOR, ".alarm-meta").click()  # selects its ambulance
    board.wait(lambda: board.text("detail-title") == aid, "its ambulance selected")
    assert "fresh" not in (row.get_attribute("class") or "")

    row.find_element(By.CSS_SELECTOR, "button.ack").click()
    board.wait(lambda: row.get_attribute("data-status") == "acknowledged", "acknowledged")
    assert not row.find_element(By.CSS_SELECTOR, "button.ack").is_displayed()
    stored = board.api("GET", f"/alarms/{alarm['id']}").json()
    assert stored["status"] == "acknowledged"
    assert stored["acknowledged_by"].startswith("tests-")
    board.shot(tmp_path, "2b-acknowledged")

    row.find_element(By.CSS_SELECTOR, "button.resolve").click()
    note = row.find_element(By.CSS_SELECTOR, "input.note")
    assert note.is_displayed()
    row.find_element(By.CSS_SELECTOR, "button.confirm").click()  # no note: not sent
    assert row.find_element(By.CSS_SELECTOR, ".alarm-error").text == (
        "a note is required to resolve"
    )
    assert board.api("GET", f"/alarms/{alarm['id']}").json()["status"] == "acknowledged"
    note.send_keys("patient handed over")
    board.shot(tmp_path, "2c-resolving")
    row.find_element(By.CSS_SELECTOR, "button.confirm").click()
    board.wait(lambda: not board.alarm_rows(aid), "the resolved alarm to leave the panel")
    stored = board.api("GET", f"/alarms/{alarm['id']}").json()
    assert (stored["status"], stored["note"]) == ("resolved", "patient handed over")
    active = board.api("GET", "/alarms", params={"status": "active"}).json()["items"]
    shown = board.js("return [...window.aocDashboard.alarms.alarms.keys()]")
    assert sorted(a["id"] for a in active) == sorted(shown)  # the panel and the API agree
    board.shot(tmp_path, "2d-resolved")


def test_3_a_destination_set_in_the_ui_shows_its_eta(
    loaded: DispatchBoard, places: dict[str, str], tmp_path: Path
) -> None:
    """Test choosing a place as destination, its ETA shown, then clearing it."""
    board = loaded
    aid = fresh_id("DD-DEST")
    hospital_id = places["hospital"]
    board.track(aid, H_LAT - HALF - 0.01, 40, 0)  # ~1.1 km south of the hospital
    board.wait(lambda: board.ambulance(aid), "its marker")
    board.select(aid)
    assert board.text("destination") == "Destination: no destination"
    Select(board.driver.find_element(By.ID, "destination-place")).select_by_value(hospital_id)
    board.driver.find_element(By.CSS_SELECTOR, "#destination-form button[type=submit]").click()
    board.wait(lambda: board.text("destination-outcome") == "applied: destination set",
               "the destination applied")
    destination = board.text("destination")
    assert f"Hospital {hospital_id}" in destination
    assert "set by tests-" in destination
    assert "not arrived" in destination
    eta = board.wait(lambda: (t := board.text("eta")).startswith("ETA: 1.") and t, "the ETA")
    assert " km · " in eta and " min (arrives " in eta
    assert eta.endswith("(recent)") or eta.endswith("(floor)")
    state = board.api("GET", f"/ambulances/{aid}").json()
    assert state["destination"]["place_id"] == hospital_id
    assert f"{state['eta']['distance_m'] / 1000:.1f} km" in eta
    board.shot(tmp_path, "3a-destination")

    board.driver.find_element(By.ID, "destination-clear").click()
    board.wait(lambda: board.text("destination-outcome") == "applied: destination cleared",
               "the destination cleared")
    assert board.text("destination") == "Destination: no destination"
    assert board.api("GET", f"/ambulances/{aid}").json()["destination"] is None
    board.shot(tmp_path, "3b-cleared")


def test_4_a_read_only_token_is_refused_and_says_so(
    loaded: DispatchBoard, places: dict[str, str], tmp_path: Path
) -> None:
    """Test that with a read-only token Acknowledge and a destination show the refusal."""
    board = loaded
    aid = fresh_id("DD-READ")
    board.track(aid, H_LAT - 0.03, 50, 0)
    board.driver.get(board.url_with(board.service.token))  # read-only, fleet-wide
    board.wait(board.live, "the read-only page to be live")
    board.wait(lambda: board.ambulance(aid), "its marker")
    board.publish(aid, "crash", {"lat": H_LAT - 0.03, "lon": H_LON, "speed": 0,
                                 "ts": int(time.time() * 1000)})
    row = board.wait(lambda: board.alarm_rows(aid), "the crash alarm in the panel")[0]
    row.find_element(By.CSS_SELECTOR, "button.ack").click()
    error = board.wait(
        lambda: (t := row.find_element(By.CSS_SELECTOR, ".alarm-error").text)
        .startswith("this token cannot dispatch:") and t, "the refusal",
    )
    assert "read-only" in error
    assert row.get_attribute("data-status") == "open"
    (alarm,) = board.api("GET", "/alarms", params={"ambulance_id": aid}).json()["items"]
    assert alarm["status"] == "open"
    board.shot(tmp_path, "4a-refused")

    board.select(aid)
    Select(board.driver.find_element(By.ID, "destination-place")).select_by_value(
        places["hospital"])
    board.driver.find_element(By.CSS_SELECTOR, "#destination-form button[type=submit]").click()
    board.wait(lambda: board.text("destination-outcome").startswith("this token cannot dispatch"),
               "the destination refused")
    assert board.api("GET", f"/ambulances/{aid}").json()["destination"] is None
    board.shot(tmp_path, "4b-destination-refused")


def test_5_a_limited_token_reads_alarms_from_the_api_and_says_so(
    board: DispatchBoard, tmp_path: Path
) -> None:
    """Test that a token limited to one ambulance, refused the rooms, lists its alarms.

    Not live, it can show an alarm resolved elsewhere: acknowledging it shows the 409.
    """
    mine = fresh_id("DD-MINE")
    board.track(mine, H_LAT - 0.04, 50, 0)
    board.wait(lambda: board.api("GET", f"/ambulances/{mine}").status_code == 200, "it stored")
    board.publish(mine, "crash", {"lat": H_LAT - 0.04, "lon": H_LON, "speed": 0,
                                  "ts": int(time.time() * 1000)})
    board.wait(lambda: board.api("GET", "/alarms", params={"ambulance_id": mine})
               .json()["items"], "its alarm stored")
    token = services.api_token(board.service.env, rooms=[mine], dispatch=True)
    board.driver.get(board.url_with(token))
    board.wait(board.live, "the limited page to be live")
    board.wait(lambda: board.alarm_rows(mine), "its alarm, read from the API")
    note = board.wait(lambda: board.text("alarm-note"), "the muted line")
    assert note.startswith("Not live (")
    assert "every 30 s" in note
    assert set(board.js("return [...window.aocDashboard.alarms.alarms.keys()]")) == {
        a["id"] for a in board.api("GET", "/alarms", params={"ambulance_id": mine,
                                                              "status": "active"}).json()["items"]
    }
    board.shot(tmp_path, "5a-limited")

    # Resolved elsewhere meanwhile (not live, the page does not know yet): refused, 409.
    (alarm,) = board.api("GET", "/alarms", params={"ambulance_id": mine}).json()["items"]
    answer = board.api("POST", f"/alarms/{alarm['id']}/resolve", json={"note": "by phone"})
    assert answer.status_code == 200, answer.text
    row = board.alarm_rows(mine)[0]
    row.find_element(By.CSS_SELECTOR, "button.ack").click()
    error = board.wait(
        lambda: (t := row.find_element(By.CSS_SELECTOR, ".alarm-error").text)
        .startswith("refused: ") and t, "the 409 refusal",
    )
    assert "is resolved" in error
    board.shot(tmp_path, "5b-refused-resolved")
