"""Centrifugo-compatible server HTTP API: ``POST /api/<method>`` (``publish``, ``broadcast``,
``history``, ``presence``, ``presence_stats``, ``disconnect``, ``unsubscribe``, ``info``,
``channels``, ``batch``).

Backends written for Centrifugo (the ``cent`` Python client, ``gocent``, ``phpcent``, plain
``curl``) publish here unchanged: point their API URL at ``http://<host>/api`` and give them a
key in ``X-API-Key: <key>`` (or the older ``Authorization: apikey <key>``). The key is either a
service token (``arena-realtime service-token``) or ``HTTP_API_KEY``. Request and response
bodies, error codes and the ``X-Centrifugo-Error-Mode: transport`` header follow Centrifugo;
the mapping itself lives in :mod:`services.channels.centrifugo_api` (see docs/compatibility.md).
"""

from __future__ import annotations

import hmac
import socket
import uuid
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from handlers import keys
from handlers.errors import ApiError
from handlers.validation import read_json
from services.auth.tokens import TokenError
from services.channels.centrifugo_api import CentrifugoApi, NodeStats, http_status
from services.realtime.errors import Disconnect

#: holds the one CentrifugoApi of the app, made at the first call (the hub exists only then)
_api = web.AppKey("centrifugo_api", dict[str, CentrifugoApi])

#: every Centrifugo method path we answer (the not-available ones answer error 108)
METHODS = (
    "publish",
    "broadcast",
    "history",
    "presence",
    "presence_stats",
    "disconnect",
    "unsubscribe",
    "info",
    "channels",
    "batch",
    *CentrifugoApi.NOT_AVAILABLE_METHODS,
)

_APIKEY = "apikey "


def api_key(request: web.Request) -> str | None:
    """The key from ``X-API-Key`` or ``Authorization: apikey <key>``; never from the URL."""
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    header = request.headers.get("Authorization", "")
    if header[: len(_APIKEY)].lower() == _APIKEY:
        return header[len(_APIKEY) :].strip() or None
    return None


def authorize(request: web.Request) -> None:
    """401 without a valid key, 403 for a valid token that is not a service's (or admin's)."""
    key = api_key(request)
    if key is None:
        raise ApiError(401, "API key required (X-API-Key header)")
    configured = request.app[keys.config].auth.http_api_key
    if configured and hmac.compare_digest(key.encode(), configured.encode()):
        return
    try:
        principal = request.app[keys.tokens].principal(key)
    except TokenError:
        raise ApiError(401, "invalid API key") from None
    if not principal.is_privileged:
        raise ApiError(403, "only trusted services may use the server API")


def _node_stats(app: web.Application) -> NodeStats:
    conns = app[keys.connections].connections()
    users = {conn.principal.user_id for conn in conns if conn.principal is not None}
    return NodeStats(
        num_clients=len(conns),
        num_users=len(users),
        num_subs=sum(len(conn.subscriptions) for conn in conns),
    )


def _version() -> str:
    try:
        return f"arena-realtime {metadata.version('arena-realtime')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "arena-realtime"


def _centrifugo_api(request: web.Request) -> CentrifugoApi:
    app = request.app
    api = app[_api].get("api")
    if api is None:
        registry = app[keys.connections]
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) > 1 else 0
        api = CentrifugoApi(
            app[keys.hub],
            app.get(keys.presence),
            lambda user, code, reason: registry.disconnect_user(
                user, Disconnect.FORBIDDEN, reason, code=code
            ),
            lambda: _node_stats(app),
            node_uid=str(uuid.uuid4()),
            node_name=f"{socket.gethostname()}_{port}",
            version=_version(),
        )
        app[_api]["api"] = api
    return api


async def server_api(request: web.Request, method: str) -> web.Response:
    """Run Centrifugo API ``method`` with the request's JSON body."""
    authorize(request)
    params: Any = await read_json(request)  # 400 for an empty or malformed body, as Centrifugo
    reply = await _centrifugo_api(request).call(method, params)
    status = 200
    body: Any = reply
    error = reply.get("error")
    transport = request.headers.get("X-Centrifugo-Error-Mode", "").lower() == "transport"
    if error is not None and transport:
        status, body = http_status(error["code"]), error
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _handler(method: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return await server_api(request, method)

    handle.__name__ = handle.__qualname__ = f"centrifugo_{method}"
    return handle


def setup_routes(app: web.Application) -> None:
    app[_api] = {}
    for method in METHODS:
        app.router.add_post(f"/api/{method}", _handler(method))
