"""Tests for bridge.speed: state colours and overspeed episodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aoc.config import Settings
from bridge.messages import Position
from bridge.speed import ORANGE, RED, Episode, SpeedRules, advance, classify

RULES = SpeedRules()
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("speed", "state"),
    [
        (0, "GREEN"),
        (79.9999, "GREEN"),
        (80, "GREEN"),
        (80.0001, "ORANGE"),
        (100, "ORANGE"),
        (120, "ORANGE"),
        (120.0001, "RED"),
        (500, "RED"),
    ],
)
def test_classify_boundaries(speed: float, state: str) -> None:
    """Test that every speed gets a colour, with exactly 80 GREEN and exactly 120 ORANGE."""
    assert classify(speed, RULES) == state


def test_rules_from_settings_and_custom_limits() -> None:
    """Test that configured limits drive the classification."""
    rules = SpeedRules.from_settings(Settings(speed_orange_kmh=50, speed_red_kmh=90))
    assert rules == SpeedRules(50, 90)
    assert classify(50, rules) == "GREEN"
    assert classify(51, rules) == "ORANGE"
    assert classify(91, rules) == "RED"
    assert rules.limit(ORANGE) == 50
    assert rules.limit(RED) == 90


def test_rules_reject_inverted_limits() -> None:
    """Test that orange above red is refused at construction."""
    with pytest.raises(ValueError, match="orange"):
        SpeedRules(orange_kmh=130, red_kmh=120)


def _step(episode: Episode | None, speed: float, minute: int, lat: float = 13.0) -> Episode | None:
    return advance(
        episode,
        ambulance_id="332",
        threshold=ORANGE,
        rules=RULES,
        speed_kmh=speed,
        position=Position(lat, 100.0),
        ts=T0 + timedelta(minutes=minute),
    )


def test_no_episode_at_or_below_the_limit() -> None:
    """Test that a point at exactly the limit opens nothing."""
    assert _step(None, 80, 0) is None
    assert _step(None, 10, 0) is None


def test_episode_open_update_close() -> None:
    """Test that an episode opens above, tracks the max and where, and closes at or below."""
    ep = _step(None, 85, 0, lat=13.0)
    assert ep is not None
    assert ep.id == f"332:speed_above_80:{int(T0.timestamp() * 1000)}"
    assert (ep.points, ep.max_speed, ep.closed) == (1, 85, False)
    assert ep.start_location == Position(13.0, 100.0)

    ep = _step(ep, 110, 1, lat=13.1)
    assert ep is not None
    assert (ep.points, ep.max_speed, ep.max_location) == (2, 110, Position(13.1, 100.0))

    ep = _step(ep, 90, 2, lat=13.2)
    assert ep is not None
    assert (ep.points, ep.max_speed, ep.max_location) == (3, 110, Position(13.1, 100.0))

    closed = _step(ep, 80, 3, lat=13.3)
    assert closed is not None and closed.closed
    assert closed.id == ep.id
    assert closed.ended_at == T0 + timedelta(minutes=3)
    assert closed.end_location == Position(13.3, 100.0)
    assert closed.points == 3


def test_red_threshold_is_independent() -> None:
    """Test that the red episode only opens above 120."""
    kwargs = {"ambulance_id": "a", "threshold": RED, "rules": RULES, "position": Position(0, 0)}
    assert advance(None, speed_kmh=120, ts=T0, **kwargs) is None  # type: ignore[arg-type]
    ep = advance(None, speed_kmh=121, ts=T0, **kwargs)  # type: ignore[arg-type]
    assert ep is not None and ep.threshold == "speed_above_120" and ep.limit_kmh == 120


def test_episode_document_round_trip() -> None:
    """Test the SPEED_VIOLATIONS document fields and reading it back."""
    ep = _step(_step(None, 100, 0), 70, 5)
    assert ep is not None
    doc = ep.to_doc()
    assert doc == {
        "_id": ep.id,
        "ambulance_id": "332",
        "threshold": "speed_above_80",
        "limit_kmh": 80,
        "started_at": T0,
        "ended_at": T0 + timedelta(minutes=5),
        "start_location": {"lat": 13.0, "lon": 100.0},
        "end_location": {"lat": 13.0, "lon": 100.0},
        "max_speed": 100,
        "max_location": {"lat": 13.0, "lon": 100.0},
        "points": 1,
        "closed": True,
    }
    assert Episode.from_doc(doc) == ep
