"""Hostile requests to every HTTP endpoint of the real application (see conftest).

Each example sends one hostile request, then a good one, and proves three
things: the hostile one got a clear 4xx (a JSON ``detail``) or a success
that the bridge will accept; the good one was processed (published to MQTT,
or read back); and nothing appeared outside the data directory.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any
from urllib.parse import quote, unquote

import httpx
from hypothesis import assume, example, given
from hypothesis import strategies as st

from bridge.contract import valid_ambulance_id
from tests.hostile.conftest import (
    MAX_IMAGE_BYTES,
    MAX_UPLOAD_FILES,
    SEEDED,
    Served,
    assert_good_reads_work,
)
from tests.hostile.strategies import (
    HOSTILE_FILE_NAMES,
    HOSTILE_IDS,
    RAW_PAYLOADS,
    bounded,
    encode,
    invalid_ids,
    json_values,
    record_bodies,
)
from tests.images import TINY_JPEG, png

GOOD = "hostile-http-ok"
LEGACY_POSTS = ("/api/tracking/postAmbulanceTracking", "/api/crash/postAmbulanceCrashNotify")
UPLOAD = "/api/snapshot/postAmbulanceImageUpload"
# What a hostile request may get: never a 5xx (a 503 would mean the broker is down).
CLEAR = {400, 404, 405, 408, 413, 415, 422}
_markers = itertools.count(1)
SECRET = uuid.uuid4().hex.encode()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def assert_clear(response: httpx.Response) -> None:
    """A hostile request's answer: success, or a 4xx whose JSON says why."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code == 200:
        return
    if response.status_code == 307:
        # FastAPI's redirect of a path with an extra slash ("ambulances/" for an empty
        # id, or "ambulances/%2F"): to this server's own path without it.
        location = httpx.URL(response.headers["location"])
        assert location.host == "testserver"
        assert unquote(response.request.url.path).startswith(unquote(location.path).rstrip("/"))
        return
    assert response.status_code in CLEAR, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert detail, "a refusal must say why"


def send_good_tracking(served: Served) -> None:
    """A good legacy point: answered 200, and published for the bridge."""
    seq = next(_markers)
    body = {"ambulance_id": GOOD, "tracking_latitude": 13.7, "tracking_longitude": 100.5,
            "tracking_speed": 40, "seq": seq}
    response = served.request("POST", LEGACY_POSTS[0], json=body)
    assert response.status_code == 200, response.text
    served.wait_published(f"legacy/{GOOD}/tracking", f'"seq":{seq},'.encode())


# --- legacy JSON and form bodies ---------------------------------------------------------

_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain", "")


def _bodies() -> st.SearchStrategy[bytes]:
    form = st.dictionaries(
        st.sampled_from(["ambulance_id", "tracking_latitude", "tracking_longitude",
                         "tracking_speed", "tracking_heading", "lat", "seq", "legacy"])
        | st.text(max_size=8),
        st.sampled_from([GOOD, "13.7", "1e999", "NaN", "-1", ""]) | st.text(max_size=20),
        max_size=6,
    ).map(lambda fields: httpx.QueryParams(fields).__str__().encode())
    good_shaped = st.builds(
        lambda extra: {"ambulance_id": GOOD, "tracking_latitude": 13.7,
                       "tracking_longitude": 100.5, "tracking_speed": 40} | extra,
        st.dictionaries(st.text(max_size=10), json_values(), max_size=3),
    )
    return (
        record_bodies(GOOD).map(encode)
        | good_shaped.map(encode)
        | json_values().map(encode)
        | form
        | st.sampled_from(RAW_PAYLOADS).filter(lambda raw: len(raw) < 70_000)
        | st.binary(max_size=100)
    )


@bounded(60)
@given(
    path=st.sampled_from(LEGACY_POSTS),
    body=_bodies(),
    content_type=st.sampled_from(_CONTENT_TYPES),
)
@example(path=LEGACY_POSTS[0], body=b'{"ambulance_id": "..", "tracking_latitude": 1}',
         content_type="application/json")
@example(path=LEGACY_POSTS[1], body=b"ambulance_id=%00&tracking_latitude=1",
         content_type="application/x-www-form-urlencoded")
def test_hostile_legacy_posts_are_refused_clearly_and_good_ones_go_through(
    served: Served, path: str, body: bytes, content_type: str
) -> None:
    watch = served.watch()
    headers = {"content-type": content_type} if content_type else {}
    response = served.request("POST", path, content=body, headers=headers)
    assert_clear(response)
    send_good_tracking(served)
    assert watch.escaped() == []


# --- legacy uploads ----------------------------------------------------------------------

_file_names = st.sampled_from(HOSTILE_FILE_NAMES) | st.text(max_size=40).filter(_encodable)
_file_bytes = st.sampled_from([TINY_JPEG, png(), b"GIF89a", b"", TINY_JPEG * 300]) | st.binary(
    max_size=64
)


@st.composite
def uploads(draw: st.DrawFn) -> tuple[dict[str, str], list[tuple[str, Any]]]:
    fields: dict[str, str] = {}
    if draw(st.integers(0, 4)):  # mostly with an id, of any kind
        aid = draw(st.just(GOOD) | invalid_ids().filter(_encodable))
        fields["ambulance_id"] = aid
    fields.update(draw(st.dictionaries(
        st.text(min_size=1, max_size=8).filter(_encodable),
        st.text(max_size=20).filter(_encodable),
        max_size=2,
    )))
    files = [
        (draw(st.sampled_from(["files", "files", "file", "../files"])),
         (draw(_file_names), draw(_file_bytes), draw(st.sampled_from(["image/jpeg", "text/html"]))))
        for _ in range(draw(st.integers(0, 4)))
    ]
    return fields, files


@bounded(40)
@given(upload=uploads())
@example(upload=({"ambulance_id": GOOD}, [("files", (name, TINY_JPEG, "image/jpeg"))
                                          for name in HOSTILE_FILE_NAMES[:3]]))
@example(upload=({"ambulance_id": "../../escaped"},
                 [("files", ("x.jpg", TINY_JPEG, "image/jpeg"))]))
def test_hostile_uploads_write_nothing_and_good_ones_go_through(
    served: Served, upload: tuple[dict[str, str], list[tuple[str, Any]]]
) -> None:
    watch = served.watch()
    fields, files = upload
    response = served.request("POST", UPLOAD, data=fields, files=files or None)
    assert_clear(response)
    if response.status_code == 200:
        # Accepted: only a valid id, with 1..max files that are images within the limit.
        assert valid_ambulance_id(fields.get("ambulance_id"))
        # A part without a file name is a text field to the form parser, not a file.
        images = [content for field, (name, content, _) in files if field == "files" and name]
        assert len(images) in range(1, MAX_UPLOAD_FILES + 1)
        assert all(len(content) <= MAX_IMAGE_BYTES for content in images)
    marker = f"m{next(_markers)}"
    good = served.request(
        "POST", UPLOAD, data={"ambulance_id": GOOD, "note": marker},
        files=[("files", ("a.jpg", TINY_JPEG, "image/jpeg"))],
    )
    assert good.status_code == 200, good.text
    served.wait_published(f"legacy/{GOOD}/snap", marker.encode())
    assert watch.escaped() == []


# --- the read API --------------------------------------------------------------------------

_query_values = (
    st.sampled_from(["", "0", "-1", "1001", "1e3", "NaN", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "2026-13-01", "true", "x" * 600, "..",
                     "tracking", "%00"])
    | st.text(max_size=30).filter(_encodable)
)
_queries = st.dictionaries(
    st.sampled_from(["since", "until", "limit", "cursor", "newest_first", "ambulance_id"]),
    _query_values,
    max_size=4,
)
_read_paths = st.sampled_from([
    "/api/v1/ambulances", "/api/v1/ambulances/{id}", "/api/v1/ambulances/{id}/track",
    "/api/v1/ambulances/{id}/snapshots", "/api/v1/crashes", "/api/v1/dead-letters",
])


@bounded(60)
@given(
    template=_read_paths,
    aid=st.just(SEEDED) | invalid_ids().filter(_encodable),
    params=_queries,
    safe=st.sampled_from(["", "/"]),
)
@example(template="/api/v1/ambulances/{id}/track", aid=SEEDED,
         params={"since": "0001-01-01T00:00:00+01:00"}, safe="")
@example(template="/api/v1/ambulances", aid=SEEDED, params={"cursor": "x" * 600}, safe="")
def test_hostile_reads_are_refused_clearly_and_good_ones_answered(
    served: Served, template: str, aid: str, params: dict[str, str], safe: str
) -> None:
    watch = served.watch()
    response = served.request("GET", template.format(id=quote(aid, safe=safe)), params=params)
    assert_clear(response)
    if response.status_code == 200:
        assert isinstance(response.json(), dict)
    good = served.request("GET", f"/api/v1/ambulances/{SEEDED}")
    assert good.status_code == 200, good.text
    assert good.json()["ambulance_id"] == SEEDED
    assert watch.escaped() == []


@bounded(40)
@given(
    key=st.sampled_from([*HOSTILE_FILE_NAMES, *filter(_encodable, HOSTILE_IDS), "../secret.jpg",
                         "../../secret.jpg", "/secret.jpg", "objects/../../secret.jpg",
                         "%2e%2e/secret.jpg"])
    | st.text(min_size=1, max_size=40).filter(_encodable),
    safe=st.sampled_from(["", "/"]),
)
def test_file_keys_never_reach_outside_the_object_store(
    served: Served, key: str, safe: str
) -> None:
    # A file beside the data directory, which a path escaping the object store would reach.
    secret = served.test_dir / "secret.jpg"
    if not secret.exists():
        secret.write_bytes(TINY_JPEG + SECRET)
    url = httpx.URL(f"http://testserver/files/{quote(key, safe=safe)}")
    # The client itself resolves "/files/.." to "/": such a request never reaches /files.
    assume(url.path.startswith("/files/"))
    watch = served.watch()
    response = served.request("GET", url)
    assert_clear(response)
    assert SECRET not in response.content
    assert response.status_code != 200, key  # no object is stored under a hostile key
    assert_good_reads_work(served)
    assert watch.escaped() == []


def test_good_file_reads_still_work(served: Served) -> None:
    # The seeded snapshot's image, by the key the read API links to.
    assert_good_reads_work(served)
    assert json.loads(served.request("GET", "/healthz").text) == {"status": "ok"}


def test_an_invalid_file_key_is_a_documented_400(served: Served) -> None:
    # Regression (schemathesis, ST103): /files answered 400 for an invalid key,
    # a status its OpenAPI description did not list.
    response = served.request("GET", "/files/a%1Fb.jpg")
    assert response.status_code == 400
    assert "control character" in response.json()["detail"]
    described = served.app.openapi()["paths"]["/files/{key}"]["get"]["responses"]
    assert "400" in described
