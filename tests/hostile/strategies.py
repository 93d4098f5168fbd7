"""Hypothesis strategies for hostile device input: payloads, ids, file names.

Hostile here means what a broken or malicious client can send at will: random
bytes, JSON of the wrong shape or type, numbers that are huge, NaN or
infinite, coordinates out of range, deep nesting, huge strings, odd unicode,
and ambulance ids or file names that try to climb out of a directory
(``..``, ``/``, NUL, absolute paths) or take a shared room's name.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bridge.contract import AMBULANCE_ID, DEVICE_KINDS
from bridge.validate import Limits
from tests.images import TINY_JPEG, png

# What every hostile test parses with: a receipt time and small bounds.
RECEIVED = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
LIMITS = Limits(max_image_bytes=4096, max_upload_files=3)
KINDS = tuple(str(kind) for kind in DEVICE_KINDS)

# An absolute path outside every test directory: a hostile name aims at it, and
# the tests check that it never appears.
CANARY_DIR = "/tmp/aoc-hostile-canary"

HOSTILE_IDS = (
    "..",
    ".",
    "../..",
    "../../etc",
    "a/../b",
    "a/b",
    "/abs",
    CANARY_DIR,
    "a\\..\\b",
    "%2e%2e",
    "%2F",
    "a%00b",
    "a\x00b",
    "\x00",
    "",
    " ",
    "a b",
    "+",
    "#",
    "a\nb",
    "x" * 65,
    "ambulance\u200b",  # a zero-width space
    "\u0663\u0663\u0662",  # Arabic-Indic digits
    "\ud800",  # a lone surrogate
    "tracking",
    "SNAP",
    "Crash",
    "CRASH_NOTIFY_332",
    "crash_notify_x",
)

# File names a hostile upload gives its images.
HOSTILE_FILE_NAMES = (
    "../../escaped.jpg",
    "../" * 12 + "tmp/aoc-hostile-canary/escaped.jpg",
    CANARY_DIR + "/escaped.jpg",
    "a/../../b.jpg",
    "..",
    ".hidden.jpg",
    "nul\x00.jpg",
    "C:\\windows\\x.jpg",
    "x" * 300 + ".jpg",
    "\u202egpj.exe",  # right-to-left override
)

GOOD_ID = "hostile-good-1"


def invalid_ids() -> st.SearchStrategy[str]:
    """Strings that are not valid ambulance ids: the fixed hostile ones, or random text."""
    return st.sampled_from(HOSTILE_IDS) | st.text(max_size=80).filter(
        lambda text: AMBULANCE_ID.fullmatch(text) is None
    )


def valid_ids() -> st.SearchStrategy[str]:
    """Ids of the contract's alphabet (some of them reserved room names)."""
    return st.from_regex(AMBULANCE_ID, fullmatch=True)


def _scalars() -> st.SearchStrategy[Any]:
    return (
        st.none()
        | st.booleans()
        | st.integers()
        | st.sampled_from([10**400, -(10**400), 2**63, -1, 0])
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=30)
        | st.sampled_from(["NaN", "Infinity", "-inf", "1e999", "1_000", "0x10", " 12 ", "²"])
    )


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON-ish value (NaN and infinities included), nested a few levels."""
    return st.recursive(
        _scalars(),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4),
        max_leaves=12,
    )


def _numbers() -> st.SearchStrategy[Any]:
    """Plausible and implausible numbers for a coordinate, speed or heading."""
    return (
        st.floats(min_value=-1000, max_value=1000)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from([90.0000001, -180.5, 500.1, 360.5, -0.0, 10**400])
        | json_values()
    )


# The fields of the contract's tracking/crash payloads (and their legacy names).
_RECORD_FIELDS = (
    "ambulance_id", "lat", "lon", "speed", "heading", "ts", "seq", "accuracy", "altitude",
    "dest_lat", "dest_lon", "tracking_latitude", "tracking_longitude", "tracking_speed",
    "tracking_heading", "legacy",
)


@st.composite
def record_bodies(draw: st.DrawFn, aid: str = GOOD_ID) -> dict[str, Any]:
    """A tracking/crash body: the contract's fields with hostile values, and stray keys."""
    body: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(_RECORD_FIELDS), unique=True, max_size=8)):
        if name == "ambulance_id":
            body[name] = draw(st.just(aid) | invalid_ids() | json_values())
        elif name == "ts":
            body[name] = draw(
                st.integers() | st.floats() | st.text(max_size=40) | st.datetimes().map(str)
                | json_values()
            )
        elif name == "legacy":
            body[name] = draw(json_values())
        else:
            body[name] = draw(_numbers())
    body.update(draw(st.dictionaries(st.text(max_size=10), json_values(), max_size=3)))
    return body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@st.composite
def snap_bodies(draw: st.DrawFn, aid: str = GOOD_ID) -> dict[str, Any]:
    """A JSON snap: images that are not images, not base64, not lists; hostile names."""
    image = st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(HOSTILE_FILE_NAMES) | json_values(),
            "data": st.sampled_from([_b64(TINY_JPEG), _b64(png()), "!!", _b64(b"GIF89a")])
            | st.binary(max_size=64).map(_b64)
            | json_values(),
        },
    )
    body: dict[str, Any] = {
        "images": draw(st.lists(image | json_values(), max_size=4) | json_values())
    }
    if draw(st.booleans()):
        body["ambulance_id"] = draw(st.just(aid) | invalid_ids())
    if draw(st.booleans()):
        body["ts"] = draw(json_values())
    if draw(st.booleans()):
        body["legacy"] = draw(json_values())
    return body


def encode(value: Any) -> bytes:
    """``value`` as JSON the way a careless client writes it (NaN and Infinity bare)."""
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


# Payloads that are not JSON objects at all, or attack the parser itself.
RAW_PAYLOADS = (
    b"",
    b"\x00" * 16,
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"{" + b'"k":[' * 40 + b"1" + b"]" * 40 + b"}",
    b'{"lat": 1' + b"0" * 5000 + b"}",
    b'{"lat": NaN, "lon": Infinity, "speed": -Infinity}',
    b'{"lat": 1e999, "lon": 1, "speed": 1}',
    b"\xff\xfe{}",
    b'{"lat": "\xed\xa0\x80"}',  # an encoded surrogate: not UTF-8
    b'{"s": "' + b"x" * 70_000 + b'"}',
    b"online\x00",
    TINY_JPEG[:20],
    b"\x89PNG\r\n\x1a\n",
    TINY_JPEG * 300,  # bigger than the test limits' image size
)


def raw_payloads() -> st.SearchStrategy[bytes]:
    """Bytes that are no valid payload of any kind (or barely one)."""
    return st.sampled_from(RAW_PAYLOADS) | st.binary(max_size=256)


def payloads_for(kind: str, aid: str = GOOD_ID) -> st.SearchStrategy[bytes]:
    """Hostile payloads aimed at one device kind."""
    if kind in ("tracking", "crash"):
        shaped = record_bodies(aid).map(encode)
    elif kind == "snap":
        shaped = snap_bodies(aid).map(encode) | st.sampled_from([TINY_JPEG, png()])
    else:
        shaped = (
            st.sampled_from([b"online", b" OFFLINE ", b"onl\xefne", b'{"status": 1}'])
            | st.fixed_dictionaries({"status": json_values()}).map(encode)
            | st.text(max_size=20).map(lambda text: text.encode("utf-8", "surrogatepass"))
        )
    return shaped | raw_payloads() | json_values().map(encode)


def hostile_topics(kind: str) -> st.SearchStrategy[str]:
    """Topics of ``kind`` whose id (or shape) is hostile, or the good id's topic."""
    return (
        invalid_ids().map(lambda aid: f"aoc/{aid}/{kind}")
        | valid_ids().map(lambda aid: f"aoc/{aid}/{kind}")
        | st.sampled_from([f"aoc/{GOOD_ID}/{kind}", f"aoc/a/b/{kind}", f"aoc//{kind}", kind])
        | invalid_ids().map(lambda aid: f"legacy/{aid}/{kind}")  # the legacy shim's root
        | st.sampled_from([f"legacy/{GOOD_ID}/{kind}", f"legacy/a/b/{kind}", f"Legacy/a/{kind}"])
        | st.text(max_size=40)
    )


# A longer hunt: AOC_HOSTILE_SCALE=20 runs twenty times the examples (the suite's are few).
SCALE = int(os.environ.get("AOC_HOSTILE_SCALE", "1"))


def bounded(examples: int) -> settings:
    """Hypothesis settings of this folder: few examples, no deadline (shared slow machines)."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )
