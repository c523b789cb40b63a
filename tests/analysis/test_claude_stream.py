"""Streaming a Claude analysis (the real SDK against the fake Messages API) to watchers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from handlers import keys
from server.app import create_app
from server.settings import Settings
from tests.analysis.fake_anthropic import FakeAnthropic, Script
from tests.analysis.support import (
    auth,
    check_stream,
    get,
    next_pub,
    seed_request,
    start,
    subscribe,
    until_end,
    wait_status,
)
from tests.helpers import DEADLINE, connect, eventually, make_user


async def test_tokens_reach_every_watcher_in_order(
    claude_client: Any, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script = Script(tokens=[f"word{i} " for i in range(60)], delay=0.004)
    owner, token = await make_user(claude_client, "buyer")
    _admin_id, admin_token = await make_user(claude_client, "admin")
    request_id = await seed_request(claude_client, owner)
    watchers = [await connect(claude_client, token) for _ in range(2)]
    watchers.append(await connect(claude_client, admin_token))

    created = await start(claude_client, token, request_id)
    assert created["provider"] == "anthropic"
    assert created["model"] == "claude-test-1"
    assert created["channel"] == f"analysis:{created['id']}"
    streams = []
    for ws in watchers:
        pubs, _ = await subscribe(ws, created["channel"], created["since"])
        streams.append(await until_end(ws, created["channel"], pubs))

    for pubs in streams:
        assert pubs[0]["offset"] == 1
        assert pubs[0]["data"] == {
            "type": "start",
            "kind": "compare_proposals",
            "provider": "anthropic",
            "model": "claude-test-1",
        }
        assert check_stream(pubs) == fake_anthropic.text()
        done = pubs[-1]["data"]
        assert done["type"] == "done"
        assert done["usage"] == {"input_tokens": 321, "output_tokens": 60}
        assert done["stop_reason"] == "end_turn"
    seen = [[(p["offset"], p["data"]) for p in pubs] for pubs in streams]
    assert seen[0] == seen[1] == seen[2]
    deltas = [p for p in streams[0] if p["data"]["type"] == "delta"]
    assert len(deltas) < 60, "deltas were not coalesced"

    stored = await get(claude_client, token, created["id"])
    assert stored["status"] == "done"
    assert stored["text"] == fake_anthropic.text()
    assert stored["seq"] == len(deltas)
    assert stored["usage"] == {"input_tokens": 321, "output_tokens": 60}
    assert stored["stop_reason"] == "end_turn"
    assert stored["error"] is None
    assert stored["timings"]["duration_ms"] >= 0
    assert stored["first_token_at"] is not None

    sent = fake_anthropic.requests[0]
    assert sent["body"]["model"] == "claude-test-1"
    assert sent["body"]["max_tokens"] == 2048
    assert sent["body"]["stream"] is True
    prompt = sent["body"]["messages"][0]["content"]
    assert "CRM for the sales team" in prompt
    assert "[R1] (must) SSO" in prompt
    assert "[P3]" in prompt
    assert "12,000.00 USD" in prompt
    for ws in watchers:
        await ws.close()


async def test_reconnecting_watcher_gets_the_rest_without_loss_or_duplicates(
    claude_client: Any, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script = Script(tokens=[f"t{i} " for i in range(120)], delay=0.005)
    owner, token = await make_user(claude_client, "buyer")
    request_id = await seed_request(claude_client, owner)
    created = await start(claude_client, token, request_id)
    channel = created["channel"]

    ws = await connect(claude_client, token)
    seen, _ = await subscribe(ws, channel, created["since"])
    while sum(p["data"]["type"] == "delta" for p in seen) < 3:
        seen.append(await next_pub(ws, channel))
    await ws.close()
    last = seen[-1]
    hub = claude_client.server.app[keys.hub]

    async def published_while_away() -> bool:
        position = await hub.broker.position(channel, hub.options(channel))
        return bool(position.offset > last["offset"])

    await eventually(published_while_away, what="a publication while the watcher is away")

    ws = await connect(claude_client, token)
    since = {"offset": last["offset"], "epoch": last["epoch"]}
    rest, result = await subscribe(ws, channel, since)
    assert result["recovered"] is True
    assert rest, "publications made while away were not replayed"
    assert rest[0]["offset"] == last["offset"] + 1
    everything = await until_end(ws, channel, seen + rest)
    assert everything[-1]["data"]["type"] == "done"
    assert check_stream(everything) == fake_anthropic.text()
    await ws.close()


async def test_late_joiner_gets_the_whole_analysis(
    claude_client: Any, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script = Script(tokens=[f"late{i} " for i in range(40)])
    owner, token = await make_user(claude_client, "buyer")
    request_id = await seed_request(claude_client, owner)
    created = await start(claude_client, token, request_id)
    finished = await wait_status(claude_client, token, created["id"], "done")

    ws = await connect(claude_client, token)
    pubs, result = await subscribe(ws, created["channel"], finished["since"])
    assert result["recovered"] is True
    assert [p["data"]["type"] for p in (pubs[0], pubs[-1])] == ["start", "done"]
    assert check_stream(pubs) == fake_anthropic.text() == finished["text"]
    await ws.close()


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("overloaded_error", "overloaded"),
        ("rate_limit_error", "rate_limited"),
        ("api_error", "provider_error"),
    ],
)
async def test_error_event_midstream_fails_the_analysis(
    claude_client: Any, fake_anthropic: FakeAnthropic, error_type: str, code: str
) -> None:
    fake_anthropic.script = Script(
        tokens=["a ", "b ", "c ", "d ", "e ", "f "], error_after=4, error_type=error_type
    )
    owner, token = await make_user(claude_client, "buyer")
    request_id = await seed_request(claude_client, owner)
    ws = await connect(claude_client, token)
    created = await start(claude_client, token, request_id)
    pubs, _ = await subscribe(ws, created["channel"], created["since"])
    pubs = await until_end(ws, created["channel"], pubs)

    assert check_stream(pubs) == "a b c d "
    end = pubs[-1]["data"]
    assert end["type"] == "error"
    assert end["code"] == code
    stored = await get(claude_client, token, created["id"])
    assert stored["status"] == "failed"
    assert stored["error"]["code"] == code
    assert stored["text"] == "a b c d "
    assert len(fake_anthropic.requests) == 1, "a stream that failed midway must not be retried"
    await ws.close()


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (529, "overloaded_error", "overloaded"),
        (429, "rate_limit_error", "rate_limited"),
        (400, "invalid_request_error", "provider_error"),
    ],
)
async def test_http_errors_map_to_error_codes(
    claude_client: Any, fake_anthropic: FakeAnthropic, status: int, error_type: str, code: str
) -> None:
    fake_anthropic.script = Script(status=status, error_type=error_type)
    owner, token = await make_user(claude_client, "buyer")
    request_id = await seed_request(claude_client, owner)
    ws = await connect(claude_client, token)
    created = await start(claude_client, token, request_id)
    pubs, _ = await subscribe(ws, created["channel"], created["since"])
    pubs = await until_end(ws, created["channel"], pubs)

    assert pubs[-1]["data"]["type"] == "error"
    assert pubs[-1]["data"]["code"] == code
    assert "sk-ant" not in pubs[-1]["data"]["message"]
    stored = await get(claude_client, token, created["id"])
    assert (stored["status"], stored["error"]["code"], stored["text"]) == ("failed", code, "")
    # 429 and 529 are retried by the SDK before the stream starts; 400 is not.
    assert len(fake_anthropic.requests) == (1 if status == 400 else 3)
    await ws.close()


async def test_cancel_closes_the_upstream_stream_and_is_recorded(
    claude_client: Any, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script = Script(tokens=["one ", "two ", "three ", "four "], hang_after=2)
    owner, token = await make_user(claude_client, "buyer")
    request_id = await seed_request(claude_client, owner)
    ws = await connect(claude_client, token)
    created = await start(claude_client, token, request_id)
    pubs, _ = await subscribe(ws, created["channel"], created["since"])
    while check_stream(pubs) != "one two ":  # everything before the provider stalls
        pubs.append(await next_pub(ws, created["channel"]))

    resp = await claude_client.delete(f"/api/v1/analyses/{created['id']}", headers=auth(token))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "cancelled"
    assert body["error"]["code"] == "cancelled"
    assert body["text"] == "one two "
    async with asyncio.timeout(DEADLINE):
        await fake_anthropic.disconnected.wait()

    pubs = await until_end(ws, created["channel"], pubs)
    assert pubs[-1]["data"]["type"] == "error"
    assert pubs[-1]["data"]["code"] == "cancelled"
    assert check_stream(pubs) == "one two "

    again = await claude_client.delete(f"/api/v1/analyses/{created['id']}", headers=auth(token))
    assert again.status == 409
    await ws.close()


async def test_total_timeout_fails_the_analysis(
    aiohttp_client: Any, claude_settings: Callable[..., Settings], fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script = Script(tokens=["slow ", "never "], hang_after=1)
    # Long enough for the first token to be stored on a loaded machine before time runs out.
    client = await aiohttp_client(create_app(claude_settings(ANTHROPIC_TIMEOUT="3")))
    owner, token = await make_user(client, "buyer")
    request_id = await seed_request(client, owner)
    created = await start(client, token, request_id)
    stored = await wait_status(client, token, created["id"], "failed")
    assert stored["error"]["code"] == "timeout"
    assert stored["text"] == "slow "
    async with asyncio.timeout(DEADLINE):
        await fake_anthropic.disconnected.wait()


async def test_partial_text_is_checkpointed_while_streaming(
    claude_client: Any, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script = Script(tokens=["saved ", "so ", "far ", "lost "], hang_after=3)
    owner, token = await make_user(claude_client, "buyer")
    request_id = await seed_request(claude_client, owner)
    created = await start(claude_client, token, request_id)
    pool = claude_client.server.app[keys.pool]
    async with asyncio.timeout(DEADLINE):
        while True:
            row = await pool.fetchrow(
                "SELECT status, text, seq FROM analyses WHERE id = $1::uuid", created["id"]
            )
            if row["text"] == "saved so far ":
                break
            await asyncio.sleep(0.05)
    assert row["status"] == "running"
    assert row["text"] == "saved so far "
    assert row["seq"] >= 1


async def test_stream_and_recovery_through_redis(
    fake_anthropic: FakeAnthropic,
    aiohttp_client: Any,
    claude_settings: Callable[..., Settings],
    redis_url: str,
    redis_prefix: str,
) -> None:
    fake_anthropic.script = Script(tokens=[f"r{i} " for i in range(80)], delay=0.005)
    settings = claude_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    client = await aiohttp_client(create_app(settings))
    owner, token = await make_user(client, "buyer")
    request_id = await seed_request(client, owner)
    created = await start(client, token, request_id)
    channel = created["channel"]

    ws = await connect(client, token)
    seen, _ = await subscribe(ws, channel, created["since"])
    while sum(p["data"]["type"] == "delta" for p in seen) < 2:
        seen.append(await next_pub(ws, channel))
    await ws.close()
    last = seen[-1]
    await asyncio.sleep(0.1)

    ws = await connect(client, token)
    rest, result = await subscribe(ws, channel, {"offset": last["offset"], "epoch": last["epoch"]})
    assert result["recovered"] is True
    everything = await until_end(ws, channel, seen + rest)
    assert check_stream(everything) == fake_anthropic.text()
    finished = await wait_status(client, token, created["id"], "done")
    late, _ = await subscribe(await connect(client, token), channel, finished["since"])
    assert check_stream(late) == finished["text"] == fake_anthropic.text()
    await ws.close()
