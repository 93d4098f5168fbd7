"""The dependency container of the HTTP API and the ``Annotated`` aliases routes use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, HTTPException, Path, Request
from pydantic import AfterValidator

from aoc.config import Settings
from api.signing import UrlSigner, secret_key
from bridge.contract import AMBULANCE_ID, reserved_reason
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


class Slots:
    """A bound on concurrent work that refuses at once instead of queueing.

    A queue would hold each waiting client's connection (and its body, once
    read) for as long as the work ahead of it takes; a refusal costs nothing.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0

    def try_take(self) -> bool:
        """Take a slot if one is free; the caller must ``release`` it."""
        if self.used >= self.size:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by ``try_take``."""
        self.used -= 1


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
    # Legacy uploads being read and encoded at once (settings.max_concurrent_uploads).
    upload_slots: Slots = field(init=False)
    _signer: UrlSigner | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.upload_slots = Slots(self.settings.max_concurrent_uploads)

    @property
    def signer(self) -> UrlSigner:
        """The image URL signer, made on first use (a development key is a file under data_dir)."""
        if self._signer is None:
            self._signer = UrlSigner(
                secret_key(self.settings), ttl=self.settings.image_url_ttl_seconds
            )
        return self._signer


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
