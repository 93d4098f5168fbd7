"""The HTTP API (read API, legacy shim, health) and the Socket.IO server.

``create_app(deps)`` builds the FastAPI app of port 5000; ``create_sio()`` and
``create_realtime_app(sio)`` the Socket.IO app of port 5050, to which the
bridge emits directly or through Redis.
"""

from api.app import create_app
from api.deps import ApiDeps, Publisher
from api.live import LiveManager, LiveRedisManager, LiveStream
from api.realtime import (
    RevocationSweep,
    SocketGate,
    connected_clients,
    create_realtime_app,
    create_sio,
)

__all__ = [
    "ApiDeps",
    "LiveManager",
    "LiveRedisManager",
    "LiveStream",
    "Publisher",
    "RevocationSweep",
    "SocketGate",
    "connected_clients",
    "create_app",
    "create_realtime_app",
    "create_sio",
]
