"""HTTP/Socket.IO tokens on every document store: only hashes stored, revocation at once."""

from __future__ import annotations

import hashlib

import pytest

from api.tokens import (
    TokenError,
    create_token,
    list_tokens,
    revoke_token,
    token_hash,
    verify_token,
)
from storage.base import API_TOKENS, DocumentStore


async def test_a_token_is_stored_as_its_hash_only(doc_store: DocumentStore) -> None:
    """Test that the store holds the SHA-256 of the token, never the token, with its rooms."""
    token = await create_token(doc_store, "kiosk-1", ["AMB-1", "AMB-2", "AMB-1"], actor="tests")
    assert token.startswith("aoc_")
    assert len(token) == len("aoc_") + 43  # secrets.token_urlsafe(32)
    stored = [doc async for doc in doc_store.scan(API_TOKENS)]
    assert [doc["_id"] for doc in stored] == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in repr(stored)
    assert token.removeprefix("aoc_") not in repr(stored)
    info = await verify_token(doc_store, token)
    assert info is not None
    assert (info.name, info.rooms, info.revoked_at) == ("kiosk-1", ("AMB-1", "AMB-2"), None)
    assert info.token_id == token_hash(token)


async def test_verify_refuses_what_is_not_a_live_token(doc_store: DocumentStore) -> None:
    """Test that unknown, malformed, oversized and revoked tokens all verify as None."""
    token = await create_token(doc_store, "ops", None, actor="tests")
    other = await create_token(doc_store, "ops-2", None, actor="tests")
    for bad in (None, 42, "", "aoc_", token[:-1], token.removeprefix("aoc_"), token + "x" * 200):
        assert await verify_token(doc_store, bad) is None, bad
    revoked = await revoke_token(doc_store, "ops", actor="tests")
    assert revoked.revoked_at is not None
    assert await verify_token(doc_store, token) is None
    assert await verify_token(doc_store, other) is not None  # only that one


async def test_names_are_unique_among_live_tokens(doc_store: DocumentStore) -> None:
    """Test that a live name cannot be reused, a revoked one can, and listing shows both."""
    await create_token(doc_store, "board", None, actor="tests")
    with pytest.raises(TokenError, match="exists"):
        await create_token(doc_store, "board", None, actor="tests")
    await revoke_token(doc_store, "board", actor="tests")
    with pytest.raises(TokenError, match="no live token"):
        await revoke_token(doc_store, "board", actor="tests")
    again = await create_token(doc_store, "board", ["AMB-7"], actor="tests")
    listed = await list_tokens(doc_store)
    assert [(t.name, t.rooms, t.revoked_at is None) for t in listed] == [
        ("board", None, False),
        ("board", ("AMB-7",), True),
    ]
    assert [t.name for t in await list_tokens(doc_store, revoked=False)] == ["board"]
    assert (await verify_token(doc_store, again)) is not None


@pytest.mark.parametrize(
    ("name", "rooms", "message"),
    [
        ("has space", None, "token name"),
        ("", None, "token name"),
        ("ok", ["tracking"], "reserved"),
        ("ok", ["CRASH_NOTIFY_1"], "reserved"),
        ("ok", ["../x"], "room"),
        ("ok", [], "at least one room"),
    ],
)
async def test_bad_names_and_rooms_are_refused(
    doc_store: DocumentStore, name: str, rooms: list[str] | None, message: str
) -> None:
    """Test that a bad name or a room that is not an ambulance id creates nothing."""
    with pytest.raises(TokenError, match=message):
        await create_token(doc_store, name, rooms, actor="tests")
    assert [doc async for doc in doc_store.scan(API_TOKENS)] == []
