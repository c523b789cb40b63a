"""The ``arena-realtime`` command.

::

    arena-realtime [serve] [--workers N]           run the service (HOST, PORT from the environment)
    arena-realtime migrate                         apply database migrations and exit
    arena-realtime migrate --status                list applied and pending migrations
    arena-realtime seed-demo                       fill an empty database with demo data
    arena-realtime token --email E [--role R]      print an access token for E (user created if new)
    arena-realtime service-token [--name N]        print a token for a trusted backend
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import asyncpg
from aiohttp import web

from handlers import keys
from pubsub.broker import BrokerError
from server import lifecycle
from server.app import create_app
from server.logs import configure_logging
from server.settings import Settings, SettingsError, load_settings
from server.workers import (
    Supervisor,
    WorkersRefused,
    check_workers,
    worker_command,
    worker_index,
)
from services.auth.principal import ROLES
from services.auth.tokens import TokenService
from services.demo import DemoSummary, NotEmpty, seed_demo
from storage import users
from storage.db import open_database
from storage.embedded import start_embedded
from storage.migrate import MigrationError, migration_status

log = logging.getLogger("arena")

#: the states ``migrate --status`` reports, in the order of its summary line
STATUSES = ("applied", "pending", "edited", "unknown")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena-realtime", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_cmd = sub.add_parser("serve", help="run the service (default)")
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (default: WORKERS or 1; more needs REDIS_URL)",
    )
    migrate_cmd = sub.add_parser("migrate", help="apply database migrations and exit")
    migrate_cmd.add_argument(
        "--status", action="store_true", help="list applied and pending migrations, change nothing"
    )
    sub.add_parser("seed-demo", help="fill an empty database with a realistic demo")
    token = sub.add_parser("token", help="print an access token for a user")
    token.add_argument("--email", required=True)
    token.add_argument("--role", choices=ROLES, default="buyer")
    service = sub.add_parser("service-token", help="print a token for a trusted backend")
    service.add_argument("--name", default="backend")
    service.add_argument("--ttl", type=int, default=365 * 24 * 3600, help="lifetime in seconds")
    return parser


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; returns the new limit.

    Every WebSocket is a file descriptor: the usual soft limit (1,024) would refuse connections
    long before the memory or CPU runs out. The hard limit is the operator's to set.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY
            return soft
    return hard


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; shuts down gracefully."""
    open_files = raise_open_files_limit()
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
                "open_files_limit": open_files,
            },
        )

    app.on_startup.append(announce)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        backlog=settings.listen_backlog,
        access_log=None,
        print=lambda _: None,
        # Under the --workers supervisor every worker binds the same port.
        reuse_port=worker_index() is not None or None,
    )
    log.info("stopped")


def serve_workers(settings: Settings, workers: int) -> int:
    """Run ``workers`` worker processes on one port under a supervisor (see server.workers)."""
    check_workers(settings, workers)
    env = dict(os.environ)
    embedded = None
    if settings.database_url is None:
        # One embedded server for all workers, started (and stopped) by the supervisor.
        embedded = start_embedded(settings.data_dir)
        env["DATABASE_URL"] = embedded.url
    try:
        asyncio.run(_migrate(replace(settings, database_url=env.get("DATABASE_URL"))))
        return Supervisor(settings, workers, worker_command(), env).run()
    finally:
        if embedded is not None:
            embedded.stop()


@asynccontextmanager
async def _database(settings: Settings, *, apply: bool = True) -> AsyncIterator[asyncpg.Pool]:
    """A small pool for a CLI command (migrations applied unless ``apply`` is false)."""
    async with open_database(
        settings.database_url,
        settings.data_dir,
        max_size=2,
        connect_timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        apply_migrations=apply,
    ) as database:
        yield database.pool


async def _migrate(settings: Settings) -> None:
    async with _database(settings):
        pass


async def _migration_status(settings: Settings) -> str:
    async with _database(settings, apply=False) as pool, pool.acquire() as conn:
        states = await migration_status(conn)
    lines = []
    for state in states:
        when = state.applied_at.isoformat(timespec="seconds") if state.applied_at else ""
        lines.append(f"{state.status:<8} {when:<25} {state.name}")
    counts = {status: sum(s.status == status for s in states) for status in STATUSES}
    lines.append(
        ", ".join(
            f"{n} {status}" for status, n in counts.items() if n or status in {"applied", "pending"}
        )
    )
    return "\n".join(lines)


async def _seed_demo(settings: Settings) -> DemoSummary:
    async with _database(settings) as pool, pool.acquire() as conn:
        return await seed_demo(
            conn, settings.handlers.auth.service_secret, settings.handlers.http.public_base_url
        )


def _demo_text(summary: DemoSummary) -> str:
    return "\n".join(
        [
            f"demo data created: {len(summary.buyers) + len(summary.vendors) + 1} users, "
            f"{summary.requests} requests, {summary.proposals} proposals, "
            f"{summary.strategies} strategy with {summary.alerts} alerts "
            f"({summary.events} live events queued for the outbox relay)",
            f"buyers:  {', '.join(summary.buyers)}",
            f"vendors: {', '.join(summary.vendors)}",
            f"admin:   {summary.admin}",
            "sign in at /login with any of them (magic link), or: "
            "arena-realtime token --email <address> --role <role>",
            f"TradingView webhook of the demo strategy: {summary.tradingview_url}",
        ]
    )


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
            workers = getattr(args, "workers", None) or settings.workers
            if workers == 1 or worker_index() is not None:
                serve(settings)
            else:
                return serve_workers(settings, workers)
        elif command == "migrate" and args.status:
            print(asyncio.run(_migration_status(settings)))
        elif command == "migrate":
            asyncio.run(_migrate(settings))
            log.info("database is up to date")
        elif command == "seed-demo":
            print(_demo_text(asyncio.run(_seed_demo(settings))))
        elif command == "token":
            print(asyncio.run(_token(settings, args.email, args.role)))
        elif command == "service-token":
            print(TokenService(settings.handlers.auth).issue_service(args.name, args.ttl).token)
    except WorkersRefused as exc:
        print(f"arena-realtime: {exc}", file=sys.stderr)
        return 2
    except NotEmpty as exc:
        log.error("cannot %s: %s", command, exc)
        return 1
    except (MigrationError, BrokerError, OSError, asyncpg.PostgresError) as exc:
        # Expected operational failures (database or Redis down, port taken, bad migration)
        # get one clear line instead of a traceback; anything else still raises.
        log.error("cannot %s: %s", command, exc, extra={"error": type(exc).__name__})
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
