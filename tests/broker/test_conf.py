"""Rendering mosquitto.conf, and what the rendered packet bound does to a client."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from aoc.config import Settings
from bridge.validate import Limits
from broker import MqttClient, MqttError
from broker import conf as broker_conf
from tests import services


def test_max_packet_size_follows_the_snapshot_limits(tmp_path: Path) -> None:
    """Test that the rendered bound admits a maximum-size JSON snapshot and little more."""
    settings = Settings(max_image_bytes=1_000_000, max_upload_files=3)
    largest = Limits.from_settings(settings).max_snap_json_bytes
    bound = broker_conf.packet_bound(largest)
    text = broker_conf.render(
        mqtt_port=1, ws_port=2, data_dir=tmp_path, max_packet_size=bound
    )
    assert [line for line in text.splitlines() if line.startswith("max_packet_size")] == [
        f"max_packet_size {bound}"
    ]
    assert largest < bound <= largest + 4096
    # The checked-in file (docker-compose uses it as is) matches the default settings.
    checked_in = broker_conf.PROJECT_CONF.read_text()
    default = broker_conf.packet_bound(Limits.from_settings(Settings()).max_snap_json_bytes)
    assert f"\nmax_packet_size {default}\n" in checked_in


async def test_a_packet_over_the_bound_closes_the_connection(tmp_path: Path) -> None:
    """Test what a client past max_packet_size gets: its connection closed, no PUBACK."""
    with services.mosquitto(tmp_path, max_packet_size=4096) as broker:
        topic = f"aoc/{uuid.uuid4().hex[:8]}/snap"
        async with MqttClient(
            host="127.0.0.1",
            port=broker.port,
            client_id=f"big-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            manual_ack=False,
            reconnect_min=0.05,
            reconnect_max=0.5,
        ) as client:
            await client.publish(topic, bytes(1000), timeout=5)
            with pytest.raises(MqttError, match="connection lost"):
                await client.publish(topic, bytes(8000), timeout=5)
