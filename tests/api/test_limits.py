"""Bounds of the HTTP side: slow bodies, open connections and concurrent uploads.

Served by a real uvicorn (``aoc.servers.server``) on a free port where the
bound is the server's, and through the app where it is the route's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aoc.servers import server
from api import ApiDeps, SocketGate, create_app, create_realtime_app, create_sio
from api.routes import legacy
from tests import services
from tests.api.conftest import Subscriber, client_for
from tests.images import TINY_JPEG

TRACKING = "/api/tracking/postAmbulanceTracking"
SNAPSHOT = "/api/snapshot/postAmbulanceImageUpload"


@contextlib.asynccontextmanager
async def serving(app: Any, **bounds: Any) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn on a free port in this event loop; yield the port."""
    port = services.free_port()
    embedded = server(app, host="127.0.0.1", port=port, **bounds)
    task = asyncio.create_task(embedded.serve(), name="http-under-test")
    try:
        async with asyncio.timeout(10):
            while not embedded.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield port
    finally:
        embedded.stop()
        await asyncio.wait_for(task, 10)


async def unfinished_post(
    port: int, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A chunked POST whose headers and first chunk are sent, and never the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def test_a_body_that_never_finishes_gets_408_and_is_closed(deps: ApiDeps) -> None:
    """Test that a chunked body never completed is answered 408 and its connection closed."""
    async with serving(create_app(deps), body_timeout=0.5) as port:
        reader, writer = await unfinished_post(port, TRACKING)
        async with asyncio.timeout(10):
            response = await reader.read()  # up to EOF: the server closed the connection
        writer.close()
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 408"), response
    assert b"connection: close" in head
    assert b"did not arrive in time" in response


async def _body_length(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


async def _chunked_post(port: int, chunks: int, size: int, pause: float) -> bytes:
    """POST ``chunks`` chunks of ``size`` bytes, ``pause`` s apart; the raw response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Read from the start: a server that gives up answers before the body ends.
    answer = asyncio.create_task(reader.read(4096))
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:
        for _ in range(chunks):
            if answer.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (size, b"x" * size))
            await writer.drain()
            await asyncio.sleep(pause)
        else:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # the server gave up on the body and closed the connection
    async with asyncio.timeout(10):
        response = await answer
    writer.close()
    return response


async def test_a_slow_but_steady_body_earns_its_time(deps: ApiDeps) -> None:
    """Test that bytes arriving at the minimum rate extend the body deadline, dribbles do not.

    With one deadline for the whole body, a camera on a slow link could never
    finish a large legacy upload (50 MB in 60 s needs 7 Mbit/s).
    """
    app = Starlette(routes=[Route("/", _body_length, methods=["POST"])])
    async with serving(app, body_timeout=0.5, body_min_rate=1000) as port:
        # 2 s in all, four times the base timeout: each 1,000 bytes earn a second.
        steady = await _chunked_post(port, chunks=10, size=1000, pause=0.2)
        # Bytes too few to matter: a client holding the connection open.
        dribble = await _chunked_post(port, chunks=50, size=1, pause=0.2)
    assert steady.startswith(b"HTTP/1.1 200"), steady
    assert steady.endswith(b"10000")
    assert dribble.startswith(b"HTTP/1.1 408"), dribble


async def test_connections_past_the_bound_get_503_then_service_resumes(deps: ApiDeps) -> None:
    """Test that a request past max_connections gets 503 at once, and 200 once others close."""
    async with serving(create_app(deps), max_connections=2, body_timeout=60) as port:
        held = [await unfinished_post(port, TRACKING) for _ in range(2)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            refused = await client.get("/healthz")
            assert refused.status_code == 503
            assert refused.headers["connection"] == "close"
            for _, writer in held:
                writer.close()
                await writer.wait_closed()
            # The server notices the closes a moment later.
            statuses = []
            for _ in range(200):
                statuses.append((await client.get("/healthz")).status_code)
                if statuses[-1] == 200:
                    break
                await asyncio.sleep(0.05)
            assert statuses[-1] == 200, statuses


def _gated(gate: threading.Event, waiting: threading.Event) -> Callable[[bytes], Any]:
    real = legacy.sniff

    def sniff(data: bytes) -> Any:
        waiting.set()
        # In the event loop this would block the very loop that opens the gate.
        assert gate.wait(10), "the upload's encoding held the event loop"
        return real(data)

    return sniff


async def test_upload_encoding_runs_off_the_event_loop(
    deps: ApiDeps, subscriber: Subscriber, ambulance_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that while an upload is encoded the event loop serves (here: opens its gate)."""
    gate, waiting = threading.Event(), threading.Event()
    monkeypatch.setattr(legacy, "sniff", _gated(gate, waiting))

    async def open_gate() -> None:
        if await asyncio.to_thread(waiting.wait, 10):
            gate.set()

    async with client_for(deps) as http:
        opener = asyncio.create_task(open_gate())
        response = await http.post(
            SNAPSHOT, data={"ambulance_id": ambulance_id}, files=[("files", ("a.jpg", TINY_JPEG))]
        )
        await opener
    assert response.status_code == 200, response.text
    topic, _ = await subscriber.next()
    assert topic == f"legacy/{ambulance_id}/snap"


def _one_slot(deps: ApiDeps) -> ApiDeps:
    deps.settings.max_concurrent_uploads = 1
    return ApiDeps(settings=deps.settings, store=deps.store, objects=deps.objects,
                   cache=deps.cache, publisher=deps.publisher)


async def test_uploads_past_the_bound_get_503_with_retry_after(
    deps: ApiDeps, subscriber: Subscriber, ambulance_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that an upload while max_concurrent_uploads are being encoded is refused at once."""
    deps = _one_slot(deps)
    gate, waiting = threading.Event(), threading.Event()
    monkeypatch.setattr(legacy, "sniff", _gated(gate, waiting))
    files = {"data": {"ambulance_id": ambulance_id}}
    async with client_for(deps) as http:
        first = asyncio.create_task(
            http.post(SNAPSHOT, **files, files=[("files", ("a.jpg", TINY_JPEG))])
        )
        assert await asyncio.to_thread(waiting.wait, 10)  # the first is encoding, slot held
        refused = await http.post(SNAPSHOT, **files, files=[("files", ("b.jpg", TINY_JPEG))])
        gate.set()
        accepted = await first
        again = await http.post(SNAPSHOT, **files, files=[("files", ("c.jpg", TINY_JPEG))])
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5"
    assert "too many uploads in progress" in refused.json()["detail"]
    assert accepted.status_code == 200, accepted.text
    assert again.status_code == 200, again.text
    assert deps.upload_slots.used == 0


async def test_a_slow_upload_holds_no_slot(
    deps: ApiDeps, subscriber: Subscriber, ambulance_id: str
) -> None:
    """Test that an upload whose body is still arriving leaves the slots to the others.

    The slot was taken before the body was read: two slow (or hostile)
    uploaders kept every other device's snapshot at 503 for as long as they
    kept sending.
    """
    deps = _one_slot(deps)
    release = asyncio.Event()
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"ambulance_id\"\r\n\r\n"
            f"{ambulance_id}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    started = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield head
        started.set()
        await release.wait()
        yield TINY_JPEG + tail

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    async with client_for(deps) as http:
        slow = asyncio.create_task(http.post(SNAPSHOT, content=slow_body(), headers=headers))
        await started.wait()
        other = await http.post(
            SNAPSHOT, data={"ambulance_id": ambulance_id}, files=[("files", ("b.jpg", TINY_JPEG))]
        )
        release.set()
        finished = await slow
    assert other.status_code == 200, other.text
    assert finished.status_code == 200, finished.text
    assert deps.upload_slots.used == 0


async def test_headers_that_never_finish_are_closed(deps: ApiDeps) -> None:
    """Test that a connection whose request headers never complete is closed by the server."""
    async with serving(create_app(deps), header_timeout=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # EOF without an answer
        writer.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_dashboards_outlive_the_timeouts(transport: str, gate: SocketGate) -> None:
    """Test that a Socket.IO dashboard stays connected and served past every server timeout."""
    sio = create_sio(gate)
    bounds = {"max_connections": 10, "body_timeout": 0.3, "header_timeout": 0.3,
              "graceful_timeout": 1.0}
    async with serving(create_realtime_app(sio, gate.settings), **bounds) as port:
        client = socketio.AsyncClient(reconnection=False)
        received: asyncio.Queue[Any] = asyncio.Queue()
        client.on("data", handler=received.put)
        await client.connect(f"http://127.0.0.1:{port}", transports=[transport], wait_timeout=5)
        try:
            for room in ("tracking", "332"):
                await asyncio.sleep(1.0)  # idle past both timeouts
                await client.emit("room_join", room)
                async with asyncio.timeout(10):
                    assert await received.get() == f"room joined: {room}"
                await sio.emit("data", f"to {room}", room=room)
                async with asyncio.timeout(10):
                    assert await received.get() == f"to {room}"
            assert client.connected
        finally:
            # A polling client's disconnect waits out its pending long poll: not our concern.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await client.disconnect()
