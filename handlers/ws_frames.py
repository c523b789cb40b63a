"""Encoding server messages as complete WebSocket text frames.

The hub encodes each publication once with :func:`publication_frame`; the same bytes (frame
header included) are then written to every subscriber's socket, so fan-out costs no per-client
serialisation. Server-to-client frames are never masked and compression is off, which is what
makes a pre-built frame valid for every connection.
"""

from __future__ import annotations

from typing import Any

import orjson

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry


def text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8 JSON) wrapped in one unmasked, final WebSocket text frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def message(data: dict[str, Any]) -> bytes:
    """A JSON message as a text frame."""
    return text_frame(orjson.dumps(data))


def publication_json(pub: Publication) -> bytes:
    """``{"type":"pub","channel":...,"offset":N,"epoch":...,"data":...}`` without re-parsing
    ``pub.data`` (it is already JSON)."""
    return b"".join(
        (
            b'{"type":"pub","channel":',
            orjson.dumps(pub.channel),
            b',"offset":',
            str(pub.offset).encode(),
            b',"epoch":',
            orjson.dumps(pub.epoch),
            b',"data":',
            pub.data,
            b"}",
        )
    )


def publication_frame(pub: Publication) -> bytes:
    """A publication push as a complete text frame (used by the hub as its encoder)."""
    return text_frame(publication_json(pub))


def publication_dict(pub: Publication) -> dict[str, Any]:
    """A publication as it appears inside replies (history, recovery)."""
    return {
        "channel": pub.channel,
        "offset": pub.offset,
        "epoch": pub.epoch,
        "data": orjson.Fragment(pub.data),
    }


def reply(command_id: Any, result: dict[str, Any]) -> bytes:
    return message({"type": "reply", "id": command_id, "result": result})


def error_reply(command_id: Any, code: str, text: str) -> bytes:
    return message({"type": "reply", "id": command_id, "error": {"code": code, "message": text}})


def resync(channel: str, position: StreamPosition) -> bytes:
    """Publications of ``channel`` were lost: the client must refetch state over REST."""
    return message(
        {
            "type": "resync",
            "channel": channel,
            "recovered": False,
            "offset": position.offset,
            "epoch": position.epoch,
        }
    )


def presence_event(kind: str, channel: str, entry: PresenceEntry) -> bytes:
    """A ``join`` or ``leave`` push."""
    return message(
        {
            "type": kind,
            "channel": channel,
            "user": entry.user_id,
            "client": entry.client_id,
            "info": entry.info,
        }
    )
