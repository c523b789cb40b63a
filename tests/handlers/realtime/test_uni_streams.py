"""Centrifugo's unidirectional transports with the exact pushes of its protocol:
``POST /connection/uni_http_stream`` (one JSON push per line) and ``/connection/uni_sse``
(``GET ?cf_connect=`` or ``POST``; each push is an event's ``data:``)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from handlers import keys
from pubsub.redis_broker import RedisBroker
from pubsub.redis_pubsub import ReconnectPolicy
from server.app import create_app
from services.channels.revocation import unsubscribe_user
from services.realtime.errors import UNSUBSCRIBE_REVOKED
from tests.handlers.realtime.sse_client import data_of, ended, next_data_event, next_json_line
from tests.handlers.realtime.test_sse import publish
from tests.helpers import make_user
from tests.pubsub.support import kill_pubsub


async def test_http_stream_connect_push_then_publications(client: TestClient) -> None:
    user_id, token = await make_user(client)
    channel = f"user:{user_id}"
    body = {"token": token, "name": "curl", "subs": {channel: {}}}
    resp = await client.post("/connection/uni_http_stream", json=body)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    connect = await next_json_line(resp)
    push = connect["connect"]
    epoch = push["subs"][channel]["epoch"]
    assert push["client"] == push["session"]
    assert push["expires"] is True
    assert push["ttl"] > 0
    assert push["ping"] == 25
    assert push["subs"] == {
        channel: {"recoverable": True, "positioned": True, "offset": 0, "epoch": epoch}
    }
    await publish(client, channel, {"input": 1})
    await publish(client, channel, {"input": 2})
    assert await next_json_line(resp) == {
        "channel": channel,
        "pub": {"data": {"input": 1}, "offset": 1},
    }
    assert await next_json_line(resp) == {
        "channel": channel,
        "pub": {"data": {"input": 2}, "offset": 2},
    }
    hub = client.app[keys.hub]
    await unsubscribe_user(hub, user_id, channel, UNSUBSCRIBE_REVOKED, "access revoked")
    assert await next_json_line(resp) == {
        "channel": channel,
        "unsubscribe": {"code": 2000, "reason": "access revoked"},
    }
    resp.close()


async def test_recovery_through_subs(client: TestClient) -> None:
    _, token = await make_user(client, "admin")
    for i in range(1, 4):
        await publish(client, "alerts:uni", {"i": i})
    epoch = (await client.app[keys.hub].position("alerts:uni")).epoch
    subs = {"alerts:uni": {"recover": True, "offset": 1, "epoch": epoch}}
    resp = await client.post("/connection/uni_http_stream", json={"token": token, "subs": subs})
    connect = await next_json_line(resp)
    assert connect["connect"]["subs"]["alerts:uni"] == {
        "recoverable": True,
        "positioned": True,
        "offset": 3,
        "epoch": epoch,
        "was_recovering": True,
        "recovered": True,
        "publications": [{"data": {"i": 2}, "offset": 2}, {"data": {"i": 3}, "offset": 3}],
    }
    await publish(client, "alerts:uni", {"i": 4})
    assert await next_json_line(resp) == {
        "channel": "alerts:uni",
        "pub": {"data": {"i": 4}, "offset": 4},
    }
    resp.close()
    # another epoch: not recovered, never a silent gap
    subs["alerts:uni"]["epoch"] = "other"
    resp = await client.post("/connection/uni_http_stream", json={"token": token, "subs": subs})
    sub = (await next_json_line(resp))["connect"]["subs"]["alerts:uni"]
    assert (sub["was_recovering"], sub["recovered"], sub["offset"]) == (True, False, 4)
    resp.close()


async def test_refusals_on_the_stream(client: TestClient) -> None:
    user_id, token = await make_user(client)
    resp = await client.post("/connection/uni_http_stream", json={"token": "nope"})
    assert resp.status == 200
    line = await next_json_line(resp)
    assert line["disconnect"]["code"] == 3500  # invalid token: do not reconnect
    assert await ended(resp)
    subs = {f"user:{user_id}": {}, "user:someone-else": {}, "nonamespace": {}}
    resp = await client.post("/connection/uni_http_stream", json={"token": token, "subs": subs})
    connect = await next_json_line(resp)
    assert list(connect["connect"]["subs"]) == [f"user:{user_id}"]
    refused = [await next_json_line(resp), await next_json_line(resp)]
    assert refused[0] == {
        "channel": "user:someone-else",
        "unsubscribe": {"code": 2000, "reason": "you may not subscribe to this channel"},
    }
    assert refused[1]["channel"] == "nonamespace"
    assert refused[1]["unsubscribe"]["code"] == 2000
    resp.close()


async def test_malformed_connect_requests_are_400(client: TestClient) -> None:
    for body in (
        b"{",
        b"[]",
        b'{"token": 1}',
        b'{"subs": []}',
        b'{"subs": {"a:b": {"recover": true, "offset": -1}}}',
        b'{"subs": {"a:b": 1}}',
    ):
        resp = await client.post("/connection/uni_http_stream", data=body)
        assert resp.status == 400, body
        assert (await resp.json())["status_code"] == 400
    resp = await client.get("/connection/uni_sse", params={"cf_connect": "{"})
    assert resp.status == 400
    resp = await client.post("/connection/uni_http_stream", data=b" " * 70000)
    assert resp.status == 413
    resp = await client.get("/connection/uni_http_stream")
    assert resp.status == 405


async def test_uni_sse_get_and_post(client: TestClient) -> None:
    user_id, token = await make_user(client)
    channel = f"user:{user_id}"
    connect = orjson.dumps({"token": token, "subs": {channel: {}}}).decode()
    get = await client.get("/connection/uni_sse", params={"cf_connect": connect})
    post = await client.post("/connection/uni_sse", data=connect)
    for resp in (get, post):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["X-Accel-Buffering"] == "no"
        event = await next_data_event(resp)
        assert len(event) == 1
        assert event[0].startswith('data: {"connect":')
        assert list(data_of(event)["connect"]["subs"]) == [channel]
    await publish(client, channel, {"x": 1})
    for resp in (get, post):
        assert await next_data_event(resp) == [
            f'data: {{"channel":"{channel}","pub":{{"data":{{"x":1}},"offset":1}}}}'
        ]
        resp.close()


async def test_uni_pings(aiohttp_client: Any, make_settings: Any) -> None:
    from server.app import create_app

    client = await aiohttp_client(create_app(make_settings(WS_HEARTBEAT="1")))
    _, token = await make_user(client)
    resp = await client.post("/connection/uni_http_stream", json={"token": token})
    assert (await next_json_line(resp))["connect"]["ping"] == 1
    assert await next_json_line(resp) == {}
    resp.close()


async def test_cors_preflight_of_the_post_transports(client: TestClient) -> None:
    """A page of an allowed origin posting the connect request as JSON is preflighted first:
    allowed origins may POST with Content-Type, and the stream itself carries the origin; other
    origins (or methods) get a 403 without CORS headers, which the browser enforces."""
    origin = "http://localhost:8080"  # in the development ALLOWED_ORIGINS
    for path in ("/connection/uni_http_stream", "/connection/uni_sse"):
        ok = await client.options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert ok.status == 204, await ok.text()
        assert ok.headers["Access-Control-Allow-Origin"] == origin
        assert ok.headers["Access-Control-Allow-Methods"] == "POST"
        assert ok.headers["Access-Control-Allow-Headers"] == "Content-Type"
        for headers in (
            {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            {"Origin": origin, "Access-Control-Request-Method": "DELETE"},
        ):
            refused = await client.options(path, headers=headers)
            assert refused.status == 403
            assert "Access-Control-Allow-Origin" not in refused.headers
            assert (await refused.json())["message"].startswith("CORS preflight refused")


async def test_a_stream_that_history_cannot_refill_ends_with_insufficient_state(
    aiohttp_client: Any, make_settings: Any, redis_url: str, redis_prefix: str
) -> None:
    """The node loses its Redis pub/sub connection while more is published than the channel's
    history keeps: it cannot refill the stream, so a ``uni_*`` stream (which has no resync push
    in Centrifugo's protocol) ends with ``disconnect`` 3010 (insufficient state: reconnect with
    ``recover``), never with a silent hole."""
    settings = make_settings(
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        CHANNEL_NAMESPACES='{"alerts": {"history_size": 3}}',
    )
    client = await aiohttp_client(create_app(settings))
    _, token = await make_user(client, "admin")
    channel = "alerts:insufficient"
    body = {"token": token, "subs": {channel: {}}}
    resp = await client.post("/connection/uni_http_stream", json=body)
    assert resp.status == 200
    assert channel in (await next_json_line(resp))["connect"]["subs"]
    await publish(client, channel, {"n": 1})
    assert (await next_json_line(resp))["pub"]["offset"] == 1

    broker = client.app[keys.hub].broker
    assert isinstance(broker, RedisBroker)
    # Reconnect only after 2.5-5 s, so that all of the publications below are missed live
    # however slowly a busy machine publishes them (a quick reconnect could still refill).
    broker.pubsub._policy = ReconnectPolicy(minimum=5.0)
    await kill_pubsub(redis_url, broker)
    for n in range(2, 10):  # offsets 2..9; history keeps 7, 8, 9
        await publish(client, channel, {"n": n})
    lines = []
    while not lines or "disconnect" not in lines[-1]:
        lines.append(await next_json_line(resp))
    assert all("pub" not in line for line in lines[:-1]), lines  # nothing after the hole
    assert lines[-1] == {"disconnect": {"code": 3010, "reason": "insufficient state"}}
    assert await ended(resp)
