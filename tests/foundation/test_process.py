"""The real ``arena-realtime`` process: CLI tokens, graceful shutdown on SIGTERM/SIGINT, clear
startup errors, and the embedded PostgreSQL default that keeps data across restarts."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import orjson
import pytest

from tests.helpers import DEADLINE
from tests.processes import Service, cli, command, free_port, process_env


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    """Started services, killed at the end if a test left one running."""
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()


def start(services: list[Service], env: dict[str, str], folder: Path) -> Service:
    service = Service(env, folder)
    services.append(service)
    return service


async def authenticate(session: aiohttp.ClientSession, url: str, token: str) -> Any:
    ws = await session.ws_connect(f"{url}/ws")
    await ws.send_str(orjson.dumps({"id": 1, "type": "authenticate", "token": token}).decode())
    reply = orjson.loads((await ws.receive(timeout=DEADLINE)).data)
    assert reply.get("id") == 1
    assert "result" in reply, reply
    return ws, reply["result"]


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    for line in stderr.splitlines():
        entry = orjson.loads(line)  # every line is a JSON object
        assert {"time", "level", "logger", "message", "request_id"} <= set(entry)


async def test_cli_tokens_authenticate_on_ws_and_sigint_stops_cleanly(
    database_url: str, tmp_path: Path, session: aiohttp.ClientSession, services: list[Service]
) -> None:
    env = process_env(tmp_path / "data", DATABASE_URL=database_url, PORT=str(free_port()))
    user_token = await asyncio.to_thread(cli, "token", "--email", "Ann@Example.com", env=env)
    user_token_text = user_token.stdout.strip()
    service_token = (await asyncio.to_thread(cli, "service-token", "--name", "ci", env=env)).stdout
    service_token = service_token.strip()
    service = start(services, env, tmp_path)
    await service.wait_ready(session)

    ws, result = await authenticate(session, service.url, user_token_text)
    claims = jwt.decode(user_token_text, options={"verify_signature": False})
    assert result["user"] == {"id": claims["sub"], "role": "buyer"}
    assert claims["email"] == "ann@example.com"
    await ws.close()
    ws, result = await authenticate(session, service.url, service_token)
    assert result["user"]["role"] == "service"
    await ws.close()
    # a token in a URL must not show up in the process's logs
    async with session.get(f"{service.url}/nope?token={user_token_text}") as response:
        assert response.status == 404

    service.process.send_signal(signal.SIGINT)
    assert await service.wait_exit() == 0
    stderr = service.stderr
    assert_clean_stderr(stderr)
    assert user_token_text not in stderr
    assert service_token not in stderr
    messages = [orjson.loads(line)["message"] for line in stderr.splitlines()]
    assert "serving" in messages
    assert messages[-1] == "stopped"


async def test_sigterm_closes_websockets_with_1001_and_exits_zero(
    database_url: str, tmp_path: Path, session: aiohttp.ClientSession, services: list[Service]
) -> None:
    env = process_env(tmp_path / "data", DATABASE_URL=database_url, PORT=str(free_port()))
    token = (await asyncio.to_thread(cli, "service-token", env=env)).stdout.strip()
    service = start(services, env, tmp_path)
    await service.wait_ready(session)
    sockets = [(await authenticate(session, service.url, token))[0] for _ in range(2)]
    for ws in sockets:
        await ws.send_str('{"id": 2, "type": "subscribe", "channel": "alerts:shutdown"}')
        assert orjson.loads((await ws.receive(timeout=DEADLINE)).data)["id"] == 2

    service.process.send_signal(signal.SIGTERM)
    for ws in sockets:
        message = await ws.receive(timeout=30)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == 1001
        assert message.extra == "server shutting down"
    assert await service.wait_exit() == 0
    stderr = service.stderr
    assert_clean_stderr(stderr)
    closed = [
        orjson.loads(line)
        for line in stderr.splitlines()
        if orjson.loads(line)["message"] == "websockets closed for shutdown"
    ]
    assert closed[0]["count"] == 2
    # the port is free again: the listener is gone
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"{service.url}/health")


async def port_closed(port: int) -> None:
    """Wait until nothing accepts on ``port`` (the server stopped listening)."""
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
    pytest.fail("the server kept listening after SIGTERM")


async def test_sigterm_lets_an_in_flight_request_finish(
    database_url: str, tmp_path: Path, session: aiohttp.ClientSession, services: list[Service]
) -> None:
    env = process_env(tmp_path / "data", DATABASE_URL=database_url, PORT=str(free_port()))
    # The request is released only after the port closed, which a busy machine may take a
    # while to show: give it more than the default 10 s to finish.
    env["SHUTDOWN_TIMEOUT"] = "60"
    token = (await asyncio.to_thread(cli, "token", "--email", "slow@example.com", env=env)).stdout
    service = start(services, env, tmp_path)
    await service.wait_ready(session)
    # Hold a lock the request needs, so it is provably in flight when SIGTERM arrives.
    blocker = await asyncpg.connect(database_url)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        me = asyncio.create_task(
            session.get(
                f"{service.url}/api/v1/auth/me",
                headers={"Authorization": f"Bearer {token.strip()}"},
            )
        )
        for _ in range(600):
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting == 1, "the request never reached the database"
        service.process.send_signal(signal.SIGTERM)
        await port_closed(service.port)  # no new connections are accepted ...
        await locked.commit()
    finally:
        await blocker.close()
    response = await me  # ... but the request already in flight completes
    assert response.status == 200, await response.text()
    assert (await response.json())["email"] == "slow@example.com"
    assert await service.wait_exit() == 0
    assert_clean_stderr(service.stderr)


@pytest.mark.parametrize(
    ("variable", "url", "message"),
    [
        ("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere", "cannot serve"),
        ("REDIS_URL", "redis://127.0.0.1:1/0", "cannot serve: cannot reach Redis"),
        (
            "REDIS_URL",
            "redis+cluster://u:pw-not-logged@127.0.0.1:1",
            "cannot serve: cannot reach the Redis Cluster",
        ),
    ],
)
async def test_unreachable_backend_is_a_clear_startup_error(
    database_url: str, tmp_path: Path, variable: str, url: str, message: str
) -> None:
    env = process_env(tmp_path / "data", DATABASE_URL=database_url, PORT=str(free_port()))
    env[variable] = url
    done = await asyncio.to_thread(
        subprocess.run, [*command(), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert_clean_stderr(done.stderr)
    assert message in done.stderr
    assert "pw-not-logged" not in done.stderr


async def test_taken_port_is_a_clear_startup_error(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = process_env(tmp_path / "data", DATABASE_URL=database_url, PORT=str(port))
        done = await asyncio.to_thread(
            subprocess.run,
            [*command(), "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert_clean_stderr(done.stderr)
    assert "cannot serve" in done.stderr


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # The embedded server's Unix socket path must stay under ~100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="arena-emb-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
async def test_embedded_postgres_is_the_default_and_keeps_data(
    short_tmp: Path, session: aiohttp.ClientSession, services: list[Service]
) -> None:
    env = process_env(short_tmp / "data", PORT=str(free_port()))
    env.pop("JWT_SECRET")
    env.pop("SERVICE_SECRET")  # development: generated once into DATA_DIR
    service = start(services, env, short_tmp)
    await service.wait_ready(session)
    async with session.get(f"{service.url}/ready") as response:
        body = await response.json()
    assert response.status == 200, body
    assert body["database"] == {"ok": True, "backend": "embedded"}
    assert body["broker"] == {"ok": True, "backend": "memory"}
    # the CLI attaches to the running embedded server
    first = (await asyncio.to_thread(cli, "token", "--email", "keep@example.com", env=env)).stdout
    ws, result = await authenticate(session, service.url, first.strip())
    await ws.close()
    service.process.send_signal(signal.SIGTERM)
    assert await service.wait_exit() == 0
    stderr = service.stderr
    assert_clean_stderr(stderr)
    serving = next(
        orjson.loads(line)
        for line in stderr.splitlines()
        if orjson.loads(line)["message"] == "serving"
    )
    assert (serving["database"], serving["broker"]) == ("embedded", "memory")
    assert (short_tmp / "data" / "postgres" / "PG_VERSION").exists()

    # second start of the embedded server on the same DATA_DIR: the user is still there
    second = (await asyncio.to_thread(cli, "token", "--email", "keep@example.com", env=env)).stdout
    claims = jwt.decode(second.strip(), options={"verify_signature": False})
    assert claims["sub"] == result["user"]["id"]
    # and the development secrets were kept, so the first token still verifies
    assert jwt.get_unverified_header(first.strip())["kid"] == "k1"
    secrets = orjson.loads((short_tmp / "data" / "secrets.json").read_bytes())
    jwt.decode(
        first.strip(), secrets["JWT_SECRET"], algorithms=["HS256"], audience="arena-realtime"
    )
