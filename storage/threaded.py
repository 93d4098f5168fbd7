"""The base of the document stores whose driver is synchronous (SQLite, pymongo).

Every driver call runs on the store's own small thread pool, so the event loop
never blocks on disk or network I/O. This class owns that pool's lifecycle
(started by ``open``, drained and stopped by ``close``) and the ``_run``
plumbing; a backend adds how to connect and disconnect, how to turn its
driver's errors into ``StoreUnavailable`` (``_call``), and its queries. Paging
is shared too, in ``storage.paging``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Generic, TypeVar

from storage import codec
from storage.base import DocumentStore, StoreUnavailable

T = TypeVar("T")
H = TypeVar("H")  # the driver's handle a call runs with: a connection, a database...


class ThreadedDocumentStore(DocumentStore, Generic[H]):
    """A ``DocumentStore`` running a synchronous driver on threads of its own."""

    name: ClassVar[str]  # the backend, in errors: "the SQLite store is not open"
    threads: ClassVar[int] = 1
    thread_name: ClassVar[str]  # the threads' name prefix

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    # -- the backend's part ------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Connect and create tables or indexes; called by every ``open``, threads running."""

    @abc.abstractmethod
    def _disconnect(self) -> Callable[[], object] | None:
        """Forget the connection; return the blocking call that closes it, if any.

        ``close`` runs that call on the store's threads, after the calls
        already queued there (right away if the threads never started).
        """

    @abc.abstractmethod
    def _call(self, fn: Callable[[H], T]) -> T:
        """``fn`` applied to the driver's handle, on a store thread.

        Raises ``StoreUnavailable`` for what the caller may retry (an outage)
        and lets every other error (a bug, bad input) through as it is.
        """

    # -- plumbing -------------------------------------------------------------

    async def _run(self, fn: Callable[[H], T]) -> T:
        """``fn(handle)`` on the store's threads; ``StoreUnavailable`` if not open."""
        if self._executor is None:
            raise self._not_open()
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def _not_open(self) -> StoreUnavailable:
        return StoreUnavailable(f"the {self.name} store is not open")

    async def _select_ids(
        self,
        collection: str,
        ids: Sequence[str],
        select: Callable[[H, str, Sequence[str]], Iterable[T]],
    ) -> list[T]:
        """``select(handle, collection, slice)`` for each slice of ``ids``, in one call.

        ``ids`` are deduplicated and cut in slices of ``codec.ID_CHUNK`` (one
        ``IN (...)`` query each); no call at all when there are none.
        """
        codec.check_collection(collection)
        wanted = list(dict.fromkeys(ids))

        def select_all(handle: H) -> list[T]:
            found: list[T] = []
            for chunk in codec.chunks(wanted):
                found.extend(select(handle, collection, chunk))
            return found

        return await self._run(select_all) if wanted else []

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Start the store's threads, then connect and create what is missing; idempotent."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self.thread_name)
        await self._connect()

    async def close(self) -> None:
        """Close the connection on the store's threads, then stop them; idempotent."""
        executor, self._executor = self._executor, None
        disconnect = self._disconnect()
        if executor is None:
            if disconnect is not None:
                disconnect()
            return
        try:
            if disconnect is not None:
                await asyncio.get_running_loop().run_in_executor(executor, disconnect)
        finally:
            executor.shutdown(wait=True)
