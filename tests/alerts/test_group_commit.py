"""Group commit of signed webhooks: concurrent alerts share transactions, each request is
answered only after its alert committed, a database failure fails every waiting request with
503 and publishes nothing, and one bad alert does not fail the others of its batch."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from handlers import keys
from server.app import create_app
from services.alerts import ingest
from services.alerts.body import parse
from services.alerts.group_commit import GroupCommit
from storage.errors import NotFound
from tests.alerts.util import (
    TcpProxy,
    count_rows,
    create_strategy,
    post_signed,
    signed_headers,
    tv_path,
)
from tests.helpers import connect, eventually, make_user, receive, request


async def _lock_waiters(conn: asyncpg.Connection) -> bool:
    """Whether some backend of this database waits for a lock."""
    # Inside a transaction the statistics views are a snapshot from the first read: drop it.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    return count > 0


async def test_concurrent_webhooks_share_transactions_and_each_is_published_once(
    client: Any,
) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    ws = await connect(client, token)
    assert "result" in await request(ws, "subscribe", channel=f"alerts:{strategy['id']}")
    group = client.server.app[keys.group_commit]
    before = group.transactions
    # Hold the strategy row so the first transactions wait and later webhooks queue up.
    async with client.server.app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", strategy["id"])
        posts = [
            asyncio.create_task(post_signed(client, strategy, {"ticker": "T", "message": str(n)}))
            for n in range(40)
        ]
        await eventually(lambda: group.waiting == 40, what="40 webhooks waiting to commit")
        assert not any(task.done() for task in posts)  # no answer before the commit
    responses = await asyncio.gather(*posts)
    replies = [await response.json() for response in responses]
    assert [response.status for response in responses] == [201] * 40
    assert len({reply["id"] for reply in replies}) == 40
    assert group.transactions - before < 40
    assert await count_rows(client, "alerts", strategy["id"]) == 40
    seen: list[str] = []
    while len(seen) < 40:
        frame = await receive(ws)
        seen.append(frame["data"]["alert"]["message"])
    assert sorted(seen, key=int) == [str(n) for n in range(40)]


async def _samples(client: Any) -> dict[tuple[str, str], float]:
    """/metrics as {(sample name, its ``le`` label or ""): value}."""
    text = await (await client.get("/metrics")).text()
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_acknowledgements_wait_and_commit_times_are_on_metrics(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    group = client.server.app[keys.group_commit]
    before, transactions = await _samples(client), group.transactions
    held = 0.3
    async with client.server.app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", strategy["id"])

        async def transactions_waiting(count: int) -> bool:
            await locker.execute("SELECT pg_stat_clear_snapshot()")
            waiting: int = await locker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            return waiting == count

        # one at a time, so that each of the 4 transaction slots holds one of them, waiting for
        # the lock
        posts = []
        for n in range(4):
            posts.append(asyncio.create_task(post_signed(client, strategy, {"message": str(n)})))
            await eventually(partial(transactions_waiting, n + 1), what="a transaction waiting")
        posts += [
            asyncio.create_task(post_signed(client, strategy, {"message": str(n)}))
            for n in range(4, 20)
        ]
        await eventually(lambda: group.waiting == 20, what="20 webhooks waiting to commit")
        await asyncio.sleep(held)  # the 16 later ones wait at least this long for a slot
    assert [response.status for response in await asyncio.gather(*posts)] == [201] * 20
    after = await _samples(client)

    def grew(name: str, le: str = "") -> float:
        return after[name, le] - before.get((name, le), 0.0)

    # every alert's wait was measured; only the 4 that found a free slot waited less than the
    # time the others queued behind the held lock
    assert grew("arena_alert_commit_wait_seconds_count") == 20
    assert grew("arena_alert_commit_wait_seconds_bucket", "0.25") <= 4
    # one observation per committed group, and the groups hold the 20 alerts
    assert grew("arena_alert_commit_seconds_count") == group.transactions - transactions
    assert grew("arena_alert_commit_group_size_sum") == 20
    assert grew("arena_alert_commit_seconds_sum") >= held  # the first groups waited for the lock


async def test_a_database_failure_fails_every_waiting_webhook_and_publishes_nothing(
    aiohttp_client: Any, make_settings: Any, database_url: str
) -> None:
    target = urlsplit(database_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}"))
    client = await aiohttp_client(create_app(make_settings(DATABASE_URL=proxied)))
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    group = client.server.app[keys.group_commit]
    direct = await asyncpg.connect(database_url)
    try:
        async with direct.transaction():
            await direct.execute(
                "SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", uuid.UUID(strategy["id"])
            )
            posts = [
                asyncio.create_task(post_signed(client, strategy, {"message": str(n)}))
                for n in range(12)
            ]
            await eventually(lambda: group.waiting == 12, what="12 webhooks waiting to commit")
            await eventually(lambda: _lock_waiters(direct), what="a transaction waiting")
            # The database goes away: connections drop and the server ends the transactions
            # (a backend waiting on a lock would otherwise go on and commit once it is free).
            await proxy.cut()
            await direct.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            responses = await asyncio.gather(*posts)
        assert [response.status for response in responses] == [503] * 12
        assert await direct.fetchval("SELECT count(*) FROM alerts") == 0
        assert (
            await direct.fetchval(
                "SELECT count(*) FROM outbox WHERE $1 = ANY(channels)", f"alerts:{strategy['id']}"
            )
            == 0
        )
    finally:
        await direct.close()


async def test_one_failing_alert_does_not_fail_the_others_of_its_transaction(
    client: Any,
) -> None:
    app = client.server.app
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    known = uuid.UUID(strategy["id"])
    group = GroupCommit(app[keys.pool], app[keys.relay], max_flushes=1)
    body = orjson.dumps({"ticker": "T"})
    parsed = parse(body, "application/json", None)

    def alert(strategy_id: uuid.UUID, n: int) -> Any:
        return ingest.new_alert(strategy_id, "signed", body, parsed, f"msg_{n}")

    async with app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", known)
        first = asyncio.create_task(group.insert(alert(known, 0)))
        await eventually(lambda: _lock_waiters(locker), what="the first transaction waiting")
        # These wait for the one slot and then share a transaction; one names no strategy.
        batch = [
            asyncio.create_task(group.insert(alert(known, 1))),
            asyncio.create_task(group.insert(alert(uuid.uuid4(), 2))),
            asyncio.create_task(group.insert(alert(known, 3))),
        ]
        await eventually(lambda: group.waiting == 4, what="4 alerts waiting")
    assert not (await first).duplicate
    outcomes = await asyncio.gather(*batch, return_exceptions=True)
    assert isinstance(outcomes[1], NotFound)
    assert group.transactions == 2  # the first alone, then the three together (rolled back, redone)
    assert [o.duplicate for o in (outcomes[0], outcomes[2])] == [False, False]  # type: ignore[union-attr]
    assert await count_rows(client, "alerts", strategy["id"]) == 3
    assert await count_rows(client, "outbox", strategy["id"]) == 3


@pytest.mark.parametrize("replays", [30])
async def test_replays_inside_one_transaction_store_one_alert(client: Any, replays: int) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    body = orjson.dumps({"ticker": "R"})
    headers = signed_headers(strategy["secrets"]["signing_secret"], body, msg_id="msg_same")
    url = f"/webhooks/alerts/{strategy['id']}"
    group = client.server.app[keys.group_commit]
    async with client.server.app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", strategy["id"])
        posts = [
            asyncio.create_task(client.post(url, data=body, headers=headers))
            for _ in range(replays)
        ]
        await eventually(lambda: group.waiting == replays, what="the replays waiting")
    responses = await asyncio.gather(*posts)
    statuses = sorted(response.status for response in responses)
    assert statuses == [200] * (replays - 1) + [201]
    ids = {(await response.json())["id"] for response in responses}
    assert len(ids) == 1
    assert await count_rows(client, "alerts", strategy["id"]) == 1
    assert await count_rows(client, "outbox", strategy["id"]) == 1


async def test_a_group_with_replays_inside_it_and_of_stored_alerts(client: Any) -> None:
    """One statement per group: replays of a stored webhook id and repeats inside the group
    answer with the original's id; new ones are stored and published once, in order, with the
    database's ``received_at`` in the event."""
    app = client.server.app
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    known = uuid.UUID(strategy["id"])
    ws = await connect(client, token)
    assert "result" in await request(ws, "subscribe", channel=f"alerts:{strategy['id']}")
    group = GroupCommit(app[keys.pool], app[keys.relay], max_flushes=1)

    def alert(msg_id: str, message: str) -> Any:
        body = orjson.dumps({"ticker": "T", "message": message})
        return ingest.new_alert(
            known, "signed", body, parse(body, "application/json", None), msg_id
        )

    stored = await group.insert(alert("msg_stored", "stored"))
    assert stored.alert is not None
    assert not stored.duplicate
    async with app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", known)
        first = asyncio.create_task(group.insert(alert("msg_0", "0")))
        await eventually(lambda: _lock_waiters(locker), what="the first transaction waiting")
        before = group.transactions
        batch = [
            asyncio.create_task(group.insert(alert(msg_id, message)))
            for msg_id, message in [
                ("msg_stored", "replayed"),
                ("msg_a", "a"),
                ("msg_a", "a again"),
                ("msg_b", "b"),
                ("msg_0", "0 again"),
            ]
        ]
        await eventually(lambda: group.waiting == 6, what="6 alerts waiting")
    zero = await first
    replay, a, a_again, b, zero_again = await asyncio.gather(*batch)
    assert group.transactions - before == 2  # the first alone, then the five in one
    assert replay.duplicate
    assert replay.alert == stored.alert
    assert not a.duplicate
    assert a.alert is not None
    assert a.alert.message == "a"
    assert a_again.duplicate
    assert a_again.alert == a.alert
    assert not b.duplicate
    assert b.alert is not None
    assert zero_again.duplicate
    assert zero_again.alert == zero.alert
    assert await count_rows(client, "alerts", strategy["id"]) == 4
    assert await count_rows(client, "outbox", strategy["id"]) == 4
    frames = [(await receive(ws))["data"]["alert"] for _ in range(4)]
    assert [frame["message"] for frame in frames] == ["stored", "0", "a", "b"]
    assert frames[2]["id"] == str(a.alert.id)
    assert frames[2]["received_at"] == a.alert.received_at.isoformat()
    assert frames[3]["received_at"] == b.alert.received_at.isoformat()


async def test_a_group_replaying_an_id_another_transaction_is_inserting(client: Any) -> None:
    """The group's statement waits for the concurrent insert of the same webhook id; once that
    commits, the replay answers with that alert and stores nothing."""
    app = client.server.app
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    known = uuid.UUID(strategy["id"])
    body = orjson.dumps({"ticker": "T"})
    parsed = parse(body, "application/json", None)
    group = GroupCommit(app[keys.pool], app[keys.relay], max_flushes=1)
    async with app[keys.pool].acquire() as other:
        tx = other.transaction()
        await tx.start()
        try:
            theirs = await ingest.insert_with_created_event(
                other, ingest.new_alert(known, "signed", body, parsed, "msg_race")
            )
            outcome = asyncio.create_task(
                group.insert(ingest.new_alert(known, "signed", body, parsed, "msg_race"))
            )
            fresh = asyncio.create_task(
                group.insert(ingest.new_alert(known, "signed", body, parsed, "msg_fresh"))
            )
            await eventually(lambda: _lock_waiters(other), what="the group waiting")
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
    result = await outcome
    assert result.duplicate
    assert result.alert == theirs.alert
    assert not (await fresh).duplicate
    assert await count_rows(client, "alerts", strategy["id"]) == 2
    assert await count_rows(client, "outbox", strategy["id"]) == 2


async def _post_tv(client: Any, strategy: dict[str, Any], body: bytes) -> Any:
    return await client.post(
        tv_path(strategy), data=body, headers={"Content-Type": "application/json"}
    )


async def test_concurrent_identical_tradingview_bodies_store_one_alert(client: Any) -> None:
    """TradingView retries without an id: identical bodies waiting together (in one group and
    across the concurrent groups, which lock their bodies in key order) store one alert; a
    body stored before is a duplicate too; different bodies each get their own alert."""
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    ws = await connect(client, token)
    assert "result" in await request(ws, "subscribe", channel=f"alerts:{strategy['id']}")
    group = client.server.app[keys.group_commit]
    earlier = orjson.dumps({"ticker": "E", "message": "earlier"})
    first = await _post_tv(client, strategy, earlier)
    assert first.status == 201
    earlier_id = (await first.json())["id"]
    assert (await receive(ws))["data"]["alert"]["id"] == earlier_id
    same = orjson.dumps({"ticker": "S", "message": "same"})
    others = [orjson.dumps({"ticker": "O", "message": str(n)}) for n in range(5)]
    bodies = [same] * 20 + [earlier] * 5 + others + [same] * 10
    before = group.transactions
    async with client.server.app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", strategy["id"])
        posts = [asyncio.create_task(_post_tv(client, strategy, body)) for body in bodies]
        await eventually(lambda: group.waiting == len(bodies), what="the webhooks waiting")
        assert not any(task.done() for task in posts)
    responses = await asyncio.gather(*posts)
    replies = [await response.json() for response in responses]
    assert group.transactions - before < len(bodies)
    by_body: dict[bytes, list[tuple[int, str]]] = {}
    for body, response, reply in zip(bodies, responses, replies, strict=True):
        by_body.setdefault(body, []).append((response.status, reply["id"]))
    same_statuses = sorted(status for status, _ in by_body[same])
    assert same_statuses == [200] * 29 + [201]
    assert len({alert_id for _, alert_id in by_body[same]}) == 1
    assert by_body[earlier] == [(200, earlier_id)] * 5
    for body in others:
        assert [status for status, _ in by_body[body]] == [201]
    assert await count_rows(client, "alerts", strategy["id"]) == 1 + 1 + 5
    assert await count_rows(client, "outbox", strategy["id"]) == 1 + 1 + 5
    published = [(await receive(ws))["data"]["alert"]["message"] for _ in range(6)]
    assert sorted(published) == sorted(["same", *(str(n) for n in range(5))])


async def test_a_tradingview_group_with_a_failing_row_commits_the_others(client: Any) -> None:
    """One alert of a TradingView group names a deleted strategy: it alone fails (404), the
    others are stored once each, an identical body of the group included once."""
    app = client.server.app
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    known = uuid.UUID(strategy["id"])
    group = GroupCommit(app[keys.pool], app[keys.relay], max_flushes=1)

    def alert(strategy_id: uuid.UUID, message: str) -> Any:
        body = orjson.dumps({"ticker": "T", "message": message})
        return ingest.new_alert(
            strategy_id, "tradingview", body, parse(body, "application/json", None), None
        )

    async with app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", known)
        first = asyncio.create_task(group.insert(alert(known, "0"), 60))
        await eventually(lambda: _lock_waiters(locker), what="the first transaction waiting")
        batch = [
            asyncio.create_task(group.insert(new, 60))
            for new in [
                alert(known, "a"),
                alert(uuid.uuid4(), "gone"),
                alert(known, "a"),
                alert(known, "0"),
            ]
        ]
        await eventually(lambda: group.waiting == 5, what="5 alerts waiting")
    zero = await first
    a, gone, a_again, zero_again = await asyncio.gather(*batch, return_exceptions=True)
    assert isinstance(gone, NotFound)
    assert not a.duplicate  # type: ignore[union-attr]
    assert a_again.duplicate  # type: ignore[union-attr]
    assert a_again.alert == a.alert  # type: ignore[union-attr]
    assert zero_again.duplicate  # type: ignore[union-attr]
    assert zero_again.alert == zero.alert  # type: ignore[union-attr]
    assert await count_rows(client, "alerts", strategy["id"]) == 2
    assert await count_rows(client, "outbox", strategy["id"]) == 2


class LoggingPool:
    """The app's pool, recording the statements sent on the connections it hands out."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.statements: list[str] = []

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        def logger(record: Any) -> None:
            self.statements.append(record.query)

        async with self.pool.acquire() as conn:
            conn.add_query_logger(logger)
            try:
                yield conn
            finally:
                conn.remove_query_logger(logger)


@pytest.mark.parametrize(("source", "round_trips"), [("signed", 1), ("tradingview", 3)])
async def test_a_group_is_one_statement(client: Any, source: str, round_trips: int) -> None:
    """A group of signed webhooks is one statement (one round trip, one commit); a group of
    TradingView bodies is ``BEGIN`` + its locks, the statement, ``COMMIT``."""
    app = client.server.app
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    known = uuid.UUID(strategy["id"])
    pool = LoggingPool(app[keys.pool])
    group = GroupCommit(pool, app[keys.relay], max_flushes=1)

    def alert(n: int) -> Any:
        body = orjson.dumps({"ticker": "T", "message": str(n)})
        msg_id = f"msg_{n}" if source == "signed" else None
        return ingest.new_alert(known, source, body, parse(body, "application/json", None), msg_id)

    async with app[keys.pool].acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", known)
        first = asyncio.create_task(group.insert(alert(0), 60))
        await eventually(lambda: _lock_waiters(locker), what="the first transaction waiting")
        before = len(pool.statements)
        batch = [asyncio.create_task(group.insert(alert(n), 60)) for n in range(1, 21)]
        await eventually(lambda: group.waiting == 21, what="21 alerts waiting")
    await first
    after_first = len(pool.statements)
    assert not any(result.duplicate for result in await asyncio.gather(*batch))
    assert after_first >= before
    # asyncpg's own type introspection on first use of a statement is not counted.
    group_statements = [
        query
        for query in pool.statements[after_first:]
        if "jit" not in query and "pg_catalog" not in query
    ]
    assert len(group_statements) == round_trips, group_statements
    assert await count_rows(client, "alerts", strategy["id"]) == 21
    assert await count_rows(client, "outbox", strategy["id"]) == 21
