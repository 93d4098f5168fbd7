"""The dispatcher's side of `aoc simulate --places`: the HTTP API, with a dispatch token.

It imports the places, sets each ambulance's destination before it leaves
(``PUT /api/v1/ambulances/{id}/destination``) and, at the end, reads back the
arrivals, enters and active alarms of the fleet. Requests go through the
standard library (``urllib``, on a thread): the simulator needs no HTTP client
package. A failure (API down, a refused token) is logged once per cause and
counted; the fleet drives on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

# Above the API's own wait for the bridge (AOC_DISPATCH_WAIT_SECONDS, 5 by default).
_TIMEOUT = 15.0
# A new ambulance is unknown (404) until the bridge has stored its first point.
_UNKNOWN_RETRIES = 10
_UNKNOWN_WAIT = 1.0


@dataclass(slots=True)
class DispatchStats:
    """Destinations set and failed; what the API reported at the end (None: not read)."""

    destinations: int = 0
    failed: int = 0
    arrivals: int | None = None
    enters: int | None = None
    active_alarms: int | None = None

    def __str__(self) -> str:
        def shown(n: int | None) -> str:
            return "?" if n is None else str(n)

        return (
            f"destinations set {self.destinations}  failed {self.failed}  "
            f"arrivals {shown(self.arrivals)}  enters {shown(self.enters)}  "
            f"active alarms {shown(self.active_alarms)}"
        )


class ApiError(Exception):
    """A request that did not succeed; ``status`` is the HTTP status (0: none came)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class Dispatcher:
    """Dispatch requests to the API at ``base_url`` with ``token``."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.stats = DispatchStats()
        self._causes: set[str] = set()

    def _warn(self, what: str, exc: ApiError) -> None:
        cause = f"{what}: {exc}"
        if cause not in self._causes:  # the next ones are only counted
            self._causes.add(cause)
            log.warning("%s (the simulation goes on)", cause)

    def _request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            with_detail = json.loads(detail).get("detail") if detail.startswith("{") else detail
            raise ApiError(exc.code, f"HTTP {exc.code} {with_detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, f"{self.base_url}: {reason}") from None

    async def call(self, method: str, path: str, body: object = None) -> Any:
        return await asyncio.to_thread(self._request, method, path, body)

    async def import_places(self, geojson: object) -> bool:
        """POST the places; whether it worked (a failure is logged)."""
        try:
            answer = await self.call("POST", "/api/v1/places", geojson)
        except ApiError as exc:
            self._warn("cannot import the places", exc)
            return False
        log.info("places imported: %s added, %s updated", answer["added"], answer["updated"])
        return True

    async def set_destination(self, ambulance_id: str, place_id: str) -> bool:
        """Send ``ambulance_id`` to ``place_id``; whether the API took it (200, or 202 pending)."""
        path = f"/api/v1/ambulances/{urllib.parse.quote(ambulance_id)}/destination"
        for attempt in range(_UNKNOWN_RETRIES):
            try:
                await self.call("PUT", path, {"place_id": place_id})
            except ApiError as exc:
                unknown = exc.status == 404 and "no ambulance" in str(exc)
                if unknown and attempt + 1 < _UNKNOWN_RETRIES:
                    await asyncio.sleep(_UNKNOWN_WAIT)
                    continue
                self.stats.failed += 1
                self._warn("cannot set a destination", exc)
                return False
            self.stats.destinations += 1
            return True
        raise AssertionError("unreachable")  # the loop returns

    async def _count(self, path: str, query: dict[str, str]) -> int:
        count, cursor = 0, None
        while True:
            page = await self.call(
                "GET", f"{path}?{urllib.parse.urlencode({**query, **_cursor(cursor)})}"
            )
            count += len(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return count

    async def read_back(self, ambulance_ids: list[str], since: datetime) -> None:
        """Count the fleet's arrivals and enters since ``since``, and its active alarms."""
        arrivals = enters = alarms = 0
        try:
            for aid in ambulance_ids:
                events = {"ambulance_id": aid, "since": since.isoformat(), "limit": "500"}
                arrivals += await self._count("/api/v1/events", events | {"type": "arrival"})
                enters += await self._count("/api/v1/events", events | {"type": "enter"})
                alarms += await self._count(
                    "/api/v1/alarms", {"ambulance_id": aid, "status": "active", "limit": "500"}
                )
        except ApiError as exc:
            self._warn("cannot read the events and alarms back", exc)
            return
        self.stats.arrivals, self.stats.enters, self.stats.active_alarms = arrivals, enters, alarms


def _cursor(cursor: str | None) -> dict[str, str]:
    return {} if cursor is None else {"cursor": cursor}
