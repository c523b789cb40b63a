"""Centrifugo's server API (v5/v6 HTTP API) mapped onto our hub, presence and connections.

No aiohttp here: :mod:`handlers.centrifugo_http_api` reads the request and writes what
:meth:`CentrifugoApi.call` returns. A method's answer is always one of Centrifugo's two shapes::

    {"result": {...}}                               success
    {"error": {"code": 102, "message": "..."}}      failure (HTTP 200, as Centrifugo answers)

Error codes are Centrifugo's (``internal/apiproto/errors.go``): 100 internal, 102 unknown
channel, 104 not found (unknown method), 107 bad request, 108 not available, 112 unrecoverable
position. Channel names, namespaces and their options are ours (``pubsub.namespaces``); a
publication gets the same offset, epoch and idempotency handling as
``POST /api/v1/channels/{channel}/publish``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pubsub.broker import BrokerError, HistoryResult, Publication
from pubsub.hub import Hub
from pubsub.namespaces import InvalidChannel, NamespaceOptions
from pubsub.presence import Presence
from services.channels import revocation
from services.realtime.errors import UNSUBSCRIBE_SERVER, UNSUBSCRIBE_SERVER_REASON

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

DEFAULT_DISCONNECT_REASON = "force disconnect"


class CentrifugoError(Exception):
    """A Centrifugo API error: ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


INTERNAL = 100
UNKNOWN_CHANNEL = 102
NOT_FOUND = 104
BAD_REQUEST = 107
NOT_AVAILABLE = 108
UNRECOVERABLE_POSITION = 112

#: Centrifugo's ``MapErrorToHTTPCode``: the HTTP status of an error in transport error mode
#: (``X-Centrifugo-Error-Mode: transport``).
_HTTP_STATUS = {
    INTERNAL: 500,
    UNKNOWN_CHANNEL: 404,
    NOT_FOUND: 404,
    BAD_REQUEST: 400,
    NOT_AVAILABLE: 400,
    UNRECOVERABLE_POSITION: 416,
}


def http_status(code: int) -> int:
    """The HTTP status Centrifugo's transport error mode gives error ``code``."""
    return _HTTP_STATUS.get(code, 500)


def bad_request(detail: str | None = None) -> CentrifugoError:
    return CentrifugoError(BAD_REQUEST, f"bad request: {detail}" if detail else "bad request")


def internal() -> CentrifugoError:
    return CentrifugoError(INTERNAL, "internal server error")


# -- requests (field names of Centrifugo's api.proto) --------------------------------------


class _Request(BaseModel):
    # Unknown fields are ignored, as Centrifugo's decoder does; fields Centrifugo knows but
    # we cannot honour are declared and refused in ``_refuse_unsupported``.
    model_config = ConfigDict(extra="ignore")


class _PublishOptions(_Request):
    data: Any = Field(default=None)
    skip_history: bool | None = None
    tags: dict[str, str] | None = None
    b64data: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)
    delta: bool | None = None
    version: int | None = None
    version_epoch: str | None = None


class PublishRequest(_PublishOptions):
    channel: str = ""


class BroadcastRequest(_PublishOptions):
    channels: list[str] = Field(default_factory=list)


class StreamPositionIn(_Request):
    offset: int = Field(default=0, ge=0)
    epoch: str = ""


class HistoryRequest(_Request):
    channel: str = ""
    limit: int = Field(default=0, ge=-1)
    since: StreamPositionIn | None = None
    reverse: bool = False


class ChannelRequest(_Request):
    channel: str = ""


class DisconnectObject(_Request):
    code: int = Field(ge=3000, le=4999)
    reason: str = Field(default="", max_length=123)


class DisconnectRequest(_Request):
    user: str = ""
    client: str | None = None
    session: str | None = None
    whitelist: list[str] | None = None
    disconnect: DisconnectObject | None = None


class UnsubscribeRequest(_Request):
    user: str = ""
    channel: str = ""
    client: str | None = None
    session: str | None = None


class ChannelsRequest(_Request):
    pattern: str | None = None


class BatchRequest(_Request):
    commands: list[dict[str, Any]] = Field(default_factory=list)
    parallel: bool = False


def _parse(model: type[M], params: Any) -> M:
    if not isinstance(params, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}"
            for item in exc.errors(include_url=False)
        )
        raise bad_request(problems) from None


def _refuse_unsupported(req: _PublishOptions) -> None:
    """Options whose Centrifugo meaning we cannot keep: refused rather than silently dropped."""
    if req.tags:
        raise bad_request("publication tags are not supported")
    if req.b64data:
        raise bad_request("b64data (binary publications) is not supported; send JSON in data")
    if req.skip_history:
        raise bad_request(
            "skip_history is not supported: every publication is kept in history so that "
            "subscribers can recover without gaps"
        )
    if req.version or req.version_epoch:
        raise bad_request("version and version_epoch are not supported")
    if "data" not in req.model_fields_set:
        raise bad_request("data is required")


# -- the API ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStats:
    """What this node knows about its WebSocket clients (for ``info``)."""

    num_clients: int
    num_users: int
    num_subs: int


#: disconnect(user, code or None for the default "do not reconnect", reason)
Disconnector = Callable[[str, int | None, str], Awaitable[None]]


class CentrifugoApi:
    """Runs Centrifugo server API methods against our hub.

    ``presence`` may be None (no presence store), ``disconnect(user, code, reason)`` closes
    every connection of a user on every node, ``stats()`` describes this node's clients.
    """

    #: methods Centrifugo has that we answer with 108 "not available" (see docs/compatibility.md)
    NOT_AVAILABLE_METHODS = (
        "subscribe",
        "refresh",
        "history_remove",
        "rpc",
        "connections",
    )

    def __init__(
        self,
        hub: Hub,
        presence: Presence | None,
        disconnect: Disconnector,
        stats: Callable[[], NodeStats],
        *,
        node_uid: str,
        node_name: str,
        version: str,
    ) -> None:
        self.hub = hub
        self.presence = presence
        self._disconnect = disconnect
        self._stats = stats
        self.node_uid = node_uid
        self.node_name = node_name
        self.version = version
        self.started = time.monotonic()
        self.methods: dict[str, Callable[[Any], Awaitable[dict[str, Any]]]] = {
            "publish": self.publish,
            "broadcast": self.broadcast,
            "history": self.history,
            "presence": self.presence_clients,
            "presence_stats": self.presence_stats,
            "disconnect": self.disconnect,
            "unsubscribe": self.unsubscribe,
            "info": self.info,
            "channels": self.channels,
        }

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        """``{"result": ...}`` or ``{"error": ...}`` for one method call; never raises for a
        Centrifugo-level failure."""
        if method == "batch":
            return await self.batch(params)
        handler = self.methods.get(method)
        try:
            if handler is None:
                if method in self.NOT_AVAILABLE_METHODS:
                    raise CentrifugoError(NOT_AVAILABLE, f"not available: {method}")
                raise CentrifugoError(NOT_FOUND, "not found")
            return {"result": await handler(params)}
        except CentrifugoError as exc:
            return {"error": exc.as_dict()}

    # -- channels --------------------------------------------------------------------------

    def _options(self, channel: str) -> NamespaceOptions:
        if not channel:
            raise bad_request("channel is required")
        namespace, sep, _ = channel.partition(":")
        if not sep or namespace not in self.hub.namespaces:
            raise CentrifugoError(UNKNOWN_CHANNEL, "unknown channel")
        try:
            return self.hub.options(channel)
        except InvalidChannel as exc:
            raise bad_request(str(exc)) from None

    async def _publish_one(self, channel: str, req: _PublishOptions) -> dict[str, Any]:
        self._options(channel)
        try:
            result = await self.hub.publish(
                channel, req.data, idempotency_key=req.idempotency_key or None
            )
        except BrokerError:
            log.warning("server API publish failed", extra={"channel": channel}, exc_info=True)
            raise internal() from None
        return {"offset": result.offset, "epoch": result.epoch}

    # -- methods ---------------------------------------------------------------------------

    async def publish(self, params: Any) -> dict[str, Any]:
        """``publish``: ``{"offset", "epoch"}`` of the new (or, for a repeated idempotency
        key, the earlier) publication."""
        req = _parse(PublishRequest, params)
        _refuse_unsupported(req)
        return await self._publish_one(req.channel, req)

    async def broadcast(self, params: Any) -> dict[str, Any]:
        """``broadcast``: one publish response per channel, in request order."""
        req = _parse(BroadcastRequest, params)
        if not req.channels:
            raise bad_request("channels are required")
        _refuse_unsupported(req)

        async def one(channel: str) -> dict[str, Any]:
            try:
                return {"result": await self._publish_one(channel, req)}
            except CentrifugoError as exc:
                return {"error": exc.as_dict()}

        responses = await asyncio.gather(*(one(channel) for channel in req.channels))
        return {"responses": list(responses)}

    async def history(self, params: Any) -> dict[str, Any]:
        """``history``: the stream position, plus up to ``limit`` publications (-1: all kept)
        after ``since``, newest first with ``reverse``."""
        req = _parse(HistoryRequest, params)
        options = self._options(req.channel)
        if options.history_size <= 0 or options.history_ttl <= 0:
            raise CentrifugoError(NOT_AVAILABLE, "not available")
        try:
            hist = await self._read_history(req, options)
        except BrokerError:
            log.warning("server API history failed", extra={"channel": req.channel})
            raise internal() from None
        publications = hist.publications
        if req.reverse:
            publications = publications[::-1]
        return {
            "publications": [_publication(pub) for pub in publications],
            "offset": hist.position.offset,
            "epoch": hist.position.epoch,
        }

    async def _read_history(self, req: HistoryRequest, options: NamespaceOptions) -> HistoryResult:
        broker = self.hub.broker
        channel = req.channel
        limit = None if req.limit < 0 else req.limit
        since = req.since
        if since is None or limit == 0:
            hist = await broker.history(channel, options, limit=limit)
            if since is not None and since.epoch and since.epoch != hist.position.epoch:
                raise CentrifugoError(UNRECOVERABLE_POSITION, "unrecoverable position")
            return hist
        if req.reverse:
            # Publications before ``since``, newest first (reversed by the caller).
            start = 0 if limit is None else max(0, since.offset - 1 - limit)
            hist = await broker.history(channel, options, since=start)
            older = [pub for pub in hist.publications if pub.offset < since.offset]
            if limit is not None:
                older = older[-limit:]
            hist = HistoryResult(older, hist.position)
        else:
            hist = await broker.history(channel, options, since=since.offset, limit=limit)
        position = hist.position
        if since.epoch and since.epoch != position.epoch:
            raise CentrifugoError(UNRECOVERABLE_POSITION, "unrecoverable position")
        if not req.reverse and since.offset < position.offset:
            first = hist.publications[0].offset if hist.publications else None
            if first != since.offset + 1:
                # What followed ``since`` is no longer kept: a gap, never silently skipped.
                raise CentrifugoError(UNRECOVERABLE_POSITION, "unrecoverable position")
        return hist

    def _presence_for(self, channel: str) -> Presence:
        options = self._options(channel)
        if self.presence is None or not options.presence:
            raise CentrifugoError(NOT_AVAILABLE, "not available")
        return self.presence

    async def presence_clients(self, params: Any) -> dict[str, Any]:
        """``presence``: every client subscribed to the channel, on every node."""
        req = _parse(ChannelRequest, params)
        presence = self._presence_for(req.channel)
        try:
            entries = await presence.store.entries(req.channel)
        except Exception:
            log.warning("server API presence failed", extra={"channel": req.channel})
            raise internal() from None
        return {
            "presence": {
                entry.client_id: {
                    "client": entry.client_id,
                    "user": entry.user_id,
                    "conn_info": entry.info,
                }
                for entry in entries
            }
        }

    async def presence_stats(self, params: Any) -> dict[str, Any]:
        """``presence_stats``: numbers of clients and of distinct users in the channel."""
        req = _parse(ChannelRequest, params)
        presence = self._presence_for(req.channel)
        try:
            stats = await presence.store.stats(req.channel)
        except Exception:
            log.warning("server API presence_stats failed", extra={"channel": req.channel})
            raise internal() from None
        return {"num_clients": stats.clients, "num_users": stats.users}

    async def disconnect(self, params: Any) -> dict[str, Any]:
        """``disconnect``: close every connection of ``user`` on every node."""
        req = _parse(DisconnectRequest, params)
        if not req.user:
            raise bad_request("user is required")
        if req.client or req.session or req.whitelist:
            raise bad_request(
                "client, session and whitelist are not supported: all of a user's "
                "connections are closed"
            )
        code: int | None = None
        reason = DEFAULT_DISCONNECT_REASON
        if req.disconnect is not None:
            code, reason = req.disconnect.code, req.disconnect.reason
        try:
            await self._disconnect(req.user, code, reason)
        except BrokerError:
            log.warning("server API disconnect failed", exc_info=True)
            raise internal() from None
        return {}

    async def unsubscribe(self, params: Any) -> dict[str, Any]:
        """``unsubscribe``: end ``user``'s subscription to ``channel`` on every node; the
        clients get an ``unsubscribe`` push with code 2000 ("server unsubscribe")."""
        req = _parse(UnsubscribeRequest, params)
        if not req.user:
            raise bad_request("user is required")
        self._options(req.channel)
        if req.client or req.session:
            raise bad_request(
                "client and session are not supported: all of the user's connections are "
                "unsubscribed"
            )
        try:
            await revocation.unsubscribe_user(
                self.hub, req.user, req.channel, UNSUBSCRIBE_SERVER, UNSUBSCRIBE_SERVER_REASON
            )
        except BrokerError:
            log.warning("server API unsubscribe failed", exc_info=True)
            raise internal() from None
        return {}

    async def info(self, params: Any) -> dict[str, Any]:
        """``info``: the node that answered (nodes do not report to each other)."""
        if params is not None and not isinstance(params, dict):
            raise bad_request("the request body must be a JSON object")
        stats = self._stats()
        node = {
            "uid": self.node_uid,
            "name": self.node_name,
            "version": self.version,
            "num_clients": stats.num_clients,
            "num_users": stats.num_users,
            "num_subs": stats.num_subs,
            "num_channels": len(self._active_channels()),
            "uptime": int(time.monotonic() - self.started),
        }
        return {"nodes": [node]}

    def _active_channels(self) -> dict[str, int]:
        counts = {channel: self.hub.subscriber_count(channel) for channel in self.hub.channels()}
        return {channel: count for channel, count in counts.items() if count > 0}

    async def channels(self, params: Any) -> dict[str, Any]:
        """``channels``: channels with subscribers on this node, filtered by a glob
        ``pattern`` (``*``, ``?``, ``[...]``)."""
        req = _parse(ChannelsRequest, params)
        active = self._active_channels()
        if req.pattern:
            active = {
                name: count
                for name, count in active.items()
                if fnmatch.fnmatchcase(name, req.pattern)
            }
        return {
            "channels": {name: {"num_clients": count} for name, count in sorted(active.items())}
        }

    async def batch(self, params: Any) -> dict[str, Any]:
        """``batch``: ``{"replies": [{"<method>": result} | {"error": ...}, ...]}`` (not wrapped
        in ``result``, as Centrifugo answers)."""
        try:
            req = _parse(BatchRequest, params)
        except CentrifugoError as exc:
            return {"error": exc.as_dict()}

        async def one(command: dict[str, Any]) -> dict[str, Any]:
            if len(command) != 1:
                return {"error": bad_request("one method per command").as_dict()}
            method, method_params = next(iter(command.items()))
            if method == "batch":
                return {"error": bad_request("batch inside batch").as_dict()}
            reply = await self.call(method, method_params)
            if "error" in reply:
                return reply
            return {method: reply["result"]}

        if req.parallel:
            replies = list(await asyncio.gather(*(one(command) for command in req.commands)))
        else:
            replies = [await one(command) for command in req.commands]
        return {"replies": replies}


def _publication(pub: Publication) -> dict[str, Any]:
    # ``data`` is already JSON: embedded as-is, never parsed again.
    return {"data": orjson.Fragment(pub.data), "offset": pub.offset}
