"""The alert wire format: one representation for REST responses and live feed events.

:class:`AlertOut` is built from the storage row (:class:`storage.alerts.Alert`) and is what
``GET /api/v1/alerts/{id}``, the list, and the ``alert.created`` / ``alert.updated`` events on
``alerts:{strategy_id}`` carry. Timestamps keep the ``+00:00`` offset form the API has always
used. Feed events cap the raw body at :data:`FEED_RAW_LIMIT` characters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from storage import alerts

#: Alerts published on the feed carry the raw body only up to this size (full: GET by id).
FEED_RAW_LIMIT = 4096

Source = Literal["tradingview", "signed", "manual"]
Action = Literal["buy", "sell"]

#: A timestamp written with ``datetime.isoformat()`` (``+00:00``, not ``Z``), as always.
IsoTime = Annotated[
    datetime,
    PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


class AlertOut(BaseModel):
    """An alert as the API and the feed show it."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    id: UUID
    strategy_id: UUID
    source: Source
    webhook_id: str | None = Field(description="Standard Webhooks message id (signed only)")
    ticker: str | None
    action: Action | None
    quantity: float | None
    price: float | None
    time: IsoTime | None = Field(
        validation_alias="alert_time", description="the time the sender put in the alert"
    )
    message: str | None
    content_type: Literal["application/json", "text/plain"]
    received_at: IsoTime
    edited_at: IsoTime | None = Field(
        default=None, description="when the owner last corrected the alert (null: never)"
    )
    raw_body: str | None = Field(description="null in lists and for large bodies on the feed")
    raw_body_omitted: bool = False

    @classmethod
    def from_row(cls, alert: alerts.Alert, *, raw_limit: int | None = None) -> AlertOut:
        """The alert; ``raw_body`` is left out (``raw_body_omitted``) beyond ``raw_limit``."""
        out = cls.model_validate(alert)
        if raw_limit is not None and len(alert.raw_body) > raw_limit:
            out = out.model_copy(update={"raw_body": None, "raw_body_omitted": True})
        return out


def alert_json(alert: alerts.Alert, *, raw_limit: int | None = None) -> dict[str, Any]:
    """The public representation of an alert (JSON-ready: no Decimals)."""
    data: dict[str, Any] = AlertOut.from_row(alert, raw_limit=raw_limit).model_dump(mode="json")
    return data


def feed_alert(alert: alerts.Alert) -> dict[str, Any]:
    """An alert as a feed event carries it (raw body capped at :data:`FEED_RAW_LIMIT`)."""
    return alert_json(alert, raw_limit=FEED_RAW_LIMIT)


def created_event(alert: alerts.Alert) -> dict[str, Any]:
    """``alert.created``: a new alert on the feed."""
    return {"type": "alert.created", "alert": feed_alert(alert)}


def updated_event(alert: alerts.Alert) -> dict[str, Any]:
    """``alert.updated``: the owner corrected an alert; carries the whole new version."""
    return {"type": "alert.updated", "alert": feed_alert(alert)}


def deleted_event(alert_id: UUID) -> dict[str, Any]:
    """``alert.deleted``: the alert is gone."""
    return {"type": "alert.deleted", "alert_id": str(alert_id)}
