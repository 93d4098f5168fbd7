"""Rendering mosquitto.conf: where the rendered broker listens, what its packet bound does."""

from __future__ import annotations

import contextlib
import socket
import sys
import uuid
from pathlib import Path

import pytest

from aoc import credentials, supervise
from aoc.config import Settings
from bridge.validate import Limits
from broker import MqttClient, MqttError
from broker import conf as broker_conf
from tests import services


def listener_lines(text: str) -> list[str]:
    """The ``listener`` lines and the ``socket_domain`` lines that limit them."""
    return [line for line in text.splitlines() if line.startswith(("listener", "socket_domain"))]


def other_local_addresses() -> list[str]:
    """IPv4 addresses of this machine besides 127.0.0.1: where a loopback broker must refuse."""
    # Linux routes all of 127.0.0.0/8 to the loopback interface: 127.0.0.2 is
    # always a local address there, and a listener on 127.0.0.1 is not on it.
    found = {"127.0.0.2"} if sys.platform == "linux" else set()
    # A UDP "connect" sends nothing; it picks the address of the interface
    # that routes outwards (the host's non-loopback address), if there is one.
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        found.add(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        found.add(socket.gethostbyname(socket.gethostname()))
    found.discard("127.0.0.1")
    return sorted(found)


def test_both_listeners_bind_the_given_address(tmp_path: Path) -> None:
    """Test that the rendered MQTT and WebSocket listeners name their port and the bind address."""

    def render(bind_host: str) -> str:
        return broker_conf.render(
            mqtt_port=1883, ws_port=9001, bind_host=bind_host, data_dir=tmp_path, auth=False
        )

    text = render("127.0.0.1")
    # Without socket_domain ipv4, Mosquitto 2.0's WebSocket listener ignores the address.
    assert listener_lines(text) == [
        "listener 1883 127.0.0.1",
        "socket_domain ipv4",
        "listener 9001 127.0.0.1",
        "socket_domain ipv4",
    ]
    text = render("::1")
    assert listener_lines(text) == ["listener 1883 ::1", "listener 9001 ::1"]
    with pytest.raises(ValueError, match="needs an IP address"):
        render("localhost")
    # docker-compose mounts the checked-in file: no address, every interface of the container.
    checked_in = broker_conf.PROJECT_CONF.read_text()
    assert listener_lines(checked_in) == ["listener 1883", "listener 9001"]


def test_the_broker_bind_address_defaults_to_the_bind_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test AOC_MQTT_BIND_HOST: unset it follows AOC_BIND_HOST, whose default is loopback."""
    monkeypatch.delenv("AOC_BIND_HOST", raising=False)
    monkeypatch.delenv("AOC_MQTT_BIND_HOST", raising=False)
    assert Settings(_env_file=None).resolved_mqtt_bind_host == "127.0.0.1"
    monkeypatch.setenv("AOC_BIND_HOST", "0.0.0.0")
    assert Settings(_env_file=None).resolved_mqtt_bind_host == "0.0.0.0"
    monkeypatch.setenv("AOC_MQTT_BIND_HOST", "192.0.2.7")
    settings = Settings(_env_file=None)
    assert (settings.bind_host, settings.resolved_mqtt_bind_host) == ("0.0.0.0", "192.0.2.7")


async def test_aoc_up_runs_a_broker_that_listens_only_on_its_bind_address(tmp_path: Path) -> None:
    """Test the broker `aoc up` plans: it accepts on the bind address and refuses on any other.

    The configuration is the one `aoc up` renders from the settings, run by a
    real Mosquitto; each other address is a local one (so nothing but the
    missing listener can refuse the connection).
    """
    others = other_local_addresses()
    assert others, "no local IPv4 address besides 127.0.0.1 (Linux always has 127.0.0.2)"
    port, ws_port = services.free_port(), services.free_port()
    settings = Settings(
        bind_host="127.0.0.1", mqtt_port=port, mqtt_ws_port=ws_port, data_dir=tmp_path / "data"
    )
    children = {child.name: child for child in await supervise.plan(settings)}
    mosquitto = children["mosquitto"]
    # Started, it waits until both ports accept on 127.0.0.1.
    broker = services.Service("mosquitto", mosquitto.argv, port, tmp_path / "run",
                              extra_ports=(ws_port,))
    with broker:
        assert mosquitto.after_start is not None  # `aoc up` makes the accounts
        await mosquitto.after_start()
        device = "SIM001"
        password = credentials.load(settings.resolved_credentials_file).devices[device]
        # MQTT and MQTT over WebSocket connect on the bind address, and publish.
        for listening, transport in ((port, "tcp"), (ws_port, "websockets")):
            async with MqttClient(
                host="127.0.0.1",
                port=listening,
                client_id=f"bind-{uuid.uuid4().hex[:8]}",
                clean_session=True,
                manual_ack=False,
                transport=transport,
                username=device,
                password=password,
            ) as client:
                await client.publish(f"aoc/{device}/status", b"{}", timeout=5)
        for address in others:
            for listening in (port, ws_port):
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((address, listening), timeout=5).close()


def test_max_packet_size_follows_the_snapshot_limits(tmp_path: Path) -> None:
    """Test that the rendered bound admits a maximum-size JSON snapshot and little more."""
    settings = Settings(max_image_bytes=1_000_000, max_upload_files=3)
    largest = Limits.from_settings(settings).max_snap_json_bytes
    bound = broker_conf.packet_bound(largest)
    text = broker_conf.render(
        mqtt_port=1, ws_port=2, bind_host="127.0.0.1", data_dir=tmp_path, max_packet_size=bound,
        auth=False,
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


def auth_lines(text: str) -> list[str]:
    """The lines that decide who may connect."""
    return [line for line in text.splitlines() if line.startswith(("allow_anonymous", "plugin"))]


def test_authentication_is_on_unless_explicitly_turned_off(tmp_path: Path) -> None:
    """Test the plugin lines: this machine's plugin and file when on, none (anonymous) when off."""
    checked_in = broker_conf.PROJECT_CONF.read_text()
    # docker-compose mounts the file as is: the eclipse-mosquitto image's paths.
    assert auth_lines(checked_in) == [
        "allow_anonymous false",
        "plugin /usr/lib/mosquitto_dynamic_security.so",
        "plugin_opt_config_file /mosquitto/data/dynamic-security.json",
    ]
    common = {"mqtt_port": 1, "ws_port": 2, "bind_host": "127.0.0.1", "data_dir": tmp_path}
    on = auth_lines(broker_conf.render(**common, dynsec_file=tmp_path / "accounts.json"))
    plugin = on[1].removeprefix("plugin ")
    assert on == [
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {(tmp_path / 'accounts.json').resolve()}",
    ]
    assert Path(plugin).is_file() and plugin.endswith("/mosquitto_dynamic_security.so")
    off = auth_lines(broker_conf.render(**common, auth=False))
    assert off == ["allow_anonymous true"]
    with pytest.raises(ValueError, match="dynamic security file"):
        broker_conf.render(**common)  # on by default, and it needs the file


def test_root_never_follows_a_link_the_brokers_user_planted(tmp_path: Path) -> None:
    """Test that handing the broker's files over refuses a link in place of its data directory.

    The broker's user owns the directory that holds its data directory: a link
    there had root create and chown the files it points to (root's own secrets).
    """
    victim = tmp_path / "victim"
    victim.mkdir()
    secret = victim / "secret"
    secret.write_text("root only\n")
    before = secret.stat()
    broker_dir = tmp_path / "mosquitto"
    broker_dir.mkdir()
    (broker_dir / "data").symlink_to(victim)
    with pytest.raises(ValueError, match="is a symbolic link"):
        broker_conf.write(
            broker_dir / "mosquitto.conf", mqtt_port=1883, ws_port=9001, bind_host="127.0.0.1",
            data_dir=broker_dir / "data", auth=False, user=broker_conf.BROKER_USER,
        )
    after = secret.stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert sorted(p.name for p in victim.iterdir()) == ["secret"]
