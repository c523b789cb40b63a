"""Webhook alerts handed from the group commit straight to the relay: published at once
without the relay's fetch, exactly once, in order, and still through the outbox when the
hand-off cannot happen (a crash, a broker outage, an earlier event not published yet, a
relay that is not the leader)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from handlers import keys
from pubsub.broker import BrokerUnavailable
from server.app import create_app
from services.alerts import group_commit
from services.outbox import relay as relay_module
from storage import outbox
from tests.alerts.util import auth, create_strategy, post_signed
from tests.helpers import connect, eventually, make_user, receive, request


@pytest.fixture(params=["memory", "redis"])
async def any_client(
    request: pytest.FixtureRequest, aiohttp_client: Any, make_settings: Any
) -> Any:
    """The app with each broker backend."""
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        redis_prefix = request.getfixturevalue("redis_prefix")
        settings = make_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    else:
        settings = make_settings()
    return await aiohttp_client(create_app(settings))


@contextlib.asynccontextmanager
async def relay_fetches_held(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The relay's rounds (fetch, and mark-and-fetch) wait until the block ends."""
    gate = asyncio.Event()
    fetch, mark = outbox.fetch_unpublished, outbox.mark_published_and_fetch

    async def held_fetch(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await fetch(*args, **kwargs)

    async def held_mark(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await mark(*args, **kwargs)

    monkeypatch.setattr(outbox, "fetch_unpublished", held_fetch)
    monkeypatch.setattr(outbox, "mark_published_and_fetch", held_mark)
    try:
        yield
    finally:
        gate.set()


@contextlib.asynccontextmanager
async def outbox_notifications(app: Any) -> AsyncIterator[list[str]]:
    """The payloads of the outbox's NOTIFYs while the block runs (a pooled connection that
    listens, given back without its listener)."""
    notifications: list[str] = []

    def notified(*args: Any) -> None:
        notifications.append(args[-1])

    async with app[keys.pool].acquire() as listener:
        await listener.add_listener(outbox.NOTIFY_CHANNEL, notified)
        try:
            yield notifications
        finally:
            await listener.remove_listener(outbox.NOTIFY_CHANNEL, notified)


async def _feed(client: Any) -> tuple[str, dict[str, Any], Any]:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    ws = await connect(client, token)
    channel = f"alerts:{strategy['id']}"
    assert "result" in await request(ws, "subscribe", channel=channel)
    relay = client.server.app[keys.relay]
    await eventually(lambda: relay.leading, what="the app's relay leading")
    return token, strategy, ws


async def _stored_event(client: Any, alert_id: str) -> tuple[int, dict[str, Any], bool]:
    """The outbox event of an alert: id, payload, and whether it is marked published."""
    async with client.server.app[keys.pool].acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, payload, published_at IS NOT NULL AS marked FROM outbox "
            "WHERE payload #>> '{alert,id}' = $1",
            alert_id,
        )
    return row["id"], row["payload"], row["marked"]


async def _post(client: Any, strategy: dict[str, Any], message: str) -> str:
    response = await post_signed(client, strategy, {"ticker": "T", "message": message})
    body = await response.json()
    assert response.status == 201, body
    return str(body["id"])


async def _messages(ws: Any, count: int) -> list[str]:
    frames = [await receive(ws) for _ in range(count)]
    assert all(frame["type"] == "pub" for frame in frames), frames
    return [frame["data"]["alert"]["message"] for frame in frames]


async def _nothing_more(client: Any, strategy: dict[str, Any], ws: Any) -> None:
    """No publication is left to come: the next one is a new webhook's."""
    await _post(client, strategy, "sentinel")
    assert await _messages(ws, 1) == ["sentinel"]


async def test_a_webhook_reaches_subscribers_without_the_relay_fetching_it(
    any_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = any_client
    _, strategy, ws = await _feed(client)
    async with relay_fetches_held(monkeypatch):
        alert_id = await _post(client, strategy, "at once")
        frame = await receive(ws)
        event_id, payload, marked = await _stored_event(client, alert_id)
        assert frame == {
            "type": "pub",
            "channel": f"alerts:{strategy['id']}",
            "offset": frame["offset"],
            "epoch": frame["epoch"],
            "data": {**payload, "event_id": event_id},
        }
        assert frame["data"]["alert"]["id"] == alert_id
        assert not marked  # the relay's round has not run
    # The round then marks it, and does not publish it again.
    await eventually(
        lambda: _marked(client, alert_id), what="the handed-off event marked published"
    )
    await _nothing_more(client, strategy, ws)


async def _marked(client: Any, alert_id: str) -> bool:
    return (await _stored_event(client, alert_id))[2]


async def test_handed_off_commits_send_no_notify_and_one_update_marks_them(
    any_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the app's relay leads, a webhook's commit does not NOTIFY (PostgreSQL would
    serialise those commits, and the relay would run a round per webhook); the events are
    marked published later, many by one UPDATE. Other outbox writers still NOTIFY."""
    client = any_client
    _, strategy, ws = await _feed(client)
    app = client.server.app
    relay = app[keys.relay]
    monkeypatch.setattr(relay_module, "MARK_DELAY", 60.0)
    relay._poll_interval = 60.0  # no poll round during the test: only a kick marks
    rounds = relay._rounds
    relay.kick()
    await eventually(lambda: relay._rounds > rounds, what="a round, then a 60 s wait")
    async with outbox_notifications(app) as notifications:
        ids = []
        for n in range(20):
            ids.append(await _post(client, strategy, str(n)))
            assert await _messages(ws, 1) == [str(n)]  # published at once, by the hand-off
        assert relay._rounds == rounds + 1  # and no round ran to mark it
        marked = [(await _stored_event(client, alert_id))[2] for alert_id in ids]
        assert marked == [False] * 20
        # A round marks all 20 in one UPDATE: one transaction, one now().
        relay.kick()
        async with app[keys.pool].acquire() as conn:
            await eventually(_all_marked(conn, f"alerts:{strategy['id']}"), what="marked")
            assert (
                await conn.fetchval(
                    "SELECT count(DISTINCT published_at) FROM outbox WHERE $1 = ANY(channels)",
                    f"alerts:{strategy['id']}",
                )
                == 1
            )
            assert notifications == []
            # Any other outbox write still wakes the relays of every instance.
            await conn.execute(
                "INSERT INTO outbox (channels, payload) VALUES ($1, $2)",
                [f"alerts:{strategy['id']}"],
                {"alert": {"id": "other", "message": "other writer"}},
            )
            await eventually(lambda: notifications == [""], what="the other writer's NOTIFY")
    relay.kick()
    assert await _messages(ws, 1) == ["other writer"]


async def test_a_quiet_commit_whose_relay_stopped_leading_notifies_the_next_leader(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, strategy, ws = await _feed(client)
    app = client.server.app
    relay = app[keys.relay]
    insert_group = group_commit._insert_group

    async def lead_lost_meanwhile(*args: Any) -> Any:
        assert args[-1] is True  # quiet: this relay led when the statement started
        result = await insert_group(*args)
        relay._leading = False  # and no longer does when the commit is done
        return result

    monkeypatch.setattr(group_commit, "_insert_group", lead_lost_meanwhile)
    async with outbox_notifications(app) as notifications:
        await _post(client, strategy, "0")
        # the commit sent none; the group commit tells the leader, wherever it is
        await eventually(lambda: notifications == [""], what="a NOTIFY for the leader")
    monkeypatch.undo()
    relay._leading = True  # (still this relay) its round publishes the event
    relay.kick()
    assert await _messages(ws, 1) == ["0"]


async def test_a_crash_between_commit_and_hand_off_loses_nothing(
    any_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = any_client
    _, strategy, ws = await _feed(client)
    relay = client.server.app[keys.relay]
    # As if the process died right after the commit: the hand-off is taken and never runs.
    monkeypatch.setattr(relay, "hand_off", lambda events, pending: True)
    alert_id = await _post(client, strategy, "committed only")
    assert await _messages(ws, 1) == ["committed only"]  # the relay's round (NOTIFY)
    await eventually(lambda: _marked(client, alert_id), what="the event marked published")
    monkeypatch.undo()
    await _nothing_more(client, strategy, ws)


async def test_events_wait_in_the_outbox_while_the_broker_is_down(
    any_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = any_client
    _, strategy, ws = await _feed(client)
    hub = client.server.app[keys.hub]

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailable("broker is down (test)")

    monkeypatch.setattr(hub.broker, "publish", unavailable)
    monkeypatch.setattr(hub.broker, "publish_many", unavailable)
    ids = [await _post(client, strategy, str(n)) for n in range(5)]
    assert not any([await _marked(client, alert_id) for alert_id in ids])
    monkeypatch.undo()
    client.server.app[keys.relay].kick()
    assert await _messages(ws, 5) == ["0", "1", "2", "3", "4"]
    await _nothing_more(client, strategy, ws)


@pytest.mark.parametrize("earlier", ["failed hand-off", "manual alert"])
async def test_a_webhook_is_not_published_before_an_event_committed_earlier(
    any_client: Any, monkeypatch: pytest.MonkeyPatch, earlier: str
) -> None:
    """The first event is committed but left to the relay's round (its hand-off failed, or
    it came another way); the next webhook, sent after it was acknowledged, must not overtake
    it even though its own hand-off would work."""
    client = any_client
    token, strategy, ws = await _feed(client)
    hub = client.server.app[keys.hub]
    async with relay_fetches_held(monkeypatch):
        if earlier == "failed hand-off":
            publish_many = hub.broker.publish_many
            failures = [BrokerUnavailable("broker is down once (test)")]

            async def fails_once(*args: Any, **kwargs: Any) -> Any:
                if failures:
                    raise failures.pop()
                return await publish_many(*args, **kwargs)

            monkeypatch.setattr(hub.broker, "publish_many", fails_once)
            await _post(client, strategy, "first")
            assert not failures
        else:
            response = await client.post(
                "/api/v1/alerts",
                json={"strategy_id": strategy["id"], "ticker": "T", "message": "first"},
                headers=auth(token),
            )
            assert response.status == 201, await response.text()
        await _post(client, strategy, "second")
    assert await _messages(ws, 2) == ["first", "second"]
    await _nothing_more(client, strategy, ws)


async def test_two_instances_publish_each_webhook_once_when_the_leader_changes(
    redis_settings: Any, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader publishes by hand-off but dies before marking: the other instance's relay
    takes over and publishes the unmarked events again, which Redis drops (same idempotency
    keys). Webhooks sent to the standby go through its outbox rows. Each arrives once."""
    one = await aiohttp_client(create_app(redis_settings))
    two = await aiohttp_client(create_app(redis_settings))
    relays = [one.server.app[keys.relay], two.server.app[keys.relay]]
    await eventually(lambda: any(r.leading for r in relays), what="a leader")
    leader_client, standby_client = (one, two) if relays[0].leading else (two, one)
    leader = leader_client.server.app[keys.relay]
    _, token = await make_user(leader_client)
    strategy = await create_strategy(leader_client, token)
    ws = await connect(standby_client, token)
    assert "result" in await request(ws, "subscribe", channel=f"alerts:{strategy['id']}")

    # The leader's rounds (which mark) hang until its connection is cut.
    async def hanging_round(conn: Any) -> tuple[int, bool]:
        await conn.fetchval("SELECT pg_sleep(3600)")
        return 0, True

    monkeypatch.setattr(leader, "relay_once", hanging_round)
    before = leader.handed_off
    # Handed off and published by the leader, never marked by it.
    for n in range(10):
        await _post(leader_client, strategy, str(n))
    await eventually(lambda: leader.handed_off - before == 10, what="10 hand-offs published")
    # Committed on the standby: its relay cannot publish, the leader's rounds hang.
    for n in range(10, 20):
        await _post(standby_client, strategy, str(n))
    # The leader dies: its session (and lock) ends; the standby's relay takes over.
    async with leader_client.server.app[keys.pool].acquire() as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objid = $1 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            outbox.RELAY_LOCK_ID & 0xFFFFFFFF,
        )
    assert await _messages(ws, 20) == [str(n) for n in range(20)]
    async with leader_client.server.app[keys.pool].acquire() as conn:
        await eventually(
            _all_marked(conn, f"alerts:{strategy['id']}"), what="every event marked published"
        )
    monkeypatch.undo()
    await _nothing_more(standby_client, strategy, ws)


def _all_marked(conn: Any, channel: str) -> Callable[[], Any]:
    async def check() -> bool:
        left: int = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE $1 = ANY(channels) AND published_at IS NULL",
            channel,
        )
        return left == 0

    return check
