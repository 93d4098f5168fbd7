"""Tests for bridge.geo: haversine distance and ETA."""

from __future__ import annotations

import math

import pytest

from bridge.geo import EARTH_RADIUS_M, eta_s, haversine_m, position_doc, position_from_doc
from bridge.messages import Position


def test_zero_distance_for_the_same_point() -> None:
    """Test that a point is 0 m from itself."""
    p = Position(13.7563, 100.5018)
    assert haversine_m(p, p) == 0.0


def test_one_degree_of_latitude_is_radius_times_pi_over_180() -> None:
    """Test that one degree along a meridian is R·π/180 (about 111.2 km)."""
    d = haversine_m(Position(0, 0), Position(1, 0))
    assert d == pytest.approx(EARTH_RADIUS_M * math.pi / 180, rel=1e-12)
    assert d == pytest.approx(111_195.08, abs=0.01)


def test_known_city_pair() -> None:
    """Test Bangkok to Chiang Mai against an independently computed great-circle value."""
    d = haversine_m(Position(13.7563, 100.5018), Position(18.7883, 98.9853))
    assert d == pytest.approx(581_600, rel=2e-3)


def test_symmetric_and_antipodal() -> None:
    """Test that distance is symmetric and antipodes are half the circumference."""
    a, b = Position(10, 20), Position(-30, 170)
    assert haversine_m(a, b) == pytest.approx(haversine_m(b, a))
    assert haversine_m(Position(0, 0), Position(0, 180)) == pytest.approx(
        math.pi * EARTH_RADIUS_M
    )


def test_crossing_the_antimeridian_takes_the_short_way() -> None:
    """Test that 179.9°E to 179.9°W is ~22 km, not most of the globe."""
    d = haversine_m(Position(0, 179.9), Position(0, -179.9))
    assert d == pytest.approx(22_239, rel=1e-3)


def test_eta() -> None:
    """Test ETA in seconds, and None when the speed is not positive."""
    here, there = Position(0, 0), Position(1, 0)
    assert eta_s(here, there, 36.0) == pytest.approx(haversine_m(here, there) / 10.0)
    assert eta_s(here, there, 0.0) is None


def test_position_doc_round_trip() -> None:
    """Test the legacy {lat, lon} sub-document both ways."""
    p = Position(1.5, -2.25)
    assert position_doc(p) == {"lat": 1.5, "lon": -2.25}
    assert position_from_doc(position_doc(p)) == p
    assert position_doc(None) is None
    assert position_from_doc(None) is None
