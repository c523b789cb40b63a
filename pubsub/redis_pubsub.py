"""A Redis pub/sub connection: one reader task, confirmed subscribes, reconnect.

The single-Redis broker uses one such connection per process for every subscribed channel plus
the control channel; the Redis Cluster broker (:mod:`pubsub.redis_cluster`) uses one per
cluster node in the *sharded* flavor (SSUBSCRIBE/``smessage``) plus one classic one for
control messages. The reader task is the only one that reads from a connection; any task may
write SUBSCRIBE/UNSUBSCRIBE. Redis answers commands in order, so a ``subscribe`` confirmation
means every message published afterwards will be read.

Failure policy:

* The connection is lost (socket error, server restart, ``CLIENT KILL``) or stops answering
  the keepalive PING: the reader reconnects with exponential backoff and jitter, resubscribes
  every wanted channel, and once Redis confirmed all of them (a PING barrier) calls
  ``on_reconnected`` so that the hub refills what was published meanwhile from history.
* A message that cannot be handled is logged and skipped; the reader never dies of it.
* Sharded flavor only: Redis ends a shard subscription by itself (an ``sunsubscribe`` push)
  when the channel's slot moves to another node; that and error replies (``MOVED``) are
  reported to the owner (``on_dropped``, ``on_error``), which resubscribes where the slot went.

Batches: the reader hands over, one ``on_message`` call each, every message that one socket read
brought (redis-py parses them from its buffer without waiting), then calls the optional
``on_drained`` hook just before it waits for the network again. An owner can thus collect the
publications of one read and deliver them together (one fan-out pass, one write per subscriber)
without holding any of them longer than the read that brought them: the hook runs exactly when
the next read would suspend, never later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from pubsub.broker import BrokerError, BrokerUnavailable

log = logging.getLogger(__name__)

_BARRIER = b"arena-resubscribed"
_KEEPALIVE = b"arena-keepalive"

T = TypeVar("T")


class _Resumed(Awaitable[T]):
    """Awaits the rest of ``coro``, whose first step (``coro.send(None)``) yielded ``yielded``:
    what the task would have got from ``await coro``. The reader starts each read itself to
    learn whether it was answered from the buffer (the step returns) or waits for the network
    (the step yields), and finishes a waiting one with this.

    It drives ``coro`` as ``await`` would: what it yields goes to the task, what the task sends
    or throws back (a wake-up, a cancellation) goes to ``coro``.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, T], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, T]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task (a cancellation)
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    result: T = done.value
                    return result
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result


class Relocated(BrokerError):
    """The subscription was taken off this connection because its channel now lives on
    another node; subscribe there instead."""


@dataclass(frozen=True, slots=True)
class Flavor:
    """The commands and message kinds of classic or sharded pub/sub."""

    subscribe: str
    unsubscribe: str
    message: bytes
    confirm: bytes
    ended: bytes


#: SUBSCRIBE / PUBLISH: one Redis, or the cluster-wide broadcast of control messages.
CLASSIC = Flavor("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
#: SSUBSCRIBE / SPUBLISH (Redis 7): shard channels, served by the node owning their slot.
SHARDED = Flavor("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


def _one_batch(names: list[bytes]) -> Iterable[list[bytes]]:
    return [names]


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential backoff with jitter: attempt ``n`` waits between half and all of
    ``min(maximum, minimum * 2**n)`` seconds, so a fleet of nodes does not reconnect in step."""

    minimum: float = 0.1
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
        ceiling = min(self.maximum, self.minimum * 2.0 ** min(attempt, 30))
        return ceiling * random.uniform(0.5, 1.0)


class Liveness:
    """The keepalive rule of one connection: when to PING it and when to give up on it.

    A PING is due once nothing was received for ``interval`` seconds. The connection is dead
    only when a PING sent at time *T* got nothing back (neither its reply nor anything else)
    by *T* + ``timeout``. The verdict rests on when the PING went out and when bytes came in,
    never on when the caller happens to check: a check that runs late (timer jitter, a busy
    event loop) only delays a verdict, it cannot produce a false one. A dead peer is noticed
    within ``interval + timeout`` of the last byte received (plus the caller's lateness).

    The caller reports what happened (``reset`` for a new connection, ``received`` for every
    reply or message read, ``ping_sent``) and asks ``dead()`` and ``ping_due()`` after
    sleeping ``next_check()``. ``clock`` is injectable so the rule can be tested with a fake
    clock.
    """

    def __init__(
        self, interval: float, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._last_received = clock()
        #: When the unanswered keepalive PING was sent; None when nothing is outstanding.
        self._ping_sent_at: float | None = None

    def reset(self) -> None:
        """A new connection: it counts as just heard from, with no PING outstanding."""
        self._last_received = self._clock()
        self._ping_sent_at = None

    def received(self) -> None:
        """Something (a reply or a message) was read: the connection is alive, and that
        answers any outstanding PING."""
        self._last_received = self._clock()
        self._ping_sent_at = None

    def ping_sent(self) -> None:
        """A keepalive PING was written."""
        self._ping_sent_at = self._clock()

    def ping_due(self) -> bool:
        """Whether a keepalive PING should be sent now (never while one is outstanding)."""
        if self._ping_sent_at is not None:
            return False
        return self._clock() - self._last_received >= self.interval

    def dead(self) -> bool:
        """Whether the outstanding PING went unanswered for ``timeout`` seconds."""
        sent = self._ping_sent_at
        return sent is not None and self._clock() - sent >= self.timeout

    def next_check(self) -> float:
        """Seconds until ``dead`` or ``ping_due`` should be asked again.

        Without a PING outstanding: until the next one is due. With one outstanding: until its
        deadline, but at most one interval, so that once the reply came (which the caller does
        not announce) the next PING still goes out about one interval after it.
        """
        now = self._clock()
        sent = self._ping_sent_at
        if sent is None:
            return max(0.0, self._last_received + self.interval - now)
        return max(0.0, min(sent + self.timeout - now, self.interval))


class PubSubConnection:
    """Subscriptions over one Redis connection, with a reader task that survives Redis outages.

    ``make_connection`` builds an unconnected redis-py connection (``pool.make_connection``);
    ``on_message(name, data)`` receives every message of a subscribed pub/sub channel and
    ``on_reconnected()`` is called after a lost connection is back and resubscribed. Both run
    on the reader task and must not block; their exceptions are logged and swallowed.

    Optional hooks (same rules): ``on_drained()`` after the messages of one socket read were
    handed over, just before the reader waits for more (see the module docstring; also called
    when the connection is lost); and, used by the cluster broker, ``on_lost()`` when the
    connection drops, ``on_dropped(name)`` when Redis ended a wanted subscription by itself,
    ``on_error(message)`` for an error reply. ``batches`` splits a resubscribe into commands
    (SSUBSCRIBE takes channels of one slot only).
    """

    def __init__(
        self,
        make_connection: Callable[[], AbstractConnection],
        on_message: Callable[[bytes, bytes], None],
        on_reconnected: Callable[[], None],
        *,
        policy: ReconnectPolicy | None = None,
        subscribe_timeout: float = 5.0,
        keepalive: float = 10.0,
        keepalive_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        flavor: Flavor = CLASSIC,
        batches: Callable[[list[bytes]], Iterable[list[bytes]]] = _one_batch,
        on_lost: Callable[[], None] | None = None,
        on_dropped: Callable[[bytes], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_drained: Callable[[], None] | None = None,
        label: str = "redis",
    ) -> None:
        self._make_connection = make_connection
        self._on_message = on_message
        self._on_reconnected = on_reconnected
        self._on_drained = on_drained
        self._flavor = flavor
        self._batches = batches
        self._on_lost = on_lost
        self._on_dropped = on_dropped
        self._on_error = on_error
        self._label = label
        self._policy = policy if policy is not None else ReconnectPolicy()
        self._subscribe_timeout = subscribe_timeout
        self._liveness = Liveness(keepalive, keepalive_timeout, clock)
        self._wanted: dict[bytes, None] = {}
        self._waiters: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._conn: AbstractConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._ever_ready = False
        #: Redis ``CLIENT ID`` of the current connection (None while disconnected).
        self.client_id: int | None = None
        #: Successful reconnects since start, for logs and tests.
        self.reconnects = 0
        #: Keepalive PINGs answered since start, for logs and tests.
        self.keepalive_replies = 0

    @property
    def liveness(self) -> Liveness:
        """The keepalive rule (its ``interval`` and ``timeout`` are the configured ones)."""
        return self._liveness

    @property
    def connected(self) -> bool:
        """Whether the connection is up and has been resubscribed."""
        return self._conn is not None

    @property
    def wanted(self) -> list[bytes]:
        """The channels this connection keeps subscribed (across reconnects)."""
        return list(self._wanted)

    async def start(self, names: list[bytes]) -> None:
        """Connect and subscribe ``names``; returns once Redis confirmed them.

        Fails fast: raises :class:`BrokerUnavailable` when Redis cannot be reached now.
        """
        waiters = [self._waiter(name) for name in names]
        for name in names:
            self._wanted[name] = None
        try:
            conn = await self._connect()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot connect to Redis: {exc}") from exc
        self._tasks = [
            asyncio.create_task(self._run(conn), name=f"{self._label}-pubsub-reader"),
            asyncio.create_task(self._keepalive_loop(), name=f"{self._label}-pubsub-keepalive"),
        ]
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await asyncio.gather(*waiters)
        except TimeoutError:
            await self.close()
            raise BrokerUnavailable("Redis did not confirm the subscription in time") from None

    async def close(self) -> None:
        """Stop the reader and drop the connection. Idempotent."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BrokerError("broker closed"))
        self._waiters.clear()

    async def subscribe(self, name: bytes) -> None:
        """Subscribe pub/sub channel ``name``; returns once Redis confirmed it.

        While disconnected, the subscription is made by the reconnect (if that happens within
        ``subscribe_timeout``). Raises :class:`BrokerUnavailable` on timeout, and then leaves
        the channel unsubscribed.
        """
        waiter = (await self.request([name]))[0]
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await waiter
        except BaseException as exc:
            # Timed out or cancelled: nobody will unsubscribe later, so undo it now.
            waiters = self._waiters.get(name)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
            await self.unsubscribe(name)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable("Redis did not confirm the subscription in time") from None
            raise

    async def request(self, names: list[bytes]) -> list[asyncio.Future[None]]:
        """Send the subscribe of ``names`` (keeping them across reconnects) without waiting;
        each returned future completes when Redis confirmed that channel, or fails with
        :class:`Relocated` (see :meth:`forget`) or when the connection is closed."""
        if self._closed:
            raise BrokerError("broker closed")
        waiters = [self._waiter(name) for name in names]
        for name in names:
            self._wanted[name] = None
        for batch in self._batches(names):
            await self._send(self._flavor.subscribe, *batch)
        return waiters

    async def unsubscribe(self, name: bytes) -> None:
        """Stop receiving ``name``. Messages already in flight may still arrive."""
        self._wanted.pop(name, None)
        await self._send(self._flavor.unsubscribe, name)

    def forget(self, names: Iterable[bytes]) -> None:
        """Stop keeping ``names`` here without telling Redis (their slot moved away, so Redis
        dropped or will drop them); pending subscribes of them fail with :class:`Relocated`."""
        for name in names:
            self._wanted.pop(name, None)
            for waiter in self._waiters.pop(name, ()):
                if not waiter.done():
                    waiter.set_exception(Relocated(name.decode(errors="replace")))

    def _waiter(self, name: bytes) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, deque()).append(waiter)
        return waiter

    async def _send(self, *args: Any) -> None:
        conn = self._conn
        if conn is None:
            return  # the reconnect subscribes whatever is wanted by then
        try:
            await conn.send_command(*args)
        except (RedisError, OSError):
            # The reader sees the same failure and reconnects; the resubscribe covers this.
            log.debug("pub/sub command failed", extra={"command": args[0]})

    # -- connection ------------------------------------------------------------------------

    async def _connect(self) -> AbstractConnection:
        """A fresh connection with every wanted channel subscribed (confirmations pending)."""
        conn = self._make_connection()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("CLIENT", "ID")
            client_id = int(await conn.read_response())
            sent: set[bytes] = set()
            while True:
                # Subscribes made while we were sending are in ``_wanted`` too: loop until
                # nothing new turned up, then publish the connection without awaiting.
                names = [name for name in self._wanted if name not in sent]
                if not names:
                    break
                for batch in self._batches(names):
                    await conn.send_command(self._flavor.subscribe, *batch)
                sent.update(names)
            await conn.send_command("PING", _BARRIER)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        self._conn = conn
        self.client_id = client_id
        self._liveness.reset()
        stale = [name for name in sent if name not in self._wanted]
        for batch in self._batches(stale) if stale else ():
            await self._send(self._flavor.unsubscribe, *batch)
        return conn

    async def _run(self, conn: AbstractConnection | None) -> None:
        attempt = 0
        while not self._closed:
            if conn is None:
                await asyncio.sleep(self._policy.delay(attempt))
                try:
                    conn = await self._connect()
                except (RedisError, OSError) as exc:
                    attempt += 1
                    log.warning(
                        "redis pub/sub reconnect failed",
                        extra={"attempt": attempt, "error": str(exc), "redis": self._label},
                    )
                    continue
                self.reconnects += 1
                attempt = 0
                log.info("redis pub/sub reconnected", extra={"client_id": self.client_id})
            try:
                await self._read(conn)
            except (RedisError, OSError) as exc:
                if not self._closed:
                    log.warning(
                        "redis pub/sub connection lost",
                        extra={"error": str(exc), "redis": self._label},
                    )
            finally:
                if self._conn is conn:
                    self._conn = None
                    self.client_id = None
                await conn.disconnect(nowait=True)
            conn = None
            if not self._closed and self._on_lost is not None:
                self._call(self._on_lost)

    async def _read(self, conn: AbstractConnection) -> None:
        try:
            await self._read_messages(conn)
        finally:
            # The connection is gone or the reader stops: hand over what was read before.
            if self._on_drained is not None:
                self._call(self._on_drained)

    def _drained(self) -> None:
        assert self._on_drained is not None
        self._call(self._on_drained)

    async def _read_messages(self, conn: AbstractConnection) -> None:
        read = conn.read_response
        on_message = self._on_message
        message, confirm, ended = self._flavor.message, self._flavor.confirm, self._flavor.ended
        received = self._liveness.received
        drained = None if self._on_drained is None else self._drained
        while True:
            try:
                if drained is None:
                    response = await read(timeout=math.inf)
                else:
                    # Start the read here: its first step returns when redis-py had the reply
                    # buffered, and yields when it waits for the network, which is when what
                    # was read so far is handed over (``on_drained``).
                    pending = read(timeout=math.inf)
                    try:
                        waiting_on = pending.send(None)
                    except StopIteration as done:
                        response = done.value
                    else:
                        drained()
                        response = await _Resumed(pending, waiting_on)
            except ResponseError as exc:
                log.warning(
                    "redis pub/sub error reply", extra={"error": str(exc), "redis": self._label}
                )
                if self._on_error is not None:
                    self._call(self._on_error, str(exc))
                continue
            received()
            try:
                if isinstance(response, bytes):
                    # PING's reply on a connection with no subscription left
                    response = [b"pong", response]
                kind = response[0]
                if kind == message:
                    on_message(response[1], response[2])
                elif kind == confirm:
                    self._confirmed(response[1])
                elif kind == b"pong":
                    if response[1] == _BARRIER:
                        self._ready()
                    elif response[1] == _KEEPALIVE:
                        self.keepalive_replies += 1
                elif kind == ended:
                    self._ended(response[1])
                else:
                    log.warning("unexpected pub/sub message", extra={"kind": repr(kind)[:40]})
            except Exception:
                log.exception("pub/sub message handling failed; skipped")

    def _ended(self, name: bytes) -> None:
        """An unsubscribe: ours (nothing to do) or, for a channel still wanted, Redis dropping
        it by itself (a sharded channel whose slot moved). Mistaking our own for Redis's, when
        a channel is unsubscribed and subscribed again at once, costs one extra resubscribe."""
        if self._on_dropped is not None and name in self._wanted:
            del self._wanted[name]
            self._on_dropped(name)

    @staticmethod
    def _call(hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("pub/sub hook failed")

    def _confirmed(self, name: bytes) -> None:
        waiters = self._waiters.get(name)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if not waiters:
            self._waiters.pop(name, None)

    def _ready(self) -> None:
        if self._ever_ready:
            self._on_reconnected()
        self._ever_ready = True

    async def _keepalive_loop(self) -> None:
        """PING an idle connection and drop it when :class:`Liveness` says its PING went
        unanswered, so a silently dead peer (no RST) is noticed instead of waited on forever."""
        liveness = self._liveness
        while True:
            conn = self._conn
            if conn is not None and liveness.dead():
                log.warning(
                    "redis pub/sub connection silent; reconnecting",
                    extra={"timeout": liveness.timeout},
                )
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                conn = None  # the reader sees the closed socket and reconnects
            if conn is None:
                # Reconnecting; ``_connect`` resets the rule for the next connection.
                await asyncio.sleep(liveness.interval)
                continue
            if liveness.ping_due():
                liveness.ping_sent()
                await self._send("PING", _KEEPALIVE)
            await asyncio.sleep(liveness.next_check())
