"""Strategies (alert feeds) REST API (HTTP only; the logic is in
:mod:`services.alerts.strategies`).

* ``POST /api/v1/strategies`` ``{name}``: create; the reply carries the TradingView webhook URL
  (with its URL secret) and the Standard Webhooks signing secret, both shown this once;
* ``GET /api/v1/strategies``: the caller's own and shared strategies;
* ``GET /api/v1/strategies/by-secret/{secret}``: which of your strategies a webhook URL
  belongs to (owner only, 404 otherwise; the secret is never returned, logged or a label);
* ``GET`` / ``PATCH`` (``name``, ``shared_with``, optional ``version``) / ``DELETE``
  ``/api/v1/strategies/{id}``;
* ``POST /api/v1/strategies/{id}/rotate`` ``{grace_seconds?}``: new secrets; the previous ones
  keep working for ``WEBHOOK_ROTATION_GRACE`` seconds (or less, if asked: 0 revokes them now).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import json_response
from handlers.openapi import describe
from handlers.paging import path_uuid
from handlers.validation import parse_body
from services.alerts import strategies as service
from services.alerts.strategies import (
    CreateBody,
    RotateBody,
    StrategyList,
    StrategyOut,
    UpdateBody,
)

TAGS = ("strategies",)
#: Replies that carry secrets must not be stored by any cache.
_NO_STORE = {"Cache-Control": "no-store"}


def _base(request: web.Request) -> str:
    return request.app[keys.config].http.public_base_url


def _json(out: StrategyOut) -> dict[str, Any]:
    data: dict[str, Any] = out.model_dump(mode="json", exclude_unset=True)
    return data


@describe(
    summary="Create a strategy (alert feed)",
    tags=TAGS,
    body=CreateBody,
    responses={201: StrategyOut},
    errors=(403,),
)
async def create_strategy(request: web.Request) -> web.Response:
    """Create a strategy owned by the caller; 201 with its secrets (shown only here)."""
    principal = require_principal(request)
    service.require_user(principal)
    body = await parse_body(request, CreateBody)
    strategy, secrets = await service.create(
        request.app[keys.pool], request.app[keys.secret_box], principal, body.name
    )
    out = service.view(strategy, principal, _base(request), secrets=secrets)
    return json_response(_json(out), status=201, headers=_NO_STORE)


@describe(summary="List your and shared strategies", tags=TAGS, responses={200: StrategyList})
async def list_strategies(request: web.Request) -> web.Response:
    """The caller's own strategies and those shared with them, newest first."""
    principal = require_principal(request)
    items = await service.list_visible(request.app[keys.pool], principal)
    base = _base(request)
    return json_response({"items": [_json(service.view(s, principal, base)) for s in items]})


@describe(
    summary="Find your strategy by its webhook URL secret",
    tags=TAGS,
    responses={200: StrategyOut},
    errors=(404,),
)
async def strategy_by_secret(request: web.Request) -> web.Response:
    """The strategy whose TradingView webhook URL ends in ``secret``, for its owner; anyone
    else, and unknown or revoked secrets, get 404. The reply never contains a secret."""
    principal = require_principal(request)
    strategy = await service.by_url_secret(
        request.app[keys.pool], principal, request.match_info["secret"]
    )
    out = service.view(strategy, principal, _base(request))
    return json_response(_json(out), headers=_NO_STORE)


@describe(
    summary="Read a strategy",
    tags=TAGS,
    responses={200: StrategyOut},
    errors=(404,),
    path_formats={"strategy_id": "uuid"},
)
async def get_strategy(request: web.Request) -> web.Response:
    """One strategy, with the validity windows of its secret generations (never secrets)."""
    principal = require_principal(request)
    pool = request.app[keys.pool]
    strategy = await service.load(pool, principal, path_uuid(request, "strategy_id"), write=False)
    generations = None
    if service.may_manage(strategy, principal):
        generations = await service.generations(pool, strategy.id)
    out = service.view(strategy, principal, _base(request), generations=generations)
    return json_response(_json(out))


@describe(
    summary="Rename or share a strategy",
    tags=TAGS,
    body=UpdateBody,
    responses={200: StrategyOut},
    errors=(403, 404, 412),
    path_formats={"strategy_id": "uuid"},
)
async def update_strategy(request: web.Request) -> web.Response:
    """Rename and/or replace the list of users the strategy is shared with."""
    principal = require_principal(request)
    pool = request.app[keys.pool]
    strategy_id = path_uuid(request, "strategy_id")
    await service.load(pool, principal, strategy_id, write=True)
    body = await parse_body(request, UpdateBody)
    updated = await service.update(pool, principal, strategy_id, body, request.app[keys.hub])
    return json_response(_json(service.view(updated, principal, _base(request))))


@describe(
    summary="Delete a strategy and its alerts",
    tags=TAGS,
    responses={204: None},
    errors=(403, 404),
    path_formats={"strategy_id": "uuid"},
)
async def delete_strategy(request: web.Request) -> web.Response:
    """Delete the strategy with its secrets and alerts; its webhooks answer 404 from now on."""
    principal = require_principal(request)
    await service.delete(
        request.app[keys.pool], principal, path_uuid(request, "strategy_id"), request.app[keys.hub]
    )
    return web.Response(status=204)


@describe(
    summary="Rotate a strategy's webhook secrets",
    tags=TAGS,
    body=RotateBody,
    responses={200: StrategyOut},
    errors=(403, 404),
    path_formats={"strategy_id": "uuid"},
)
async def rotate_secrets(request: web.Request) -> web.Response:
    """Issue new secrets; the old ones stay valid for the grace period."""
    principal = require_principal(request)
    pool = request.app[keys.pool]
    strategy_id = path_uuid(request, "strategy_id")
    await service.load(pool, principal, strategy_id, write=True)
    body = RotateBody()
    if request.can_read_body:
        body = await parse_body(request, RotateBody)
    strategy, secrets, generations = await service.rotate(
        pool,
        request.app[keys.secret_box],
        principal,
        strategy_id,
        body.grace_seconds,
        max_grace=request.app[keys.config].webhook.rotation_grace,
    )
    out = service.view(
        strategy, principal, _base(request), generations=generations, secrets=secrets
    )
    return json_response(_json(out), headers=_NO_STORE)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/strategies", create_strategy)
    app.router.add_get("/api/v1/strategies", list_strategies)
    app.router.add_get("/api/v1/strategies/by-secret/{secret}", strategy_by_secret)
    app.router.add_get("/api/v1/strategies/{strategy_id}", get_strategy)
    app.router.add_patch("/api/v1/strategies/{strategy_id}", update_strategy)
    app.router.add_delete("/api/v1/strategies/{strategy_id}", delete_strategy)
    app.router.add_post("/api/v1/strategies/{strategy_id}/rotate", rotate_secrets)
