"""The one JSON shape of an analysis, built from its storage row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.analysis.models import AnalysisOut, StreamStart
from storage.analyses import Analysis

CREATED = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def _row(**changes: object) -> Analysis:
    values: dict[str, object] = {
        "id": uuid.UUID(int=1),
        "request_id": uuid.UUID(int=2),
        "owner_id": uuid.UUID(int=3),
        "kind": "compare_proposals",
        "question": None,
        "status": "failed",
        "provider": "offline",
        "model": "offline-analyst-1",
        "text": "half an answer",
        "seq": 2,
        "usage": None,
        "stop_reason": None,
        "error_code": "timeout",
        "error_message": "too slow",
        "created_at": CREATED,
        "started_at": CREATED + timedelta(milliseconds=5),
        "first_token_at": CREATED + timedelta(milliseconds=405),
        "finished_at": CREATED + timedelta(seconds=2, milliseconds=5),
    }
    values.update(changes)
    return Analysis(**values)  # type: ignore[arg-type]


def test_derived_fields_come_from_the_row() -> None:
    since = StreamStart(offset=0, epoch="e1")
    body = AnalysisOut.of(_row(), since=since).to_json()

    assert body["channel"] == f"analysis:{uuid.UUID(int=1)}"
    assert body["since"] == {"offset": 0, "epoch": "e1"}
    assert body["error"] == {"code": "timeout", "message": "too slow"}
    assert body["timings"] == {"queued_ms": 5, "first_token_ms": 400, "duration_ms": 2000}
    assert (body["text"], body["text_chars"]) == ("half an answer", 14)
    assert "error_code" not in body
    assert "error_message" not in body
    assert body["created_at"] == "2026-11-30T10:00:00Z"


def test_lists_leave_the_text_out_but_keep_its_length() -> None:
    body = AnalysisOut.of(
        _row(status="queued", error_code=None, started_at=None, finished_at=None),
        with_text=False,
    ).to_json()

    assert body["text"] is None
    assert body["text_chars"] == 14
    assert body["error"] is None
    assert body["since"] is None
    assert body["timings"] == {"queued_ms": None, "first_token_ms": None, "duration_ms": None}


def test_the_documented_schema_is_the_serialised_shape() -> None:
    schema = AnalysisOut.model_json_schema(mode="serialization")
    keys = set(AnalysisOut.of(_row()).to_json())
    assert set(schema["properties"]) == keys
    assert {"channel", "error", "timings", "text_chars"} <= set(schema["required"])
