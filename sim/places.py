"""Motion between places (`aoc simulate --places`): station, hospital, station, ...

An ambulance starts parked at a station (a random place if the file has no
station). When its dwell ends it wants a destination: a hospital when it is at
its station, its station when it is anywhere else (with no hospitals or no
stations, any other place). It stands still, its engine running, until the
caller has dispatched it (``depart``): the destination is set through the
HTTP API before the ambulance moves, as a dispatcher would. It then drives a
slightly bent straight line (one random bend point) to the place's centre,
accelerating and braking with the bounds of ``sim.motion``, stops there
(inside the place, across its edge) and dwells.

Speeds are town speeds (35-70 km/h); one leg in ten is an urgent run above
120 km/h, an overspeed episode for the bridge's alarms. No I/O and no clock,
as ``sim.motion``: the caller steps it with simulated seconds.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from bridge.places import Place, PlaceError, places_from_geojson
from sim.motion import ACCEL, BRAKE, HARD_BRAKE, Point

STATION = "station"
HOSPITAL = "hospital"
TOWN_KMH = (35.0, 70.0)
URGENT_KMH = (125.0, 140.0)  # above the default red limit (120): an overspeed alarm
URGENT_SHARE = 0.1  # of the legs
STATION_DWELL_S = (60.0, 300.0)
HOSPITAL_DWELL_S = (120.0, 600.0)
BEND = 0.12  # the bend point's offset from the straight line, as a share of the leg
_ARRIVED_M = 2.0  # closer than this to the centre is there
_M_PER_DEG_LAT = 111_320.0


def load_places(path: Path) -> list[Place]:
    """The places of a GeoJSON file; ``ValueError`` naming the file when it cannot be used."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        places = places_from_geojson(data)
    except PlaceError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if len(places) < 2:
        raise ValueError(f"{path}: at least two places are needed to drive between them")
    return places


def centre(place: Place) -> tuple[float, float]:
    """Where an ambulance parks in a place: a circle's centre, a point inside a polygon."""
    if place.geometry is None:
        assert place.center is not None  # a circle
        return place.center.lat, place.center.lon
    inner = place.geometry.representative_point()
    return inner.y, inner.x


def _offset_m(lat: float, lon: float, to_lat: float, to_lon: float) -> tuple[float, float]:
    """East and north metres from one point to another (local, equirectangular)."""
    north = (to_lat - lat) * _M_PER_DEG_LAT
    east = (to_lon - lon) * _M_PER_DEG_LAT * math.cos(math.radians(lat))
    return east, north


class PlaceVehicle:
    """One ambulance driving between ``places``; all randomness comes from its own ``rng``."""

    def __init__(self, rng: random.Random, places: list[Place]) -> None:
        self._rng = rng
        self.places = places
        self.stations = [p for p in places if p.kind == STATION]
        self.hospitals = [p for p in places if p.kind == HOSPITAL]
        self.home = rng.choice(self.stations or places)
        self.at: Place | None = self.home  # where it is parked; None while driving
        self.lat, self.lon = centre(self.home)
        self.speed = 0.0  # m/s
        self.heading = rng.uniform(0, 360)
        # A short first stop, so that the bridge knows the ambulance before it is dispatched.
        self.wait = rng.uniform(5, 30)
        self.wants: Place | None = None  # chosen, waiting for ``depart``
        self.going: Place | None = None  # driving there
        self.legs = 0  # legs started
        self._route: list[tuple[float, float]] = []  # waypoints left, the place's centre last
        self._cruise = 0.0

    def _next_place(self) -> Place:
        here = self.at
        if here is self.home and self.hospitals and self.home in self.stations:
            return self._rng.choice(self.hospitals)
        if here is not self.home and self.home in self.stations:
            return self.home
        return self._rng.choice([p for p in self.places if p is not here])

    def depart(self) -> None:
        """Drive to ``wants``: the caller has dispatched the ambulance there (or tried to)."""
        target = self.wants
        assert target is not None
        self.wants, self.going, self.at = None, target, None
        self.legs += 1
        rng = self._rng
        to_lat, to_lon = centre(target)
        # One bend point, off the straight line by up to BEND of its length: a road, roughly.
        share = rng.uniform(0.3, 0.7)
        east, north = _offset_m(self.lat, self.lon, to_lat, to_lon)
        side = rng.uniform(-BEND, BEND)
        bend_east = east * share - north * side
        bend_north = north * share + east * side
        bend_lat = self.lat + bend_north / _M_PER_DEG_LAT
        bend_lon = self.lon + bend_east / (_M_PER_DEG_LAT * math.cos(math.radians(self.lat)))
        self._route = [(bend_lat, bend_lon), (to_lat, to_lon)]
        urgent = rng.random() < URGENT_SHARE
        self._cruise = rng.uniform(*(URGENT_KMH if urgent else TOWN_KMH)) / 3.6

    def _remaining_m(self) -> float:
        total, (lat, lon) = 0.0, (self.lat, self.lon)
        for to_lat, to_lon in self._route:
            total += math.hypot(*_offset_m(lat, lon, to_lat, to_lon))
            lat, lon = to_lat, to_lon
        return total

    def step(self, dt: float) -> Point:
        """Advance ``dt`` seconds of simulated time and return the new point."""
        if self.wait > 0:  # dwelling, or stopped after a crash
            self.wait = max(0.0, self.wait - dt)
            self.speed = 0.0
            if self.wait == 0 and self.at is not None and self.wants is None:
                self.wants = self._next_place()
            return self.point()
        if not self._route:  # parked, waiting to be dispatched
            self.speed = 0.0
            return self.point()
        remaining = self._remaining_m()
        # As sim.motion: the fastest speed that still stops at the centre braking at BRAKE.
        b_dt = BRAKE * dt
        reach = math.sqrt(b_dt**2 + 2 * BRAKE * remaining) - b_dt
        limit = min(self._cruise, reach)
        if self.speed < limit:
            self.speed = min(limit, self.speed + ACCEL * dt)
        else:
            self.speed = max(limit, self.speed - HARD_BRAKE * dt)
        self._advance(self.speed * dt)
        if self._remaining_m() < _ARRIVED_M:
            self._park()
        return self.point()

    def _advance(self, metres: float) -> None:
        while self._route and metres > 0:
            to_lat, to_lon = self._route[0]
            east, north = _offset_m(self.lat, self.lon, to_lat, to_lon)
            length = math.hypot(east, north)
            if length > 0:
                self.heading = math.degrees(math.atan2(east, north)) % 360
            if length <= metres:
                self.lat, self.lon = to_lat, to_lon
                metres -= length
                if len(self._route) > 1:
                    self._route.pop(0)
                else:
                    return
            else:
                share = metres / length
                self.lat += (to_lat - self.lat) * share
                self.lon += (to_lon - self.lon) * share
                return

    def _park(self) -> None:
        target = self.going
        assert target is not None
        self.lat, self.lon = self._route[-1]
        self._route = []
        self.speed = 0.0
        self.at, self.going = target, None
        dwell = HOSPITAL_DWELL_S if target.kind == HOSPITAL else STATION_DWELL_S
        self.wait = self._rng.uniform(*dwell)

    def stop_for(self, seconds: float) -> None:
        """Stand still for ``seconds`` (after a crash), then drive on."""
        self.speed = 0.0
        self.wait = max(self.wait, seconds)

    def point(self) -> Point:
        """The current position, speed and heading."""
        return Point(lat=self.lat, lon=self.lon, speed_kmh=self.speed * 3.6, heading=self.heading)
