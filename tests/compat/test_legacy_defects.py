"""The known defects of the legacy server (docs/legacy.md), each pinned as fixed.

Each test would have failed against the legacy server: crash states at the
thresholds, the crash handler's ReferenceError, missing input validation, the
join reply broadcast (see test_legacy_clients), deprecated MongoDB calls,
secrets in the source, and one bad request taking the server down.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import mongomock
import pymongo.collection
import pymongo.database
import pytest
from mongomock.collection import BulkOperationBuilder

from aoc.config import Settings
from bridge.jsjson import dumps
from storage.base import CRASHES, TRACKINGS, Query, Write
from storage.mongo import MongoDocumentStore
from tests.compat.conftest import (
    CRASH,
    SNAPSHOT,
    TRACKING,
    WAIT,
    CompatStack,
    eventually_stored,
    js_dashboard,
    stored,
)
from tests.images import TINY_JPEG
from tests.storage.conftest import _drop_sort

pytestmark = pytest.mark.compat

ROOT = Path(__file__).resolve().parents[2]


def legacy_point(aid: Any, **override: Any) -> dict[str, Any]:
    body = {"ambulance_id": aid, "tracking_latitude": 13.7563, "tracking_longitude": 100.5018,
            "tracking_speed": 45.5, "tracking_heading": 90}
    return {**body, **override}


# -- crash classification: `> 80 && < 120` and `> 120` ----------------------------


async def test_crash_state_at_and_below_the_thresholds(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that crashes at 0, exactly 80, exactly 120 km/h get a state (legacy gave none)."""
    # m/s as devices send them; the shim turns each into exactly this many km/h.
    cases = [
        (0, 0.0, "GREEN"),
        (80 / 3.6, 80.0, "GREEN"),  # 22.22222222222222 m/s
        (22.5, 81.0, "ORANGE"),
        (120 / 3.6, 120.0, "ORANGE"),  # 33.333333333333336 m/s
        ("33.333333333333336", 120.0, "ORANGE"),  # a form's string number
        (34, 122.4, "RED"),
    ]
    ids = [new_id() for _ in cases]
    async with js_dashboard(stack) as board:
        for aid in ids:
            await board.join(f"CRASH_NOTIFY_{aid}")
        for aid, (mps, _, _) in zip(ids, cases, strict=True):
            body = legacy_point(aid, tracking_speed=mps)
            response = (
                await http.post(CRASH, data={k: str(v) for k, v in body.items()})
                if isinstance(mps, str) else await http.post(CRASH, json=body)
            )
            assert response.status_code == 200, response.text
        for aid, (_, kmh, state) in zip(ids, cases, strict=True):
            [record] = await eventually_stored(stack, CRASHES, aid, 1)
            assert (record["speed"], record["state"]) == (kmh, state), (aid, record)
            emitted = await board.wait_data(lambda d, aid=aid: aid in d)  # type: ignore[misc]
            assert json.loads(emitted)["state"] == state


async def test_tracking_state_at_the_thresholds(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that tracking at exactly 80 is GREEN and exactly 120 is ORANGE (km/h, no conversion)."""
    for speed, state in ((80, "GREEN"), ("80.0", "GREEN"), (120, "ORANGE"), ("120.000001", "RED")):
        aid = new_id()
        response = await http.post(TRACKING, json=legacy_point(aid, tracking_speed=speed))
        assert response.status_code == 200, response.text
        [doc] = await eventually_stored(stack, TRACKINGS, aid, 1)
        assert doc["state"] == state, (speed, doc)


# -- the crash handler threw `ReferenceError: file is not defined` ---------------------


async def test_crash_post_is_answered_stored_and_emitted(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that a crash POST (JSON or form) answers 200 and its record is stored and emitted."""
    json_id, form_id = new_id(), new_id()
    async with js_dashboard(stack) as board:
        await board.join("crash")
        for aid in (json_id, form_id):
            await board.join(f"CRASH_NOTIFY_{aid}")
        as_json = await http.post(CRASH, json=legacy_point(json_id, tracking_speed=41.6))
        form = {k: str(v) for k, v in legacy_point(form_id, tracking_speed="41.6").items()}
        as_form = await http.post(CRASH, data=form)
        for response in (as_json, as_form):
            assert response.status_code == 200, response.text
            assert response.json() == {"success": True}
        for aid in (json_id, form_id):
            [record] = await eventually_stored(stack, CRASHES, aid, 1)
            assert await board.wait_data(lambda d, r=record: d == dumps(r))  # type: ignore[misc]
        assert await board.wait_data(lambda d: d == dumps(form))  # the body, to room `crash`


async def test_repeated_crash_within_the_window_is_stored_not_re_emitted(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that a crash repeated within the dedup window is stored but not broadcast again."""
    aid, marker = new_id(), new_id()
    async with js_dashboard(stack) as board:
        await board.join(f"CRASH_NOTIFY_{aid}")
        await board.join(f"CRASH_NOTIFY_{marker}")
        for speed in (20, 21):
            assert (await http.post(CRASH, json=legacy_point(aid, tracking_speed=speed))).is_success
        records = await eventually_stored(stack, CRASHES, aid, 2)
        assert records[1]["duplicate_of"] == records[0]["_id"]
        assert (await http.post(CRASH, json=legacy_point(marker))).is_success
        await board.wait_data(lambda d: marker in d)  # emitted after both of aid's
        assert [d for d in board.payloads if aid in d] == [dumps(records[0])]


# -- no input validation -------------------------------------------------------------

HOSTILE_IDS = [
    "../../etc/passwd", "a/b", "332 ", "a b", "<script>alert(1)</script>", "x" * 65, "",
    "CRASH_NOTIFY_332\n", "tracking\u0000", "ĂŁ", {"$gt": ""}, ["332"], True, -1, 3.5, None,
]

BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    (TRACKING, {"tracking_latitude": 91}, "tracking_latitude"),
    (TRACKING, {"tracking_latitude": "-90.5"}, "tracking_latitude"),
    (TRACKING, {"tracking_longitude": 180.01}, "tracking_longitude"),
    (TRACKING, {"tracking_speed": -1}, "tracking_speed"),
    (TRACKING, {"tracking_speed": 501}, "tracking_speed"),
    (TRACKING, {"tracking_speed": "fast"}, "tracking_speed"),
    (TRACKING, {"tracking_speed": "NaN"}, "tracking_speed"),
    (TRACKING, {"tracking_speed": "Infinity"}, "tracking_speed"),
    (TRACKING, {"tracking_speed": "1_000"}, "tracking_speed"),
    (TRACKING, {"tracking_speed": True}, "tracking_speed"),
    (TRACKING, {"tracking_speed": [1]}, "tracking_speed"),
    (TRACKING, {"tracking_speed": 1e400}, "tracking_speed"),
    (TRACKING, {"tracking_heading": 361}, "tracking_heading"),
    (TRACKING, {"tracking_latitude": None}, "tracking_latitude"),
    (CRASH, {"tracking_speed": 140}, "tracking_speed"),  # 504 km/h
    (CRASH, {"tracking_speed": "9" * 400}, "tracking_speed"),
    (CRASH, {"tracking_longitude": -181}, "tracking_longitude"),
]


def assert_names_field(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, (field, response.status_code, response.text)
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", field], detail
    assert detail[0]["msg"], detail


async def test_hostile_ids_and_out_of_range_fields_get_a_4xx_naming_the_field(
    stack: CompatStack, http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that bad ids and fields are refused with 422 naming the field; nothing is emitted."""
    aid = new_id()
    async with js_dashboard(stack) as board:
        await board.join("tracking")
        await board.join("crash")
        for hostile in HOSTILE_IDS:
            for path in (TRACKING, CRASH):
                response = await http.post(path, json=legacy_point(hostile))
                assert_names_field(response, 422, "ambulance_id")
            upload = await http.post(
                SNAPSHOT,
                data={"ambulance_id": hostile} if isinstance(hostile, str) else {},
                files=[("files", ("a.jpg", TINY_JPEG, "image/jpeg"))],
            )
            assert_names_field(upload, 422, "ambulance_id")
        for path, override, field in BAD_FIELDS:
            raw = json.dumps(legacy_point(aid, **override))  # Python writes 1e400 as Infinity
            response = await http.post(
                path, content=raw.replace("Infinity", "1e400"),
                headers={"content-type": "application/json"},
            )
            assert_names_field(response, 422, field)
        missing = legacy_point(aid)
        del missing["tracking_longitude"]
        assert_names_field(await http.post(TRACKING, json=missing), 422, "tracking_longitude")
        # Nothing of the above reached a room: the next good body is the first payload.
        good = legacy_point(aid)
        assert (await http.post(TRACKING, json=good)).is_success
        assert await board.wait_data(lambda d: True) == dumps(good)
    assert await stored(stack, TRACKINGS, aid) != []
    assert await stored(stack, CRASHES, aid) == []


async def test_bad_bodies_and_uploads_get_a_4xx_json_answer(
    http: httpx.AsyncClient, new_id: Callable[[], str]
) -> None:
    """Test that broken bodies and uploads get a 4xx JSON answer, never a 500 or a hang."""
    aid = new_id()
    cases: list[tuple[str, dict[str, Any], int]] = [
        (TRACKING, {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        (TRACKING, {"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400),
        (TRACKING, {"content": b"", "headers": {"content-type": "application/json"}}, 400),
        (TRACKING, {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 400),
        (TRACKING, {"content": b"NaN", "headers": {"content-type": "application/json"}}, 400),
        (TRACKING, {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
         413),
        (TRACKING, {"content": b"ambulance_id=1", "headers": {"content-type": "text/plain"}}, 415),
        (CRASH, {"content": b"%zz=%ff", "headers": {
            "content-type": "application/x-www-form-urlencoded"}}, 400),
        (SNAPSHOT, {"json": {"ambulance_id": aid}}, 415),
        (SNAPSHOT, {"content": b"--x\r\nbroken", "headers": {
            "content-type": "multipart/form-data; boundary=x"}}, 422),
    ]
    for path, request, status in cases:
        response = await http.post(path, **request)
        assert response.status_code == status, (path, request, response.text)
        assert response.json()["detail"], response.text
    named: list[tuple[dict[str, Any], int, str]] = [
        ({"files": [("files", ("a.gif", b"GIF89a....", "image/gif"))]}, 415, "files[0]"),
        ({"files": [("files", ("a.jpg", TINY_JPEG, "image/jpeg")),
                    ("files", ("evil.jpg", b"MZ\x90\x00", "image/jpeg"))]}, 415, "files[1]"),
        ({"files": [("image", ("a.jpg", TINY_JPEG, "image/jpeg"))]}, 422, "image"),
        ({"files": [("files", ("a.jpg", TINY_JPEG, "image/jpeg"))] * 11}, 413, "files"),
        ({"data": {"note": "no files"}}, 422, "files"),
    ]
    for request, status, field in named:
        data = {"ambulance_id": aid, **request.pop("data", {})}
        response = await http.post(SNAPSHOT, data=data, **request)
        assert_names_field(response, status, field)


# -- crashed and restarted constantly --------------------------------------------------


async def test_bad_requests_between_good_ones_stop_nothing(
    stack: CompatStack, new_id: Callable[[], str]
) -> None:
    """Test that bad requests and bad MQTT messages in the middle of good ones stop none of them."""
    assert stack.service.proc is not None
    pid = stack.service.proc.pid
    good_ids = [new_id() for _ in range(8)]
    bad: list[dict[str, Any]] = [
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"json": legacy_point("../x")},
        {"json": legacy_point(good_ids[0], tracking_speed=9e9)},
        {"content": b"x" * 70_000, "headers": {"content-type": "application/json"}},
        {"content": b"\x00\x01", "headers": {"content-type": "application/octet-stream"}},
    ]
    async with (
        httpx.AsyncClient(base_url=stack.http, timeout=WAIT) as http,
        js_dashboard(stack) as board,
        stack.mqtt() as device,
    ):
        await board.join("tracking")
        requests = [http.post(TRACKING, json=legacy_point(aid)) for aid in good_ids]
        requests[3:3] = [http.post(TRACKING, **kwargs) for kwargs in bad]
        garbage = [
            device.publish(f"aoc/{good_ids[1]}/tracking", b"\xff garbage", qos=1),
            device.publish(f"aoc/{good_ids[2]}/tracking", b'{"lat": 999}', qos=1),
        ]
        responses = await asyncio.gather(*requests, *garbage)
        statuses = [r.status_code for r in responses if isinstance(r, httpx.Response)]
        assert statuses.count(200) == len(good_ids), statuses
        assert all(400 <= s < 500 for s in statuses if s != 200), statuses
        for aid in good_ids:
            await board.wait_data(lambda d, aid=aid: aid in d)  # type: ignore[misc]
            assert len(await eventually_stored(stack, TRACKINGS, aid, 1)) == 1
    async with httpx.AsyncClient(
        base_url=stack.http, timeout=WAIT, headers=stack.service.auth_headers
    ) as http:
        letters = (await http.get("/api/v1/dead-letters", params={"limit": 1000})).json()["items"]
        assert {d["topic"] for d in letters} >= {
            f"aoc/{good_ids[1]}/tracking", f"aoc/{good_ids[2]}/tracking"
        }
        assert (await http.get("/readyz")).status_code == 200
    # The same process served everything: nothing crashed or restarted it.
    assert stack.service.proc.poll() is None
    assert stack.service.proc.pid == pid
    assert "Traceback" not in stack.service.log_path.read_text(errors="replace")


# -- deprecated MongoDB calls (`ensureIndex`, `update`) -----------------------------------

# Removed from pymongo 4 (and `ensureIndex`/`update` were the legacy server's).
DEPRECATED = {
    "ensure_index", "ensureIndex", "insert", "update", "save", "remove", "count",
    "find_and_modify", "group", "map_reduce", "reindex", "parallel_scan",
    "initialize_ordered_bulk_op", "initialize_unordered_bulk_op",
}
# Names that exist nowhere but in old MongoDB drivers: safe to look for in the source.
MONGO_ONLY = DEPRECATED - {"insert", "update", "save", "remove", "count", "group"}


class _Recorder:
    """Records the methods called on a mongomock client's databases and collections."""

    def __init__(self, target: Any, calls: list[tuple[str, str]], level: str) -> None:
        self._target, self._calls, self._level = target, calls, level

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, mongomock.Database):
            return _Recorder(value, self._calls, "database")
        if isinstance(value, mongomock.Collection):
            return _Recorder(value, self._calls, "collection")
        return value

    def __getitem__(self, name: str) -> Any:
        return self._wrap(self._target[name])

    def __getattr__(self, name: str) -> Any:
        self._calls.append((self._level, name))
        value = getattr(self._target, name)
        if callable(value) and not isinstance(value, mongomock.Collection | mongomock.Database):
            return lambda *args, **kwargs: self._wrap(value(*args, **kwargs))
        return self._wrap(value)


async def test_mongo_store_calls_no_deprecated_pymongo_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test that every MongoDB call of the store is a current pymongo 4 method, none deprecated."""
    for name in ("add_update", "add_replace"):  # mongomock predates pymongo's sort= (see storage)
        original = getattr(BulkOperationBuilder, name)
        monkeypatch.setattr(BulkOperationBuilder, name, _drop_sort(original))
    calls: list[tuple[str, str]] = []
    client = _Recorder(mongomock.MongoClient(tz_aware=True), calls, "client")
    async with MongoDocumentStore(lambda: client, database="aoc_v2") as store:  # type: ignore[arg-type,return-value]
        await store.ping()
        doc = {"_id": "t1", "ambulance_id": "332", "speed": 1.0,
               "count_datetime": datetime.now(UTC)}
        await store.apply([Write(TRACKINGS, "insert", doc), Write(TRACKINGS, "insert", doc)])
        await store.apply([Write("ambulances", "upsert", {"_id": "332", "ambulance_id": "332"})])
        assert await store.get(TRACKINGS, "t1") is not None
        assert await store.existing_ids(TRACKINGS, ["t1", "t2"]) == {"t1"}
        page = await store.find(Query(TRACKINGS, ambulance_id="332", limit=1))
        assert [d["_id"] for d in page.items] == ["t1"]
    called = {name for _, name in calls}
    assert called >= {"create_index", "bulk_write", "find_one", "find"}, calls
    assert not called & DEPRECATED, calls
    classes = {"collection": pymongo.collection.Collection, "database": pymongo.database.Database,
               "client": pymongo.MongoClient}
    for level, name in calls:
        assert hasattr(classes[level], name), f"{level}.{name} is not in pymongo 4"


def test_storage_source_names_no_deprecated_mongo_method() -> None:
    """Test that no MongoDB-only deprecated method (ensure_index, find_and_modify...) is called."""
    found = []
    for path in sorted((ROOT / "storage").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in MONGO_ONLY:
                found.append(f"{path.name}:{node.lineno} {node.attr}")
    assert found == []


# -- passwords, the session secret and the map key in the source ----------------------------

_SECRET_NAME = r"(?:password|passwd|pwd|secret|api_?key|access_?key|secret_?key|token|map_?key)"
# (pattern, whether it is for configuration files only: in code, ``key=settings.key`` is fine)
SECRET_PATTERNS = [
    # A secret-named variable or key given a quoted literal (JS, Python, YAML, JSON).
    (re.compile(rf"(?i)\w*{_SECRET_NAME}\w*[\"']?\s*[:=]\s*[\"']([^\"'\s]{{4,}})[\"']"), False),
    # The same unquoted, as in env files, Dockerfiles and compose files.
    # The value on the same line: a YAML key with a nested block is no value.
    (re.compile(rf"(?im)^[ \t]*(?:-[ \t]*|ENV[ \t]+)?\w*{_SECRET_NAME}\w*[ \t]*[:=][ \t]*"
                rf"([^\s\"'$#{{]{{4,}})"),
     True),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@\"']+:([^/\s@\"'$]+)@"), False),  # user:pass@host
    (re.compile(r"\b(AIza[0-9A-Za-z_-]{35})"), False),  # a Google API key (the map key)
    (re.compile(r"\b(AKIA[0-9A-Z]{16})\b"), False),  # an AWS access key id
    (re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)"), False),
]
# Placeholders that say "put yours here".
PLACEHOLDERS = re.compile(r"(?i)^(changeme|change-me|example|placeholder|x+|\*+|<[^>]*>)$")
CODE = (".py", ".js", ".mjs", ".ts")
# Tests give their throwaway local servers obviously fake credentials.
# minioadmin is MinIO's published default, which production mode refuses.
FAKE = re.compile(r"(?i)^(test|dummy[\w\\-]*|fake[\w\\-]*|hunter2|minioadmin)$")
# The name of a secret (a Docker secret, a file), not its value: mqtt_bridge_password.
SECRET_LABEL = re.compile(r"^\[?[a-z_]*(password|secret|token|key)\]?,?$")
LEGACY_LIKE = [
    'const MAP_KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv";',
    "mongoose.connect('mongodb://aoc:s3cr3t-pass@10.0.0.5:27017/aoc_v2')",
    "app.use(session({ secret: 'keyboard-cat-314', resave: false }))",
    "REDIS_PASSWORD=hunter22",
    '    password: "hunter22",',
]


def secrets_in(
    text: str, *, code: bool = False, test: bool = False, python: bool = False
) -> list[str]:
    """The lines of ``text`` that look like a secret given a value (placeholders aside).

    In Python (``python``), ``NAME: "value"`` with an unquoted name is a dict
    keyed by a variable, not a literal key: it is left to the other forms.
    """
    hits = []
    for pattern, config_only in SECRET_PATTERNS:
        if code and config_only:
            continue
        for match in pattern.finditer(text):
            value = match.group(1)
            if PLACEHOLDERS.match(value) or (test and FAKE.match(value)):
                continue
            if SECRET_LABEL.match(value) or re.match(r"\s*\w+_FILE\b", match.group(0)):
                continue  # a secret's name, or the file that holds it
            # A value that spells its own name is a label, not a secret:
            # API_TOKENS = "api_tokens" names a collection.
            name = re.match(r"\s*(?:-\s*|ENV\s+)?[\"']?(\w+)", match.group(0))
            if name is not None and name.group(1).lower() == value.lower():
                continue
            if python and re.match(r"\s*\w+\s*:", match.group(0)):
                continue
            hits.append(match.group(0).strip())
    return hits


def test_the_secret_scanner_finds_legacy_style_secrets() -> None:
    """Test that the scanner below flags the kinds of secrets the legacy source held."""
    for line in LEGACY_LIKE:
        assert secrets_in(line), line
    assert secrets_in(LEGACY_LIKE[0], code=True)
    assert secrets_in("password=settings.mqtt_password", code=True) == []
    assert secrets_in('password = "hunter22"', code=True)
    assert secrets_in('access_key="test"', test=True) == []
    assert secrets_in('access_key="test"')  # only in tests
    assert secrets_in('API_TOKENS = "api_tokens"', code=True) == []
    assert secrets_in('API_TOKEN = "api_tokens_2"', code=True)
    assert secrets_in('{API_TOKENS: "created_at"}', code=True, python=True) == []
    assert secrets_in('{"token": "created_at"}', code=True, python=True)
    assert secrets_in('{token: "s3cr3t-value"}', code=True)  # JavaScript: a literal key
    # Docker secrets: their names, and the files the settings read, are no secrets.
    assert secrets_in("AOC_MQTT_PASSWORD_FILE: /run/secrets/mqtt_bridge_password") == []
    assert secrets_in("secrets: [mqtt_admin_password, mqtt_bridge_password]") == []
    assert secrets_in("secrets:\n  mqtt_admin_password:\n    file: ./secrets/x\n") == []
    assert secrets_in('"AOC_MQTT_PASSWORD": "mqtt_bridge_password"', test=True) == []
    assert secrets_in("AOC_MQTT_PASSWORD: hunter22\n")


def test_no_secrets_in_tracked_files() -> None:
    """Test that no tracked file holds a password, session secret, map key or private key."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    this = Path(__file__).resolve().relative_to(ROOT).as_posix()
    hits: list[str] = []
    for name in files:
        path = ROOT / name
        if not name or name == this or name.endswith("package-lock.json") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary
        found = secrets_in(
            text,
            code=name.endswith(CODE),
            test=name.startswith("tests/"),
            python=name.endswith(".py"),
        )
        hits.extend(f"{name}: {hit}" for hit in found)
    assert hits == []


def test_settings_hold_no_default_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test that with nothing configured, every secret setting is unset (none is built in)."""
    for name in list(os.environ):
        if name.startswith("AOC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env here
    settings = Settings()
    for name in ("mqtt_password", "s3_secret_key", "google_maps_key", "mqtt_username",
                 "s3_access_key"):
        assert getattr(settings, name) is None, name
