"""Hostile input to the Socket.IO server and to the HTTP API's token checks.

A real Socket.IO server (``create_sio`` under uvicorn, outside legacy mode)
runs on a loop of its own for the module; python-socketio clients connect
with hostile ``auth`` payloads, and a connected client sends hostile
``room_join``, ``room_leave`` and ``live_subscribe`` arguments. Each must be
refused or ignored cleanly, and after each example a good client, connected
with a valid token since the start, still receives what the server emits to
its room: the server stayed up and kept serving. The HTTP API answers hostile
``Authorization`` headers and ``?token=`` values with 401, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import socketio
from hypothesis import example, given
from hypothesis import strategies as st

from aoc.config import Settings
from api import SocketGate, create_sio
from api.tokens import PREFIX, create_token
from bridge.contract import LIVE_SUBSCRIBE_EVENT, LIVE_UNSUBSCRIBE_EVENT
from storage.sqlite import SQLiteDocumentStore
from tests.api.test_realtime import realtime
from tests.api.test_realtime_auth import Client, connect
from tests.hostile.conftest import SEEDED, LoopThread, Served
from tests.hostile.strategies import HOSTILE_IDS, bounded

# The rooms of the limited token the hostile client holds.
ALLOWED = "AMB-1"
ALLOWED_ROOMS = {ALLOWED, f"CRASH_NOTIFY_{ALLOWED}"}
_markers = itertools.count(1)


@dataclass
class Realtime:
    runner: LoopThread
    sio: socketio.AsyncServer
    url: str
    token: str  # reads everything
    good: Client  # connected with ``token``, in room "tracking"
    hostile: Client  # connected with a token limited to ``ALLOWED``

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def assert_still_serving(self) -> None:
        """The good client receives a fresh emission to its room."""
        marker = f"still-serving-{next(_markers)}"

        async def check() -> None:
            await self.sio.emit("data", marker, room="tracking")
            await self.good.wait_for("data", lambda d: d == marker, within=10)

        self.run(check())
        assert self.hostile.sio.connected


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realtime]:
    workdir = tmp_path_factory.mktemp("hostile-socketio")
    runner = LoopThread()
    stack = contextlib.AsyncExitStack()

    async def start() -> Realtime:
        store = await stack.enter_async_context(SQLiteDocumentStore(workdir / "aoc.sqlite3"))
        settings = Settings(
            _env_file=None, data_dir=workdir / "data", legacy_mode=False  # type: ignore[call-arg]
        )
        sio = create_sio(SocketGate(settings, store))
        url = await stack.enter_async_context(realtime(sio, settings))
        token = await create_token(store, "hostile-good", None, actor="tests")
        limited = await create_token(store, "hostile-limited", [ALLOWED], actor="tests")
        good = await connect(url, auth={"token": token})
        stack.push_async_callback(good.sio.disconnect)
        await good.sio.emit("room_join", "tracking")
        await good.wait_for("data", lambda d: d == "room joined: tracking")
        hostile = await connect(url, auth={"token": limited})
        stack.push_async_callback(hostile.sio.disconnect)
        return Realtime(runner, sio, url, token, good, hostile)

    async def cancel_the_rest() -> None:
        # Engine.IO's service and ping tasks outlive the server: end them before the loop.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    try:
        yield runner.run(start())
    finally:
        runner.run(stack.aclose())
        runner.run(cancel_the_rest())
        runner.stop()


def json_values() -> st.SearchStrategy[Any]:
    """JSON values, nested, NaN and infinities included; integers Engine.IO will parse.

    Engine.IO refuses to parse an integer of over 100 digits (it drops the
    whole packet, so a call waits for an answer in vain): those are
    ``test_a_packet_engineio_cannot_parse_is_dropped``'s.
    """
    scalars = (
        st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
        | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4),
        max_leaves=12,
    )


def _token_shapes() -> st.SearchStrategy[Any]:
    """Token values of the wrong shape or type, and huge ones."""
    return (
        st.text(max_size=80)
        | st.builds(lambda tail: PREFIX + tail, st.text(max_size=80))
        | st.sampled_from([PREFIX, PREFIX + "0" * 42, PREFIX + "0" * 44, PREFIX + "\x00" * 43,
                           "Bearer " + PREFIX + "0" * 43, "x" * 100_000, PREFIX + "é" * 43])
        | json_values()
    )


def hostile_auth() -> st.SearchStrategy[Any]:
    """``auth`` payloads: not a dict, a dict without a token, or a token of the wrong shape."""
    return (
        json_values()
        | st.builds(lambda token: {"token": token}, _token_shapes())
        | st.dictionaries(st.text(max_size=12), json_values(), max_size=4)
        | st.just("t" * 200_000)
    )


@bounded(40)
@given(auth=hostile_auth())
@example(auth=None)
@example(auth=[PREFIX + "0" * 43])
def test_hostile_auth_payloads_are_refused_and_the_server_keeps_serving(
    live: Realtime, auth: Any
) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        live.run(connect(live.url, auth=auth))
    live.assert_still_serving()


def hostile_rooms() -> st.SearchStrategy[Any]:
    return (
        st.sampled_from([*HOSTILE_IDS, "AMB-2", "tracking", "CRASH_NOTIFY_AMB-2", "live:fleet",
                         '"AMB-2"', "x" * 100_000, ALLOWED + "/..", "CRASH_NOTIFY_"])
        | json_values()
        | st.binary(max_size=64)
        | st.text(max_size=200)
    )


@bounded(40)
@given(room=hostile_rooms())
def test_hostile_room_values_are_refused_or_ignored(live: Realtime, room: Any) -> None:
    client = live.hostile

    async def send() -> tuple[Any, Any, set[str]]:
        joined = await client.sio.call("room_join", room, timeout=10)
        rooms = set(live.sio.rooms(client.sio.get_sid("/"))) - {client.sio.get_sid("/")}
        left = await client.sio.call("room_leave", room, timeout=10)
        return joined, left, rooms

    joined, left, rooms = live.run(send())
    assert joined is None or isinstance(joined, str)  # ignored or joined, or why not
    assert left is None
    # The limited token may be in its own rooms and in no other, whatever it asked.
    assert rooms <= ALLOWED_ROOMS, rooms
    live.assert_still_serving()


def test_a_packet_engineio_cannot_parse_is_dropped(live: Realtime) -> None:
    """Test that a join, leave or subscription carrying a 400-digit integer changes nothing."""
    client = live.hostile

    async def send() -> set[str]:
        for event in ("room_join", "room_leave", LIVE_SUBSCRIBE_EVENT):
            await client.sio.emit(event, {"ambulances": [10**400], "room": 10**400})
            await client.sio.emit(event, 10**400)
        # A good call afterwards is answered: the connection outlived the dropped packets.
        assert await client.sio.call("room_join", ALLOWED, timeout=10) is None
        sid = client.sio.get_sid("/")
        return set(live.sio.rooms(sid)) - {sid}

    assert live.run(send()) <= ALLOWED_ROOMS
    live.assert_still_serving()


def hostile_selections() -> st.SearchStrategy[Any]:
    ids = st.sampled_from(HOSTILE_IDS) | st.text(max_size=70) | json_values()
    return (
        json_values()
        | st.builds(lambda wanted: {"ambulances": wanted}, json_values())
        | st.builds(lambda wanted: {"ambulances": wanted}, st.lists(ids, max_size=5))
        | st.just({"ambulances": ["AMB-2"] * 10_000})
        | st.just({"ambulances": [ALLOWED, "AMB-2"]})
        | st.just({"ambulances": "*"})
    )


@bounded(40)
@given(payload=hostile_selections())
def test_hostile_live_subscriptions_are_refused_or_limited(live: Realtime, payload: Any) -> None:
    client = live.hostile

    async def send() -> Any:
        answer = await client.sio.call(LIVE_SUBSCRIBE_EVENT, payload, timeout=10)
        await client.sio.call(LIVE_UNSUBSCRIBE_EVENT, timeout=10)
        return answer

    answer = live.run(send())
    assert isinstance(answer, dict)
    if "error" in answer:
        assert isinstance(answer["error"], str) and answer["error"]
    else:  # a limited token watches its own ambulance, never the fleet
        assert answer["ambulances"] == [ALLOWED], answer
    live.assert_still_serving()


# --- the HTTP API's token checks ---------------------------------------------------------


def _header_safe(value: str) -> bool:
    # What an HTTP client can put in a header at all: latin-1, no line breaks.
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(c in value for c in "\r\n\x00")


def hostile_credentials() -> st.SearchStrategy[str]:
    shapes = st.text(max_size=80) | st.sampled_from(
        ["", PREFIX, PREFIX + "0" * 43, PREFIX + "0" * 42, "x" * 20_000, "é" * 10]
    )
    return (
        shapes
        | st.builds(lambda scheme, value: f"{scheme} {value}",
                    st.sampled_from(["Bearer", "bearer", "Basic", "Token", "Bearer  ", ""]), shapes)
        | st.sampled_from(["Bearer", "Bearer ", "Basic Zm9vOmJhcg==", "Bearer a b c"])
    )


def _without_default_token(served: Served, request: httpx.Request) -> httpx.Response:
    """Send ``request`` without the Authorization header the served client adds to all."""
    request.headers.pop("authorization", None)
    return served.runner.run(served.client.send(request))


@bounded(50)
@given(header=hostile_credentials().filter(_header_safe))
def test_hostile_authorization_headers_get_401(served: Served, header: str) -> None:
    # As bytes: httpx encodes a str header as ASCII; a server reads latin-1.
    request = served.client.build_request(
        "GET", f"/api/v1/ambulances/{SEEDED}", headers={b"Authorization": header.encode("latin-1")}
    )
    response = served.runner.run(served.client.send(request))
    assert response.status_code == 401, (header, response.status_code, response.text)
    assert response.json()["detail"]
    good = served.request("GET", f"/api/v1/ambulances/{SEEDED}")
    assert good.status_code == 200, good.text


@bounded(50)
@given(token=hostile_credentials() | st.sampled_from(["%00", "a&token=b", "\x00"]))
def test_hostile_query_tokens_get_401(served: Served, token: str) -> None:
    request = served.client.build_request(
        "GET", f"/api/v1/ambulances/{SEEDED}", params={"token": token}
    )
    response = _without_default_token(served, request)
    assert response.status_code == 401, (token, response.status_code, response.text)
    assert response.json()["detail"]
    good = served.client.build_request(
        "GET", f"/api/v1/ambulances/{SEEDED}", params={"token": served.token}
    )
    assert _without_default_token(served, good).status_code == 200

