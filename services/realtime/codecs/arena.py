"""Our JSON protocol (``docs/protocol.md``): one command per message, ``{"id", "type", ...}``.

Decoding checks the shape of each field (types, lengths); what needs the server's state
(namespaces, permissions) is checked by the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime import commands as c
from services.realtime.errors import BadRequest, CommandError, Disconnect, UnknownCommand

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
#: sent by aiohttp itself for an incoming message over ``WS_MAX_FRAME_BYTES``
CLOSE_TOO_BIG = 1009
CLOSE_PROTOCOL = 4000
CLOSE_UNAUTHENTICATED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_SLOW_CONSUMER = 4004
CLOSE_TOO_MANY_SUBSCRIPTIONS = 4005
CLOSE_TOO_MANY_CONNECTIONS = 4006
CLOSE_RATE_LIMITED = 4029

CLOSE_CODES: dict[Disconnect, int] = {
    Disconnect.NORMAL: CLOSE_NORMAL,
    Disconnect.SHUTDOWN: CLOSE_GOING_AWAY,
    Disconnect.WRITE_FAILED: CLOSE_GOING_AWAY,
    Disconnect.UNSUPPORTED_DATA: CLOSE_UNSUPPORTED,
    Disconnect.PROTOCOL_ERROR: CLOSE_PROTOCOL,
    Disconnect.UNAUTHENTICATED: CLOSE_UNAUTHENTICATED,
    Disconnect.TOKEN_EXPIRED: CLOSE_UNAUTHENTICATED,
    Disconnect.FORBIDDEN: CLOSE_FORBIDDEN,
    Disconnect.SLOW_CONSUMER: CLOSE_SLOW_CONSUMER,
    Disconnect.TOO_MANY_SUBSCRIPTIONS: CLOSE_TOO_MANY_SUBSCRIPTIONS,
    Disconnect.TOO_MANY_CONNECTIONS: CLOSE_TOO_MANY_CONNECTIONS,
    Disconnect.RATE_LIMITED: CLOSE_RATE_LIMITED,
}

HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 1000
MAX_ID_LENGTH = 64
MAX_CHANNEL_LENGTH = 256
MAX_TOKEN_LENGTH = 8192

# -- decoding ------------------------------------------------------------------------------


def _string(cmd: dict[str, Any], field: str, *, max_length: int) -> str:
    value = cmd.get(field)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise BadRequest(f"'{field}' must be a non-empty string")
    return value


def _channel(cmd: dict[str, Any]) -> str:
    return _string(cmd, "channel", max_length=MAX_CHANNEL_LENGTH)


def _token(cmd: dict[str, Any]) -> str:
    return _string(cmd, "token", max_length=MAX_TOKEN_LENGTH)


def _since(cmd: dict[str, Any]) -> StreamPosition | None:
    since = cmd.get("since")
    if since is None:
        return None
    if not isinstance(since, dict):
        raise BadRequest("'since' must be an object {offset, epoch}")
    offset, epoch = since.get("offset"), since.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest("'since.offset' must be a non-negative integer")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise BadRequest("'since.epoch' must be a string")
    return StreamPosition(offset, epoch)


def _subscribe(cmd: dict[str, Any]) -> c.Subscribe:
    since = _since(cmd)
    return c.Subscribe(_channel(cmd), since)


def _history(cmd: dict[str, Any]) -> c.History:
    since = _since(cmd)
    limit = cmd.get("limit", HISTORY_DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise BadRequest("'limit' must be a non-negative integer")
    return c.History(_channel(cmd), since, min(limit, HISTORY_MAX_LIMIT))


def _publish(cmd: dict[str, Any]) -> c.Publish:
    channel = _channel(cmd)
    if "data" not in cmd:
        raise BadRequest("'data' is required")
    return c.Publish(channel, orjson.dumps(cmd["data"]))


#: ``type`` -> (command class, parser of the other fields)
COMMANDS: dict[str, tuple[type[c.Command], Callable[[dict[str, Any]], c.Command]]] = {
    "authenticate": (c.Authenticate, lambda cmd: c.Authenticate(_token(cmd))),
    "refresh": (c.Refresh, lambda cmd: c.Refresh(_token(cmd))),
    "subscribe": (c.Subscribe, _subscribe),
    "unsubscribe": (c.Unsubscribe, lambda cmd: c.Unsubscribe(_channel(cmd))),
    "history": (c.History, _history),
    "presence": (c.Presence, lambda cmd: c.Presence(_channel(cmd))),
    "presence_stats": (c.PresenceStats, lambda cmd: c.PresenceStats(_channel(cmd))),
    "ping": (c.Ping, lambda cmd: c.Ping()),
    "publish": (c.Publish, _publish),
}


# -- encoding ------------------------------------------------------------------------------


def publication_json(pub: Publication) -> bytes:
    """``{"type":"pub","channel":...,"offset":N,"epoch":...,"data":...}`` without re-parsing
    ``pub.data`` (it is already JSON)."""
    return b"".join(
        (
            b'{"type":"pub","channel":',
            orjson.dumps(pub.channel),
            b',"offset":',
            str(pub.offset).encode(),
            b',"epoch":',
            orjson.dumps(pub.epoch),
            b',"data":',
            pub.data,
            b"}",
        )
    )


def publication_dict(pub: Publication) -> dict[str, Any]:
    """A publication as it appears inside replies (history, recovery)."""
    return {
        "channel": pub.channel,
        "offset": pub.offset,
        "epoch": pub.epoch,
        "data": orjson.Fragment(pub.data),
    }


def _result_body(result: c.Result) -> dict[str, Any]:
    match result:
        case c.AuthenticateResult():
            return {
                "client": result.client_id,
                "user": {"id": result.user_id, "role": result.role},
                "expires_at": result.expires_at,
            }
        case c.RefreshResult():
            return {"expires_at": result.expires_at}
        case c.SubscribeResult():
            body: dict[str, Any] = {
                "channel": result.channel,
                "offset": result.position.offset,
                "epoch": result.position.epoch,
                "recoverable": result.recoverable,
            }
            if result.recovered is not None:
                body["recovered"] = result.recovered
                body["publications"] = [publication_dict(p) for p in result.publications]
            return body
        case c.UnsubscribeResult():
            return {"channel": result.channel}
        case c.HistoryResult():
            return {
                "channel": result.channel,
                "offset": result.position.offset,
                "epoch": result.position.epoch,
                "publications": [publication_dict(p) for p in result.publications],
            }
        case c.PresenceResult():
            clients = {e.client_id: {"user": e.user_id, "info": e.info} for e in result.clients}
            return {"channel": result.channel, "clients": clients}
        case c.PresenceStatsResult():
            return {
                "channel": result.channel,
                "num_clients": result.num_clients,
                "num_users": result.num_users,
            }
        case c.PingResult():
            return {}
        case c.PublishResult():
            return {
                "channel": result.channel,
                "offset": result.position.offset,
                "epoch": result.position.epoch,
            }


#: command class -> its ``type``
TYPES: dict[type[c.Command], str] = {
    command_type: name for name, (command_type, _) in COMMANDS.items()
}


def _envelope(request: c.Request | c.Malformed) -> dict[str, Any]:
    """``{"type": "reply", "id": ...}``; a command sent without an id is answered without one,
    under its own ``type`` (``{"type": "subscribe", "result": ...}``), so that clients that send
    no ids can match replies by type. A message whose type is unknown keeps ``"reply"``."""
    if request.id is None:
        command_type = request.command_type
        if command_type is not None:
            return {"type": TYPES[command_type]}
    return {"type": "reply", "id": request.id}


class ArenaCodec:
    """The codec of ``docs/protocol.md``."""

    name = "arena"
    server_ping: bytes | None = None  # WebSocket ping frames (handlers/realtime/heartbeat.py)

    def decode(self, message: str) -> list[c.Decoded]:
        try:
            cmd = orjson.loads(message)
        except orjson.JSONDecodeError:
            return [c.Malformed(None, None, BadRequest("frame is not valid JSON"))]
        if not isinstance(cmd, dict):
            return [c.Malformed(None, None, BadRequest("command must be a JSON object"))]
        command_id = cmd.get("id")  # optional: None (or absent) gets replies without one
        if command_id is not None and (
            isinstance(command_id, bool) or not isinstance(command_id, int | str)
        ):
            return [c.Malformed(None, None, BadRequest("'id' must be an integer or string"))]
        if isinstance(command_id, str) and len(command_id) > MAX_ID_LENGTH:
            return [c.Malformed(None, None, BadRequest("'id' is too long"))]
        kind = cmd.get("type")
        entry = COMMANDS.get(kind) if isinstance(kind, str) else None
        if entry is None:
            return [c.Malformed(command_id, None, UnknownCommand())]
        command_type, parse = entry
        try:
            return [c.Request(command_id, parse(cmd))]
        except CommandError as exc:
            return [c.Malformed(command_id, command_type, exc)]

    def result(self, request: c.Request, result: c.Result) -> bytes:
        return orjson.dumps({**_envelope(request), "result": _result_body(result)})

    def error(self, request: c.Request | c.Malformed, error: CommandError) -> bytes:
        body = {"code": error.code, "message": error.message}
        return orjson.dumps({**_envelope(request), "error": body})

    def publication(self, pub: Publication) -> bytes:
        return publication_json(pub)

    def resync(self, channel: str, position: StreamPosition) -> bytes:
        return orjson.dumps(
            {
                "type": "resync",
                "channel": channel,
                "recovered": False,
                "offset": position.offset,
                "epoch": position.epoch,
            }
        )

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        return orjson.dumps(
            {
                "type": kind,
                "channel": channel,
                "user": entry.user_id,
                "client": entry.client_id,
                "info": entry.info,
            }
        )

    def unsubscribed(self, channel: str, code: int, reason: str) -> bytes:
        # No ``result``/``error``: that is how it differs from the reply to an id-less
        # ``unsubscribe`` command.
        return orjson.dumps(
            {"type": "unsubscribe", "channel": channel, "code": code, "reason": reason}
        )

    def close_code(self, disconnect: Disconnect) -> int:
        return CLOSE_CODES[disconnect]


#: the one instance every connection shares
CODEC = ArenaCodec()
