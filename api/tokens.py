"""HTTP and Socket.IO tokens: created, verified, listed and revoked in the document store.

A token is ``aoc_`` + 43 random URL-safe characters, shown once when it is
created. The store keeps only its SHA-256 (the document's ``_id``), with a
name, the rooms it may read (None: every room), whether it may dispatch
(set destinations, acknowledge and resolve alarms) and when it was created and
revoked, so verifying a presented token is one read by ``_id``. Nothing is
cached: a revoked token is refused by the very next request, in every process
that shares the store.

A token limited to some rooms reads only those ambulances: their records and
images over HTTP, their Socket.IO rooms (the id and ``CRASH_NOTIFY_<id>``);
never the shared rooms or fleet-wide lists that carry every ambulance.

A token is read-only unless made with ``dispatch``: a token stored before the
permission existed has no such field and stays read-only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aoc import audit
from bridge.contract import ambulance_id_problem, crash_notify_room
from storage.base import API_TOKENS, Document, DocumentStore, Write

PREFIX = "aoc_"
# Longer than any token we make: a longer string is refused before hashing.
MAX_TOKEN_LENGTH = 128
NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"


class TokenError(ValueError):
    """A token cannot be created or revoked as asked (the message says why)."""


def _now() -> datetime:
    """Now, to the millisecond every store keeps (so what we print is what is stored)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def token_hash(token: str) -> str:
    """The SHA-256 hex of ``token``: its id in the store."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What the store holds about one token (never the token itself)."""

    token_id: str  # the SHA-256 of the token: its _id
    name: str
    rooms: tuple[str, ...] | None  # ambulance ids; None: every ambulance
    created_at: datetime
    revoked_at: datetime | None = None
    # May send dispatch commands (``api.access.require_dispatch``), for its ambulances.
    dispatch: bool = False

    @property
    def limited(self) -> bool:
        """Whether the token reads only some ambulances."""
        return self.rooms is not None

    def may_read(self, ambulance_id: str) -> bool:
        """Whether the token may read this ambulance's records."""
        return self.rooms is None or ambulance_id in self.rooms

    def may_join(self, room: str) -> bool:
        """Whether the token may join this Socket.IO room.

        A limited token: its ambulances' own rooms and crash-record rooms only;
        the shared rooms (``tracking``, ``snap``, ``crash``) carry every
        ambulance, so they are refused.
        """
        if self.rooms is None:
            return True
        return any(room in (aid, crash_notify_room(aid)) for aid in self.rooms)

    def as_json(self) -> dict[str, Any]:
        """The token's description for ``aoc token list --json``."""
        return {
            "name": self.name,
            "rooms": None if self.rooms is None else list(self.rooms),
            "dispatch": self.dispatch,
            "created_at": self.created_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


def _info(doc: Document) -> TokenInfo:
    rooms = doc.get("rooms")
    return TokenInfo(
        token_id=str(doc["_id"]),
        name=str(doc.get("name", "")),
        rooms=None if rooms is None else tuple(str(r) for r in rooms),
        created_at=doc["created_at"],
        revoked_at=doc.get("revoked_at"),
        # Only a stored true: a missing field (an older token) or damage stays read-only.
        dispatch=doc.get("dispatch") is True,
    )


def check_rooms(rooms: Iterable[str] | None) -> tuple[str, ...] | None:
    """``rooms`` as stored: ambulance ids, deduplicated in order; ``TokenError`` if one is not."""
    if rooms is None:
        return None
    out: list[str] = []
    for room in rooms:
        problem = ambulance_id_problem(room)
        if problem is not None:
            raise TokenError(f"room {room!r}: {problem}")
        if room not in out:
            out.append(room)
    if not out:
        raise TokenError("a limited token needs at least one room (ambulance id)")
    return tuple(out)


async def list_tokens(store: DocumentStore, *, revoked: bool = True) -> list[TokenInfo]:
    """Every token, oldest first; ``revoked=False``: the live ones only."""
    found = [_info(doc) async for doc in store.scan(API_TOKENS)]
    return [t for t in found if revoked or t.revoked_at is None]


async def create_token(
    store: DocumentStore,
    name: str,
    rooms: Iterable[str] | None,
    actor: str,
    *,
    dispatch: bool = False,
) -> str:
    """A new token named ``name`` (unique among live tokens), recorded in the audit log.

    ``dispatch``: it may also send dispatch commands (read-only otherwise).

    Returns the token, which is stored nowhere: the caller shows it once.
    ``TokenError`` for a bad or taken name or a bad room. Two concurrent
    creations of one name could both pass the check (management is a
    human's command, one at a time).
    """
    if not re.fullmatch(NAME_PATTERN, name):
        raise TokenError(f"token name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    limited = check_rooms(rooms)
    if any(t.name == name for t in await list_tokens(store, revoked=False)):
        raise TokenError(f"a token named {name!r} exists: revoke it first")
    token = PREFIX + secrets.token_urlsafe(32)
    doc = {
        "_id": token_hash(token),
        "name": name,
        "rooms": None if limited is None else list(limited),
        "dispatch": dispatch,
        "created_at": _now(),
        "revoked_at": None,
        # The ambulance_id index is shared by every collection; tokens have none.
        "ambulance_id": None,
    }
    await store.apply([Write(API_TOKENS, "insert", doc)])
    await audit.record(
        store,
        actor=actor,
        action="token.add",
        target=name,
        details={"rooms": doc["rooms"], "dispatch": dispatch},
    )
    return token


async def revoke_token(store: DocumentStore, name: str, actor: str) -> TokenInfo:
    """Revoke the live token named ``name`` at once; ``TokenError`` if there is none."""
    async for doc in store.scan(API_TOKENS):
        if doc.get("name") == name and doc.get("revoked_at") is None:
            revoked = {**doc, "revoked_at": _now()}
            await store.apply([Write(API_TOKENS, "upsert", revoked)])
            await audit.record(store, actor=actor, action="token.revoke", target=name)
            return _info(revoked)
    raise TokenError(f"no live token named {name!r}")


async def live_token(store: DocumentStore, token_id: str) -> TokenInfo | None:
    """The token stored under ``token_id`` (its hash) if it is still live, else None."""
    doc = await store.get(API_TOKENS, token_id)
    if doc is None or doc.get("revoked_at") is not None:
        return None
    return _info(doc)


async def verify_token(store: DocumentStore, token: object) -> TokenInfo | None:
    """The live token ``token`` is, or None (unknown, revoked, or not a token at all).

    One read by ``_id`` per call: no cache, so a revocation holds at once.
    ``StoreUnavailable`` passes through (the caller answers 503, not 401).
    """
    if not isinstance(token, str) or not token.startswith(PREFIX):
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    return await live_token(store, token_hash(token))
