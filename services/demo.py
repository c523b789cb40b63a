"""``arena-realtime seed-demo``: a realistic marketplace in an empty database.

Everything goes through the storage repositories and the same outbox events the REST API
records, in one transaction: a dashboard that subscribes after start-up sees consistent live
events (the relay publishes them once the service runs), and a failure leaves nothing behind.
A database that already holds users, requests, proposals, strategies or alerts is refused.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson

from services.alerts import ingest
from services.alerts.signatures import (
    SecretBox,
    new_signing_secret,
    url_secret,
    url_secret_hash,
)
from services.marketplace.events import record_proposal_event, record_request_event
from services.marketplace.models import ProposalAnswer, Requirement
from storage import alerts, proposals, strategies, users
from storage import requests as requests_db

#: tables whose rows make a database "not empty" for the demo
CHECKED_TABLES = ("users", "requests", "proposals", "strategies", "alerts")

BUYERS = (
    ("maria.keller@northwind.example", "Maria Keller, Northwind Logistics"),
    ("tom.okafor@brightdental.example", "Tom Okafor, Bright Dental Group"),
)
VENDORS = (
    ("sales@pipelinecrm.example", "PipelineCRM"),
    ("bids@helpdeskly.example", "Helpdeskly"),
    ("team@ledgerlite.example", "LedgerLite"),
)
ADMIN = "admin@arena.example"


class NotEmpty(Exception):
    """The database already holds data; the message says what."""


@dataclass(slots=True)
class DemoSummary:
    """What was created, for the command's output."""

    buyers: list[str] = field(default_factory=list)
    vendors: list[str] = field(default_factory=list)
    admin: str = ADMIN
    requests: int = 0
    proposals: int = 0
    strategies: int = 0
    alerts: int = 0
    events: int = 0
    strategy_id: str = ""
    tradingview_url: str = ""


async def existing_rows(conn: asyncpg.Connection) -> dict[str, int]:
    """Row counts of :data:`CHECKED_TABLES` that are not zero."""
    counts = {}
    for table in CHECKED_TABLES:
        count = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
        if count:
            counts[table] = int(count)
    return counts


_REQUESTS = (
    (
        0,
        "CRM for a 40-person field sales team",
        "We replace spreadsheets. Hosted in the EU, offline mobile app for reps on the road.",
        [
            {"name": "SSO", "description": "SAML 2.0 with our Entra ID", "priority": "must"},
            {"name": "Offline mobile", "description": "iOS and Android", "priority": "must"},
            {"name": "Pipeline reports", "priority": "should"},
        ],
        Decimal("42000.00"),
        45,
    ),
    (
        1,
        "Help desk for 12 clinics",
        "Patients and staff open tickets by e-mail and phone; SLA timers per clinic.",
        [
            {"name": "SLA timers", "priority": "must"},
            {"name": "Phone integration", "description": "our SIP provider", "priority": "should"},
            {"name": "Satisfaction surveys", "priority": "nice"},
        ],
        Decimal("18500.00"),
        30,
    ),
    (
        0,
        "Accounts-payable automation",
        "Invoice capture, three-way matching with purchase orders, DATEV export.",
        [
            {"name": "OCR capture", "priority": "must"},
            {"name": "DATEV export", "priority": "must"},
        ],
        Decimal("27000.00"),
        60,
    ),
)

#: (request index, vendor index, price, summary, final status)
_PROPOSALS = (
    (0, 0, "39900.00", "PipelineCRM Enterprise: SSO, offline apps, EU hosting.", "shortlisted"),
    (0, 2, "44500.00", "LedgerLite Sales add-on with our mobile kit.", "rejected"),
    (1, 1, "17250.00", "Helpdeskly Clinics edition, SLA per site.", "shortlisted"),
    (1, 0, "21000.00", "PipelineCRM Service module.", "submitted"),
    (2, 2, "25800.00", "LedgerLite AP: OCR, matching, DATEV.", "submitted"),
)

_ALERTS = (
    ("BTCUSD", "buy", "0.25", "64250.5", "Momentum crossed above the 20-period band"),
    ("BTCUSD", "sell", "0.10", "65890.0", "Partial take-profit"),
    ("ETHUSD", "buy", "2", "3120.75", "Breakout above the weekly high"),
    ("BTCUSD", "buy", "0.15", "63980.0", "Re-entry on pullback"),
    ("SOLUSD", "sell", "40", "148.2", "Stop hit"),
    ("ETHUSD", "sell", "1", "3188.4", "Trailing stop"),
)


async def seed_demo(
    conn: asyncpg.Connection, service_secret: str, public_base_url: str
) -> DemoSummary:
    """Fill an empty, migrated database with the demo; raises :class:`NotEmpty` otherwise."""
    summary = DemoSummary()
    async with conn.transaction():
        # Taken inside the transaction with a lock, so two concurrent runs cannot both seed.
        await conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
        found = await existing_rows(conn)
        if found:
            listed = ", ".join(f"{count} {table}" for table, count in found.items())
            raise NotEmpty(
                f"the database is not empty ({listed}); seed-demo only fills an empty one"
            )
        events_before = await conn.fetchval("SELECT count(*) FROM outbox")
        buyers = [await users.get_or_create(conn, email, "buyer") for email, _ in BUYERS]
        vendors = [await users.get_or_create(conn, email, "vendor") for email, _ in VENDORS]
        await users.get_or_create(conn, ADMIN, "admin")
        summary.buyers = [user.email for user in buyers]
        summary.vendors = [user.email for user in vendors]

        now = datetime.now(UTC)
        created = []
        for owner, title, description, requirements, budget, days in _REQUESTS:
            row = await requests_db.create(
                conn,
                owner_id=buyers[owner].id,
                title=title,
                description=description,
                # validated and shaped by the API's own models, as if posted over REST
                requirements=[Requirement.model_validate(r).model_dump() for r in requirements],
                budget=budget,
                currency="EUR",
                deadline=now + timedelta(days=days),
            )
            await record_request_event(conn, "created", row)
            created.append(row)
        summary.requests = len(created)

        for request_index, vendor_index, price, text, final in _PROPOSALS:
            parent = created[request_index]
            answers = [
                ProposalAnswer(
                    requirement=req["name"], response="Included in the standard plan."
                ).model_dump()
                for req in parent.requirements
            ]
            proposal = await proposals.create(
                conn,
                request_id=parent.id,
                vendor_id=vendors[vendor_index].id,
                price=Decimal(price),
                currency="EUR",
                summary=text,
                answers=answers,
            )
            await record_proposal_event(conn, "created", proposal, parent.owner_id)
            if final != "submitted":
                proposal, previous = await proposals.set_status(conn, proposal.id, final)
                await record_proposal_event(
                    conn, "status_changed", proposal, parent.owner_id, previous_status=previous
                )
            summary.proposals += 1

        strategy_id = uuid.uuid4()
        secret, signing = url_secret(), new_signing_secret()
        sealed = SecretBox(service_secret).seal(strategy_id, signing)
        await strategies.create(
            conn, strategy_id, buyers[0].id, "BTC momentum (demo)", url_secret_hash(secret), sealed
        )
        summary.strategies = 1
        summary.strategy_id = str(strategy_id)
        summary.tradingview_url = f"{public_base_url}/webhooks/tv/{secret}"

        for minutes, (ticker, action, quantity, price, message) in enumerate(_ALERTS):
            alert_time = now - timedelta(minutes=5 * (len(_ALERTS) - minutes))
            body = {
                "ticker": ticker,
                "action": action,
                "quantity": quantity,
                "price": price,
                "time": alert_time.isoformat(),
                "message": message,
            }
            raw = orjson.dumps(body).decode()
            result = await ingest.insert_with_created_event(
                conn,
                alerts.NewAlert(
                    strategy_id=strategy_id,
                    source="tradingview",
                    raw_body=raw,
                    content_type="application/json",
                    body_sha256=hashlib.sha256(raw.encode()).digest(),
                    ticker=ticker,
                    action=action,
                    quantity=Decimal(quantity),
                    price=Decimal(price),
                    alert_time=alert_time,
                    message=message,
                ),
            )
            assert result.alert is not None
            summary.alerts += 1
        summary.events = int(await conn.fetchval("SELECT count(*) FROM outbox")) - int(
            events_before
        )
    return summary
