"""Who may move a proposal where (services.marketplace.proposals.check_mover), without HTTP:
the rule every client path (PUT .../status, PUT /proposals/{id}) goes through."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.auth.principal import Principal
from services.errors import Forbidden
from services.marketplace.models import ProposalOut, ProposalSummary, RequestOut
from services.marketplace.proposals import check_mover
from storage.proposals import Proposal
from storage.requests import SoftwareRequest

OWNER = uuid.uuid4()
VENDOR = uuid.uuid4()
NOW = datetime(2026, 11, 30, tzinfo=UTC)
REQUEST = SoftwareRequest(
    uuid.uuid4(),
    OWNER,
    "CRM",
    "",
    [{"name": "SSO", "description": "", "priority": "must"}],
    Decimal("10.00"),
    "EUR",
    None,
    "open",
    NOW,
    NOW,
    1,
)
PROPOSAL = Proposal(
    uuid.uuid4(), REQUEST.id, VENDOR, Decimal("9.50"), "EUR", "Ours", [], "submitted", NOW, NOW, 1
)


def who(user_id: uuid.UUID, role: str) -> Principal:
    return Principal(str(user_id), role, None, "jti", 0.0)


@pytest.mark.parametrize("status", ["shortlisted", "rejected", "accepted"])
def test_only_the_owner_or_an_admin_judges(status: str) -> None:
    check_mover(who(OWNER, "buyer"), status, PROPOSAL, REQUEST)
    check_mover(who(uuid.uuid4(), "admin"), status, PROPOSAL, REQUEST)
    with pytest.raises(Forbidden):
        check_mover(who(VENDOR, "vendor"), status, PROPOSAL, REQUEST)


def test_only_the_vendor_or_an_admin_withdraws() -> None:
    check_mover(who(VENDOR, "vendor"), "withdrawn", PROPOSAL, REQUEST)
    check_mover(who(uuid.uuid4(), "admin"), "withdrawn", PROPOSAL, REQUEST)
    with pytest.raises(Forbidden):
        check_mover(who(OWNER, "buyer"), "withdrawn", PROPOSAL, REQUEST)


def test_rows_become_the_api_representation() -> None:
    request = RequestOut.json_of(REQUEST)
    assert request["budget"] == "10.00"
    assert request["requirements"] == [{"name": "SSO", "description": "", "priority": "must"}]
    proposal = ProposalOut.json_of(PROPOSAL)
    assert proposal["vendor_id"] == str(VENDOR)
    assert proposal["price"] == "9.50"
    # What rivals see in the room: no price, no texts.
    assert ProposalSummary.json_of(PROPOSAL) == {
        "id": str(PROPOSAL.id),
        "vendor_id": str(VENDOR),
        "status": "submitted",
    }
