"""Two instances sharing PostgreSQL and Redis: logout and limits reach across them."""

from __future__ import annotations

from typing import Any

from handlers import keys
from server.app import create_app
from services.realtime.codecs.arena import (
    CLOSE_FORBIDDEN,
    CLOSE_RATE_LIMITED,
)
from tests.auth.flows import closed_with, sign_in
from tests.helpers import connect, make_user, request, send


async def test_logout_on_one_instance_closes_websockets_on_the_other(
    redis_settings: Any, aiohttp_client: Any
) -> None:
    one = await aiohttp_client(create_app(redis_settings))
    two = await aiohttp_client(create_app(redis_settings))
    session = await sign_in(one, "cluster@example.com")
    ws = await connect(two, session["access_token"])
    _, other_token = await make_user(two)
    bystander = await connect(two, other_token)
    resp = await one.post("/api/v1/auth/logout", json={"refresh_token": session["refresh_token"]})
    assert resp.status == 204
    await closed_with(ws, CLOSE_FORBIDDEN)
    assert "result" in await request(bystander, "ping")
    # the family is revoked for every instance: it lives in PostgreSQL
    resp = await two.post("/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert resp.status == 401
    await bystander.close()


async def test_per_user_command_limit_spans_instances(
    make_settings: Any, redis_url: str, redis_prefix: str, aiohttp_client: Any
) -> None:
    settings = make_settings(
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        WS_USER_COMMAND_BURST="4",
        WS_USER_COMMAND_RATE="1",
    )
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    assert one.server.app[keys.rate_limiter].name == "redis"
    _, token = await make_user(one)
    a, b = await connect(one, token), await connect(two, token)
    for _ in range(2):
        assert "result" in await request(a, "ping")
        assert "result" in await request(b, "ping")
    # 20 more exceed the shared burst even if a busy machine took seconds so far (it refills
    # one per second); each connection alone would allow 100
    for _ in range(20):
        await send(b, "ping")
    await closed_with(b, CLOSE_RATE_LIMITED)
    await a.close()
