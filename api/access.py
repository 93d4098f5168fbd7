"""Who may use what: tokens on HTTP, source networks for legacy mode and /metrics.

Rules, in one place (Socket.IO applies the same ones in ``api.realtime``):

- The read API (``/api/v1/...``) needs a live token, as ``Authorization:
  Bearer <token>`` or ``?token=`` (kiosks); else 401 with ``WWW-Authenticate:
  Bearer``. A token limited to some ambulances gets 403 for any other one,
  and for the fleet-wide diagnostics (dead letters, crashes of all).
- Dispatch commands (a destination, acknowledging or resolving an alarm)
  need a token made with ``--dispatch`` that may read that ambulance; a
  read-only token gets 403 (``require_dispatch``).
- ``/dashboard`` (the page) needs a token as the read API does; its scripts
  and libraries (``/dashboard/static``, ``/dashboard/vendor``) carry no data.
- ``/files/<key>`` needs a token, or a signed URL that has not expired
  (``api.signing``); a bad or expired signature is a 403.
- ``/metrics`` needs ``AOC_METRICS_TOKEN`` as a bearer token; unset, a client
  address in ``AOC_METRICS_NETWORKS``.
- The legacy POST endpoints answer only in legacy mode (``AOC_LEGACY_MODE``)
  and only to client addresses in ``AOC_LEGACY_NETWORKS``.
- ``/healthz``, ``/readyz`` (probes), ``/``, ``/error_codes``, ``/docs``,
  ``/redoc`` (their scripts under ``/docs-assets/``) and ``/openapi.json``
  stay open: they carry no data.

Client addresses are the connection's peer as uvicorn reports it
(``request.client``); ``X-Forwarded-For`` is never trusted, so a reverse
proxy in front makes every client the proxy's address.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from aoc.config import Settings
from api.deps import Deps
from api.tokens import TokenInfo, verify_token

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# OpenAPI security schemes; auto_error off: the answer is ours (401 with a JSON detail).
bearer_scheme = HTTPBearer(
    auto_error=False, description="A token from `aoc token add` (`aoc_...`)"
)
query_scheme = APIKeyQuery(
    name="token", auto_error=False, description="The same token as a query parameter (kiosks)"
)

UNAUTHORIZED = {
    "description": "No token, or an unknown or revoked one",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
}
FORBIDDEN = {"description": "The token is limited to other ambulances"}
DISPATCH_FORBIDDEN = {
    "description": "The token is read-only (not made with `--dispatch`), or limited to "
    "other ambulances"
}

LEGACY_REFUSED = (
    "the legacy endpoints are off: devices should publish over MQTT with a device account "
    "(`aoc device add <id>`); to serve legacy devices, set AOC_LEGACY_MODE=1 and list their "
    "networks in AOC_LEGACY_NETWORKS"
)


def parse_networks(text: str, variable: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs; ``ValueError`` naming ``variable`` for a bad one."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            out.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{variable}: {exc}") from None
    return tuple(out)


def address_in(host: str | None, networks: Sequence[Network]) -> bool:
    """Whether the client address ``host`` is in one of ``networks`` (None: never)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # not an IP (a test client's name, a unix socket)
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def legacy_networks(settings: Settings) -> tuple[Network, ...]:
    return parse_networks(settings.legacy_networks, "AOC_LEGACY_NETWORKS")


def legacy_allowed(settings: Settings, host: str | None) -> bool:
    """Whether legacy clients (no credentials) at ``host`` are served."""
    return settings.legacy_mode and address_in(host, legacy_networks(settings))


def metrics_refusal(
    settings: Settings, host: str | None, authorization: str | None
) -> tuple[int, str] | None:
    """Why a client may not read /metrics, as (status, detail); None when it may.

    With ``AOC_METRICS_TOKEN`` set, that bearer token is required (401 without
    it); unset, the client's address must be in ``AOC_METRICS_NETWORKS`` (403).
    """
    if settings.metrics_token is not None and settings.metrics_token.get_secret_value():
        expected = f"Bearer {settings.metrics_token.get_secret_value()}"
        if authorization is not None and hmac.compare_digest(
            authorization.encode(), expected.encode()
        ):
            return None
        return 401, "/metrics: send AOC_METRICS_TOKEN as a bearer token"
    networks = parse_networks(settings.metrics_networks, "AOC_METRICS_NETWORKS")
    if address_in(host, networks):
        return None
    return 403, (
        f"/metrics: {host} is not in AOC_METRICS_NETWORKS; set AOC_METRICS_TOKEN to scrape "
        "from elsewhere"
    )


def client_host(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def presented_token(
    credentials: HTTPAuthorizationCredentials | None, query_token: str | None
) -> str | None:
    """The token a request presents: the bearer header first, else ``?token=``."""
    if credentials is not None:
        return credentials.credentials
    return query_token


async def optional_token(
    deps: Deps,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    query_token: Annotated[str | None, Depends(query_scheme)],
) -> TokenInfo | None:
    """The request's live token, None when it presents none; 401 for a bad one."""
    token = presented_token(credentials, query_token)
    if token is None:
        return None
    info = await verify_token(deps.store, token)
    if info is None:
        raise unauthorized("invalid or revoked token")
    return info


async def require_token(
    info: Annotated[TokenInfo | None, Depends(optional_token)],
) -> TokenInfo:
    """The request's live token; 401 without one."""
    if info is None:
        raise unauthorized(
            "a token is required: send `Authorization: Bearer <token>` (or ?token=); "
            "`aoc token add <name>` makes one"
        )
    return info


def require_ambulance(info: TokenInfo, ambulance_id: str) -> None:
    """403 unless ``info`` may read ``ambulance_id``."""
    if not info.may_read(ambulance_id):
        raise HTTPException(403, detail=f"this token may not read ambulance {ambulance_id!r}")


def require_fleet(info: TokenInfo, what: str) -> None:
    """403 for a limited token asking for every ambulance's ``what``."""
    if info.limited:
        raise HTTPException(
            403, detail=f"this token is limited to some ambulances: it may not read {what}"
        )


def require_dispatch(info: TokenInfo, ambulance_id: str | None) -> None:
    """403 unless ``info`` may send dispatch commands about ``ambulance_id``.

    ``None``: an action on the whole fleet, for a token that reads every ambulance.
    """
    if not info.dispatch:
        raise HTTPException(
            403,
            detail=f"token {info.name!r} is read-only: dispatch commands need a token made "
            "with `aoc token add <name> --dispatch`",
        )
    if ambulance_id is None:
        if info.limited:
            raise HTTPException(
                403, detail="this token is limited to some ambulances: it may not dispatch "
                "the whole fleet",
            )
    elif not info.may_read(ambulance_id):
        raise HTTPException(
            403, detail=f"this token may not dispatch ambulance {ambulance_id!r}"
        )


async def require_legacy(request: Request, deps: Deps) -> None:
    """403 (saying how to enable it) unless legacy mode serves this client."""
    if not legacy_allowed(deps.settings, client_host(request)):
        raise HTTPException(403, detail=LEGACY_REFUSED)


async def require_metrics(request: Request, deps: Deps) -> None:
    """401/403 unless the client may read /metrics (``metrics_refusal``)."""
    refusal = metrics_refusal(
        deps.settings, client_host(request), request.headers.get("authorization")
    )
    if refusal is not None:
        status, detail = refusal
        if status == 401:
            raise unauthorized(detail)
        raise HTTPException(status, detail=detail)


Token = Annotated[TokenInfo, Depends(require_token)]
OptionalToken = Annotated[TokenInfo | None, Depends(optional_token)]
