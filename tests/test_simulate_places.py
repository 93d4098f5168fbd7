"""`aoc simulate --places`: ambulances driven between the places of a GeoJSON file.

The motion is checked alone (no I/O); the whole mode against a real `aoc
serve` and Mosquitto: the places imported, each destination set through the
HTTP API, and the bridge's arrivals and enters read back through it.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.messages import Position
from bridge.places import Place, contains
from sim.places import HOSPITAL, STATION, PlaceVehicle, centre, load_places
from tests import services

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "places" / "chiang-mai.geojson"
DISPATCH = re.compile(
    r"\[simulate\] dispatch: destinations set (\d+)  failed (\d+)  arrivals (\d+)  "
    r"enters (\d+)  active alarms (\d+)"
)



def _drive(seed: int, seconds: float, dt: float) -> tuple[PlaceVehicle, list[tuple[str, str]]]:
    """Step a vehicle, dispatching it at once; its legs as (event, place id)."""
    vehicle = PlaceVehicle(random.Random(seed), load_places(EXAMPLE))
    legs: list[tuple[str, str]] = []
    parked: Place | None = vehicle.at
    t = 0.0
    while t < seconds:
        point = vehicle.step(dt)
        t += dt
        assert 0 <= point.speed_kmh <= 140.0
        if vehicle.at is not None and vehicle.at is not parked:
            assert contains(vehicle.at, Position(point.lat, point.lon)), vehicle.at.id
            legs.append(("parked", vehicle.at.id))
        parked = vehicle.at
        if vehicle.wants is not None:
            legs.append(("leaving for", vehicle.wants.id))
            vehicle.depart()
    return vehicle, legs


def test_vehicles_go_from_their_station_to_hospitals_and_back_inside_each_place() -> None:
    """Test the trips: station, hospital, the same station, ..., parked inside each place."""
    places = {p.id: p for p in load_places(EXAMPLE)}
    for seed in range(5):
        vehicle, legs = _drive(seed, 6 * 3600, dt=2.0)
        assert vehicle.home.kind == STATION
        departures = [place for event, place in legs if event == "leaving for"]
        assert len(departures) >= 6, legs
        for i, place_id in enumerate(departures):
            expected = HOSPITAL if i % 2 == 0 else STATION
            assert places[place_id].kind == expected, legs
            if expected == STATION:
                assert place_id == vehicle.home.id
        arrivals = [place for event, place in legs if event == "parked"]
        assert arrivals[: len(departures) - 1] == departures[: len(departures) - 1]


def test_a_vehicle_stands_until_dispatched_and_the_same_seed_drives_the_same() -> None:
    """Test that a vehicle wanting a destination stays put, and that a seed is a route."""
    vehicle = PlaceVehicle(random.Random(7), load_places(EXAMPLE))
    start = (vehicle.lat, vehicle.lon)
    assert start == centre(vehicle.home)
    for _ in range(200):
        point = vehicle.step(5.0)
        assert (point.lat, point.lon) == start and point.speed_kmh == 0
    assert vehicle.wants is not None  # chosen long ago, never dispatched: still parked
    assert _drive(3, 3600, 1.0)[1] == _drive(3, 3600, 1.0)[1]


def test_a_file_with_fewer_than_two_places_is_refused(tmp_path: Path) -> None:
    """Test that one place is not enough to drive between (the text names the file)."""
    one = tmp_path / "one.geojson"
    one.write_text(
        '{"type": "Feature", "id": "a", "properties": {"name": "A", "radius_m": 50},'
        ' "geometry": {"type": "Point", "coordinates": [98.98, 18.79]}}'
    )
    with pytest.raises(ValueError, match=r"one\.geojson"):
        load_places(one)


def _simulate(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "aoc.cli", "simulate", *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )
    return result.returncode, result.stderr


def _env(tmp_path: Path, mqtt_port: int, http_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOC_")}
    return {
        **env, "PYTHONPATH": str(ROOT), "AOC_MQTT_PORT": str(mqtt_port),
        "AOC_HTTP_PORT": str(http_port), "AOC_DATA_DIR": str(tmp_path / "sim-data"),
        "AOC_LOG_LEVEL": "INFO",
    }


# Short trips: 40 simulated seconds per second at 5 points a second (8 s a point);
# the longest leg of the example, about 8 km, then takes about 20 s.
FAST = ("--time-scale", "40", "--rate", "5", "--snap-every", "0", "--crash-probability", "0")


@pytest.fixture(scope="module")
def serve(
    mosquitto: services.Service,
    redis_server: services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[services.AocService]:
    workdir = tmp_path_factory.mktemp("simulate-places")
    service = services.aoc(
        "serve", workdir, mqtt_port=mosquitto.port, redis_port=redis_server.port,
        env={"AOC_PLACES_REFRESH_SECONDS": "0.3"},
    )
    with service:
        yield service
    print(service.log_tail(40))


def test_simulated_fleet_sets_destinations_and_arrives_end_to_end(
    mosquitto: services.Service, serve: services.AocService, tmp_path: Path
) -> None:
    """Test the mode on a real `aoc serve`: destinations, arrivals, enters, alarms, ETAs.

    As after `make run`: the dispatch token and the devices' passwords come
    from the credentials file (the test broker takes any password), the API's
    address from AOC_HTTP_PORT.
    """
    token = services.api_token(serve.env, dispatch=True)
    prefix = f"P{os.getpid() % 1000}X"
    env = _env(tmp_path, mosquitto.port, serve.port)
    (tmp_path / "sim-data").mkdir()
    (tmp_path / "sim-data" / "credentials.json").write_text(json.dumps({
        "api_token": token,
        "devices": {f"{prefix}001": "dummy-password-1", f"{prefix}002": "dummy-password-2"},
    }))
    code, err = _simulate(
        env, tmp_path, "--places", str(EXAMPLE), "--import-places",
        "--ambulances", "2", "--prefix", prefix, "--duration", "30", "--seed", "11", *FAST,
        "--crash-probability", "0.02",  # a few crashes: alarms (the last option wins)
    )
    assert code == 0, err
    assert "Traceback" not in err and "WARNING" not in err, err
    summary = DISPATCH.search(err)
    assert summary, err
    destinations, failed, arrivals, enters, alarms = map(int, summary.groups())
    assert destinations >= 2 and failed == 0, err
    assert arrivals >= 1 and enters >= 1 and alarms >= 1, err

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{serve.port}", headers=headers) as api:
        assert len(api.get("/api/v1/places").raise_for_status().json()["features"]) == 7
        seen = {"arrival": 0, "enter": 0, "alarms": 0}
        for aid in (f"{prefix}001", f"{prefix}002"):
            state = api.get(f"/api/v1/ambulances/{aid}").raise_for_status().json()
            assert state["destination"]["type"] == "place", state
            assert state["destination"]["set_by"], state
            assert state["eta"]["model"] == "straight-line", state
            seen["alarms"] += len(api.get(
                "/api/v1/alarms", params={"ambulance_id": aid, "status": "active"}
            ).raise_for_status().json()["items"])
            for kind in ("arrival", "enter"):
                page = api.get(
                    "/api/v1/events", params={"ambulance_id": aid, "type": kind}
                ).raise_for_status().json()
                seen[kind] += len(page["items"])
        # What the summary read is what the API holds.
        assert seen == {"arrival": arrivals, "enter": enters, "alarms": alarms}, (seen, err)


def test_a_read_only_token_is_one_warning_and_the_fleet_drives_on(
    mosquitto: services.Service, serve: services.AocService, tmp_path: Path
) -> None:
    """Test a token that may not dispatch (403): one line says so, the ambulances still drive."""
    reader = services.api_token(serve.env)
    prefix = f"R{os.getpid() % 1000}X"
    code, err = _simulate(
        _env(tmp_path, mosquitto.port, serve.port), tmp_path,
        "--places", str(EXAMPLE), "--import-places", "--token", reader,  # fleet-wide: may import
        "--ambulances", "2", "--prefix", prefix, "--duration", "10", "--seed", "5", *FAST,
    )
    assert code == 0, err
    assert "Traceback" not in err
    assert err.count("cannot set a destination: HTTP 403") == 1, err
    summary = DISPATCH.search(err)
    assert summary, err
    destinations, failed, _arrivals, enters, _alarms = map(int, summary.groups())
    assert destinations == 0 and failed >= 2, err
    # Without destinations there are no arrivals, but the ambulances moved between places.
    assert enters >= 2, err


def test_an_api_that_is_down_is_one_warning_and_the_fleet_drives_on(
    mosquitto: services.Service, tmp_path: Path
) -> None:
    """Test that failing destinations are warned about once per cause; the run goes on."""
    closed = services.free_port()  # nothing listens there
    code, err = _simulate(
        _env(tmp_path, mosquitto.port, closed), tmp_path,
        "--places", str(EXAMPLE), "--import-places", "--token", "dummy-token",
        "--ambulances", "2", "--prefix", f"Q{os.getpid() % 1000}X", "--duration", "8",
        "--seed", "5", *FAST,
    )
    assert code == 0, err  # the MQTT side sent everything
    assert "Traceback" not in err
    assert err.count("cannot import the places") == 1, err
    assert err.count("cannot set a destination") == 1, err
    summary = re.search(r"dispatch: destinations set 0  failed (\d+)  arrivals \?", err)
    assert summary and int(summary.group(1)) >= 2, err
    tracking = re.search(r"tracking (\d+)", err.strip().splitlines()[-2])
    assert tracking and int(tracking.group(1)) > 0, err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--import-places"], "--import-places needs --places"),
        (["--places", "no-such.geojson"], "no-such.geojson"),
        (["--places", str(EXAMPLE), "--time-scale", "0"], "--time-scale"),
    ],
)
def test_places_arguments_that_cannot_run_are_usage_errors(
    args: list[str], named: str, tmp_path: Path
) -> None:
    """Test argparse's usage and exit code 2 for them, before anything connects (port 1)."""
    code, err = _simulate(_env(tmp_path, 1, 1), tmp_path, *args, "--duration", "0.1")
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("aoc simulate: error: ") and named in last, err
