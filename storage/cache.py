"""The latest state of every ambulance, cached in Redis for fast reads.

One hash, ``<prefix>:latest`` (``aoc:latest``): field = ambulance id, value =
the state document as JSON in the codec of ``storage.codec`` (datetimes as
``{"$date": "<ISO 8601, ms, Z>"}``), so ``get`` returns the same document the
store holds, with tz-aware datetimes. Two more hashes, ``<prefix>:latest:seen``
and ``<prefix>:latest:version``, hold each state's last_seen and store version,
for ordering racing writers (see ``_SET_NEWER``), and a sorted set,
``<prefix>:latest:ids``, every cached ambulance id (score 0, so it is ordered by
id as bytes), so a page of the fleet is read without the whole hash (see
``page``). The script and ``rebuild`` keep the four together.
Redis is a cache: the store is the truth, and ``rebuild`` refills Redis after
it lost its data. Only ``rebuild`` sets the key ``<prefix>:latest:built``, so a
Redis that restarted empty is noticed by the next ``set_many`` even when no
call ever failed (it restarted between two writes).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from storage import codec
from storage.base import Document, StoreUnavailable

T = TypeVar("T")

# Writers race (the bridge and a rebuild, several bridges of one share group),
# so "newest wins" is decided inside Redis, atomically, by this script.
# The order is the store's ``version`` of the state (each commit adds one), kept
# beside it in a third hash (``<prefix>:latest:version``): a state is written
# unless the stored one has a higher version. last_seen cannot order them: a
# batch of late points only, or a status change, keeps it. An entry without a
# version (written by the previous code) is older than any state with one; a
# state without one is older than an entry with one. Between two states
# without a version, last_seen orders, kept in the second hash
# (``<prefix>:latest:seen``) as fixed-width UTC text (codec.format_datetime,
# ordered like the instants): written unless the stored one is strictly later;
# a state without last_seen cannot be ordered and is then always written.
# KEYS: states hash, last_seen hash, built marker, id index, version hash.
# ARGV: quadruples (ambulance id, JSON, last_seen or "", version or "").
# Returns the number written, or -1 when
# the marker is missing (the cache was never rebuilt into this Redis, which may
# have lost it) or the states have no index yet (written by an older version).
_SET_NEWER = """
local written = 0
local built = redis.call('EXISTS', KEYS[3])
if redis.call('EXISTS', KEYS[4]) == 0 and redis.call('HLEN', KEYS[1]) > 0 then
  built = 0
end
for i = 1, #ARGV, 4 do
  local field, doc, seen, version = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local new_version = tonumber(version)
  local old_version = tonumber(redis.call('HGET', KEYS[5], field) or '')
  local newer
  if new_version and old_version then
    newer = new_version >= old_version
  elseif new_version or old_version then
    newer = new_version ~= nil
  else
    local old = redis.call('HGET', KEYS[2], field)
    newer = seen == '' or not old or seen >= old
  end
  if newer then
    redis.call('HSET', KEYS[1], field, doc)
    redis.call('ZADD', KEYS[4], 0, field)
    if seen == '' then
      redis.call('HDEL', KEYS[2], field)
    else
      redis.call('HSET', KEYS[2], field, seen)
    end
    if new_version then
      redis.call('HSET', KEYS[5], field, version)
    else
      redis.call('HDEL', KEYS[5], field)
    end
    written = written + 1
  end
end
if built == 0 then
  return -1
end
return written
"""

# One page of the fleet in id order, read atomically (a write between reading
# the ids and their states cannot be seen half). Ids are only ever added to
# the index (a rebuild replaces it with a superset: the store keeps every
# ambulance), so paging by "ids after the last one seen" returns each id once
# and skips none that existed when the listing started.
# KEYS: id index, states hash. ARGV: the last id of the previous page ("" for
# the first), the page size. Returns ids then their states (up to size + 1 of
# each: one more than asked says whether a next page exists).
_PAGE = """
local low = '-'
if ARGV[1] ~= '' then
  low = '(' .. ARGV[1]
end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], low, '+', 'LIMIT', 0, tonumber(ARGV[2]) + 1)
if #ids == 0 then
  return {{}, {}}
end
return {ids, redis.call('HMGET', KEYS[2], unpack(ids))}
"""
# Past this many states, encoding or decoding them moves off the event loop.
_DECODE_INLINE = 100


def _last_seen(state: Document) -> str:
    value = state.get("last_seen")
    if isinstance(value, str):
        try:
            value = codec.parse_datetime(value)
        except ValueError:
            return ""
    return codec.format_datetime(value) if isinstance(value, datetime) else ""


def _version(state: Document) -> str:
    """The state's store version as text, "" without one (or a damaged one: not an int)."""
    value = state.get("version")
    return str(value) if type(value) is int else ""


_Fields = dict[str | bytes, str]


def _encode_all(states: Mapping[str, Document]) -> tuple[_Fields, _Fields, _Fields]:
    """The hash fields of ``states`` (JSON), of their last_seen values and of their versions."""
    mapping: _Fields = {k: codec.encode(v) for k, v in states.items()}
    seen: _Fields = {k: when for k, v in states.items() if (when := _last_seen(v))}
    versions: _Fields = {k: version for k, v in states.items() if (version := _version(v))}
    return mapping, seen, versions


class StateCache:
    """The latest state per ambulance in one Redis hash."""

    def __init__(
        self, url: str, *, prefix: str = "aoc", logger: logging.Logger | None = None
    ) -> None:
        self._url = url
        self._key = f"{prefix}:latest"
        self._seen_key = f"{prefix}:latest:seen"
        self._built_key = f"{prefix}:latest:built"
        self._ids_key = f"{prefix}:latest:ids"
        self._version_key = f"{prefix}:latest:version"
        self._log = logger or logging.getLogger(__name__)
        self._redis: aioredis.Redis[bytes] | None = None
        self._set_newer: Any = None
        self._page: Any = None

    async def _call(self, fn: Callable[[aioredis.Redis[bytes]], Awaitable[T]]) -> T:
        if self._redis is None:
            raise StoreUnavailable("the Redis cache is not open")
        try:
            return await fn(self._redis)
        except (RedisError, OSError) as exc:
            # Not only a lost connection: a Redis out of memory (OOM), a replica
            # after a failover (READONLY) or a key of another type refuses too,
            # and the cache is best effort: callers fall back or heal it.
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def open(self) -> None:
        """Create the client and check Redis answers.

        On ``StoreUnavailable`` the client is kept: later calls reconnect by themselves.
        """
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
            )
            self._set_newer = self._redis.register_script(_SET_NEWER)
            self._page = self._redis.register_script(_PAGE)
        await self.ping()

    async def close(self) -> None:
        """Close the connection pool; safe after a failed ``open``."""
        client, self._redis = self._redis, None
        if client is not None:
            # Closing the pool is what ``aclose()`` does; types-redis predates aclose.
            await client.connection_pool.disconnect()

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless Redis answers."""
        await self._call(lambda r: r.ping())

    async def set_many(self, states: Mapping[str, Document]) -> bool:
        """Store each ambulance's state unless Redis already holds a newer one (``_SET_NEWER``).

        Returns False when Redis holds no rebuilt cache (first use, or it
        restarted empty): the states are written, but the others are missing
        until the caller runs ``rebuild``.
        """
        if not states:
            return True
        args: list[str] = []
        for ambulance_id, state in states.items():
            args += [ambulance_id, codec.encode(state), _last_seen(state), _version(state)]
        script = self._set_newer  # EVALSHA, falling back to EVAL after a Redis restart
        keys = [self._key, self._seen_key, self._built_key, self._ids_key, self._version_key]
        written = await self._call(lambda r: script(keys=keys, args=args))
        return int(written) >= 0

    async def get(self, ambulance_id: str) -> Document | None:
        """The cached state of one ambulance."""
        raw = await self._call(lambda r: r.hget(self._key, ambulance_id))
        return None if raw is None else self._decode(ambulance_id, raw)

    async def get_all(self) -> dict[str, Document]:
        """Every cached state, by ambulance id."""
        raw: dict[Any, Any] = await self._call(lambda r: r.hgetall(self._key))
        states = {}
        for field, value in raw.items():
            ambulance_id = field.decode() if isinstance(field, bytes) else str(field)
            state = self._decode(ambulance_id, value)
            if state is not None:
                states[ambulance_id] = state
        return states

    async def page(
        self, *, after: str | None, limit: int
    ) -> tuple[list[Document], str | None]:
        """Up to ``limit`` states in ambulance-id order, with ids after ``after``.

        Returns the states and the id to continue after, None when no more
        follow. That id is the page's last, even when its state could not be
        decoded, so a page of undecodable states does not end the listing.
        Reads only the page, not the whole hash; an empty cache gives an empty page.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        script = self._page
        keys = [self._ids_key, self._key]
        ids, values = await self._call(lambda r: script(keys=keys, args=[after or "", limit]))
        names = [field.decode() if isinstance(field, bytes) else str(field) for field in ids]
        next_after = names[limit - 1] if len(names) > limit else None
        pairs = [
            (name, value)
            for name, value in zip(names[:limit], values[:limit], strict=True)
            if value is not None  # indexed but not (or no longer) cached: cannot happen
        ]
        if len(pairs) > _DECODE_INLINE:
            return await asyncio.to_thread(self._decode_pairs, pairs), next_after
        return self._decode_pairs(pairs), next_after

    def _decode_pairs(self, pairs: list[tuple[str, bytes]]) -> list[Document]:
        decoded = (self._decode(ambulance_id, raw) for ambulance_id, raw in pairs)
        return [state for state in decoded if state is not None]

    async def rebuild(self, states: Mapping[str, Document]) -> None:
        """Replace every cached state with ``states`` in one transaction."""
        if len(states) > _DECODE_INLINE:
            # Tens of thousands of states take a noticeable time to encode: off
            # the event loop, which the bridge shares with the HTTP servers.
            mapping, seen, versions = await asyncio.to_thread(_encode_all, states)
        else:
            mapping, seen, versions = _encode_all(states)

        async def replace(r: aioredis.Redis[bytes]) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(self._key, self._seen_key, self._ids_key, self._version_key)
                if mapping:
                    pipe.hset(self._key, mapping=mapping)
                    pipe.zadd(self._ids_key, dict.fromkeys(mapping, 0))
                if seen:
                    pipe.hset(self._seen_key, mapping=seen)
                if versions:
                    pipe.hset(self._version_key, mapping=versions)
                pipe.set(self._built_key, "1")
                await pipe.execute()

        await self._call(replace)

    def _decode(self, ambulance_id: str, raw: bytes | str) -> Document | None:
        try:
            return codec.decode(raw)
        except (ValueError, json.JSONDecodeError) as exc:  # written by something else
            self._log.warning("ignoring undecodable cached state of %s: %s", ambulance_id, exc)
            return None
