"""A bounded local spool in front of an object store, for object storage outages.

Without it, a dead S3 makes every put fail, so the bridge holds its whole batch
(tracking and crash alerts included) until S3 returns. ``SpoolingObjectStore``
instead writes the object durably to a local directory and reports success, and
a background task uploads spooled objects in order once the store answers again.
Nothing acknowledged is lost: an object leaves the spool only after ``inner``
stored it, and a spool left by a stopped process is drained by the next one.

One file per object, ``<seq>.spool``: a JSON header line (key, content type)
then the bytes, written with the local store's atomic write (temporary file,
fsync, rename, fsync of the directory), so a crash leaves whole entries only.

While anything is spooled, new puts join the queue instead of going to
``inner``: an older spooled copy of a key must never overwrite a newer one, and
during an outage each direct attempt would wait for the store's timeouts.

Readiness: ``ping`` succeeds while the spool accepts objects during an outage
(the process can take work, so ``/readyz`` shows ``"objects": "ok"``);
``degraded`` says why it is degraded, for logs and a future health detail.
When ``inner`` is down and the spool is full, ``ping`` and ``put`` raise
``StoreUnavailable`` and ``/readyz`` answers 503 with that message: the bridge
then holds its batches. When ``inner`` answers but refuses (no credentials,
access denied, no such bucket: ``StoreMisconfigured``), the spool still takes
objects, so none is lost while an operator fixes it, but ``ping`` raises: a
misconfiguration is not ready, and says why, instead of filling the spool
quietly toward its bound.

One process owns a spool directory (an exclusive lock): ``aoc serve`` or
``aoc bridge``, the processes that write objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from storage.base import ObjectStore, StoreMisconfigured, StoreUnavailable
from storage.codec import validate_key
from storage.localfs import LocalObjectStore

_ENTRY_RE = re.compile(r"^(\d{16})\.spool$")
_HEADER_LIMIT = 4096  # a key is at most 1 KiB: a longer first line is not a header
_LOCK_NAME = "lock"


class SpoolInUse(RuntimeError):
    """Another process holds the spool's lock: two bridges on one data directory."""


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    key: str
    content_type: str
    size: int  # bytes on disk, header included

    @property
    def name(self) -> str:
        return f"{self.seq:016d}.spool"


class SpoolingObjectStore(ObjectStore):
    """An ``ObjectStore`` that spools puts locally while ``inner`` is unavailable."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        spool_dir: Path,
        max_bytes: int,
        retry_interval: float = 1.0,
        logger: logging.Logger | None = None,
    ) -> None:
        """``max_bytes``: spool size (headers included) past which puts are refused."""
        if max_bytes <= 0:
            raise ValueError("the spool needs max_bytes > 0")
        self._inner = inner
        self._dir = Path(spool_dir).absolute()
        self._disk = LocalObjectStore(self._dir)
        self._max_bytes = max_bytes
        self._retry = retry_interval
        self._log = logger or logging.getLogger(__name__)
        self._queue: dict[int, _Entry] = {}  # by seq, oldest first
        self._by_key: dict[str, _Entry] = {}
        self._bytes = 0
        self._next_seq = 1
        self._inner_open = False
        self._outage = False  # logged once per outage
        self._full = False  # logged once per full episode
        # ``inner``'s last answer, if it was a refusal (see the module's docstring).
        self._misconfigured: StoreMisconfigured | None = None
        self._uploaded = 0
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None

    @property
    def pending(self) -> int:
        """How many objects wait in the spool."""
        return len(self._queue)

    @property
    def spooled_bytes(self) -> int:
        """Bytes the spool holds on disk."""
        return self._bytes

    @property
    def degraded(self) -> str | None:
        """Why the store is degraded (objects wait in the spool), or None."""
        if not self._queue and self._inner_open:
            return None
        return (
            f"degraded, accepting: {len(self._queue)} objects ({self._bytes} bytes) "
            f"spooled in {self._dir} until the object store returns"
        )

    async def open(self) -> None:
        """Lock and load the spool, open ``inner`` if it answers, start the drain."""
        await self._disk.open()
        await asyncio.to_thread(self._lock)
        try:
            await self._open()
        except BaseException:
            self._unlock()
            raise
        self._drainer = asyncio.create_task(self._drain_loop(), name="object-spool-drain")

    async def _open(self) -> None:
        await asyncio.to_thread(self._load)
        if self._queue:
            self._outage = True
            self._log.warning(
                "found %d spooled objects (%d bytes) in %s: uploading them",
                len(self._queue), self._bytes, self._dir,
            )
        try:
            await self._inner.open()
            self._inner_open = True
        except StoreUnavailable as exc:
            # Start anyway: the spool takes objects, the drain opens it later.
            self._answered(exc)
            self._outage = True
            if isinstance(exc, StoreMisconfigured):  # say so first: waiting will not cure it
                self._log.warning(
                    "object store misconfigured at start-up (snapshots are spooled until it "
                    "is fixed): %s", exc,
                )
            else:
                self._log.warning("object store unavailable at start-up, spooling: %s", exc)

    async def close(self) -> None:
        """Stop the drain (the spool stays on disk for the next run) and close ``inner``."""
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
            self._drainer = None
        try:
            await self._inner.close()
        finally:
            self._unlock()

    async def ping(self) -> None:
        """Succeed while objects can be stored, in ``inner`` or in the spool.

        ``StoreMisconfigured`` while ``inner`` refuses, even if the spool accepts.
        """
        if self.degraded is None:
            try:
                await self._inner.ping()
                self._answered(None)
                return
            except StoreUnavailable as exc:
                self._answered(exc)
                if not self._refusing and self._misconfigured is None:
                    return
                raise
        if self._misconfigured is not None:
            raise StoreMisconfigured(
                f"{self._misconfigured} ({len(self._queue)} objects, {self._bytes} bytes spooled)"
            )
        if self._refusing:
            raise StoreUnavailable(
                f"object store unavailable and spool full ({self._bytes} bytes)"
            )

    @property
    def _refusing(self) -> bool:
        # A put was refused since the last upload freed space, or no byte is left.
        return self._full or self._bytes >= self._max_bytes

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store in ``inner``; while it is unavailable, durably in the spool."""
        validate_key(key)
        if self.degraded is None:
            try:
                await self._inner.put(key, data, content_type)
                self._answered(None)
                return
            except StoreUnavailable as exc:
                self._note_outage(exc)
        await self._spool(key, bytes(data), content_type)

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        """As ``put``, unless ``key`` holds other bytes in the spool or in ``inner``.

        While ``inner`` cannot be read, only the spool is checked: an object
        stored in ``inner`` before the outage under the very same key (same
        ambulance, same second, same 4 digits) could then be overwritten.
        """
        validate_key(key)
        spooled = self._by_key.get(key)
        if spooled is not None:
            with contextlib.suppress(KeyError):  # else uploaded meanwhile: ask inner
                return _split(await self._disk.get(spooled.name))[1] == data
        if self.degraded is None:
            try:
                return await self._inner.put_new(key, data, content_type)
            except StoreUnavailable as exc:
                self._note_outage(exc)
        else:
            try:
                return await self._inner.get(key) == data
            except KeyError:
                pass
            except StoreUnavailable:
                pass  # cannot check: see the docstring
        await self._spool(key, bytes(data), content_type)
        return True

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``, from the spool if it is there, else from ``inner``."""
        validate_key(key)
        entry = self._by_key.get(key)
        if entry is not None:
            with contextlib.suppress(KeyError):  # uploaded and removed meanwhile
                return _split(await self._disk.get(entry.name))[1]
        return await self._inner.get(key)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is spooled or stored in ``inner``."""
        validate_key(key)
        return key in self._by_key or await self._inner.exists(key)

    async def delete(self, key: str) -> None:
        """Drop a spooled copy of ``key`` (never to be uploaded), then delete it in ``inner``.

        ``StoreUnavailable`` while ``inner`` is down: the caller (the retention
        sweep) tries again later; the spooled copy is gone already.
        """
        validate_key(key)
        entry = self._by_key.get(key)
        if entry is not None:
            await self._remove(entry)
        await self._inner.delete(key)

    def url(self, key: str) -> str | None:
        """None while ``key`` is only in the spool (the API serves it through ``get``)."""
        validate_key(key)
        if key in self._by_key:
            return None
        return self._inner.url(key)

    # The spool itself.

    def _answered(self, exc: StoreUnavailable | None) -> None:
        """Note ``inner``'s last answer: success (None), an outage or a refusal."""
        self._misconfigured = exc if isinstance(exc, StoreMisconfigured) else None

    def _note_outage(self, exc: StoreUnavailable) -> None:
        self._answered(exc)
        if not self._outage:
            self._outage = True
            self._log.warning("object store unavailable, spooling objects in %s: %s",
                              self._dir, exc)

    async def _spool(self, key: str, data: bytes, content_type: str) -> None:
        header = json.dumps({"key": key, "content_type": content_type}).encode() + b"\n"
        size = len(header) + len(data)
        if self._bytes + size > self._max_bytes:
            if not self._full:
                self._full = True
                self._log.error("object spool full (%d of %d bytes): refusing objects",
                                self._bytes, self._max_bytes)
            raise StoreUnavailable(
                f"object store unavailable and spool full ({self._bytes} bytes)"
            )
        entry = _Entry(self._next_seq, key, content_type, size)
        self._next_seq += 1
        self._bytes += size  # reserved now, so concurrent puts cannot overshoot the bound
        try:
            await self._disk.put(entry.name, header + data, "application/octet-stream")
        except BaseException:
            self._bytes -= size
            raise
        replaced = self._by_key.get(key)
        self._queue[entry.seq] = entry
        self._by_key[key] = entry
        if replaced is not None:  # the newer copy is durable: the older one may go
            await self._remove(replaced)
        self._wake.set()

    def _add(self, entry: _Entry) -> None:
        self._queue[entry.seq] = entry
        self._by_key[entry.key] = entry
        self._bytes += entry.size

    async def _remove(self, entry: _Entry) -> None:
        if self._queue.pop(entry.seq, None) is None:
            return
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        self._bytes -= entry.size
        self._full = False
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self._dir / entry.name)

    def _lock(self) -> None:
        fd = os.open(self._dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise SpoolInUse(f"object spool {self._dir} is used by another process") from exc
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _load(self) -> None:
        """Index the entries a previous run left, oldest first; drop torn temporary files."""
        entries: list[_Entry] = []
        for path in self._dir.iterdir():
            if path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)
                continue
            match = _ENTRY_RE.match(path.name)
            if match is None:
                continue
            try:
                with path.open("rb") as file:
                    key, content_type = _parse_header(file.readline(_HEADER_LIMIT))
                entries.append(_Entry(int(match[1]), key, content_type, path.stat().st_size))
            except (OSError, ValueError) as exc:
                # Kept aside for an operator rather than deleted or retried forever.
                self._log.error("unreadable spool entry %s, renamed to .bad: %s", path, exc)
                path.rename(path.with_name(path.name + ".bad"))
        for entry in sorted(entries, key=lambda e: e.seq):
            older = self._by_key.get(entry.key)
            self._add(entry)
            if older is not None:  # superseded by a later put of the same key
                self._queue.pop(older.seq)
                self._bytes -= older.size
                (self._dir / older.name).unlink(missing_ok=True)
            self._next_seq = entry.seq + 1

    # The drain.

    async def _drain_loop(self) -> None:
        while True:
            try:
                if not self._queue and self._inner_open:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if not await self._drain_one():
                    await asyncio.sleep(self._retry)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("object spool drain failed; retrying")
                await asyncio.sleep(self._retry)

    async def _drain_one(self) -> bool:
        """Open ``inner`` if needed and upload the oldest entry; False while it is unavailable."""
        try:
            if not self._inner_open:
                await self._inner.open()
                self._inner_open = True
            if not self._queue:
                self._recovered()
                return True
            entry = next(iter(self._queue.values()))
            try:
                data = _split(await self._disk.get(entry.name))[1]
            except KeyError:  # superseded and removed meanwhile
                await self._remove(entry)
                return True
            await self._inner.put(entry.key, data, entry.content_type)
        except StoreUnavailable as exc:
            self._answered(exc)
            self._log.debug("object store still unavailable: %s", exc)
            return False
        self._answered(None)
        await self._remove(entry)
        self._uploaded += 1
        if not self._queue:
            self._recovered()
        return True

    def _recovered(self) -> None:
        self._answered(None)
        self._log.info("object store back: uploaded %d spooled objects", self._uploaded)
        self._uploaded = 0
        self._outage = False


def _parse_header(line: bytes) -> tuple[str, str]:
    header = json.loads(line)
    if not isinstance(header, dict):
        raise ValueError("spool header is not a JSON object")
    key, content_type = header.get("key"), header.get("content_type")
    if not isinstance(key, str) or not isinstance(content_type, str):
        raise ValueError("spool header lacks key or content_type")
    return validate_key(key), content_type


def _split(raw: bytes) -> tuple[tuple[str, str], bytes]:
    """An entry's header and bytes."""
    line, sep, data = raw.partition(b"\n")
    if not sep:
        raise ValueError("spool entry has no header line")
    return _parse_header(line), data
