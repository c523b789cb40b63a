"""Users: looked up and created by e-mail address."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from storage.errors import NotFound


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    email: str
    role: str
    created_at: datetime
    last_login_at: datetime | None


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["email"], row["role"], row["created_at"], row["last_login_at"])


async def get_or_create(conn: asyncpg.Connection, email: str, role: str = "buyer") -> User:
    """The user with ``email`` (lower-cased), created with ``role`` if new.

    An existing user keeps their role; use :func:`set_role` to change it.
    """
    row = await conn.fetchrow(
        """
        INSERT INTO users (email, role) VALUES (lower($1), $2)
        ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email
        RETURNING id, email, role, created_at, last_login_at
        """,
        email,
        role,
    )
    assert row is not None
    return _user(row)


async def get(conn: asyncpg.Connection, user_id: UUID | str) -> User:
    """The user with ``user_id``; raises :class:`NotFound`."""
    row = await conn.fetchrow(
        "SELECT id, email, role, created_at, last_login_at FROM users WHERE id = $1::uuid",
        str(user_id),
    )
    if row is None:
        raise NotFound("user")
    return _user(row)


async def set_role(conn: asyncpg.Connection, user_id: UUID | str, role: str) -> User:
    """Change a user's role; raises :class:`NotFound`."""
    row = await conn.fetchrow(
        "UPDATE users SET role = $2 WHERE id = $1::uuid "
        "RETURNING id, email, role, created_at, last_login_at",
        str(user_id),
        role,
    )
    if row is None:
        raise NotFound("user")
    return _user(row)


_PROFILE_COLUMNS = "id, email, role, name, company, notifications, created_at, last_login_at"


@dataclass(frozen=True, slots=True)
class Profile:
    """A user with their profile (migration 0007): ``notifications`` holds the stored settings
    only (absent keys take the defaults of ``services.users.profile``)."""

    id: UUID
    email: str
    role: str
    name: str | None
    company: str | None
    notifications: dict[str, Any]
    created_at: datetime
    last_login_at: datetime | None


async def get_profile(conn: asyncpg.Connection, user_id: UUID | str) -> Profile:
    """The profile of ``user_id``; raises :class:`NotFound`."""
    row = await conn.fetchrow(
        f"SELECT {_PROFILE_COLUMNS} FROM users WHERE id = $1::uuid",  # noqa: S608
        str(user_id),
    )
    if row is None:
        raise NotFound("user")
    return Profile(**dict(row))


#: Profile columns :func:`update_profile` may change.
PROFILE_FIELDS = frozenset({"name", "company", "notifications"})


async def update_profile(
    conn: asyncpg.Connection, user_id: UUID | str, changes: Mapping[str, Any]
) -> Profile:
    """Set the given profile columns (``notifications`` is merged into the stored object);
    raises :class:`NotFound`."""
    unknown = set(changes) - PROFILE_FIELDS
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    args: list[Any] = [str(user_id)]
    sets = []
    for column, value in changes.items():
        args.append(value)
        if column == "notifications":
            sets.append(f"notifications = notifications || ${len(args)}::jsonb")
        else:
            sets.append(f"{column} = ${len(args)}")
    row = await conn.fetchrow(
        f"UPDATE users SET {', '.join(sets)} WHERE id = $1::uuid "  # noqa: S608
        f"RETURNING {_PROFILE_COLUMNS}",
        *args,
    )
    if row is None:
        raise NotFound("user")
    return Profile(**dict(row))
