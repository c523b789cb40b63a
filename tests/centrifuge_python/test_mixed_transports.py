"""One channel, three transports: a ``/ws`` subscriber (our protocol), the real
centrifuge-python SDK on ``/connection/websocket`` and an ``EventSource``-style reader of
``/sse/{channel}`` see the same publications with the same offsets (one hub, one session
type; only the wire differs)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from centrifuge import Client

from handlers import keys
from tests.centrifuge_python.test_centrifuge_python import Events
from tests.handlers.realtime.sse_client import data_of, next_data_event
from tests.handlers.realtime.test_sse import publish
from tests.helpers import connect, make_user, receive, request


async def test_ws_centrifuge_and_sse_see_the_same_publications(client: TestClient) -> None:
    _, token = await make_user(client, "admin")
    channel = "alerts:mixed"

    ws = await connect(client, token)
    reply = await request(ws, "subscribe", channel=channel)
    assert "result" in reply, reply

    events = Events()
    sdk = Client(f"ws://{client.host}:{client.port}/connection/websocket", token=token)
    sub = sdk.new_subscription(channel, events=events)
    await sdk.connect()
    await sub.subscribe()
    await events.next("subscribed")

    sse = await client.get(f"/sse/{channel}", params={"token": token})
    assert sse.status == 200
    await next_data_event(sse)  # subscribed

    sent = [{"n": n, "text": f"message {n}"} for n in range(5)]
    offsets = [await publish(client, channel, data) for data in sent]
    epoch = (await client.app[keys.hub].position(channel)).epoch
    expected = list(zip(offsets, sent, strict=True))

    seen_ws: list[tuple[int, Any]] = []
    while len(seen_ws) < len(sent):
        message = await receive(ws)
        if message.get("type") == "pub":
            assert message["epoch"] == epoch
            seen_ws.append((message["offset"], message["data"]))
    seen_sdk = []
    for _ in sent:
        pub = (await events.next("publication")).pub
        seen_sdk.append((pub.offset, pub.data))
    seen_sse = []
    for _ in sent:
        event = await next_data_event(sse)
        body = data_of(event)
        assert event[0] == f"id: {body['offset']}:{epoch}"
        seen_sse.append((body["offset"], body["data"]))

    assert seen_ws == seen_sdk == seen_sse == expected
    sse.close()
    await ws.close()
    await sdk.disconnect()
