"""One heartbeat for every WebSocket connection of the process, instead of one timer each.

aiohttp's ``WebSocketResponse(heartbeat=...)`` keeps a timer per connection (about 550 bytes per
idle connection, ``bench/conn_memory.py``) and schedules a callback for every chunk it
receives. :class:`HeartbeatSweep` is a single task that wakes every ``WS_HEARTBEAT / 2``
seconds and looks at a state per connection, which the read loop resets on every message it
receives (pongs included):

* heard from since the last sweep → now *quiet*;
* quiet for a whole sweep interval → sent a ping (an empty WebSocket ping frame);
* pinged and nothing received for another sweep interval → dropped: the transport is closed
  without a close frame and the connection is recorded with ``1006``, as aiohttp does.

Protocols with their own keep-alive (Centrifugo's: the codec's ``server_ping``, an empty
``{}``, announced in the connect reply as ``ping`` seconds) also get that message every
``WS_HEARTBEAT`` seconds whatever the peer sends: their SDKs reconnect when it is late. The
answer (``{}``) is a received message like any other.

So a peer that goes silent is pinged after ``WS_HEARTBEAT / 2`` to ``WS_HEARTBEAT`` seconds and
dropped ``WS_HEARTBEAT / 2`` seconds after the ping (at most 1.5 times ``WS_HEARTBEAT`` after the
last thing it sent, as with aiohttp's timer); an idle healthy peer is pinged about every
``WS_HEARTBEAT`` seconds. A sweep is a loop over the connections (a dict write each); with
100,000 connections it is tens of milliseconds every ``WS_HEARTBEAT / 2`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from handlers.realtime.transport import Connection

#: an empty, unmasked WebSocket ping frame (FIN + opcode 0x9, no payload)
PING_FRAME = b"\x89\x00"
#: the code a dropped peer is recorded with (RFC 6455: closed abnormally, no close frame)
DROPPED = 1006

_HEARD, _QUIET, _PINGED = 0, 1, 2


class HeartbeatSweep:
    """Pings quiet WebSocket connections and drops those that do not answer (see the module
    docstring); ``interval`` is ``WS_HEARTBEAT``."""

    __slots__ = ("_app_pings", "_peers", "_round", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._peers: dict[Connection, int] = {}
        #: the connections whose protocol has its own ping, with that ping's frame
        self._app_pings: dict[Connection, bytes] = {}
        self._round = 0

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def rounds(self) -> int:
        """Sweeps so far (one every ``interval / 2`` seconds)."""
        return self._round

    def add(self, conn: Connection) -> None:
        """Watch ``conn`` (just upgraded: counts as heard from)."""
        self._peers[conn] = _HEARD
        ping = conn.wire.codec.server_ping
        if ping is not None:
            self._app_pings[conn] = conn.wire.frame(ping)

    def heard(self, conn: Connection) -> None:
        """``conn`` received a message (any frame, pongs included)."""
        self._peers[conn] = _HEARD

    def discard(self, conn: Connection) -> None:
        """Stop watching ``conn`` (its read loop ended)."""
        self._peers.pop(conn, None)
        self._app_pings.pop(conn, None)

    def sweep(self) -> None:
        """One step of every connection's heartbeat (called every ``interval / 2`` seconds)."""
        self._round += 1
        if self._round % 2 == 0:  # every interval
            for conn, frame in self._app_pings.items():
                conn.send(frame)
        peers = self._peers
        for conn, state in peers.items():  # only values change while iterating
            if state == _HEARD:
                peers[conn] = _QUIET
            elif state == _QUIET:
                peers[conn] = _PINGED
                conn.send(PING_FRAME)
            elif not conn.closed:
                conn.drop(DROPPED)

    async def run(self) -> None:
        """Sweep every ``interval / 2`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval / 2)
            self.sweep()


heartbeat_key = web.AppKey("ws_heartbeat", HeartbeatSweep)


async def heartbeat_sweep(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the app's :class:`HeartbeatSweep` (``app[heartbeat_key]``) and its
    task, cancelled at shutdown."""
    sweep = app[heartbeat_key]
    task = asyncio.create_task(sweep.run(), name="ws-heartbeat")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
