"""The embedded object store: one file per key under a root directory.

Keys keep the legacy layout (``ambulance_images/332/2026/11/29/04_33/33_12_0042.jpg``)
so operators can browse the directory by hand. Writes are atomic and durable:
a reader sees the old bytes or the new ones, never a torn file, and an
acknowledged put survives a power cut. ``url()`` is None: the HTTP API serves
the bytes (the content type follows from the key's extension).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path

from storage.base import ObjectStore, StoreUnavailable
from storage.codec import validate_key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore(ObjectStore):
    """An ``ObjectStore`` in a local directory."""

    def __init__(self, root: Path, *, logger: logging.Logger | None = None) -> None:
        self._root = Path(root).absolute()
        self._log = logger or logging.getLogger(__name__)

    def _path(self, key: str) -> Path:
        return self._root / validate_key(key)

    async def open(self) -> None:
        """Create the root directory if needed; idempotent."""
        try:
            await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self._root}: {exc}") from exc

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless a file can be created in the root."""

        def probe() -> None:
            with tempfile.NamedTemporaryFile(dir=self._root, prefix=".ping-"):
                pass

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write to {self._root}: {exc}") from exc

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write ``data`` to a temporary file, fsync it, rename it over ``key``, fsync the dir."""
        path = self._path(key)
        try:
            await asyncio.to_thread(self._write, path, bytes(data))
        except OSError as exc:
            raise StoreUnavailable(f"cannot store {key}: {exc}") from exc

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        """Create ``key`` atomically unless it exists; False if it holds other bytes."""
        path = self._path(key)
        try:
            return await asyncio.to_thread(self._write_new, path, bytes(data))
        except OSError as exc:
            raise StoreUnavailable(f"cannot store {key}: {exc}") from exc

    def _write(self, path: Path, data: bytes) -> None:
        self._make_dirs(path.parent)
        tmp = self._temporary(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def _write_new(self, path: Path, data: bytes) -> bool:
        self._make_dirs(path.parent)
        tmp = self._temporary(path, data)
        try:
            # link() fails when the name exists, where rename() would replace it:
            # a create-if-absent that two writers cannot race.
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes() == data
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
        return True

    @staticmethod
    def _temporary(path: Path, data: bytes) -> str:
        """A durable temporary file holding ``data`` next to ``path``."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents, each made durable in its parent."""
        missing = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            if current in (self._root, current.parent):  # stop at the root (or /)
                break
            current = current.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a concurrent put made it
                path.mkdir()
            _fsync_dir(path.parent)

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``KeyError`` if absent."""
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise KeyError(key) from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {key}: {exc}") from exc

    async def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""
        path = self._path(key)
        return await asyncio.to_thread(path.is_file)

    async def delete(self, key: str) -> None:
        """Unlink the file of ``key`` (then fsync its directory); absent is fine.

        Emptied date directories stay: the next day's images reuse the tree's
        upper levels, and an empty directory costs one inode.
        """
        path = self._path(key)

        def unlink() -> None:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            _fsync_dir(path.parent)

        try:
            await asyncio.to_thread(unlink)
        except IsADirectoryError:
            return  # a "directory" of the layout is no object
        except OSError as exc:
            raise StoreUnavailable(f"cannot delete {key}: {exc}") from exc

    def url(self, key: str) -> str | None:
        """None: the HTTP API serves local objects itself."""
        validate_key(key)
        return None
