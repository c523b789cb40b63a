"""Transport framing of encoded messages: complete WebSocket frames as bytes.

A publication is encoded once and framed once; the same bytes (frame header included) are then
written to every subscriber's socket, so fan-out costs no per-client serialisation.
Server-to-client frames are never masked and compression is off, which is what makes a
pre-built frame valid for every connection.
"""

from __future__ import annotations

MAX_CLOSE_REASON_BYTES = 120


def websocket_text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8 JSON) wrapped in one unmasked, final WebSocket text frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def websocket_close_frame(code: int, reason: str) -> bytes:
    """An unmasked WebSocket close frame (the reason is cut to fit a control frame)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:MAX_CLOSE_REASON_BYTES]
    return bytes((0x88, len(payload))) + payload
