"""The dependency container of the HTTP API and the ``Annotated`` aliases routes use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, HTTPException, Path, Request
from pydantic import AfterValidator

from aoc.config import Settings
from bridge.ids import AMBULANCE_ID
from bridge.rooms import reserved_reason
from storage.base import DocumentStore, ObjectStore

if TYPE_CHECKING:
    from storage.cache import StateCache

# The contract's ambulance id: it becomes a storage path, a topic level and a room name.
AMBULANCE_ID_PATTERN = f"^{AMBULANCE_ID.pattern}$"


def not_reserved(value: str | None) -> str | None:
    """``value`` unless it names a shared Socket.IO room (then a 422 saying so)."""
    reason = None if value is None else reserved_reason(value)
    if reason is not None:
        raise ValueError(reason)
    return value


NotReserved = AfterValidator(not_reserved)


class Publisher(Protocol):
    """What the legacy shim needs from an MQTT client (``broker.client.MqttClient``)."""

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
    ) -> None:
        """Return once the broker acknowledged; raise on timeout or disconnect."""


ReadyCheck = Callable[[], Awaitable[None]]


@dataclass
class ApiDeps:
    """Everything the routes use; built once by the entry point."""

    settings: Settings
    store: DocumentStore
    objects: ObjectStore
    cache: StateCache | None = None
    publisher: Publisher | None = None
    # Name -> check that raises when that component is not ready.
    ready_checks: Mapping[str, ReadyCheck] = field(default_factory=dict)
    # How long the legacy shim waits for the broker's PUBACK before answering 503.
    publish_timeout: float = 5.0


def get_deps(request: Request) -> ApiDeps:
    """The container ``create_app`` stored on the application."""
    deps: ApiDeps = request.app.state.deps
    return deps


def get_publisher(deps: Annotated[ApiDeps, Depends(get_deps)]) -> Publisher:
    """The MQTT publisher, or 503 when this process has none."""
    if deps.publisher is None:
        raise HTTPException(503, detail="the MQTT broker is not configured; retry later")
    return deps.publisher


Deps = Annotated[ApiDeps, Depends(get_deps)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
AmbulanceId = Annotated[
    str,
    Path(pattern=AMBULANCE_ID_PATTERN, description="Ambulance id (letters, digits, _ and -)"),
    NotReserved,
]
