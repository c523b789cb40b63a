"""``GET /sse/{channel}``: the exact Server-Sent Events a browser's ``EventSource`` reads, resume
after ``Last-Event-ID``, refusals before the stream, and the server ending it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from handlers import keys
from services.channels.revocation import unsubscribe_user
from services.realtime.codecs.sse import NO_RECONNECT_DELAY_MS, RECONNECT_DELAY_MS
from services.realtime.errors import UNSUBSCRIBE_REVOKED, Disconnect
from tests.handlers.realtime.sse_client import data_of, ended, next_data_event, next_event
from tests.helpers import DEADLINE, eventually, make_user, service_token


async def publish(client: TestClient, channel: str, data: Any) -> int:
    """Publish through the REST API; the publication's offset."""
    headers = {"Authorization": f"Bearer {service_token(client)}"}
    resp = await client.post(
        f"/api/v1/channels/{channel}/publish", json={"data": data}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return int(body["offset"])


async def test_publications_are_events_with_offset_epoch_ids(client: TestClient) -> None:
    _, token = await make_user(client, "admin")
    resp = await client.get("/sse/alerts:sse1", params={"token": token})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"].startswith("private, no-cache")
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert await next_event(resp) == [f"retry: {RECONNECT_DELAY_MS}"]
    subscribed = await next_event(resp)
    epoch = data_of(subscribed)["epoch"]
    assert subscribed == [
        "event: subscribed",
        f"id: 0:{epoch}",
        'data: {"type":"subscribed","channel":"alerts:sse1","offset":0,'
        f'"epoch":"{epoch}","recoverable":true}}',
    ]
    assert await publish(client, "alerts:sse1", {"price": 1}) == 1
    assert await publish(client, "alerts:sse1", {"text": "two\nlines"}) == 2
    assert await next_event(resp) == [
        f"id: 1:{epoch}",
        'data: {"type":"pub","channel":"alerts:sse1","offset":1,'
        f'"epoch":"{epoch}","data":{{"price":1}}}}',
    ]
    assert await next_event(resp) == [
        f"id: 2:{epoch}",
        'data: {"type":"pub","channel":"alerts:sse1","offset":2,'
        f'"epoch":"{epoch}","data":{{"text":"two\\nlines"}}}}',
    ]
    resp.close()


async def test_last_event_id_resumes_after_it_exactly(client: TestClient) -> None:
    _, token = await make_user(client, "admin")
    for i in range(1, 4):
        await publish(client, "alerts:sse2", {"i": i})
    epoch = (await client.app[keys.hub].position("alerts:sse2")).epoch
    resp = await client.get(
        "/sse/alerts:sse2",
        params={"token": token, "since": f"0:{epoch}"},  # the header wins over ?since=
        headers={"Last-Event-ID": f"1:{epoch}"},
    )
    assert resp.status == 200
    subscribed = await next_data_event(resp)
    assert subscribed[:2] == ["event: subscribed", f"id: 3:{epoch}"]
    assert data_of(subscribed)["recovered"] is True
    for offset in (2, 3):
        event = await next_data_event(resp)
        assert event[0] == f"id: {offset}:{epoch}"
        assert data_of(event)["data"] == {"i": offset}
    await publish(client, "alerts:sse2", {"i": 4})
    event = await next_data_event(resp)
    assert (event[0], data_of(event)["data"]) == (f"id: 4:{epoch}", {"i": 4})
    resp.close()


async def test_since_on_a_first_connect(client: TestClient) -> None:
    _, token = await make_user(client, "admin")
    for i in range(1, 3):
        await publish(client, "alerts:sse3", {"i": i})
    epoch = (await client.app[keys.hub].position("alerts:sse3")).epoch
    resp = await client.get("/sse/alerts:sse3", params={"token": token, "since": f"1:{epoch}"})
    await next_data_event(resp)  # subscribed
    event = await next_data_event(resp)
    assert (event[0], data_of(event)["offset"]) == (f"id: 2:{epoch}", 2)
    resp.close()


async def test_a_gap_history_cannot_cover_is_an_unrecovered_event(client: TestClient) -> None:
    _, token = await make_user(client, "admin")
    await publish(client, "alerts:sse4", {"i": 1})
    epoch = (await client.app[keys.hub].position("alerts:sse4")).epoch
    resp = await client.get(
        "/sse/alerts:sse4", params={"token": token}, headers={"Last-Event-ID": "7:gone"}
    )
    assert resp.status == 200
    assert await next_data_event(resp) == [
        "event: unrecovered",
        f"id: 1:{epoch}",
        'data: {"type":"unrecovered","channel":"alerts:sse4","recovered":false,'
        f'"offset":1,"epoch":"{epoch}"}}',
    ]
    await publish(client, "alerts:sse4", {"i": 2})
    assert (await next_data_event(resp))[0] == f"id: 2:{epoch}"
    resp.close()


async def test_refusals_are_json_errors_before_the_stream(client: TestClient) -> None:
    user_id, token = await make_user(client)
    cases = [
        ("/sse/alerts:x", {}, {}, 401, "an access token is required"),
        ("/sse/alerts:x", {"token": "nope"}, {}, 401, None),
        ("/sse/nonamespace", {"token": token}, {}, 400, None),
        ("/sse/user:someone-else", {"token": token}, {}, 403, None),
        ("/sse/alerts:x", {"token": token}, {"Last-Event-ID": "x"}, 400, "Last-Event-ID"),
        ("/sse/alerts:x", {"token": token, "since": "1"}, {}, 400, "offset:epoch"),
    ]
    for path, params, headers, status, message in cases:
        resp = await client.get(path, params=params, headers=headers)
        assert resp.status == status, (path, params, await resp.text())
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["status_code"] == status
        if message is not None:
            assert message in body["message"]
    # the Authorization header works too (fetch-based SSE clients)
    resp = await client.get(f"/sse/user:{user_id}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    resp.close()


async def test_revocation_ends_the_stream_for_good(client: TestClient) -> None:
    user_id, token = await make_user(client)
    channel = f"user:{user_id}"
    resp = await client.get(f"/sse/{channel}", params={"token": token})
    await next_data_event(resp)  # subscribed
    hub = client.app[keys.hub]
    await unsubscribe_user(hub, user_id, channel, UNSUBSCRIBE_REVOKED, "access revoked")
    assert await next_data_event(resp) == [
        "event: unsubscribe",
        f'data: {{"type":"unsubscribe","channel":"{channel}","code":4403,'
        '"reason":"access revoked"}',
    ]
    # no event, only a reconnection delay of a day, then the body ends
    assert await next_event(resp) == [f"retry: {NO_RECONNECT_DELAY_MS}"]
    assert await ended(resp)


async def test_a_server_disconnect_says_why_and_whether_to_reconnect(client: TestClient) -> None:
    user_id, token = await make_user(client)
    resp = await client.get(f"/sse/user:{user_id}", params={"token": token})
    await next_data_event(resp)
    registry = client.app[keys.connections]
    await registry.disconnect_user(user_id, Disconnect.FORBIDDEN, "logged out")
    assert await next_event(resp) == [
        f"retry: {NO_RECONNECT_DELAY_MS}",
        "event: disconnect",
        'data: {"type":"disconnect","code":4003,"reason":"logged out","reconnect":false}',
    ]
    assert await ended(resp)

    resp = await client.get(f"/sse/user:{user_id}", params={"token": token})
    await next_data_event(resp)
    await registry.disconnect_user(user_id, Disconnect.SHUTDOWN, "going away", code=4100)
    assert await next_event(resp) == [
        "event: disconnect",
        'data: {"type":"disconnect","code":4100,"reason":"going away","reconnect":true}',
    ]
    assert await ended(resp)


async def test_pings_keep_an_idle_stream_open(aiohttp_client: Any, make_settings: Any) -> None:
    from server.app import create_app

    client = await aiohttp_client(create_app(make_settings(WS_HEARTBEAT="1")))
    user_id, token = await make_user(client)
    resp = await client.get(f"/sse/user:{user_id}", params={"token": token})
    await next_data_event(resp)
    assert await next_event(resp) == [": ping"]
    resp.close()


async def test_a_reader_that_went_away_is_noticed_at_the_next_ping(
    aiohttp_client: Any, make_settings: Any
) -> None:
    from server.app import create_app

    client = await aiohttp_client(create_app(make_settings(WS_HEARTBEAT="1")))
    user_id, token = await make_user(client)
    registry = client.app[keys.connections]
    resp = await client.get(f"/sse/user:{user_id}", params={"token": token})
    await next_data_event(resp)
    assert registry.user_connections(user_id) == 1
    resp.close()  # the socket closes without a word
    await eventually(lambda: registry.user_connections(user_id) == 0, what="stream dropped")
    assert client.app[keys.hub].subscriber_count(f"user:{user_id}") == 0


async def test_http_1_0_gets_the_events_unchunked(client: TestClient) -> None:
    user_id, token = await make_user(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET /sse/user:{user_id}?token={token} HTTP/1.0\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Transfer-Encoding" not in head
    assert await asyncio.wait_for(reader.readuntil(b"\n\n"), DEADLINE) == b"retry: 2000\n\n"
    subscribed = await asyncio.wait_for(reader.readuntil(b"\n\n"), DEADLINE)
    assert subscribed.startswith(b"event: subscribed\nid: 0:")
    await client.app[keys.connections].disconnect_user(user_id, Disconnect.SHUTDOWN, "bye")
    rest = await asyncio.wait_for(reader.read(), DEADLINE)  # until the server closes
    assert rest == (
        b'event: disconnect\ndata: {"type":"disconnect","code":1001,"reason":"bye",'
        b'"reconnect":true}\n\n'
    )
    writer.close()


async def test_publications_during_the_resume_are_neither_lost_nor_doubled(
    client: TestClient,
) -> None:
    """Publications keep coming while the stream recovers, subscribes and starts (history,
    the subscribe's tail and what is held before the first write must join without a seam)."""
    _, token = await make_user(client, "admin")
    hub = client.app[keys.hub]
    await hub.publish("alerts:race", {"n": 1})
    epoch = (await hub.position("alerts:race")).epoch
    total = 200

    async def publisher() -> None:
        for n in range(2, total + 1):
            await hub.publish("alerts:race", {"n": n})
            if n % 10 == 0:
                await asyncio.sleep(0)

    task = asyncio.create_task(publisher())
    resp = await client.get(
        "/sse/alerts:race", params={"token": token}, headers={"Last-Event-ID": f"0:{epoch}"}
    )
    assert data_of(await next_data_event(resp))["recovered"] is True
    offsets = []
    while len(offsets) < total:
        event = await next_data_event(resp)
        offsets.append(data_of(event)["offset"])
    await task
    assert offsets == list(range(1, total + 1))
    resp.close()
