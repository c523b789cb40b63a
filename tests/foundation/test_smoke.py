"""The service starts on real PostgreSQL and answers its operational endpoints."""

from __future__ import annotations

from typing import Any

from tests.helpers import DEADLINE, connect, make_user, request


async def test_health_and_ready(client: Any) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"
    response = await client.get("/ready")
    body = await response.json()
    assert response.status == 200, body
    assert body["database"] == {"ok": True, "backend": "postgres"}
    assert body["broker"] == {"ok": True, "backend": "memory"}


async def test_subscribe_and_receive(client: Any) -> None:
    _, token = await make_user(client, "admin")
    ws = await connect(client, token)
    reply = await request(ws, "subscribe", channel="alerts:abc")
    assert reply["result"]["offset"] == 0
    hub = client.server.app
    from handlers import keys

    result = await hub[keys.hub].publish("alerts:abc", {"n": 1})
    assert result.offset == 1
    message = await ws.receive_json(timeout=DEADLINE)
    assert message == {
        "type": "pub",
        "channel": "alerts:abc",
        "offset": 1,
        "epoch": reply["result"]["epoch"],
        "data": {"n": 1},
    }
    await ws.close()
