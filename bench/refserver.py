"""The fan-out reference: a stock python-socketio ``AsyncServer`` and nothing else.

``python -m bench.refserver '<json>'``: config ``port``, ``ambulances``,
``rate`` (points a second, in all), ``duration``, ``prefix``. It serves
Socket.IO under uvicorn (as ``aoc serve`` does), with the legacy
``room_join`` (answered with ``room joined: <room>``), and on ``go`` emits
points in the legacy tracking shape, round robin over the ambulances, to room
``<ambulance_id>`` and to room ``tracking``: the two emits the bridge makes
per point. No token, no store, no MQTT: what it delivers is the ceiling of
python-socketio on this machine for that many clients.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import socketio
import uvicorn

from bench.children import emit_result
from bridge import contract
from tests import services


def _server() -> socketio.AsyncServer:
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")

    @sio.on(contract.JOIN_EVENT)  # type: ignore[untyped-decorator]
    async def join(sid: str, room: object) -> None:
        if isinstance(room, str) and room:
            await sio.enter_room(sid, room)
            await sio.emit(contract.EVENT, f"room joined: {room}", to=sid)

    return sio


async def _emit(sio: socketio.AsyncServer, config: dict[str, Any]) -> int:
    rate, duration = float(config["rate"]), float(config["duration"])
    ids = [f"{config['prefix']}{i:05d}" for i in range(int(config["ambulances"]))]
    total = max(1, round(rate * duration))
    start = time.monotonic()
    for n in range(total):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        aid = ids[n % len(ids)]
        body = {
            "ambulance_id": aid,
            "tracking_latitude": 13.7563,
            "tracking_longitude": 100.5018,
            "tracking_speed": 45.5,
            "tracking_heading": 90,
            "ts": int(time.time() * 1000),
            "seq": n,
        }
        data = json.dumps(body, separators=(",", ":"))
        await sio.emit(contract.EVENT, data, room=aid)
        await sio.emit(contract.EVENT, data, room=contract.TRACKING_ROOM)
    return total


async def _main(config: dict[str, Any]) -> None:
    sio = _server()
    app = socketio.ASGIApp(sio)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=int(config["port"]), log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    await asyncio.to_thread(services.wait_for_port, int(config["port"]))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("go", ""):
        pass
    started = time.time()
    emitted = await _emit(sio, config)
    emit_result({"emitted": emitted, "first": started, "last": time.time()})
    await loop.run_in_executor(None, sys.stdin.readline)  # stays up until stop
    server.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(_main(json.loads(sys.argv[1])))
