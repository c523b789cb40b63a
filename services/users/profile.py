"""The caller's profile (``/api/v1/users/me``): name, company, notification settings.

The notification settings are stored per user for the marketplace clients, which decide from
them whether to e-mail the user when a proposal arrives (``email_on_proposal``) or changes
status (``email_on_status``); the service itself only stores and returns them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from services.auth.principal import Principal
from services.errors import Forbidden, Invalid
from storage import users
from storage.users import Profile

# PostgreSQL text cannot hold NUL characters; refuse them with a 400 instead of a 500.
_NO_NUL = r"^[^\x00]*$"
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=_NO_NUL)
]
Company = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_NO_NUL)
]


class NotificationSettings(BaseModel):
    """Which e-mails the user wants (both on unless turned off)."""

    email_on_proposal: bool = Field(
        default=True, description="E-mail me when a proposal arrives on one of my requests"
    )
    email_on_status: bool = Field(
        default=True, description="E-mail me when one of my proposals changes status"
    )


class NotificationsPatch(BaseModel):
    """The settings to change; the others keep their value."""

    model_config = ConfigDict(extra="forbid")

    email_on_proposal: bool | None = Field(default=None, strict=True)
    email_on_status: bool | None = Field(default=None, strict=True)


class ProfilePatch(BaseModel):
    """Body of ``PATCH /api/v1/users/me``: only the fields given change; ``null`` clears
    ``name`` or ``company``."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    company: Company | None = None
    notifications: NotificationsPatch | None = None

    @model_validator(mode="after")
    def _notifications_not_null(self) -> ProfilePatch:
        if "notifications" in self.model_fields_set and self.notifications is None:
            raise ValueError("notifications may not be null")
        return self


class ProfileOut(BaseModel):
    """The caller's account and profile."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID
    email: str
    role: str
    name: str | None
    company: str | None
    notifications: NotificationSettings
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def json_of(cls, row: Profile) -> dict[str, Any]:
        """The JSON-ready form of a stored profile (defaults filled in)."""
        return cls.model_validate(row, from_attributes=True).model_dump(mode="json")


def _account_id(principal: Principal) -> str:
    if principal.is_service:
        raise Forbidden("a service token has no profile")
    return principal.user_id


async def get_profile(pool: asyncpg.Pool, principal: Principal) -> Profile:
    """The caller's profile."""
    async with pool.acquire() as conn:
        return await users.get_profile(conn, _account_id(principal))


async def update_profile(pool: asyncpg.Pool, principal: Principal, body: ProfilePatch) -> Profile:
    """Apply the fields present in ``body``."""
    user_id = _account_id(principal)
    changes: dict[str, Any] = {}
    for field in ("name", "company"):
        if field in body.model_fields_set:
            changes[field] = getattr(body, field)
    if body.notifications is not None:
        settings = body.notifications.model_dump(exclude_none=True)
        if settings:
            changes["notifications"] = settings
    if not changes:
        raise Invalid("nothing to change: send at least one field")
    async with pool.acquire() as conn:
        return await users.update_profile(conn, user_id, changes)
