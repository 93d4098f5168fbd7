"""Tests for bridge.jsjson: byte equality with Node.js's JSON.stringify."""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
import subprocess
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from bridge.jsjson import dumps, number

NODE = shutil.which("node") or "node"

# JavaScript expression -> the Python value that stands for it.
EXPRESSIONS: list[tuple[str, Any]] = [
    ("null", None),
    ("true", True),
    ("false", False),
    ("0", 0),
    ("-0", -0.0),
    ("0.1", 0.1),
    ("0.1 + 0.2", 0.1 + 0.2),
    ("45.0", 45.0),
    ("-45.5", -45.5),
    ("1e21", 1e21),
    ("1e20", 1e20),
    ("123456789012345680000", 123456789012345680000.0),
    ("1e16", 1e16),
    ("1.5e16", 1.5e16),
    ("1e-6", 1e-6),
    ("1e-7", 1e-7),
    ("1.5e-7", 1.5e-7),
    ("0.000001234", 0.000001234),
    ("123e-20", 123e-20),
    ("5e-324", 5e-324),
    ("1.7976931348623157e308", 1.7976931348623157e308),
    ("NaN", float("nan")),
    ("Infinity", float("inf")),
    ("-Infinity", float("-inf")),
    ("13.7563", 13.7563),
    ("100.5018", 100.5018),
    ("2 ** 53", 2**53),
    ("2 ** 53 + 2", 2**53 + 2),
    ("123456789012345678901", 123456789012345678901),  # an int beyond 2**53
    ("-(2 ** 70)", -(2**70)),
    ("1e400", 10**400),  # an int too big for a double: Infinity
    ("''", ""),
    ("'plain ascii'", "plain ascii"),
    ("'สวัสดี ñ é 中文'", "สวัสดี ñ é 中文"),
    ("'emoji 🚑😀'", "emoji 🚑😀"),
    ("'quote \" backslash \\\\ slash /'", 'quote " backslash \\ slash /'),
    ("'\\b\\f\\n\\r\\t'", "\b\f\n\r\t"),
    ("'\\u0000\\u0001\\u001f\\u007f\\u0080'", "\x00\x01\x1f\x7f\x80"),
    ("'\\u2028\\u2029'", "\u2028\u2029"),
    ("'lone \\ud800 high'", "lone \ud800 high"),
    ("'lone \\udfff low'", "lone \udfff low"),
    ("'pair \\ud83d\\ude91'", "pair \ud83d\ude91"),  # two code points in Python, one char in JS
    ("'reversed \\ude91\\ud83d'", "reversed \ude91\ud83d"),
    ("'<script>&'", "<script>&"),
    ("[]", []),
    ("({})", {}),
    ("[1, 'a', null, [true, {}]]", [1, "a", None, [True, {}]]),
    ("({b: 1, a: 2})", {"b": 1, "a": 2}),
    # Array-index keys come first in ascending order; the rest keep their order.
    (
        "({b: 1, '10': 2, '2': 3, '01': 4, '-1': 5, a: 6})",
        {"b": 1, "10": 2, "2": 3, "01": 4, "-1": 5, "a": 6},
    ),
    (
        "({'4294967294': 1, '4294967295': 2, x: 3, '0': 4})",
        {"4294967294": 1, "4294967295": 2, "x": 3, "0": 4},
    ),
    ("({'ключ': 'значение', '🚑': 1})", {"ключ": "значение", "🚑": 1}),
    ("({'a\\nb': 1})", {"a\nb": 1}),
    ("new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678))", datetime(2024, 1, 2, 3, 4, 5, 678999, UTC)),
    ("new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 0))", datetime(2024, 1, 2, 3, 4, 5)),  # naive = UTC
    (
        "new Date(Date.UTC(2024, 0, 1, 20, 0, 0, 5))",
        datetime(2024, 1, 2, 3, 0, 0, 5000, timezone(timedelta(hours=7))),
    ),
    ("new Date(Date.UTC(2024, 1, 29))", date(2024, 2, 29)),
    (
        "({ambulance_id: '332', tracking_latitude: 13.7563, tracking_longitude: 100.5018,"
        " tracking_speed: 45.5, tracking_heading: 180})",
        {
            "ambulance_id": "332",
            "tracking_latitude": 13.7563,
            "tracking_longitude": 100.5018,
            "tracking_speed": 45.5,
            "tracking_heading": 180.0,
        },
    ),
]


def _node(script: str, stdin: str) -> Any:
    done = subprocess.run(
        [NODE, "-e", script], input=stdin, capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(done.stdout)


def test_expressions_match_json_stringify() -> None:
    """Test that every value of the table serialises exactly as Node's JSON.stringify does."""
    script = (
        "const exprs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(exprs.map(e => JSON.stringify(eval(e)))));"
    )
    expected = _node(script, json.dumps([expr for expr, _ in EXPRESSIONS]))
    for (expr, value), want in zip(EXPRESSIONS, expected, strict=True):
        assert dumps(value) == want, expr


def test_json_texts_round_trip_like_node() -> None:
    """Test that JSON text parsed by Python and by Node serialises to the same bytes."""
    texts = [
        '{"b":1,"a":[1.0,2.50,-0.0,1E2,1e-7,12345678901234567890123],"c":{"2":1,"1":2}}',
        '{"dup":1,"x":2,"dup":3}',
        '"\\ud83d\\ude91 \\u00e9 \\ud800"',
        "[0.30000000000000004, 1e308, 4.35, 0.000001, 100, 1e21, 999999999999999999999]",
        '{"legacy":{"ambulance_id":"332","tracking_speed":"12.5","note":"ok\\u0007"}}',
    ]
    script = (
        "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(texts.map(t => JSON.stringify(JSON.parse(t)))));"
    )
    expected = _node(script, json.dumps(texts))
    for text, want in zip(texts, expected, strict=True):
        assert dumps(json.loads(text)) == want, text


def test_random_doubles_match_node() -> None:
    """Test 3000 random doubles (every exponent range) against Node's number formatting."""
    rng = random.Random(20240229)
    values: list[float] = []
    while len(values) < 3000:
        (value,) = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))
        if not math.isnan(value):  # NaN is covered above
            values.append(value)
    values += [rng.uniform(-180, 180) for _ in range(500)]
    values += [float(rng.randint(-(10**22), 10**22)) for _ in range(200)]
    values += [rng.random() * 10.0 ** rng.randint(-12, -5) for _ in range(300)]
    hexes = [struct.pack(">d", value).hex() for value in values]
    script = (
        "const hexes = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(hexes.map("
        "h => JSON.stringify(Buffer.from(h, 'hex').readDoubleBE(0)))));"
    )
    expected = _node(script, json.dumps(hexes))
    mismatches = [
        (value, dumps(value), want)
        for value, want in zip(values, expected, strict=True)
        if dumps(value) != want
    ]
    assert mismatches == []


def test_number_formats() -> None:
    """Test JavaScript's number format rules directly."""
    assert number(45.0) == "45"
    assert number(-0.0) == "0"
    assert number(1e21) == "1e+21"
    assert number(1e-7) == "1e-7"
    assert number(1.5e-7) == "1.5e-7"
    assert number(1e16) == "10000000000000000"
    assert number(0.000001) == "0.000001"
    assert number(-123.456) == "-123.456"


def test_compact_and_unicode() -> None:
    """Test compact separators and non-ASCII written raw."""
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'
    assert dumps(("x", 1.5)) == '["x",1.5]'


def test_non_string_keys_are_stringified_like_javascript() -> None:
    """Test that int/float/bool keys become the strings JavaScript would make."""
    assert dumps({1: "a", 2.5: "b", False: "c"}) == '{"1":"a","2.5":"b","false":"c"}'
    assert dumps({3.0: "x"}) == '{"3":"x"}'


@pytest.mark.parametrize("value", [b"bytes", object(), {1, 2}, {("tuple",): 1}])
def test_unsupported_values_raise_type_error(value: object) -> None:
    """Test that values JSON cannot express raise TypeError, not produce garbage."""
    with pytest.raises(TypeError):
        dumps(value)
