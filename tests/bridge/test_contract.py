"""Tests for bridge.contract: topics, rooms and ambulance ids, built and parsed in one place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from bridge.contract import (
    BRIDGE_KINDS,
    CRASH_NOTIFY_PREFIX,
    DEVICE_KINDS,
    DISPATCH_KINDS,
    LEGACY_KINDS,
    SHARED_ROOMS,
    Kind,
    ambulance_room,
    bridge_filters,
    crash_notify_room,
    device_kind,
    is_legacy_topic,
    legacy_subscription,
    legacy_topic,
    parse_topic,
    reserved_reason,
    room_kind,
    shared_subscription,
    subscription,
    topic,
    topic_ambulance_id,
    valid_ambulance_id,
)
from bridge.service import MAIN_SUBSCRIPTIONS, SNAP_SUBSCRIPTIONS
from bridge.validate import valid_topic_parts

EDGE_IDS = ["332", "a" * 64, "A-z_09", "0", "-", "_", "tracking2", "crash_notify"]
# Any string the id pattern allows; the reserved ones among them are filtered per test.
ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


def test_kinds_are_split_between_devices_the_bridge_and_dispatch() -> None:
    """Test that every kind is published by exactly one side: devices, the bridge or the API."""
    sides = [set(DEVICE_KINDS), set(BRIDGE_KINDS), set(DISPATCH_KINDS)]
    assert set().union(*sides) == set(Kind)
    assert sum(map(len, sides)) == len(Kind)


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("aid", EDGE_IDS)
def test_topic_round_trips_through_parse_topic(aid: str, kind: Kind) -> None:
    """Test that parse_topic gives back the id and kind a topic was built from."""
    built = topic(aid, kind)
    assert built == f"aoc/{aid}/{kind.value}"
    assert parse_topic(built) == (aid, kind)
    assert topic_ambulance_id(built) == aid


@given(aid=ids, kind=st.sampled_from(Kind))
def test_every_valid_id_round_trips(aid: str, kind: Kind) -> None:
    """Test the round trip over the whole id alphabet: valid ids come back, reserved ones never."""
    expected = (aid, kind) if valid_ambulance_id(aid) else None
    assert parse_topic(topic(aid, kind)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "aoc/332",
        "aoc/332/tracking/extra",
        "/aoc/332/tracking",
        "other/332/tracking",
        "AOC/332/tracking",
        "aoc//tracking",
        "aoc/332/",
        "aoc/332/Tracking",
        "aoc/332/location",
        "aoc/+/tracking",
        "aoc/#",
        "aoc/a.b/tracking",
        "aoc/" + "a" * 65 + "/tracking",
        "legacy/332",
        "legacy/332/tracking/extra",
        "legacy/332/status",
        "legacy/332/state",
        "legacy/332/alert",
        "Legacy/332/tracking",
        "legacy/+/tracking",
        "legacy/crash/tracking",
    ],
)
def test_parse_topic_refuses_other_topics(value: str) -> None:
    """Test that a topic no builder makes (or with a bad id, or a filter) parses to None."""
    assert parse_topic(value) is None


@pytest.mark.parametrize(
    "aid", ["tracking", "snap", "crash", "Crash", "TRACKING", "sNaP", "CRASH_NOTIFY_332",
            "crash_notify_", "Crash_Notify_x"]
)
def test_room_names_are_reserved_ids(aid: str) -> None:
    """Test that a shared room's name (any case) or a CRASH_NOTIFY_ room is no ambulance id."""
    assert reserved_reason(aid) is not None
    assert not valid_ambulance_id(aid)
    assert parse_topic(topic(aid, Kind.TRACKING)) is None
    assert topic_ambulance_id(topic(aid, Kind.TRACKING)) is None
    with pytest.raises(ValueError, match="is reserved"):
        valid_topic_parts(topic(aid, Kind.TRACKING))


@given(aid=ids)
def test_an_ambulance_room_never_is_a_shared_room(aid: str) -> None:
    """Test that no valid id's own room can be a shared room or another's crash room."""
    if not valid_ambulance_id(aid):
        return
    room = ambulance_room(aid)
    assert room.casefold() not in SHARED_ROOMS
    assert not room.casefold().startswith(CRASH_NOTIFY_PREFIX.casefold())
    assert room_kind(room) == Kind.TRACKING
    assert room_kind(crash_notify_room(aid)) == Kind.CRASH
    # A crash room is reserved, so no ambulance's own room can shadow it.
    assert not valid_ambulance_id(crash_notify_room(aid))


def test_shared_rooms_carry_their_kind() -> None:
    """Test the kind counted for each shared room's emissions."""
    assert [room_kind(room) for room in SHARED_ROOMS] == [Kind.TRACKING, Kind.SNAP, Kind.CRASH]


@pytest.mark.parametrize("kind", list(Kind))
def test_each_subscription_matches_its_kind_only(kind: Kind) -> None:
    """Test with paho's own matcher that a kind's filter takes its topics and no other kind's."""
    for aid in EDGE_IDS:
        for other in Kind:
            assert topic_matches_sub(subscription(kind), topic(aid, other)) is (other == kind)
    assert not topic_matches_sub(subscription(kind), f"aoc/332/{kind}/extra")
    assert not topic_matches_sub(subscription(kind), f"other/332/{kind}")


def test_the_bridge_subscribes_to_every_device_kind_once_and_to_nothing_it_publishes() -> None:
    """Test that each device and shim topic reaches one lane, and state/alert (ours) reach none."""
    filters = [f for f, _ in MAIN_SUBSCRIPTIONS + SNAP_SUBSCRIPTIONS]
    for kind in Kind:
        matching = [f for f in filters if topic_matches_sub(f, topic("332", kind))]
        assert len(matching) == (1 if kind in DEVICE_KINDS else 0), (kind, matching)
        matching = [f for f in filters if topic_matches_sub(f, f"legacy/332/{kind}")]
        assert len(matching) == (1 if kind in LEGACY_KINDS else 0), (kind, matching)
    # Only snapshots go to the snapshot lane's connection: the shim's too.
    assert [f for f, _ in SNAP_SUBSCRIPTIONS] == [subscription(Kind.SNAP), "legacy/+/snap"]
    assert "legacy/+/snap" not in [f for f, _ in MAIN_SUBSCRIPTIONS]
    assert {qos for _, qos in MAIN_SUBSCRIPTIONS + SNAP_SUBSCRIPTIONS} == {1}


@pytest.mark.parametrize("kind", LEGACY_KINDS)
@pytest.mark.parametrize("aid", EDGE_IDS)
def test_a_legacy_topic_carries_the_device_message_of_its_id(aid: str, kind: Kind) -> None:
    """Test that legacy/<id>/<kind> parses, routes and validates as aoc/<id>/<kind> does."""
    built = legacy_topic(aid, kind)
    assert built == f"legacy/{aid}/{kind.value}"
    assert is_legacy_topic(built) and not is_legacy_topic(topic(aid, kind))
    assert parse_topic(built) == (aid, kind) == valid_topic_parts(built)
    assert topic_ambulance_id(built) == aid
    assert device_kind(built) == kind
    assert topic_matches_sub(legacy_subscription(kind), built)
    assert not topic_matches_sub(legacy_subscription(kind), topic(aid, kind))


def test_the_shim_has_no_status_topic() -> None:
    """Test that the legacy root carries tracking, snap and crash only (no Last Will, no state)."""
    assert set(LEGACY_KINDS) == {Kind.TRACKING, Kind.SNAP, Kind.CRASH}
    for kind in set(Kind) - set(LEGACY_KINDS):
        with pytest.raises(ValueError, match="publishes no"):
            legacy_topic("332", kind)
        assert device_kind(f"legacy/332/{kind}") is None
        with pytest.raises(ValueError, match="expected tracking, snap, crash\\)"):
            valid_topic_parts(f"legacy/332/{kind}")
    with pytest.raises(ValueError, match="expected legacy/<ambulance_id>/<kind>"):
        valid_topic_parts("legacy/332/tracking/x")
    with pytest.raises(ValueError, match="is reserved"):
        valid_topic_parts(legacy_topic("snap", Kind.TRACKING))


def test_bridge_filters_name_both_roots_of_a_kind() -> None:
    """Test the filters each device kind is consumed on, and that ours are refused."""
    assert bridge_filters(Kind.TRACKING) == ("aoc/+/tracking", "legacy/+/tracking")
    assert bridge_filters(Kind.SNAP) == ("aoc/+/snap", "legacy/+/snap")
    assert bridge_filters(Kind.CRASH) == ("aoc/+/crash", "legacy/+/crash")
    assert bridge_filters(Kind.STATUS) == ("aoc/+/status",)
    for kind in BRIDGE_KINDS:
        with pytest.raises(ValueError):
            bridge_filters(kind)


def test_a_shared_subscription_wraps_a_filter_in_its_group() -> None:
    """Test the $share form several bridges take turns on, and that a bad group is refused."""
    assert shared_subscription("aoc-bridges", "legacy/+/snap") == "$share/aoc-bridges/legacy/+/snap"
    for group in ("", "a/b", "+", "#", "g+"):
        with pytest.raises(ValueError, match="share group"):
            shared_subscription(group, "aoc/+/tracking")


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_the_validator_agrees_with_parse_topic_on_device_topics(kind: Kind) -> None:
    """Test that bridge.validate takes a device topic as the contract parses it."""
    for aid in EDGE_IDS:
        assert valid_topic_parts(topic(aid, kind)) == parse_topic(topic(aid, kind))


@pytest.mark.parametrize("kind", BRIDGE_KINDS)
def test_the_validator_refuses_what_the_bridge_publishes(kind: Kind) -> None:
    """Test that a device publishing on state or alert is refused by kind, naming the kinds."""
    with pytest.raises(ValueError, match="expected tracking, snap, crash, status"):
        valid_topic_parts(topic("332", kind))


def test_device_kind_routes_by_the_last_level_whatever_the_id() -> None:
    """Test the kind used to pick a lane and a metric label, before the id is checked."""
    assert [device_kind(topic("332", kind)) for kind in DEVICE_KINDS] == list(DEVICE_KINDS)
    # A bad or reserved id still names its kind: a big bad snap stays in the snapshot lane.
    assert device_kind("aoc/bad..id!/snap") == Kind.SNAP
    assert device_kind(topic("crash", Kind.SNAP)) == Kind.SNAP
    assert device_kind("legacy/bad..id!/snap") == Kind.SNAP
    for value in (topic("332", Kind.STATE), topic("332", Kind.ALERT), "aoc/332", "snap",
                  "aoc/332/snap/x", "x/332/snap", "legacy/332/status", "legacy/332/snap/x"):
        assert device_kind(value) is None, value
