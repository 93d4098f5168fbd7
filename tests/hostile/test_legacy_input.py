"""Hostile legacy bodies through ``api.legacy_input.read_body``: a dict or a clear 4xx.

The parser runs here on its own, over a real Starlette request fed by a
receive callable (no server); ``tests/hostile/test_http.py`` sends the same
kind of bodies through the whole application.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import HTTPException
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.types import Message

from api.legacy_input import MAX_BODY_BYTES, read_body
from tests.hostile.strategies import RAW_PAYLOADS, bounded, encode, json_values, record_bodies

MEDIA_TYPES = (
    "application/json",
    "application/x-www-form-urlencoded",
    "application/vnd.api+json",
    "APPLICATION/JSON; charset=latin-1",
    "text/plain",
    "multipart/form-data; boundary=x",
    "",
    "application/json\x00",
)


def _request(body: bytes, content_type: str, chunks: int = 1) -> Request:
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages: list[Message] = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    headers = [(b"content-type", content_type.encode("latin-1"))] if content_type else []
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


def _read(body: bytes, content_type: str, chunks: int = 1) -> dict[str, Any] | HTTPException:
    try:
        return asyncio.run(read_body(_request(body, content_type, chunks)))
    except HTTPException as exc:
        return exc


def assert_clear(result: dict[str, Any] | HTTPException) -> None:
    if isinstance(result, HTTPException):
        assert 400 <= result.status_code < 500, result.status_code
        assert result.detail, "a refusal must say why"
        return
    # Read: a JSON object or a form's fields, by name (the route checks the fields).
    assert isinstance(result, dict)
    assert all(isinstance(name, str) for name in result)


def _bodies() -> st.SearchStrategy[bytes]:
    return (
        record_bodies().map(encode)
        | json_values().map(encode)
        | st.sampled_from(RAW_PAYLOADS)
        | st.binary(max_size=200)
        | st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5).map(
            lambda form: "&".join(f"{k}={v}" for k, v in form.items()).encode(
                "utf-8", "surrogatepass"
            )
        )
        | st.sampled_from([b"a=%ff", b"&".join([b"a=1"] * 200), b"=&=&", b"%", b"a=b;c=d"])
    )


@bounded(80)
@given(body=_bodies(), content_type=st.sampled_from(MEDIA_TYPES), chunks=st.integers(1, 4))
@example(body=b"[" * 100_000, content_type="application/json", chunks=1)
@example(body=b'{"a":' * 40 + b"1" + b"}" * 40, content_type="application/json", chunks=1)
@example(body=b"a=" + b"x" * (MAX_BODY_BYTES + 1), content_type="application/x-www-form-urlencoded",
         chunks=3)
def test_hostile_legacy_bodies_are_read_or_clearly_refused(
    body: bytes, content_type: str, chunks: int
) -> None:
    assert_clear(_read(body, content_type, chunks))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 60_000, 400),  # nesting past the recursion limit, within the size bound
        (b'{"a":' * 40 + b"1" + b"}" * 40, 400),  # past the bridge's nesting bound
        (b'{"lat": NaN}', 400),
        (b"[1, 2]", 400),
        (b"   ", 400),
        (b"\xff\xfe", 400),
        (b"x" * (MAX_BODY_BYTES + 1), 413),
    ],
)
def test_known_hostile_json_bodies_get_their_status(body: bytes, status: int) -> None:
    result = _read(body, "application/json", chunks=2)
    assert isinstance(result, HTTPException)
    assert result.status_code == status
