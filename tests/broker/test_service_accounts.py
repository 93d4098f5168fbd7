"""Each AOC process logs in with the accounts it needs, and no other."""

from __future__ import annotations

from pathlib import Path

from broker import accounts
from tests import services
from tests.broker.conftest import new_id


async def test_a_bridge_alone_needs_no_shim_account_in_legacy_mode(
    secure_broker: services.Service,
    admin: accounts.DynsecAdmin,
    redis_server: services.Service,
    tmp_path: Path,
) -> None:
    """Test `aoc bridge` with legacy mode on and only the bridge's account: it gets ready.

    The legacy shim runs in `aoc api` (or `aoc serve`); a bridge alone that
    also logged in as the shim was refused by the broker and restarted forever.
    """
    username, password = new_id("bridge"), "fake-bridge-account"
    await admin.put_client(username, password, accounts.bridge_acls())
    bridge = services.aoc(
        "bridge",
        tmp_path,
        mqtt_port=secure_broker.port,
        redis_port=redis_server.port,
        env={"AOC_MQTT_USERNAME": username, "AOC_MQTT_PASSWORD": password},
        legacy=True,
    )
    with bridge:  # started once /readyz says the broker side is ok
        assert bridge.proc is not None and bridge.proc.poll() is None
