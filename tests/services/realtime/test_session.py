"""Session behaviour from the client's side: subscribe with recovery, history, unsubscribe,
command errors and limits (our protocol over ``/ws``, memory broker, real PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from handlers import keys
from server.app import create_app
from tests.alerts.util import TcpProxy
from tests.helpers import close_code, connect, make_user, receive, request, send


@pytest.fixture
async def admin(client: Any) -> str:
    return (await make_user(client, "admin"))[1]


async def test_publications_carry_offsets_and_epoch(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    reply = await request(ws, "subscribe", channel="alerts:s1")
    result = reply["result"]
    assert result == {
        "channel": "alerts:s1",
        "offset": 0,
        "epoch": result["epoch"],
        "recoverable": True,
    }
    hub = client.server.app[keys.hub]
    for i in range(3):
        await hub.publish("alerts:s1", {"i": i})
    pushes = [await receive(ws) for _ in range(3)]
    assert [p["offset"] for p in pushes] == [1, 2, 3]
    assert {p["epoch"] for p in pushes} == {result["epoch"]}
    assert [p["data"] for p in pushes] == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_reconnect_with_since_recovers_exactly_what_was_missed(
    client: Any, admin: str
) -> None:
    hub = client.server.app[keys.hub]
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:rec")
    await hub.publish("alerts:rec", "a")
    first = await receive(ws)
    await ws.close()
    for item in ("b", "c", "d"):
        await hub.publish("alerts:rec", item)
    ws = await connect(client, admin)
    reply = await request(
        ws,
        "subscribe",
        channel="alerts:rec",
        since={"offset": first["offset"], "epoch": first["epoch"]},
    )
    result = reply["result"]
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == ["b", "c", "d"]
    assert [p["offset"] for p in result["publications"]] == [2, 3, 4]
    await hub.publish("alerts:rec", "e")
    live = await receive(ws)
    assert (live["offset"], live["data"]) == (5, "e")


async def test_recovery_with_unknown_epoch_says_not_recovered(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    reply = await request(
        ws, "subscribe", channel="alerts:ep", since={"offset": 3, "epoch": "gone"}
    )
    assert reply["result"]["recovered"] is False
    assert reply["result"]["publications"] == []


async def test_reconnect_during_publish_is_gap_free(client: Any, admin: str) -> None:
    """A client drops and resubscribes with ``since`` while a publisher keeps publishing."""
    hub = client.server.app[keys.hub]
    channel = "alerts:storm"
    stop = asyncio.Event()
    published = 0

    async def publisher() -> None:
        nonlocal published
        while not stop.is_set():
            await hub.publish(channel, {"n": published})
            published += 1
            await asyncio.sleep(0.0005)

    task = asyncio.create_task(publisher())
    seen: list[int] = []
    epoch = None
    for _round in range(5):
        ws = await connect(client, admin)
        since = {"offset": seen[-1], "epoch": epoch} if seen else None
        fields: dict[str, Any] = {"channel": channel}
        if since:
            fields["since"] = since
        reply = await request(ws, "subscribe", **fields)
        result = reply["result"]
        epoch = result["epoch"]
        if since:
            assert result["recovered"] is True
            seen.extend(p["offset"] for p in result["publications"])
        else:
            seen.append(result["offset"]) if result["offset"] else None
        for _ in range(20):
            seen.append((await receive(ws))["offset"])
        await ws.close()
    stop.set()
    await task
    start = seen[0]
    assert seen == list(range(start, start + len(seen)))


async def test_history_command(client: Any, admin: str) -> None:
    hub = client.server.app[keys.hub]
    for i in range(5):
        await hub.publish("alerts:h", i)
    ws = await connect(client, admin)
    newest = await request(ws, "history", channel="alerts:h", limit=2)
    assert [p["data"] for p in newest["result"]["publications"]] == [3, 4]
    epoch = newest["result"]["epoch"]
    since = await request(
        ws, "history", channel="alerts:h", since={"offset": 1, "epoch": epoch}, limit=10
    )
    assert [p["offset"] for p in since["result"]["publications"]] == [2, 3, 4, 5]
    assert since["result"]["offset"] == 5
    other_epoch = await request(
        ws, "history", channel="alerts:h", since={"offset": 3, "epoch": "old"}, limit=2
    )
    assert [p["offset"] for p in other_epoch["result"]["publications"]] == [4, 5]
    assert other_epoch["result"]["epoch"] == epoch


async def test_unsubscribe_stops_pushes(client: Any, admin: str) -> None:
    hub = client.server.app[keys.hub]
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:u1")
    await request(ws, "subscribe", channel="alerts:u2")
    reply = await request(ws, "unsubscribe", channel="alerts:u1")
    assert reply["result"] == {"channel": "alerts:u1"}
    await hub.publish("alerts:u1", "no")
    await hub.publish("alerts:u2", "yes")
    message = await receive(ws)
    assert (message["channel"], message["data"]) == ("alerts:u2", "yes")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('{"type": "launch"}', "unknown_command"),
        ('{"id": true, "type": "ping"}', "bad_request"),
        ('{"id": 1, "type": "launch"}', "unknown_command"),
        ('{"id": 1}', "unknown_command"),
        ('{"id": 1, "type": "subscribe"}', "bad_request"),
        ('{"id": 1, "type": "subscribe", "channel": 5}', "bad_request"),
        ('{"id": 1, "type": "subscribe", "channel": "nope"}', "invalid_channel"),
        ('{"id": 1, "type": "subscribe", "channel": "weird:x"}', "invalid_channel"),
        ('{"id": 1, "type": "subscribe", "channel": "alerts:a b"}', "invalid_channel"),
        ('{"id": 1, "type": "subscribe", "channel": "alerts:x", "since": 3}', "bad_request"),
        (
            '{"id": 1, "type": "subscribe", "channel": "alerts:x", "since": {"offset": -1, '
            '"epoch": "e"}}',
            "bad_request",
        ),
        ('{"id": 1, "type": "unsubscribe", "channel": "alerts:never"}', "not_subscribed"),
        ('{"id": 1, "type": "history", "channel": "alerts:x", "limit": "ten"}', "bad_request"),
        ('{"id": 1, "type": "authenticate", "token": "x"}', "already_authenticated"),
    ],
)
async def test_bad_commands_get_error_replies(
    client: Any, admin: str, frame: str, code: str
) -> None:
    ws = await connect(client, admin)
    await ws.send_str(frame)
    reply = await receive(ws)
    assert reply["type"] == "reply"
    assert reply["error"]["code"] == code, reply
    # the connection keeps working
    assert "result" in await request(ws, "ping")


async def test_double_subscribe_is_an_error(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:dd")
    reply = await request(ws, "subscribe", channel="alerts:dd")
    assert reply["error"]["code"] == "already_subscribed"


async def test_subscription_limit(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(WS_MAX_SUBSCRIPTIONS="2")))
    _, token = await make_user(client, "admin")
    ws = await connect(client, token)
    await request(ws, "subscribe", channel="alerts:1")
    await request(ws, "subscribe", channel="alerts:2")
    await send(ws, "subscribe", channel="alerts:3")
    assert await close_code(ws) == 4005


async def test_configured_namespace_is_usable(aiohttp_client: Any, make_settings: Any) -> None:
    settings = make_settings(CHANNEL_NAMESPACES='{"news": {"history_size": 2}}')
    client = await aiohttp_client(create_app(settings))
    _, admin = await make_user(client, "admin")
    _, buyer = await make_user(client, "buyer")
    hub = client.server.app[keys.hub]
    for i in range(3):
        await hub.publish("news:today", i)
    ws = await connect(client, admin)
    history = await request(ws, "history", channel="news:today")
    assert [p["data"] for p in history["result"]["publications"]] == [1, 2]
    stranger = await connect(client, buyer)
    denied = await request(stranger, "subscribe", channel="news:today")
    assert denied["error"]["code"] == "permission_denied"


async def test_client_publish_is_refused_in_every_namespace(client: Any, admin: str) -> None:
    user_id, token = await make_user(client, "buyer")
    hub = client.server.app[keys.hub]
    for who, channel in ((admin, "alerts:pub"), (token, f"user:{user_id}")):
        ws = await connect(client, who)
        reply = await request(ws, "publish", channel=channel, data={"text": "hi"})
        assert reply["error"]["code"] == "permission_denied", reply
        position = await hub.broker.position(channel, hub.options(channel))
        assert position.offset == 0  # nothing was published
        assert "result" in await request(ws, "ping")
        await ws.close()
    ws = await connect(client, admin)
    assert (await request(ws, "publish", channel="alerts:pub"))["error"]["code"] == "bad_request"
    invalid = await request(ws, "publish", channel="nope", data=1)
    assert invalid["error"]["code"] == "invalid_channel"


async def test_database_outage_is_an_error_reply_and_the_connection_stays(
    aiohttp_client: Any, make_settings: Any, database_url: str
) -> None:
    """Permission rules read PostgreSQL: while it is unreachable every command that needs it
    answers ``temporarily_unavailable`` (as a Redis outage answers ``broker_unavailable``)."""
    target = urlsplit(database_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}"))
    client = await aiohttp_client(create_app(make_settings(DATABASE_URL=proxied)))
    owner_id, token = await make_user(client, "buyer")
    async with client.server.app[keys.pool].acquire() as conn:
        request_id = await conn.fetchval(
            "INSERT INTO requests (owner_id, title) VALUES ($1::uuid, 'Outage') RETURNING id",
            owner_id,
        )
    channel = f"proposals:{request_id}"
    ws = await connect(client, token)
    await proxy.cut()  # PostgreSQL goes away: open connections drop, new ones are refused
    for command, fields in (
        ("subscribe", {}),
        ("subscribe", {"since": {"offset": 0, "epoch": "e"}}),
        ("history", {}),
        ("presence", {}),
        ("presence_stats", {}),
    ):
        reply = await request(ws, command, channel=channel, **fields)
        assert reply["error"]["code"] == "temporarily_unavailable", (command, reply)
    # the connection is still open and what needs no database still works
    assert "result" in await request(ws, "ping")
    assert "result" in await request(ws, "subscribe", channel=f"user:{owner_id}")


@pytest.mark.parametrize("path", ["/ws", "/ws/updates/"])
async def test_the_marketplace_clients_frames_without_ids(client: Any, path: str) -> None:
    """The Arena marketplace client sends commands without ``id`` (first of all
    ``authenticate``) and matches replies by ``type``; commands with an id are unchanged."""
    user_id, token = await make_user(client, "buyer")
    ws = await client.ws_connect(path)
    await ws.send_str('{"type": "authenticate", "token": "' + token + '"}')
    authenticated = await receive(ws)
    assert authenticated == {
        "type": "authenticate",
        "result": {
            "client": authenticated["result"]["client"],
            "user": {"id": user_id, "role": "buyer"},
            "expires_at": authenticated["result"]["expires_at"],
        },
    }
    await ws.send_str('{"type": "subscribe", "channel": "user:' + user_id + '"}')
    subscribed = await receive(ws)
    assert subscribed["type"] == "subscribe"
    assert "id" not in subscribed
    assert subscribed["result"]["channel"] == f"user:{user_id}"
    await client.server.app[keys.hub].publish(f"user:{user_id}", {"proposal": "accepted"})
    pub = await receive(ws)
    assert (pub["type"], pub["channel"], pub["data"]) == (
        "pub",
        f"user:{user_id}",
        {"proposal": "accepted"},
    )
    assert pub["offset"] == subscribed["result"]["offset"] + 1
    await ws.send_str('{"type": "subscribe", "channel": "user:someone-else"}')
    assert await receive(ws) == {
        "type": "subscribe",
        "error": {"code": "permission_denied", "message": "you may not subscribe to this channel"},
    }
    # with an id: the usual reply
    reply = await request(ws, "ping")
    assert reply == {"type": "reply", "id": reply["id"], "result": {}}
    await ws.close()
