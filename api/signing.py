"""Signed, expiring image URLs: ``/files/<key>?expires=<unix>&sig=<hex>``.

The read API hands these to dashboards, so an ``<img>`` tag loads an image
without a header; ``/files`` serves a request that carries a valid signature
that has not expired. The signature is HMAC-SHA256 over the object key and
the expiry with ``AOC_SECRET_KEY``. Unset (development), a key is generated
once into ``data_dir/secret_key`` (mode 0600), so every process of one
machine signs and checks with the same key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from aoc.config import Settings

KEY_FILE_NAME = "secret_key"


def _read_or_create(path: Path) -> bytes:
    """The key in ``path``, created (mode 0600) by whichever process comes first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    # Another process may have created the file an instant ago: wait for its key.
    for _ in range(100):
        key = path.read_text().strip()
        if key:
            return key.encode()
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty: delete it, or set AOC_SECRET_KEY")


def secret_key(settings: Settings) -> bytes:
    """``AOC_SECRET_KEY``, else the machine's generated key under ``data_dir``."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value().encode()
    return _read_or_create((settings.data_dir / KEY_FILE_NAME).resolve())


class UrlSigner:
    """Signs and checks ``(key, expires)`` pairs with one secret."""

    def __init__(self, secret: bytes, *, ttl: int) -> None:
        self._secret = secret
        self.ttl = ttl

    def signature(self, key: str, expires: int) -> str:
        """The hex HMAC of ``key`` valid until ``expires`` (unix seconds)."""
        message = f"{expires}\n{key}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, key: str, *, now: float | None = None) -> tuple[int, str]:
        """``(expires, sig)`` for a link to ``key`` valid for ``ttl`` seconds from ``now``."""
        expires = int(now if now is not None else time.time()) + self.ttl
        return expires, self.signature(key, expires)

    def valid(self, key: str, expires: int, sig: str, *, now: float | None = None) -> bool:
        """Whether ``sig`` signs ``key`` until ``expires``, and that is not past."""
        if expires < (now if now is not None else time.time()):
            return False
        # Bytes: compare_digest refuses a str with non-ASCII characters (a 500).
        given = sig.lower().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(self.signature(key, expires).encode(), given)
