"""Centrifugo's client protocol v2, JSON flavour (what every Centrifugo client SDK speaks).

The commands, replies and pushes follow ``client.proto`` of ``centrifugal/protocol`` in its JSON
form, as ``centrifuge-js`` and ``centrifuge-python`` send and expect them:

* a frame holds one or more commands separated by ``\\n``, each ``{"id": N, "<method>": {...}}``;
* a reply is ``{"id": N, "<method>": {...}}`` or ``{"id": N, "error": {"code", "message"}}``;
* a push is ``{"push": {"channel": ..., "pub" | "join" | "leave" | "unsubscribe" | "disconnect":
  {...}}}``;
* the server sends an empty object ``{}`` every ``ping`` seconds (the connect reply's ``ping``,
  ``WS_HEARTBEAT``; with ``pong: true``) and the client answers ``{}``: the SDKs reconnect when a
  ping is late (``ping`` + their ``maxServerPingDelay``).

What the commands *mean* is ours: channel names, namespaces, permissions and tokens are those
of ``docs/protocol.md``; ``docs/clients.md`` lists what is supported and what a client gets
otherwise.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime import commands as c
from services.realtime.errors import BadRequest, CommandError, Disconnect, TokenExpired

#: what the ``version`` field of the connect reply says
SERVER_VERSION = "arena-realtime (centrifuge protocol v2)"

# -- error codes (Centrifugo's, ``errors.go`` of centrifugal/centrifuge) ----------------------

ERROR_INTERNAL = 100
ERROR_UNAUTHORIZED = 101
ERROR_UNKNOWN_CHANNEL = 102
ERROR_PERMISSION_DENIED = 103
ERROR_METHOD_NOT_FOUND = 104
ERROR_ALREADY_SUBSCRIBED = 105
ERROR_LIMIT_EXCEEDED = 106
ERROR_BAD_REQUEST = 107
ERROR_NOT_AVAILABLE = 108
ERROR_TOKEN_EXPIRED = 109
ERROR_EXPIRED = 110
ERROR_TOO_MANY_REQUESTS = 111
ERROR_UNRECOVERABLE_POSITION = 112

#: our error code -> (Centrifugo's code, temporary: the SDK retries the command by itself)
ERROR_CODES: dict[str, tuple[int, bool]] = {
    "bad_request": (ERROR_BAD_REQUEST, False),
    "unknown_command": (ERROR_METHOD_NOT_FOUND, False),
    "method_not_found": (ERROR_METHOD_NOT_FOUND, False),
    "unauthenticated": (ERROR_UNAUTHORIZED, False),
    "already_authenticated": (ERROR_BAD_REQUEST, False),
    "invalid_channel": (ERROR_UNKNOWN_CHANNEL, False),
    "permission_denied": (ERROR_PERMISSION_DENIED, False),
    "already_subscribed": (ERROR_ALREADY_SUBSCRIBED, False),
    "not_subscribed": (ERROR_BAD_REQUEST, False),
    "limit_exceeded": (ERROR_LIMIT_EXCEEDED, False),
    "broker_unavailable": (ERROR_INTERNAL, True),
    "temporarily_unavailable": (ERROR_INTERNAL, True),
    "not_available": (ERROR_NOT_AVAILABLE, False),
    "unrecoverable_position": (ERROR_UNRECOVERABLE_POSITION, False),
}

# -- disconnect codes (``disconnect.go``): 3000-3499 reconnect, 3500-3999 do not ------------

DISCONNECT_CONNECTION_CLOSED = 3000
DISCONNECT_SHUTDOWN = 3001
DISCONNECT_SERVER_ERROR = 3004
DISCONNECT_EXPIRED = 3005
DISCONNECT_SLOW = 3008
DISCONNECT_WRITE_ERROR = 3009
DISCONNECT_INSUFFICIENT_STATE = 3010
DISCONNECT_TOO_MANY_REQUESTS = 3013
DISCONNECT_INVALID_TOKEN = 3500
DISCONNECT_BAD_REQUEST = 3501
DISCONNECT_CONNECTION_LIMIT = 3504
DISCONNECT_CHANNEL_LIMIT = 3505
DISCONNECT_PERMISSION_DENIED = 3507

CLOSE_CODES: dict[Disconnect, int] = {
    Disconnect.NORMAL: DISCONNECT_CONNECTION_CLOSED,
    Disconnect.SHUTDOWN: DISCONNECT_SHUTDOWN,
    Disconnect.WRITE_FAILED: DISCONNECT_WRITE_ERROR,
    Disconnect.UNSUPPORTED_DATA: DISCONNECT_BAD_REQUEST,
    Disconnect.PROTOCOL_ERROR: DISCONNECT_BAD_REQUEST,
    Disconnect.UNAUTHENTICATED: DISCONNECT_INVALID_TOKEN,
    # reconnect: the SDK asks its ``getToken`` for a new token first
    Disconnect.TOKEN_EXPIRED: DISCONNECT_EXPIRED,
    Disconnect.FORBIDDEN: DISCONNECT_PERMISSION_DENIED,
    Disconnect.SLOW_CONSUMER: DISCONNECT_SLOW,
    Disconnect.TOO_MANY_SUBSCRIPTIONS: DISCONNECT_CHANNEL_LIMIT,
    Disconnect.TOO_MANY_CONNECTIONS: DISCONNECT_CONNECTION_LIMIT,
    Disconnect.RATE_LIMITED: DISCONNECT_TOO_MANY_REQUESTS,
}

#: unsubscribe push codes: below 2500 the SDK stays unsubscribed, from 2500 it resubscribes
UNSUBSCRIBE_SERVER = 2000

MAX_ID = 2**53
MAX_CHANNEL_LENGTH = 256
MAX_TOKEN_LENGTH = 8192
HISTORY_MAX_LIMIT = 1000


class MethodNotFound(CommandError):
    """A Centrifugo method we do not serve (``rpc``): error 104, as Centrifugo without a proxy."""

    def __init__(self, message: str = "method not found") -> None:
        super().__init__("method_not_found", message)


# -- decoding ------------------------------------------------------------------------------


def _string(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


def _channel(body: dict[str, Any]) -> str:
    return _string(body, "channel", MAX_CHANNEL_LENGTH)


def _offset(body: dict[str, Any]) -> int:
    offset = body.get("offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest("'offset' must be a non-negative integer")
    return offset


def _epoch(body: dict[str, Any]) -> str:
    epoch = body.get("epoch", "")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise BadRequest("'epoch' must be a string")
    return epoch


def _connect(body: dict[str, Any]) -> c.Authenticate:
    return c.Authenticate(_string(body, "token", MAX_TOKEN_LENGTH))


def _refresh(body: dict[str, Any]) -> c.Refresh:
    return c.Refresh(_string(body, "token", MAX_TOKEN_LENGTH))


def _subscribe(body: dict[str, Any]) -> c.Subscribe:
    channel = _channel(body)
    if body.get("recover") is True:
        return c.Subscribe(channel, StreamPosition(_offset(body), _epoch(body)))
    return c.Subscribe(channel)


def _history(body: dict[str, Any]) -> c.History:
    channel = _channel(body)
    # Centrifugo: no limit (0) = only the stream position; a negative limit = everything kept.
    limit = body.get("limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise BadRequest("'limit' must be an integer")
    if limit < 0 or limit > HISTORY_MAX_LIMIT:
        limit = HISTORY_MAX_LIMIT
    since = body.get("since")
    position = None
    if since is not None:
        if not isinstance(since, dict):
            raise BadRequest("'since' must be an object {offset, epoch}")
        position = StreamPosition(_offset(since), _epoch(since))
    reverse = body.get("reverse", False)
    if not isinstance(reverse, bool):
        raise BadRequest("'reverse' must be a boolean")
    return c.History(channel, position, limit, reverse=reverse, stream_order=True)


def _publish(body: dict[str, Any]) -> c.Publish:
    channel = _channel(body)
    if "data" not in body:
        raise BadRequest("'data' is required")
    return c.Publish(channel, orjson.dumps(body["data"]))


def _rpc(body: dict[str, Any]) -> c.Command:
    raise MethodNotFound()


def _sub_refresh(body: dict[str, Any]) -> c.Command:
    raise CommandError("not_available", "subscription tokens are not used by this server")


_PARSERS: dict[str, tuple[type[c.Command] | None, Any]] = {
    "connect": (c.Authenticate, _connect),
    "refresh": (c.Refresh, _refresh),
    "subscribe": (c.Subscribe, _subscribe),
    "unsubscribe": (c.Unsubscribe, lambda body: c.Unsubscribe(_channel(body))),
    "publish": (c.Publish, _publish),
    "presence": (c.Presence, lambda body: c.Presence(_channel(body))),
    "presence_stats": (c.PresenceStats, lambda body: c.PresenceStats(_channel(body))),
    "history": (c.History, _history),
    "ping": (c.Ping, lambda body: c.Ping()),
    "rpc": (None, _rpc),
    "sub_refresh": (None, _sub_refresh),
}

#: command class -> the method name its reply is keyed by
_METHODS: dict[type[c.Command], str] = {
    command_type: method
    for method, (command_type, _) in _PARSERS.items()
    if command_type is not None
}


def _decode_one(line: str) -> c.Decoded | None:
    try:
        cmd = orjson.loads(line)
    except orjson.JSONDecodeError:
        return c.Malformed(None, None, BadRequest("command is not valid JSON"))
    if not isinstance(cmd, dict):
        return c.Malformed(None, None, BadRequest("command must be a JSON object"))
    if not cmd:
        return None  # ``{}``: a pong
    if "send" in cmd:
        return None  # asynchronous message to the server: no handler, no reply (as Centrifugo)
    command_id = cmd.get("id")
    if (
        isinstance(command_id, bool)
        or not isinstance(command_id, int)
        or not 0 < command_id < MAX_ID
    ):
        return c.Malformed(None, None, BadRequest("'id' must be a positive integer"))
    for method, (command_type, parse) in _PARSERS.items():
        body = cmd.get(method)
        if body is None:
            continue
        if not isinstance(body, dict):
            return c.Malformed(
                command_id, command_type, BadRequest(f"'{method}' must be an object")
            )
        try:
            command: c.Command = parse(body)
        except CommandError as exc:
            return c.Malformed(command_id, command_type, exc)
        return c.Request(command_id, command)
    return c.Malformed(command_id, None, MethodNotFound("unknown method"))


# -- encoding ------------------------------------------------------------------------------


def _publication(pub: Publication) -> dict[str, Any]:
    return {"data": orjson.Fragment(pub.data), "offset": pub.offset}


def _client_info(entry: PresenceEntry) -> dict[str, Any]:
    return {"client": entry.client_id, "user": entry.user_id, "conn_info": entry.info}


def _expiry(expires_at: int) -> dict[str, Any]:
    """``expires``/``ttl``: the SDK calls ``getToken`` and sends ``refresh`` after ``ttl``
    seconds. Centrifugo closes an expired connection only after a grace period; we close it at
    the token's expiry, so the SDK is told to refresh a fifth earlier (at most 30 s)."""
    if expires_at <= 0:
        return {}
    left = expires_at - time.time()
    return {"expires": True, "ttl": max(1, int(left - min(30.0, left / 5)))}


def _result_body(result: c.Result) -> dict[str, Any]:
    match result:
        case c.AuthenticateResult():
            pings = {"ping": result.ping, "pong": True} if result.ping > 0 else {}
            return {
                "client": result.client_id,
                "version": SERVER_VERSION,
                **_expiry(result.expires_at),
                **pings,
            }
        case c.RefreshResult():
            return {"version": SERVER_VERSION, **_expiry(result.expires_at)}
        case c.SubscribeResult():
            body: dict[str, Any] = {
                "recoverable": result.recoverable,
                "positioned": result.recoverable,
                "offset": result.position.offset,
                "epoch": result.position.epoch,
            }
            if result.recovered is not None:
                body["was_recovering"] = True
                body["recovered"] = result.recovered
                body["publications"] = [_publication(p) for p in result.publications]
            return body
        case c.UnsubscribeResult() | c.PingResult() | c.PublishResult():
            return {}
        case c.HistoryResult():
            return {
                "publications": [_publication(p) for p in result.publications],
                "offset": result.position.offset,
                "epoch": result.position.epoch,
            }
        case c.PresenceResult():
            return {"presence": {e.client_id: _client_info(e) for e in result.clients}}
        case c.PresenceStatsResult():
            return {"num_clients": result.num_clients, "num_users": result.num_users}


class CentrifugeCodec:
    """Centrifugo client protocol v2 in JSON (``/connection/websocket``)."""

    name = "centrifuge"
    #: the server ping: an empty push, answered by the SDK with an empty command (``pong``)
    server_ping: bytes | None = b"{}"

    def decode(self, message: str) -> list[c.Decoded]:
        decoded = []
        for line in message.split("\n"):
            if line.strip():
                item = _decode_one(line)
                if item is not None:
                    decoded.append(item)
        return decoded

    def result(self, request: c.Request, result: c.Result) -> bytes:
        method = _METHODS[request.command_type]
        return orjson.dumps({"id": request.id, method: _result_body(result)})

    def error(self, request: c.Request | c.Malformed, error: CommandError) -> bytes:
        if error.code == "not_subscribed" and request.command_type is c.Unsubscribe:
            # Centrifugo's unsubscribe is idempotent; an SDK reconnects on an unsubscribe error.
            return orjson.dumps({"id": request.id, "unsubscribe": {}})
        if isinstance(error, TokenExpired):
            code, temporary = ERROR_TOKEN_EXPIRED, False  # the SDK gets a new token, reconnects
        else:
            code, temporary = ERROR_CODES.get(error.code, (ERROR_INTERNAL, False))
        body: dict[str, Any] = {"code": code, "message": error.message}
        if temporary:
            body["temporary"] = True
        envelope: dict[str, Any] = {"error": body}
        if request.id is not None:
            envelope = {"id": request.id, **envelope}
        return orjson.dumps(envelope)

    def publication(self, pub: Publication) -> bytes:
        return b"".join(
            (
                b'{"push":{"channel":',
                orjson.dumps(pub.channel),
                b',"pub":{"data":',
                pub.data,
                b',"offset":',
                str(pub.offset).encode(),
                b"}}}",
            )
        )

    def resync(self, channel: str, position: StreamPosition) -> bytes:
        # Centrifugo's answer to a subscriber that fell behind: disconnect with "insufficient
        # state" and reconnect; the SDK then resubscribes with recovery from its last offset and
        # learns ``recovered: false`` if the gap is gone for good.
        return orjson.dumps(
            {
                "push": {
                    "disconnect": {
                        "code": DISCONNECT_INSUFFICIENT_STATE,
                        "reason": "insufficient state",
                        "reconnect": True,
                    }
                }
            }
        )

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        return orjson.dumps({"push": {"channel": channel, kind: {"info": _client_info(entry)}}})

    def unsubscribed(self, channel: str, code: int, reason: str) -> bytes:
        # The SDKs subscribe again on codes >= 2500. Every unsubscribe the server sends is
        # final (access revoked, a backend's unsubscribe), so whatever our code, it goes out as
        # Centrifugo's "server unsubscribe" (2000) with our reason.
        return orjson.dumps(
            {
                "push": {
                    "channel": channel,
                    "unsubscribe": {"code": UNSUBSCRIBE_SERVER, "reason": reason},
                }
            }
        )

    def close_code(self, disconnect: Disconnect) -> int:
        return CLOSE_CODES[disconnect]


#: the one instance every connection shares
CODEC = CentrifugeCodec()
