"""The document codec: orjson's fast path must store and read exactly what json's path does."""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import codec


def reference_encode(doc: Any) -> str:
    """``codec.encode`` as it was before orjson: the standard library alone."""
    return json.dumps(doc, default=codec._default, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)


def reference_decode(text: str) -> Any:
    """``codec.decode`` as it was before orjson."""
    doc = json.loads(text, object_hook=codec._object_hook)
    if not isinstance(doc, dict):
        raise ValueError("stored value is not a JSON object")
    return doc


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """What a call gives: its value, or its exception's type."""
    try:
        return "value", call(*args)
    except Exception as exc:
        return "error", type(exc)


def same_encoding(doc: Any) -> None:
    """``encode`` and the reference agree on ``doc``: the same JSON value, or the same error."""
    got, expected = outcome(codec.encode, doc), outcome(reference_encode, doc)
    assert got[0] == expected[0], (got, expected)
    if got[0] == "error":
        assert got[1] is expected[1]
    else:
        # Float exponents may be spelled differently (1e16, 1e+16): compare the values.
        assert json.loads(got[1]) == json.loads(expected[1])


WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.datetimes(timezones=st.just(UTC))
    | st.datetimes(timezones=st.none())
    | st.datetimes(timezones=st.builds(timezone, st.timedeltas(timedelta(hours=-23),
                                                              timedelta(hours=23))))
)
documents = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_any_document_encodes_as_json_would(doc: dict[str, Any]) -> None:
    """Test that orjson's path gives json's value or json's error, whatever the document holds."""
    same_encoding(doc)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_any_stored_text_decodes_as_json_would(doc: dict[str, Any]) -> None:
    """Test that a stored text reads back exactly as json's path reads it (datetimes too)."""
    try:
        text = reference_encode(doc)
    except (TypeError, ValueError):
        return  # not storable: nothing to read back
    assert outcome(codec.decode, text) == outcome(reference_decode, text)
    assert outcome(codec.decode, text.encode()) == outcome(reference_decode, text)


class Colour(enum.Enum):
    RED = 1


class Level(enum.StrEnum):
    HIGH = "high"


class Ratio(float):
    pass


@dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        2**64,
        -(2**63) - 1,
        10**30,
        uuid.UUID(int=7),
        Colour.RED,
        Level.HIGH,
        Ratio(0.5),
        Point(1),
        b"\xff",
        {1: "int key"},
        {(1, 2): "tuple key"},
        "lone \ud800 surrogate",
        (1, "tuple"),
        WHEN.date(),
        datetime(999, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=7))),
    ],
    ids=repr,
)
def test_values_orjson_treats_differently_take_json_s_path(value: Any) -> None:
    """Test that NaN, big ints, enums, UUIDs, dataclasses, odd keys... behave as with json alone."""
    same_encoding({"value": value})
    same_encoding({"nested": [{"value": value}]})


@pytest.mark.parametrize(
    "text",
    [
        '{"seq": 123456789012345678901234567890}',
        '{"seq": -9223372036854775809}',
        '{"a": "\\ud800"}',
        '{"a": 1, "b": 2, "a": 3}',
        '{"$date": "2024-01-01T00:00:00.000Z"}',
        '{"a": {"$date": "not a date"}}',
        '{"a": {"$date": {"$date": "2024-01-01T00:00:00.000Z"}}}',
        '{"a": [{"$date": "2024-01-01T00:00:00.000Z"}, {"$date": 1}]}',
        '{"a": 1e999}',
        '{"a": NaN}',
        "[1]",
        "{",
    ],
)
def test_stored_texts_orjson_reads_differently_decode_as_with_json(text: str) -> None:
    """Test that long integers, lone surrogates, dates and bad texts read as with json alone."""
    assert outcome(codec.decode, text) == outcome(reference_decode, text)


def test_a_tracking_record_is_stored_as_the_same_text() -> None:
    """Test that an ordinary record's stored text is byte for byte what json wrote."""
    doc = {
        "_id": "332:1700000000000:12",
        "ambulance_id": "332",
        "location": {"lat": 13.70012, "lon": 100.5},
        "destination_location": None,
        "speed": 45.5,
        "heading": 90.0,
        "count_datetime": WHEN,
        "received_at": WHEN + timedelta(milliseconds=5),
        "seq": 12,
        "late": False,
        "note": "ไทย",
    }
    assert codec.encode(doc) == reference_encode(doc)
    assert codec.decode(codec.encode(doc)) == reference_decode(reference_encode(doc))
