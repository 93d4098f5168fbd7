"""A stand-in bridge for the dispatch API's tests: it applies commands by writing the store.

Not the bridge's logic (``bridge.dispatch``, tested end to end elsewhere): only
what the API waits for, as docs/mqtt-contract.md describes it. It subscribes
to ``dispatch/+/+`` on the test broker, keeps every command it receives (so
tests check what was published) and, for the ambulances it is told to serve,
records the outcome in the state's ``commands``: a destination is set (with a
made-up ETA), an alarm moves on if the transition is allowed, else refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from storage.base import ALARMS, AMBULANCES, PLACES, Document, DocumentStore, Write

ALLOWED = {"acknowledge": ("open",), "resolve": ("open", "acknowledged")}
DONE = {"acknowledge": "acknowledged", "resolve": "resolved"}


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    retain: bool


@dataclass
class StandInBridge:
    store: DocumentStore
    # Ambulances whose commands it applies; others it only records (as if no bridge ran).
    serves: set[str] = field(default_factory=set)
    # Alarm ids whose commands it refuses, as the bridge does when an alarm moved meanwhile.
    refuse: set[str] = field(default_factory=set)
    # Seconds between recording a command in the state and writing the alarm, as
    # MongoDB may store them (the state first, its outbox in a later bulk).
    alarm_lag: float = 0.0
    received: list[Received] = field(default_factory=list)
    # Set at each command received (``until_received`` waits on it).
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            topic = str(message.topic)
            payload = json.loads(message.payload)
            self.received.append(Received(topic, payload, message.retain))
            self.arrived.set()
            _, ambulance_id, kind = topic.split("/")
            if ambulance_id not in self.serves:
                continue
            if kind == "destination":
                await self._destination(ambulance_id, payload)
            else:
                await self._alarm(ambulance_id, payload)

    async def until_received(self, count: int, within: float = 10.0) -> None:
        """Wait until ``count`` commands were received in all."""
        async with asyncio.timeout(within):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def _record(
        self, ambulance_id: str, command_id: str, ok: bool, reason: str | None,
        **fields: Any,
    ) -> None:
        state = await self.store.get(AMBULANCES, ambulance_id)
        assert state is not None
        commands = [*state.get("commands", []), {"id": command_id, "ok": ok, "reason": reason}]
        await self.store.apply([Write(AMBULANCES, "upsert", {
            **state, **fields, "commands": commands[-16:],
        })])

    async def _destination(self, ambulance_id: str, command: dict[str, Any]) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        wanted = command["destination"]
        if wanted is None:
            await self._record(ambulance_id, command["command_id"], True, None,
                               destination=None, eta=None)
            return
        if wanted["type"] == "place":
            # The command names the place; the bridge reads it from the store.
            place = await self.store.get(PLACES, wanted["place_id"])
            assert place is not None
            lon, lat = place["geometry"]["coordinates"]
            destination = {
                "type": "place", "place_id": place["_id"], "name": place["name"],
                "kind": place["kind"], "radius_m": place["radius_m"],
            }
        else:
            lat, lon = wanted["lat"], wanted["lon"]
            destination = {"type": "point", "place_id": None, "name": wanted["name"],
                           "kind": None, "radius_m": wanted["radius_m"]}
        destination.update(
            location={"lat": lat, "lon": lon}, set_at=now, set_by=command["by"],
            command_id=command["command_id"], arrived_at=None,
        )
        eta = {"distance_m": 1234.56, "speed_kmh": 40.04, "speed_basis": "recent",
               "window_s": 300.0, "floor_kmh": 15.0, "seconds": 111.0, "arrive_at": now,
               "computed_at": now, "model": "straight-line"}
        await self._record(ambulance_id, command["command_id"], True, None,
                           destination=destination, eta=eta)

    async def _alarm(self, ambulance_id: str, command: dict[str, Any]) -> None:
        alarm_id, action = command["alarm_id"], command["action"]
        alarm = await self.store.get(ALARMS, alarm_id)
        if alarm is None or alarm_id in self.refuse or alarm["status"] not in ALLOWED[action]:
            await self._record(ambulance_id, command["command_id"], False,
                               f"alarm {alarm_id} is already resolved")
            return
        now = datetime.now(UTC).replace(microsecond=0)
        status = DONE[action]
        prefix = "acknowledged" if action == "acknowledge" else "resolved"
        updated: Document = {
            **alarm, "status": status, "active": status != "resolved", "updated_at": now,
            f"{prefix}_at": now, f"{prefix}_by": command["by"], "note": command["note"],
            "transitions": [*alarm.get("transitions", []), {
                "action": status, "at": now, "by": command["by"], "note": command["note"],
                "command_id": command["command_id"],
            }],
        }
        if self.alarm_lag:
            await self._record(ambulance_id, command["command_id"], True, None)
            await asyncio.sleep(self.alarm_lag)
            await self.store.apply([Write(ALARMS, "upsert", updated)])
            return
        await self.store.apply([Write(ALARMS, "upsert", updated)])
        await self._record(ambulance_id, command["command_id"], True, None)


@contextlib.asynccontextmanager
async def stand_in_bridge(store: DocumentStore, port: int) -> AsyncIterator[StandInBridge]:
    """A running ``StandInBridge`` on the broker at ``port`` (subscribed before it yields)."""
    bridge = StandInBridge(store)
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("dispatch/+/+", qos=1)
        task = asyncio.create_task(bridge.run(client))
        try:
            yield bridge
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
