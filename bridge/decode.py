"""Decoding snapshots in worker processes, where they cannot stall the event loop.

A maximum-size JSON snapshot is 70 MB of base64: ``json.loads`` alone holds
the GIL for about half a second in a single C call, so a worker *thread*
still froze the event loop, and with it every tracking point and crash alert
behind it. ``Decoders`` keeps a few child processes (``serve_stdio``, in
an interpreter that imports only the validator) and hands each one message
at a time over its stdin/stdout: length-prefixed frames, the topic and time
pickled and the payload as is, in; a pickled ``Decoded`` without image bytes,
then each image's bytes, out. The parent only moves bytes through pipes, a
slice at a time, so that it holds no extra copy of a whole snapshot.

A child that dies (killed, out of memory) is replaced, and the message it
held fails with ``DecoderDied`` so that the caller can dead-letter it rather
than feed it to the next child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
import sys
from dataclasses import dataclass, replace
from datetime import datetime
from typing import BinaryIO

from bridge.ids import snap_id
from bridge.messages import Parsed, Rejected, Snap
from bridge.snapshots import image_digest
from bridge.validate import Limits, parse

__all__ = ["Decoded", "DecoderDied", "Decoders", "NoDecoder", "decode", "serve_stdio"]

_FRAME = struct.Struct(">Q")
_SLICE = 1 << 20  # bytes written to a decoder's pipe at a time


@dataclass(frozen=True, slots=True)
class Decoded:
    """A parsed message, plus what a snapshot's upload needs of its bytes."""

    parsed: Parsed
    digests: tuple[bytes, ...] = ()  # each image's SHA-256 (its key's digits)
    snap_id: str | None = None


class DecoderDied(Exception):
    """The worker process decoding a message exited before answering."""


class NoDecoder(DecoderDied):
    """No decoder process could be started: the message is not to blame."""


def decode(topic: str, payload: bytes, received_at: datetime, limits: Limits) -> Decoded:
    """Parse one message; for a snapshot also hash its images and compute its id."""
    parsed = parse(topic, payload, received_at, limits)
    if isinstance(parsed, Snap):
        digests = tuple(image_digest(image.data) for image in parsed.images)
        return Decoded(parsed, digests, snap_id(parsed))
    if isinstance(parsed, Rejected):
        # The caller holds the payload: it need not travel back through the pipe.
        return Decoded(replace(parsed, payload=b""))
    return Decoded(parsed)


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def call(self, request: bytes, payload: bytes) -> Decoded:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            await self._send(request)
            await self._send(payload)
            result = pickle.loads(await self._receive())  # our own child, private pipe
            assert isinstance(result, Decoded)
            if isinstance(result.parsed, Snap):
                # Each image came as a frame of its own: one image's bytes at a
                # time in the pipe's buffer, never the whole snapshot twice.
                images = [
                    replace(image, data=await self._receive()) for image in result.parsed.images
                ]
                result = replace(result, parsed=replace(result.parsed, images=tuple(images)))
        except (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError) as exc:
            raise DecoderDied(f"decoder process {self.proc.pid} died: {exc!r}") from exc
        return result

    async def _send(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_FRAME.pack(len(frame)))
        # In slices, each drained: the transport would copy what the pipe does
        # not take at once, i.e. nearly the whole 70 MB payload.
        view = memoryview(frame)
        for start in range(0, len(view), _SLICE):
            self.proc.stdin.write(view[start : start + _SLICE])
            await self.proc.stdin.drain()
        await self.proc.stdin.drain()

    async def _receive(self) -> bytes:
        assert self.proc.stdout is not None
        (size,) = _FRAME.unpack(await self.proc.stdout.readexactly(_FRAME.size))
        return await self.proc.stdout.readexactly(size)

    async def close(self) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # the child exits at end of input
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Decoders:
    """``workers`` decoder processes; ``decode`` waits for a free one."""

    def __init__(
        self, *, workers: int, limits: Limits, logger: logging.Logger | None = None
    ) -> None:
        if workers < 1:
            raise ValueError("need at least one decoder process")
        self._workers = workers
        self._limits = limits
        self._log = logger or logging.getLogger(__name__)
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()

    async def __aenter__(self) -> Decoders:
        for _ in range(self._workers):
            self._idle.put_nowait(await self._start())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        workers, self._all = self._all, set()
        await asyncio.gather(*(worker.close() for worker in workers))

    async def _start(self) -> _Worker:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from bridge.decode import serve_stdio; serve_stdio()",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,
                # Its own session: a Ctrl-C or SIGTERM sent to the bridge's
                # process group must not kill the decoder of a snapshot that the
                # stopping bridge still finishes. It exits at the end of its input.
                start_new_session=True,
            )
        except OSError as exc:  # out of processes or memory: the caller retries
            raise NoDecoder(f"could not start a decoder process: {exc}") from exc
        worker = _Worker(proc)
        self._all.add(worker)
        return worker

    async def _healthy(self) -> _Worker:
        """An idle worker that is still running (one that died while idle is replaced)."""
        worker = await self._idle.get()
        if worker.proc.returncode is None:
            return worker
        self._log.warning(
            "decoder process %d exited (%s) while idle; starting another",
            worker.proc.pid,
            worker.proc.returncode,
        )
        self._all.discard(worker)
        try:
            return await self._start()
        except NoDecoder:
            self._idle.put_nowait(worker)  # keep the slot: the next call tries again
            raise

    async def decode(self, topic: str, payload: bytes, received_at: datetime) -> Decoded:
        """``decode`` in a worker process; ``DecoderDied`` if it died meanwhile."""
        request = pickle.dumps((topic, received_at, self._limits))
        worker = await self._healthy()
        try:
            result = await worker.call(request, payload)
        except BaseException as exc:
            # Its state is unknown (a cancelled exchange leaves bytes in the pipe).
            self._all.discard(worker)
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.proc.wait()
            if not isinstance(exc, asyncio.CancelledError):  # cancelled: stopping
                # Its replacement starts on the next call (``_healthy``).
                self._idle.put_nowait(worker)
            raise
        self._idle.put_nowait(worker)
        if isinstance(result.parsed, Rejected):
            return replace(result, parsed=replace(result.parsed, payload=payload))
        return result


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: one request in, one answer out, until end of input."""
    while header := stdin.read(_FRAME.size):
        (size,) = _FRAME.unpack(header)
        topic, received_at, limits = pickle.loads(stdin.read(size))
        (size,) = _FRAME.unpack(stdin.read(_FRAME.size))
        payload = stdin.read(size)
        decoded = decode(topic, payload, received_at, limits)
        del payload
        images: list[bytes] = []
        if isinstance(decoded.parsed, Snap):
            images = [image.data for image in decoded.parsed.images]
            light = tuple(replace(image, data=b"") for image in decoded.parsed.images)
            decoded = replace(decoded, parsed=replace(decoded.parsed, images=light))
        for frame in (pickle.dumps(decoded), *images):
            stdout.write(_FRAME.pack(len(frame)))
            stdout.write(frame)
        stdout.flush()


def serve_stdio() -> None:
    """A decoder process's entry point (imported, so answers pickle as ``bridge.decode``)."""
    # Buffered whatever PYTHONUNBUFFERED says: an unbuffered (raw) stdout may
    # write a frame only in part, which would break the framing.
    with open(sys.stdout.fileno(), "wb", closefd=False) as stdout:
        _serve(sys.stdin.buffer, stdout)
