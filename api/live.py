"""The live stream: the fleet's latest states, coalesced, for new dashboards.

The contract (``docs/socketio.md``, "The live stream"): a client emits
``live_subscribe`` with ``{"ambulances": "*"}`` (the whole fleet) or
``{"ambulances": [<id>, ...]}``; every ``interval`` seconds in which any of
those ambulances was updated, it receives one ``live_states`` event,
``{"at": <server time>, "states": [<state>, ...]}``: the latest public state
(the ``aoc/<id>/state`` shape, ``bridge.public``) of each of them updated in
the interval, each once. A broadcast crash reaches the same subscribers at
once as ``live_alert`` (the ``aoc/<id>/alert`` record), never coalesced. A
token limited to some ambulances subscribes to those only (``SocketGate``).

Where the states come from: the bridge's ``live`` fan-out channel
(``bridge.live``) hands each batch's states to ``LiveStream.emit``, in this
process (``aoc serve``) or through the python-socketio Redis manager, whose
feed messages ``LiveRedisManager`` intercepts in every ``aoc realtime``. Each
server coalesces for its own clients. Subscribers sit in rooms no client can
``room_join`` (``LIVE_PREFIX``): the fleet's, and one per distinct selection
of ambulances, so each event is encoded once per room, not per client.

``LiveManager`` is also the emit path of the legacy rooms: python-socketio's
manager makes an asyncio task per recipient of each emission; ours encodes
the packet once, as it does, and hands it to each recipient's Engine.IO queue
in turn, which never waits (the queues are unbounded). Same bytes, less work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

from bridge.contract import (
    LIVE_ALERT_EVENT,
    LIVE_ALERT_FEED,
    LIVE_FLEET,
    LIVE_PREFIX,
    LIVE_STATE_FEED,
    LIVE_STATES_EVENT,
    ambulance_id_problem,
)

log = logging.getLogger(__name__)

FLEET = "*"  # ``{"ambulances": "*"}``: every ambulance
# A selection larger than this is refused: a dashboard wanting more takes the fleet.
MAX_SELECTION = 10_000
_FEEDS = (LIVE_STATE_FEED, LIVE_ALERT_FEED)
# Recipients of one emission handed their packet between two yields to the event loop.
_YIELD_EVERY = 500

Selection = frozenset[str] | None  # None: the fleet


def iso_ms(moment: datetime) -> str:
    """``moment`` as the public shape writes times: ``2025-11-29T04:33:34.123Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_selection(value: object) -> Selection | str:
    """The selection a ``live_subscribe`` argument asks for, or why it is not one (a str)."""
    wanted = value.get("ambulances") if isinstance(value, dict) else None
    if wanted == FLEET:
        return None
    if not isinstance(wanted, list) or not wanted:
        return 'send {"ambulances": "*"} for the fleet, or {"ambulances": ["<id>", ...]}'
    if len(wanted) > MAX_SELECTION:
        return f"at most {MAX_SELECTION} ambulances: subscribe to the fleet instead"
    for aid in wanted:
        problem = ambulance_id_problem(aid)
        if problem is not None:
            return f"ambulance id {aid!r}: {problem}"
    return frozenset(wanted)


def selection_room(selection: frozenset[str]) -> str:
    """The room of the subscribers of exactly ``selection``."""
    digest = hashlib.sha256("\n".join(sorted(selection)).encode()).hexdigest()[:32]
    return f"{LIVE_PREFIX}sel:{digest}"


class LiveStream:
    """Coalesces the states fed to it and sends them to its subscribers every ``interval``.

    ``emit`` is the bridge's side (an ``Emitter``); ``subscribe``,
    ``unsubscribe`` and ``forget`` the server's; ``run`` sends until ``stop``.
    """

    def __init__(
        self,
        *,
        interval: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        logger: logging.Logger | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("the live stream needs an interval > 0")
        self.interval = interval
        self.sio: socketio.AsyncServer | None = None  # set by ``api.realtime.create_sio``
        self._clock = clock
        self._log = logger or log
        self._pending: dict[str, dict[str, Any]] = {}  # ambulance id -> latest state
        self._subscribed: dict[str, Selection] = {}  # sid -> what it watches
        self._selections: dict[frozenset[str], int] = {}  # selection -> its subscribers
        self._stop = asyncio.Event()

    @property
    def subscribers(self) -> int:
        return len(self._subscribed)

    # --- the bridge's side -----------------------------------------------------------------

    async def emit(self, event: str, data: str, *, room: str) -> None:
        """Take one feed emission of the bridge (``bridge.live``); anything else is ignored."""
        if room == LIVE_STATE_FEED:
            self.add_states(data)
        elif room == LIVE_ALERT_FEED:
            await self.alert(data)

    def add_states(self, data: str) -> None:
        """Keep each state of a feed's JSON array as its ambulance's latest of the interval.

        With several bridges a state may arrive after a newer one of the same
        ambulance: a state of a lower store ``version`` than the kept one's is
        not kept. States without a version (an older bridge's) are ordered by
        ``last_seen`` (a status change keeps it: the later one wins).
        Without subscribers nothing is kept (a subscriber resyncs from the read API).
        """
        if not self._subscribed:
            return
        try:
            states = json.loads(data)
        except ValueError:
            self._log.warning("live stream: a state feed that is not JSON was ignored")
            return
        if not isinstance(states, list):
            return
        for state in states:
            if not isinstance(state, dict):
                continue
            aid = state.get("ambulance_id")
            if not isinstance(aid, str):
                continue
            kept = self._pending.get(aid)
            if kept is not None and _older_state(state, kept):
                continue
            self._pending[aid] = state

    async def alert(self, data: str) -> None:
        """Send a crash alert to the fleet's subscribers and to those watching its ambulance."""
        try:
            record = json.loads(data)
        except ValueError:
            self._log.warning("live stream: an alert feed that is not JSON was ignored")
            return
        aid = record.get("ambulance_id") if isinstance(record, dict) else None
        if not isinstance(aid, str):
            return
        rooms = [LIVE_FLEET] + [selection_room(s) for s in self._selections if aid in s]
        for room in rooms:
            await self._send(LIVE_ALERT_EVENT, record, room)

    # --- the server's side -----------------------------------------------------------------

    async def subscribe(self, sid: str, selection: Selection) -> None:
        """Make ``sid`` watch ``selection`` (None: the fleet) instead of what it watched."""
        assert self.sio is not None, "create_sio attaches the stream to its server"
        await self.unsubscribe(sid)
        if selection is None:
            room = LIVE_FLEET
        else:
            room = selection_room(selection)
            self._selections[selection] = self._selections.get(selection, 0) + 1
        self._subscribed[sid] = selection
        await self.sio.enter_room(sid, room)

    async def unsubscribe(self, sid: str) -> None:
        """Stop sending to ``sid`` (nothing if it watched nothing)."""
        if sid not in self._subscribed:
            return
        selection = self.forget(sid)
        assert self.sio is not None
        room = LIVE_FLEET if selection is None else selection_room(selection)
        await self.sio.leave_room(sid, room)

    def forget(self, sid: str) -> Selection:
        """Drop ``sid``'s subscription from the books (it disconnected: its rooms are gone)."""
        selection = self._subscribed.pop(sid, None)
        if selection is not None:
            left = self._selections.get(selection, 0) - 1
            if left > 0:
                self._selections[selection] = left
            else:
                self._selections.pop(selection, None)
        return selection

    async def flush(self) -> int:
        """Send the interval's states to each room that watches some of them; how many events.

        The fleet's room gets every state, each selection's room those of its
        ambulances: each event is encoded once for its room.
        """
        pending, self._pending = self._pending, {}
        if not pending or not self._subscribed:
            return 0
        at = iso_ms(self._clock())
        sent = 0
        if any(selection is None for selection in self._subscribed.values()):
            await self._send(LIVE_STATES_EVENT, {"at": at, "states": list(pending.values())},
                             LIVE_FLEET)
            sent += 1
        for selection in list(self._selections):
            states = _pick(pending, selection)
            if states:
                await self._send(LIVE_STATES_EVENT, {"at": at, "states": states},
                                 selection_room(selection))
                sent += 1
        return sent

    async def run(self) -> None:
        """Flush every ``interval`` until ``stop``; a failed flush is logged, not fatal.

        Ticks keep to the clock: a late flush does not shift the next ones,
        and ticks missed (a stalled loop) are skipped, not caught up in a burst.
        """
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while not self._stop.is_set():
            tick += self.interval
            now = loop.time()
            tick = max(tick, now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick - now):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self.flush()
            except Exception:  # one bad interval must not end the stream
                self._log.exception("live stream: sending an interval failed")

    def stop(self) -> None:
        self._stop.set()

    async def _send(self, event: str, data: Any, room: str) -> None:
        assert self.sio is not None
        # This server's clients only: each server coalesces its own feed.
        await self.sio.emit(event, data, room=room, ignore_queue=True)


def _older_state(candidate: dict[str, Any], kept: dict[str, Any]) -> bool:
    # The store version orders the states of one ambulance; without both, last_seen does.
    new, old = candidate.get("version"), kept.get("version")
    if type(new) is int and type(old) is int:
        return new < old
    return _older(candidate.get("last_seen"), kept.get("last_seen"))


def _older(candidate: object, kept: object) -> bool:
    # ISO times of one format (``last_seen``) order as strings; None is oldest.
    if not isinstance(candidate, str):
        return isinstance(kept, str)
    return isinstance(kept, str) and candidate < kept


def _pick(pending: dict[str, dict[str, Any]], selection: Iterable[str]) -> list[dict[str, Any]]:
    return [pending[aid] for aid in selection if aid in pending]


class LiveManager(socketio.AsyncManager):  # type: ignore[misc]  # socketio is untyped
    """The Socket.IO manager of a server: fast emits, and the live stream's feed intercepted.

    An emission to a feed room (``bridge.live``) goes to ``live`` (set by
    ``api.realtime.create_sio``), never to clients. Any other goes to the
    room's clients as python-socketio sends it, byte for byte: one encoded
    packet, handed to each recipient's Engine.IO queue in turn (see the module doc).
    """

    live: LiveStream | None = None

    async def emit(  # noqa: PLR0917  # python-socketio's signature
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if isinstance(room, str) and room in _FEEDS:
            if self.live is not None:
                await self.live.emit(event, data, room=room)
            return
        if callback is not None:  # a packet per recipient (ack ids): python-socketio's path
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
            )
            return
        if namespace not in self.rooms:
            return
        # As python-socketio: a tuple is several arguments, None none.
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        packets = [
            eio_packet.Packet(eio_packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]
        eio = self.server.eio
        for n, (sid, eio_sid) in enumerate(list(self.get_participants(namespace, room)), 1):
            if sid in skip:
                continue
            for pkt in packets:
                try:
                    await eio.send_packet(eio_sid, pkt)
                except Exception as exc:  # one broken client must not cost the others theirs
                    log.debug("emit to %s failed: %r", sid, exc)
            if n % _YIELD_EVERY == 0:
                # Queue puts never wait: let the loop breathe in a room of thousands.
                await asyncio.sleep(0)


class LiveRedisManager(socketio.AsyncRedisManager, LiveManager):  # type: ignore[misc]
    """``LiveManager`` behind python-socketio's Redis manager (``aoc realtime``).

    Emissions published by the bridges (and other servers) reach ``LiveManager.emit``
    once received, so the feed is intercepted here too.
    """
