"""The offline analyser: real, deterministic results from the stored data, streamed."""

from __future__ import annotations

from typing import Any

from tests.analysis.support import (
    PROPOSALS,
    check_stream,
    seed_request,
    start,
    subscribe,
    until_end,
    wait_status,
)
from tests.helpers import connect, make_user


async def test_comparison_ranks_scores_and_recommends(offline_client: Any) -> None:
    owner, token = await make_user(offline_client, "buyer")
    request_id = await seed_request(offline_client, owner)
    ws = await connect(offline_client, token)
    created = await start(offline_client, token, request_id)
    assert (created["provider"], created["model"]) == ("offline", "offline-analyst-1")
    pubs, _ = await subscribe(ws, created["channel"], created["since"])
    pubs = await until_end(ws, created["channel"], pubs)
    streamed = check_stream(pubs)
    done = await wait_status(offline_client, token, created["id"], "done")
    assert done["text"] == streamed
    assert done["usage"]["output_tokens"] > 50
    assert done["stop_reason"] == "end_turn"
    text = done["text"]

    # P1 12,000 (SSO, audit), P2 9,000 (SSO partial), P3 15,000 (everything); budget 13,000.
    ranking = text.split("## Price ranking")[1].split("##")[0]
    assert ranking.index("1. [P2]") < ranking.index("2. [P1]") < ranking.index("3. [P3]")
    assert "31% under budget" in ranking
    assert "15% over budget" in ranking
    assert "[P3] 100% weighted coverage" in text
    assert "[P1] 83% weighted coverage" in text
    assert "[P2] 25% weighted coverage" in text
    assert "Every requirement is fully met by at least one open proposal." in text
    assert "Recommended: [P3]" in text
    assert "Risks: the price is over budget." in text

    again = await start(offline_client, token, request_id)
    repeat = await wait_status(offline_client, token, again["id"], "done")
    assert repeat["text"] == text, "the offline analysis must be deterministic"
    await ws.close()

    metrics = await (await offline_client.get("/metrics")).text()
    assert 'arena_analyses_total{provider="offline",status="done"} 2.0' in metrics
    assert 'arena_analyses_active{state="running"} 0.0' in metrics


async def test_withdrawn_proposals_and_missing_musts_change_the_result(
    offline_client: Any,
) -> None:
    owner, token = await make_user(offline_client, "buyer")
    proposals = [
        PROPOSALS[0],
        ("8000.00", {"Audit log": "full", "Dark mode": "full"}, "submitted"),
        (PROPOSALS[2][0], PROPOSALS[2][1], "withdrawn"),
    ]
    request_id = await seed_request(offline_client, owner, proposals=proposals)
    created = await start(offline_client, token, request_id)
    text = (await wait_status(offline_client, token, created["id"], "done"))["text"]

    assert "(withdrawn, not considered)" in text
    assert "[P2] leaves must-have [R1] unanswered or unmet." in text
    assert "No open proposal fully meets: [R3] Dark mode (nice)." not in text
    assert "Recommended: [P1]" in text
    assert "Answers every must-have requirement." in text


async def test_summary_of_a_request_without_proposals(offline_client: Any) -> None:
    owner, token = await make_user(offline_client, "buyer")
    request_id = await seed_request(offline_client, owner, proposals=[], budget=None)
    created = await start(offline_client, token, request_id, kind="summarize_request")
    text = (await wait_status(offline_client, token, created["id"], "done"))["text"]

    assert text.startswith("# Summary of CRM for the sales team")
    assert "- must: [R1] SSO" in text
    assert "- should: [R2] Audit log" in text
    assert "- nice: [R3] Dark mode" in text
    assert "Budget not stated" in text
    assert "0 proposal(s), 0 open." in text


async def test_malformed_stored_json_is_skipped_not_fatal(offline_client: Any) -> None:
    owner, token = await make_user(offline_client, "buyer")
    requirements: list[Any] = [
        1,
        {"name": ""},
        {"name": "Export", "priority": "urgent"},
        {"name": "API", "priority": "must", "description": 7},
    ]
    proposals = [("100.00", {"API": "full", "Export": "sometimes"}, "submitted")]
    request_id = await seed_request(
        offline_client, owner, requirements=requirements, proposals=proposals
    )
    created = await start(offline_client, token, request_id)
    done = await wait_status(offline_client, token, created["id"], "done", "failed")
    assert done["status"] == "done", done["error"]
    # Invalid items are dropped, an unknown priority counts as "should", compliance as "none".
    assert "No open proposal fully meets: [R1] Export (should)." in done["text"]
    assert "[P1] 60% weighted coverage" in done["text"]
