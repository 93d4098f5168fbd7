"""The shared codec's cursor tokens: what a forged token gets."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from storage.codec import decode_cursor, encode_cursor


def token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_cursor_round_trip() -> None:
    """Test that a position of strings, numbers and nulls comes back as it went in."""
    position: list[Any] = [1700000000.123, "332:0001", None, 7]
    assert decode_cursor(encode_cursor(position)) == position


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[true, "x"]', "bool"),
        ('[[1], "x"]', "list"),
        ('[{"a": 1}, "x"]', "dict"),
        ('[NaN, "x"]', "not a next_cursor"),
        ('{"a": 1}', "not a next_cursor"),
        ("[" * 5000 + "]" * 5000, "not a next_cursor"),
    ],
    ids=["bool", "list", "object", "nan", "not-a-list", "deep"],
)
def test_forged_cursor_is_a_value_error(text: str, reason: str) -> None:
    """Test that a token holding what encode_cursor never writes is refused with the reason."""
    with pytest.raises(ValueError, match=reason):
        decode_cursor(token(text))
