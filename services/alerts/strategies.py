"""Strategies (alert feeds): create, read, rename/share, delete, rotate their secrets, and find
the strategy of a webhook URL.

Only the owner (or an admin) may change, rotate or delete a strategy; users it is shared with
can read it and its alerts. Strategies the caller may not see are :class:`NotFound`, not
:class:`Forbidden`. Secrets are returned once, when made (create, rotate); the URL secret is
stored as a hash and the signing secret encrypted by :class:`SecretBox`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from uuid import UUID, uuid4

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.alerts.feed import IsoTime
from services.alerts.ingest import strategy_of_url_secret
from services.alerts.signatures import SecretBox, new_signing_secret, url_secret, url_secret_hash
from services.auth.principal import Principal
from services.channels import names, revocation
from services.channels.revocation import ControlPublisher
from services.errors import Forbidden, Invalid
from storage import strategies
from storage.errors import Conflict, NotFound

MAX_SHARES = 100


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
    model_config = ConfigDict(from_attributes=True)

    created_at: IsoTime
    expires_at: IsoTime | None = Field(description="null: current; else end of its grace")


class StrategySecretsOut(BaseModel):
    """Shown once, on create and rotate; store them in the sender (TradingView, your bot)."""

    webhook_url: str = Field(description="TradingView webhook URL (contains url_secret)")
    url_secret: str
    signing_secret: str = Field(description="Standard Webhooks secret, whsec_ + base64")
    signed_webhook_url: str


class StrategyOut(BaseModel):
    """A strategy as the API shows it. Fields that are not set are left out of the JSON
    (``shared_with`` for shared users, ``secret_generations`` and ``secrets`` where absent)."""

    id: UUID
    name: str
    owner_id: UUID
    access: Literal["owner", "shared", "admin"]
    channel: str = Field(description="WebSocket channel of the live feed")
    signed_webhook_url: str
    created_at: IsoTime
    updated_at: IsoTime
    version: int
    shared_with: list[UUID] | None = Field(default=None, description="owner and admins only")
    secret_generations: list[SecretGenerationOut] | None = None
    secrets: StrategySecretsOut | None = None


class StrategyList(BaseModel):
    items: list[StrategyOut]


@dataclass(frozen=True, slots=True)
class Secrets:
    """A fresh secret generation, in the clear (only ever returned once)."""

    url_secret: str
    signing_secret: str


def is_owner(strategy: strategies.Strategy, principal: Principal) -> bool:
    """Whether the caller owns the strategy."""
    return str(strategy.owner_id) == principal.user_id


def may_manage(strategy: strategies.Strategy, principal: Principal) -> bool:
    """Whether the caller may change the strategy (its owner or an admin/service)."""
    return is_owner(strategy, principal) or principal.is_privileged


def view(
    strategy: strategies.Strategy,
    principal: Principal,
    base_url: str,
    *,
    generations: list[strategies.SecretGeneration] | None = None,
    secrets: Secrets | None = None,
) -> StrategyOut:
    """The public representation; ``shared_with`` only for those who may change it."""
    owner = is_owner(strategy, principal)
    fields: dict[str, object] = {
        "id": strategy.id,
        "name": strategy.name,
        "owner_id": strategy.owner_id,
        "access": "owner" if owner else ("admin" if principal.is_privileged else "shared"),
        "channel": names.alerts(strategy.id),
        "signed_webhook_url": f"{base_url}/webhooks/alerts/{strategy.id}",
        "created_at": strategy.created_at,
        "updated_at": strategy.updated_at,
        "version": strategy.version,
    }
    if may_manage(strategy, principal):
        fields["shared_with"] = strategy.shared_with
    if generations is not None:
        fields["secret_generations"] = [
            SecretGenerationOut.model_validate(item) for item in generations
        ]
    if secrets is not None:
        fields["secrets"] = StrategySecretsOut(
            webhook_url=f"{base_url}/webhooks/tv/{secrets.url_secret}",
            url_secret=secrets.url_secret,
            signing_secret=secrets.signing_secret,
            signed_webhook_url=f"{base_url}/webhooks/alerts/{strategy.id}",
        )
    return StrategyOut.model_validate(fields)


def require_user(principal: Principal) -> None:
    """:class:`Forbidden` unless the caller is a user (services and such own nothing)."""
    try:
        UUID(principal.user_id)
    except ValueError:
        raise Forbidden("only users may own strategies") from None


async def load(
    pool: asyncpg.Pool, principal: Principal, strategy_id: UUID, *, write: bool
) -> strategies.Strategy:
    """The strategy if the caller may read it (or change it, with ``write``).

    Raises :class:`NotFound` for strategies the caller may not see and :class:`Forbidden` when
    a user it is shared with tries to change it.
    """
    async with pool.acquire() as conn:
        strategy = await strategies.get(conn, strategy_id)
    if principal.is_privileged or is_owner(strategy, principal):
        return strategy
    if principal.user_id in {str(user) for user in strategy.shared_with}:
        if write:
            raise Forbidden("only the strategy's owner may change it")
        return strategy
    raise NotFound("strategy")


async def create(
    pool: asyncpg.Pool, box: SecretBox, principal: Principal, name: str
) -> tuple[strategies.Strategy, Secrets]:
    """A new strategy owned by the caller, with its first secret generation."""
    require_user(principal)
    strategy_id = uuid4()
    made = Secrets(url_secret(), new_signing_secret())
    sealed = box.seal(strategy_id, made.signing_secret)
    async with pool.acquire() as conn:
        strategy = await strategies.create(
            conn, strategy_id, principal.user_id, name, url_secret_hash(made.url_secret), sealed
        )
    return strategy, made


async def list_visible(pool: asyncpg.Pool, principal: Principal) -> list[strategies.Strategy]:
    """The caller's own strategies and those shared with them, newest first."""
    try:
        UUID(principal.user_id)
    except ValueError:
        return []
    async with pool.acquire() as conn:
        return await strategies.list_visible(conn, principal.user_id)


async def generations(pool: asyncpg.Pool, strategy_id: UUID) -> list[strategies.SecretGeneration]:
    """Validity windows of the strategy's secret generations (never the secrets)."""
    async with pool.acquire() as conn:
        return await strategies.generations(conn, strategy_id)


async def update(
    pool: asyncpg.Pool,
    principal: Principal,
    strategy_id: UUID,
    body: UpdateBody,
    hub: ControlPublisher | None = None,
) -> strategies.Strategy:
    """Rename and/or replace the list of users the strategy is shared with; users it is no
    longer shared with lose their live subscriptions to its feed (on every node, via ``hub``)."""
    strategy = await load(pool, principal, strategy_id, write=True)
    shared = None
    if body.shared_with is not None:
        shared = list(dict.fromkeys(body.shared_with))
        if strategy.owner_id in shared:
            raise Invalid(
                "request validation failed",
                {"shared_with": ["the owner cannot be in shared_with"]},
            )
    try:
        async with pool.acquire() as conn:
            updated = await strategies.update(
                conn, strategy.id, name=body.name, shared_with=shared, expected_version=body.version
            )
    except Conflict:
        raise Invalid(
            "request validation failed", {"shared_with": ["names a user that does not exist"]}
        ) from None
    if shared is not None and {str(u) for u in strategy.shared_with} - {str(u) for u in shared}:
        await revocation.channel_changed(hub, names.alerts(strategy.id))
    return updated


async def delete(
    pool: asyncpg.Pool,
    principal: Principal,
    strategy_id: UUID,
    hub: ControlPublisher | None = None,
) -> None:
    """Delete the strategy with its secrets and alerts; live subscriptions to its feed end
    (on every node, via ``hub``)."""
    strategy = await load(pool, principal, strategy_id, write=True)
    async with pool.acquire() as conn:
        await strategies.delete(conn, strategy.id)
    await revocation.channel_changed(hub, names.alerts(strategy.id))


async def rotate(
    pool: asyncpg.Pool,
    box: SecretBox,
    principal: Principal,
    strategy_id: UUID,
    grace_seconds: int | None,
    *,
    max_grace: int,
) -> tuple[strategies.Strategy, Secrets, list[strategies.SecretGeneration]]:
    """Issue new secrets; the old ones stay valid for ``grace_seconds`` (default and limit:
    ``max_grace``)."""
    strategy = await load(pool, principal, strategy_id, write=True)
    grace = max_grace if grace_seconds is None else grace_seconds
    if grace > max_grace:
        raise Invalid(
            "request validation failed", {"grace_seconds": [f"must be at most {max_grace}"]}
        )
    made = Secrets(url_secret(), new_signing_secret())
    sealed = box.seal(strategy.id, made.signing_secret)
    async with pool.acquire() as conn:
        valid = await strategies.rotate(
            conn, strategy.id, url_secret_hash(made.url_secret), sealed, grace
        )
    # Committed: the next signed webhook reads the keys again (a revoked one fails at once).
    box.keys.forget(strategy.id)
    box.urls.forget(strategy.id)
    return strategy, made, valid


async def by_url_secret(
    pool: asyncpg.Pool, principal: Principal, secret: str
) -> strategies.Strategy:
    """The strategy a TradingView webhook URL secret belongs to, for its owner only: anyone
    else, and unknown, malformed or revoked secrets, get :class:`NotFound` (no oracle)."""
    async with pool.acquire() as conn:
        strategy_id = await strategy_of_url_secret(conn, secret)
        strategy = await strategies.get(conn, strategy_id)
    if not is_owner(strategy, principal):
        raise NotFound("strategy")
    return strategy
