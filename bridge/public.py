"""How records look to the new interfaces (the read API, MQTT ``state`` and ``alert``).

Two rules, applied at the output boundary only (the store keeps full precision,
so sums and distances accumulate no rounding error):

- **One id name.** A record's id is ``id`` (the store's ``_id``), in the read
  API and in the MQTT ``alert`` alike. The legacy Socket.IO payloads keep
  ``_id`` and every digit: they are the legacy contract (``docs/legacy.md``).
- **Numbers rounded to their meaning.** Metres to 0.1 m and speeds to 0.1 km/h:
  a GPS fix is not more precise, and ``37.47599999999998`` (m/s times 3.6) reads
  as a bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ID", "KMH_FIELDS", "METRE_FIELDS", "kmh", "metres", "public_record"]

ID = "id"
# Decimals kept: 0.1 m, 0.1 km/h.
METRE_DIGITS = 1
KMH_DIGITS = 1
# Fields by unit, wherever they appear in a record (top level).
METRE_FIELDS = frozenset({"covered_distance", "accuracy", "altitude"})
KMH_FIELDS = frozenset({"speed", "avg_speed"})


def metres(value: float | None) -> float | None:
    """A distance in metres, to 0.1 m (None stays None)."""
    return None if value is None else round(value, METRE_DIGITS)


def kmh(value: float | None) -> float | None:
    """A speed in km/h, to 0.1 km/h (None stays None)."""
    return None if value is None else round(value, KMH_DIGITS)


def _rounded(name: str, value: Any) -> Any:
    # A bool is an int: never a measure.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return value
    if name in METRE_FIELDS:
        return metres(value)
    if name in KMH_FIELDS:
        return kmh(value)
    return value


def public_record(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` as the new interfaces show it: ``_id`` named ``id`` (first), measures rounded."""
    out: dict[str, Any] = {}
    if "_id" in doc:
        out[ID] = doc["_id"]
    for name, value in doc.items():
        if name != "_id":
            out[name] = _rounded(name, value)
    return out
