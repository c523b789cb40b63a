"""Pydantic models of the analyses API: what a client sends, and the one way an analysis is shown.

:class:`AnalysisOut` is built from the storage row (:class:`storage.analyses.Analysis`) with
:meth:`AnalysisOut.of`; every endpoint answers with it (lists leave ``text`` out), so the JSON of
an analysis is defined here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    computed_field,
    field_validator,
)

from services.channels import names
from storage.analyses import Analysis

AnalysisKind = Literal["compare_proposals", "summarize_request", "question"]
AnalysisStatus = Literal["queued", "running", "done", "failed", "cancelled"]
MAX_PAGE = 100
QUESTION_CHARS = 2000

#: A free-form question: 1..2000 characters once trimmed (PostgreSQL text holds no NUL).
Question = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=QUESTION_CHARS, pattern=r"^[^\x00]*$"
    ),
]
#: An opaque keyset cursor as issued in ``next_cursor``.
Cursor = Annotated[str, StringConstraints(max_length=200, pattern=r"^[A-Za-z0-9_\-=]*$")]


class AnalysisStart(BaseModel):
    """The body of ``POST /api/v1/requests/{id}/analyses``."""

    model_config = ConfigDict(extra="forbid")

    kind: AnalysisKind = Field(
        description="compare_proposals: ranked, cited comparison; summarize_request: summary; "
        "question: an answer to ``question`` grounded in the request and its proposals"
    )
    question: Question | None = Field(
        default=None,
        validate_default=True,
        description="Required for kind ``question`` (1..2000 characters), refused otherwise",
    )

    @field_validator("question")
    @classmethod
    def _question_for_questions_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind is None:
            return value  # the kind is invalid: that error is enough
        if kind == "question" and value is None:
            raise ValueError("required when kind is question")
        if kind != "question" and value is not None:
            raise ValueError("only allowed when kind is question")
        return value


class AnalysisListQuery(BaseModel):
    """The query of ``GET /api/v1/requests/{id}/analyses``."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=MAX_PAGE)


class AnalysisQuery(BaseModel):
    """The query of ``GET /api/v1/analyses``; filters combine with AND."""

    model_config = ConfigDict(extra="forbid")

    kind: AnalysisKind | None = None
    status: AnalysisStatus | None = None
    request_id: UUID | None = Field(default=None, description="Only analyses of this request")
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: Cursor | None = Field(default=None, description="``next_cursor`` of the last page")


class StreamStart(BaseModel):
    """A channel position to subscribe from."""

    offset: int
    epoch: str


class AnalysisError(BaseModel):
    """Why an analysis failed or was cancelled."""

    code: str
    message: str


class AnalysisTimings(BaseModel):
    """Durations derived from the timestamps, in milliseconds."""

    queued_ms: int | None = Field(description="From creation to start")
    first_token_ms: int | None = Field(description="From start to the first text")
    duration_ms: int | None = Field(description="From start to the end")


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


def _length(text: Any) -> int:
    return len(text) if isinstance(text, str) else 0


class AnalysisOut(BaseModel):
    """An analysis as the API shows it; build it with :meth:`of`."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID
    request_id: UUID
    owner_id: UUID = Field(description="Who started it")
    kind: AnalysisKind
    question: str | None = Field(description="What was asked, for kind ``question``")
    status: AnalysisStatus
    since: StreamStart | None = Field(
        default=None,
        description="Subscribe with it to receive the stream from its first event "
        "(while it is still in the channel's history)",
    )
    provider: str = Field(description="anthropic, or offline when no API key is configured")
    model: str
    text: str | None = Field(description="Final text, or the text so far; omitted in lists")
    text_chars: Annotated[int, BeforeValidator(_length)] = Field(
        validation_alias="text", description="Length of the text, also in lists"
    )
    seq: int = Field(description="Delta events included in the text")
    usage: dict[str, Any] | None
    stop_reason: str | None
    error_code: str | None = Field(exclude=True)
    error_message: str | None = Field(exclude=True)
    created_at: datetime
    started_at: datetime | None
    first_token_at: datetime | None
    finished_at: datetime | None

    @computed_field(description="Subscribe to it to watch the text stream")  # type: ignore[prop-decorator]
    @property
    def channel(self) -> str:
        return names.analysis(self.id)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error(self) -> AnalysisError | None:
        if self.error_code is None:
            return None
        return AnalysisError(code=self.error_code, message=self.error_message or "")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def timings(self) -> AnalysisTimings:
        return AnalysisTimings(
            queued_ms=_ms(self.created_at, self.started_at),
            first_token_ms=_ms(self.started_at, self.first_token_at),
            duration_ms=_ms(self.started_at, self.finished_at),
        )

    @classmethod
    def of(
        cls, row: Analysis, *, since: StreamStart | None = None, with_text: bool = True
    ) -> AnalysisOut:
        """The analysis ``row`` as shown to clients; lists pass ``with_text=False``."""
        out = cls.model_validate(row, from_attributes=True)
        update: dict[str, Any] = {"since": since}
        if not with_text:
            update["text"] = None
        return out.model_copy(update=update)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (what the API sends)."""
        return self.model_dump(mode="json")


class AnalysisList(BaseModel):
    """A request's analyses, newest first."""

    items: list[AnalysisOut]


class AnalysisPage(BaseModel):
    """One page of analyses, newest first."""

    items: list[AnalysisOut]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page")
