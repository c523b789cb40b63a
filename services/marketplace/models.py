"""Pydantic models of the requests/proposals API: validation, responses and the OpenAPI schema.

Input models forbid unknown fields; money is a decimal with two places (accepted as a number or
a string, returned as a string so no precision is lost); timestamps must carry a time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

RequestStatus = Literal["open", "closed", "awarded"]
ProposalStatus = Literal["submitted", "shortlisted", "rejected", "accepted", "withdrawn"]
Priority = Literal["must", "should", "nice"]
Compliance = Literal["full", "partial", "none"]

MAX_PAGE = 100

# PostgreSQL text cannot hold NUL characters; refuse them with a 400 instead of a 500.
_NO_NUL = r"^[^\x00]*$"


def _text(min_length: int, max_length: int) -> StringConstraints:
    return StringConstraints(
        strip_whitespace=True, min_length=min_length, max_length=max_length, pattern=_NO_NUL
    )


Title = Annotated[str, _text(1, 200)]
LongText = Annotated[str, _text(0, 20000)]
Summary = Annotated[str, _text(1, 20000)]
Name = Annotated[str, _text(1, 100)]
ShortText = Annotated[str, _text(0, 2000)]
Answer = Annotated[str, _text(0, 5000)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date is outside the supported range") from None


#: An aware timestamp, normalised to UTC (an offset may not push it past year 9999).
Timestamp = Annotated[AwareDatetime, AfterValidator(_utc)]
Version = Annotated[int, Field(ge=1, le=2**31 - 1, strict=True)]
Cursor = Annotated[str, StringConstraints(max_length=200, pattern=r"^[A-Za-z0-9_\-=]*$")]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Requirement(_Input):
    """One named criterion a proposal is judged on."""

    name: Name
    description: ShortText = ""
    priority: Priority = "must"


class ProposalAnswer(_Input):
    """A vendor's answer to one requirement of the request."""

    requirement: Name = Field(description="The name of one of the request's requirements")
    response: Answer = ""
    compliance: Compliance = "full"


def _unique(names: list[str], what: str) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique")


class RequestCreate(_Input):
    """Body of ``POST /api/v1/requests``."""

    title: Title
    description: LongText = ""
    requirements: list[Requirement] = Field(default_factory=list, max_length=50)
    budget: Money | None = None
    currency: Currency = "USD"
    deadline: Timestamp | None = None

    @model_validator(mode="after")
    def _names_unique(self) -> RequestCreate:
        _unique([r.name for r in self.requirements], "requirement names")
        return self


class RequestPatch(_Input):
    """Body of ``PATCH /api/v1/requests/{id}``: only the fields given change.

    ``status`` may move between ``open`` and ``closed``; ``awarded`` is reached by accepting a
    proposal. ``version`` (or an ``If-Match`` header) makes the write conditional.
    """

    title: Title | None = None
    description: LongText | None = None
    requirements: list[Requirement] | None = Field(default=None, max_length=50)
    budget: Money | None = None
    currency: Currency | None = None
    deadline: Timestamp | None = None
    status: Literal["open", "closed"] | None = None
    version: Version | None = None

    @model_validator(mode="after")
    def _names_unique(self) -> RequestPatch:
        if self.requirements is not None:
            _unique([r.name for r in self.requirements], "requirement names")
        for name in ("title", "description", "requirements", "currency", "status"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self


class _Output(BaseModel):
    """A resource as the API and its live events show it, built from the storage row."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, row: Any) -> Self:
        """The model of a storage row (a dataclass with the same field names)."""
        return cls.model_validate(row, from_attributes=True)

    @classmethod
    def json_of(cls, row: Any) -> dict[str, Any]:
        """The JSON-ready form of a storage row: what REST responses and events carry."""
        return cls.of(row).model_dump(mode="json")


class RequestOut(_Output):
    """A software request as returned by the API and carried by ``request.*`` events."""

    id: UUID
    owner_id: UUID
    title: str
    description: str
    requirements: list[Requirement]
    budget: Decimal | None
    currency: str
    deadline: datetime | None
    status: RequestStatus
    created_at: datetime
    updated_at: datetime
    version: int


class RequestPage(BaseModel):
    """One page of requests, newest first."""

    items: list[RequestOut]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page")


class RequestQuery(_Input):
    """Filters of ``GET /api/v1/requests``."""

    status: RequestStatus | None = None
    owner: UUID | None = Field(default=None, description="Only requests of this buyer")
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: Cursor | None = None


class ProposalCreate(_Input):
    """Body of ``POST /api/v1/requests/{id}/proposals``."""

    price: Money
    currency: Currency = "USD"
    summary: Summary
    answers: list[ProposalAnswer] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _requirements_unique(self) -> ProposalCreate:
        _unique([a.requirement for a in self.answers], "answered requirements")
        return self


class ProposalStatusChange(_Input):
    """Body of ``PUT /api/v1/proposals/{id}/status``.

    The buyer who owns the request shortlists, rejects or accepts; the vendor withdraws.
    ``version`` (or an ``If-Match`` header) makes the change conditional.
    """

    status: Literal["shortlisted", "rejected", "accepted", "withdrawn"]
    version: Version | None = None


class ProposalOut(_Output):
    """A proposal as returned by the API and sent to its two parties in ``proposal.*`` events."""

    id: UUID
    request_id: UUID
    vendor_id: UUID
    price: Decimal
    currency: str
    summary: str
    answers: list[ProposalAnswer]
    status: ProposalStatus
    created_at: datetime
    updated_at: datetime
    version: int


class ProposalSummary(_Output):
    """What the shared ``proposals:{request_id}`` room learns of a proposal: rival vendors read
    that channel, so it carries no price, summary or answers."""

    id: UUID
    vendor_id: UUID
    status: ProposalStatus


class ProposalPage(BaseModel):
    """One page of proposals, newest first."""

    items: list[ProposalOut]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page")


class ProposalQuery(_Input):
    """Filters of ``GET /api/v1/proposals``; you only ever see proposals you may read."""

    mine: bool = Field(default=False, description="Only proposals you submitted as a vendor")
    request_id: UUID | None = None
    status: ProposalStatus | None = None
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: Cursor | None = None


class InviteCreate(_Input):
    """Body of ``POST /api/v1/requests/{id}/invites``: the vendor's e-mail address."""

    email: EmailStr = Field(max_length=254)


class InviteOut(_Output):
    """A sent invitation (its token is only in the e-mail)."""

    id: UUID
    request_id: UUID
    email: str
    created_at: datetime
    expires_at: datetime = Field(description="The link is refused after this time")


class InviteAccept(_Input):
    """Body of ``POST /api/v1/invites/accept``: the token from the invitation link."""

    token: str = Field(min_length=1, max_length=256)
