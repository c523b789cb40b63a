"""Strategies (alert feeds) REST API.

* ``POST /api/v1/strategies`` ``{name}``: create; the reply carries the TradingView webhook URL
  (with its URL secret) and the Standard Webhooks signing secret, both shown this once;
* ``GET /api/v1/strategies``: the caller's own and shared strategies;
* ``GET`` / ``PATCH`` (``name``, ``shared_with``, optional ``version``) / ``DELETE``
  ``/api/v1/strategies/{id}``;
* ``POST /api/v1/strategies/{id}/rotate`` ``{grace_seconds?}``: new secrets; the previous ones
  keep working for ``WEBHOOK_ROTATION_GRACE`` seconds (or less, if asked: 0 revokes them now).

Only the owner (or an admin) may change, rotate or delete a strategy; users it is shared with
can read it and its alerts. Strategies the caller may not see are 404, not 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.paging import path_uuid
from handlers.validation import parse_body
from handlers.webhooks import ensure_secret_box
from services.alerts.signatures import new_signing_secret, url_secret, url_secret_hash
from services.auth.principal import Principal
from services.channels import names
from storage import strategies
from storage.errors import Conflict, NotFound

MAX_SHARES = 100
TAGS = ("strategies",)


def _name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        return _name(value)


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    shared_with: list[UUID] | None = Field(default=None, max_length=MAX_SHARES)
    version: int | None = Field(default=None, ge=1, strict=True)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return None if value is None else _name(value)


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(default=None, ge=0, strict=True)


class SecretGenerationOut(BaseModel):
    created_at: datetime
    expires_at: datetime | None = Field(description="null: current; else end of its grace")


class StrategySecretsOut(BaseModel):
    """Shown once, on create and rotate; store them in the sender (TradingView, your bot)."""

    webhook_url: str = Field(description="TradingView webhook URL (contains url_secret)")
    url_secret: str
    signing_secret: str = Field(description="Standard Webhooks secret, whsec_ + base64")
    signed_webhook_url: str


class StrategyOut(BaseModel):
    id: UUID
    name: str
    owner_id: UUID
    access: Literal["owner", "shared", "admin"]
    channel: str = Field(description="WebSocket channel of the live feed")
    signed_webhook_url: str
    created_at: datetime
    updated_at: datetime
    version: int
    shared_with: list[UUID] | None = Field(default=None, description="owner and admins only")
    secret_generations: list[SecretGenerationOut] | None = None
    secrets: StrategySecretsOut | None = None


class StrategyList(BaseModel):
    items: list[StrategyOut]


def _base(request: web.Request) -> str:
    return request.app[keys.config].http.public_base_url


def strategy_json(
    request: web.Request, strategy: strategies.Strategy, principal: Principal
) -> dict[str, Any]:
    """The public representation; ``shared_with`` only for those who may change it."""
    owner = str(strategy.owner_id) == principal.user_id
    data: dict[str, Any] = {
        "id": str(strategy.id),
        "name": strategy.name,
        "owner_id": str(strategy.owner_id),
        "access": "owner" if owner else ("admin" if principal.is_privileged else "shared"),
        "channel": names.alerts(strategy.id),
        "signed_webhook_url": f"{_base(request)}/webhooks/alerts/{strategy.id}",
        "created_at": strategy.created_at.isoformat(),
        "updated_at": strategy.updated_at.isoformat(),
        "version": strategy.version,
    }
    if owner or principal.is_privileged:
        data["shared_with"] = [str(user) for user in strategy.shared_with]
    return data


def _secrets_json(request: web.Request, strategy_id: UUID, url: str, signing: str) -> Any:
    return {
        "webhook_url": f"{_base(request)}/webhooks/tv/{url}",
        "url_secret": url,
        "signing_secret": signing,
        "signed_webhook_url": f"{_base(request)}/webhooks/alerts/{strategy_id}",
    }


def _owner_principal(principal: Principal) -> None:
    try:
        UUID(principal.user_id)
    except ValueError:
        raise ApiError(403, "only users may own strategies") from None


async def _load(request: web.Request, principal: Principal, *, write: bool) -> strategies.Strategy:
    strategy_id = path_uuid(request, "strategy_id")
    async with request.app[keys.pool].acquire() as conn:
        strategy = await strategies.get(conn, strategy_id)
    if principal.is_privileged or str(strategy.owner_id) == principal.user_id:
        return strategy
    if principal.user_id in {str(user) for user in strategy.shared_with}:
        if write:
            raise ApiError(403, "only the strategy's owner may change it")
        return strategy
    raise NotFound("strategy")


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
    _owner_principal(principal)
    body = await parse_body(request, CreateBody)
    strategy_id = uuid4()
    url, signing = url_secret(), new_signing_secret()
    sealed = ensure_secret_box(request.app).seal(strategy_id, signing)
    async with request.app[keys.pool].acquire() as conn:
        strategy = await strategies.create(
            conn, strategy_id, principal.user_id, body.name, url_secret_hash(url), sealed
        )
    data = strategy_json(request, strategy, principal)
    data["secrets"] = _secrets_json(request, strategy_id, url, signing)
    return json_response(data, status=201, headers={"Cache-Control": "no-store"})


@describe(summary="List your and shared strategies", tags=TAGS, responses={200: StrategyList})
async def list_strategies(request: web.Request) -> web.Response:
    """The caller's own strategies and those shared with them, newest first."""
    principal = require_principal(request)
    try:
        UUID(principal.user_id)
    except ValueError:
        return json_response({"items": []})
    async with request.app[keys.pool].acquire() as conn:
        items = await strategies.list_visible(conn, principal.user_id)
    return json_response({"items": [strategy_json(request, s, principal) for s in items]})


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
    strategy = await _load(request, principal, write=False)
    data = strategy_json(request, strategy, principal)
    if "shared_with" in data:
        async with request.app[keys.pool].acquire() as conn:
            generations = await strategies.generations(conn, strategy.id)
        data["secret_generations"] = [
            {
                "created_at": item.created_at.isoformat(),
                "expires_at": item.expires_at.isoformat() if item.expires_at else None,
            }
            for item in generations
        ]
    return json_response(data)


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
    strategy = await _load(request, principal, write=True)
    body = await parse_body(request, UpdateBody)
    shared = None
    if body.shared_with is not None:
        shared = list(dict.fromkeys(body.shared_with))
        if strategy.owner_id in shared:
            raise ApiError(
                400,
                "request validation failed",
                errors={"shared_with": ["the owner cannot be in shared_with"]},
            )
    try:
        async with request.app[keys.pool].acquire() as conn:
            updated = await strategies.update(
                conn,
                strategy.id,
                name=body.name,
                shared_with=shared,
                expected_version=body.version,
            )
    except Conflict:
        raise ApiError(
            400,
            "request validation failed",
            errors={"shared_with": ["names a user that does not exist"]},
        ) from None
    return json_response(strategy_json(request, updated, principal))


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
    strategy = await _load(request, principal, write=True)
    async with request.app[keys.pool].acquire() as conn:
        await strategies.delete(conn, strategy.id)
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
    strategy = await _load(request, principal, write=True)
    body = RotateBody()
    if request.can_read_body:
        body = await parse_body(request, RotateBody)
    limit = request.app[keys.config].webhook.rotation_grace
    grace = limit if body.grace_seconds is None else body.grace_seconds
    if grace > limit:
        raise ApiError(
            400,
            "request validation failed",
            errors={"grace_seconds": [f"must be at most {limit}"]},
        )
    url, signing = url_secret(), new_signing_secret()
    sealed = ensure_secret_box(request.app).seal(strategy.id, signing)
    async with request.app[keys.pool].acquire() as conn:
        generations = await strategies.rotate(
            conn, strategy.id, url_secret_hash(url), sealed, grace
        )
    data = strategy_json(request, strategy, principal)
    data["secrets"] = _secrets_json(request, strategy.id, url, signing)
    data["secret_generations"] = [
        {
            "created_at": item.created_at.isoformat(),
            "expires_at": item.expires_at.isoformat() if item.expires_at else None,
        }
        for item in generations
    ]
    return json_response(data, headers={"Cache-Control": "no-store"})


def setup_routes(app: web.Application) -> None:
    ensure_secret_box(app)
    app.router.add_post("/api/v1/strategies", create_strategy)
    app.router.add_get("/api/v1/strategies", list_strategies)
    app.router.add_get("/api/v1/strategies/{strategy_id}", get_strategy)
    app.router.add_patch("/api/v1/strategies/{strategy_id}", update_strategy)
    app.router.add_delete("/api/v1/strategies/{strategy_id}", delete_strategy)
    app.router.add_post("/api/v1/strategies/{strategy_id}/rotate", rotate_secrets)
