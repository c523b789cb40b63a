"""Errors raised by the storage layer.

::

    StorageError
    ├── NotFound          no row matches (or the caller may not see it)
    ├── Conflict          a constraint or state rule refused the change
    └── StaleVersion      optimistic concurrency: the row changed since it was read

``UNAVAILABLE`` lists the exceptions that mean "the database cannot be reached right now";
handlers answer them with 503 so that senders retry.
"""

from __future__ import annotations

import asyncpg


class StorageError(Exception):
    """Base class of storage errors."""


class NotFound(StorageError):
    """No such row."""


class Conflict(StorageError):
    """The change breaks a rule (unique key, state machine)."""


class StaleVersion(StorageError):
    """The row's version is not the one the caller read."""


UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    TimeoutError,
)
