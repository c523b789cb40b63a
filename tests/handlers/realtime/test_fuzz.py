"""Property: whatever frames a client throws at ``/ws``, the server keeps serving everyone else."""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import keys
from services.realtime.codecs.arena import TYPES
from tests.helpers import connect, make_user, receive, request

COMMANDS = ["authenticate", "refresh", "subscribe", "unsubscribe", "ping", "history", "publish", ""]
CHANNELS = ["alerts:x", "user:me", "nope", "bad:ns", "alerts:" + "x" * 200, "alerts:a b", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

commands = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.integers(), st.text(max_size=80), st.none(), st.booleans()),
        "type": st.sampled_from(COMMANDS) | st.text(max_size=10),
        "channel": st.sampled_from(CHANNELS) | json_values,
        "since": st.fixed_dictionaries(
            {}, optional={"offset": json_values | st.integers(), "epoch": json_values}
        )
        | json_values,
        "limit": json_values,
        "token": json_values,
    },
).map(json.dumps)

frames = st.one_of(
    commands,
    st.text(max_size=200),
    st.binary(max_size=100),
    json_values.map(json.dumps),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=6), authenticate_first=st.booleans())
async def test_arbitrary_frames_never_hurt_other_clients(
    client: Any, batch: list[str | bytes], authenticate_first: bool
) -> None:
    app = client.server.app
    _, token = await make_user(client, "admin")
    witness = await connect(client, token)
    await request(witness, "subscribe", channel="alerts:witness")

    if authenticate_first:
        attacker = await connect(client, token)
    else:
        attacker = await client.ws_connect("/ws")
    for frame in batch:
        if attacker.closed:
            break
        if isinstance(frame, bytes):
            await attacker.send_bytes(frame)
        else:
            await attacker.send_str(frame)
    # Every reply the attacker gets is well-formed; the server never sends a 1011 (crash).
    while not attacker.closed:
        try:
            msg = await attacker.receive(timeout=0.1)
        except TimeoutError:
            break
        if msg.type == WSMsgType.TEXT:
            reply = orjson.loads(msg.data)
            # replies ("reply", or the command's own type when it came without an id), pushes
            assert reply["type"] in {"reply", "pub", "resync", *TYPES.values()}
            if "error" in reply:
                assert isinstance(reply["error"]["code"], str)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            assert attacker.close_code is None or attacker.close_code != 1011
            break
        elif msg.type == WSMsgType.ERROR:
            break
    await attacker.close()

    published = await app[keys.hub].publish("alerts:witness", {"still": "alive"})
    message = await receive(witness)
    assert message["offset"] == published.offset
    assert "result" in await request(witness, "ping")
    await witness.close()
