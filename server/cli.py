"""The ``arena-realtime`` command.

::

    arena-realtime [serve]                         run the service (HOST, PORT from the environment)
    arena-realtime migrate                         apply database migrations and exit
    arena-realtime token --email E [--role R]      print an access token for E (user created if new)
    arena-realtime service-token [--name N]        print a token for a trusted backend
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from aiohttp import web

from handlers import keys
from handlers.principal import ROLES
from handlers.tokens import TokenService
from pubsub.broker import BrokerError
from server import lifecycle
from server.app import create_app
from server.logs import configure_logging
from server.settings import Settings, SettingsError, load_settings
from storage import users
from storage.db import create_pool
from storage.embedded import start_embedded
from storage.migrate import MigrationError, migrate

log = logging.getLogger("arena")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena-realtime", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the service (default)")
    sub.add_parser("migrate", help="apply database migrations and exit")
    token = sub.add_parser("token", help="print an access token for a user")
    token.add_argument("--email", required=True)
    token.add_argument("--role", choices=ROLES, default="buyer")
    service = sub.add_parser("service-token", help="print a token for a trusted backend")
    service.add_argument("--name", default="backend")
    service.add_argument("--ttl", type=int, default=365 * 24 * 3600, help="lifetime in seconds")
    return parser


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; shuts down gracefully."""
    if settings.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
            log.warning("uvloop not available; using the default event loop")
    app = create_app(settings)
    # Only for a real server: a test process creates many apps and must keep collecting them.
    app.on_startup.append(lifecycle.freeze_startup_objects)
    log.info(
        "starting",
        extra={"host": settings.host, "port": settings.port, "env": settings.env},
    )

    async def announce(app: web.Application) -> None:
        # Runs after the cleanup contexts, so the backends are known and ready.
        backends = app[keys.backends]
        log.info(
            "serving",
            extra={
                "url": f"http://{settings.host}:{settings.port}",
                "database": backends.get("database"),
                "broker": backends.get("broker"),
            },
        )

    app.on_startup.append(announce)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        print=lambda _: None,
    )
    log.info("stopped")


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
        url = embedded.url
    pool = await create_pool(
        url,
        min_size=1,
        max_size=2,
        connect_timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
    )
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool
    finally:
        await pool.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _migrate(settings: Settings) -> None:
    async with _database(settings):
        pass


async def _token(settings: Settings, email: str, role: str) -> str:
    async with _database(settings) as pool, pool.acquire() as conn:
        user = await users.get_or_create(conn, email, role)
        if user.role != role:
            user = await users.set_role(conn, user.id, role)
    return (
        TokenService(settings.handlers.auth).issue_access(str(user.id), user.role, user.email).token
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"arena-realtime: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    command = args.command or "serve"
    try:
        if command == "serve":
            serve(settings)
        elif command == "migrate":
            asyncio.run(_migrate(settings))
            log.info("database is up to date")
        elif command == "token":
            print(asyncio.run(_token(settings, args.email, args.role)))
        elif command == "service-token":
            print(TokenService(settings.handlers.auth).issue_service(args.name, args.ttl).token)
    except (MigrationError, BrokerError, OSError, asyncpg.PostgresError) as exc:
        # Expected operational failures (database or Redis down, port taken, bad migration)
        # get one clear line instead of a traceback; anything else still raises.
        log.error("cannot %s: %s", command, exc, extra={"error": type(exc).__name__})
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
