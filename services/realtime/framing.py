"""Transport framing of encoded messages: complete WebSocket frames, or HTTP chunks of a
Server-Sent Events / newline-delimited JSON stream, as bytes.

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


# -- HTTP streams (Server-Sent Events, newline-delimited JSON) ------------------------------
#
# A stream's messages are written straight to the socket after aiohttp sent the response
# headers, like WebSocket frames: on HTTP/1.1 each message is one complete chunk of the chunked
# transfer encoding (encoded and chunked once per publication, written to every subscriber);
# an HTTP/1.0 peer (e.g. a proxy without ``proxy_http_version 1.1``) gets the bare bytes and
# the body ends when the connection closes.

#: the chunk that ends a chunked HTTP/1.1 body
HTTP_LAST_CHUNK = b"0\r\n\r\n"


def http_chunk(payload: bytes) -> bytes:
    """``payload`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def sse_data(payload: bytes) -> bytes:
    """``payload`` as the ``data:`` lines of one Server-Sent Event (JSON from the codecs is one
    line; a published payload with raw line breaks becomes several ``data:`` lines, which the
    browser joins with ``\\n`` again)."""
    if b"\n" in payload or b"\r" in payload:
        payload = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")
    return b"data: " + payload + b"\n\n"


def sse_event_chunk(event: bytes) -> bytes:
    """A complete SSE event (codec output with its own ``id:``/``event:`` lines), chunked."""
    return http_chunk(event)


def sse_event_raw(event: bytes) -> bytes:
    """A complete SSE event on an HTTP/1.0 stream."""
    return event


def sse_data_chunk(payload: bytes) -> bytes:
    """A JSON message as one ``data:`` event, chunked (Centrifugo's ``uni_sse``)."""
    return http_chunk(sse_data(payload))


def sse_data_raw(payload: bytes) -> bytes:
    """A JSON message as one ``data:`` event on an HTTP/1.0 stream."""
    return sse_data(payload)


def ndjson_chunk(payload: bytes) -> bytes:
    """A JSON message as one line, chunked (Centrifugo's ``uni_http_stream``)."""
    return http_chunk(payload + b"\n")


def ndjson_raw(payload: bytes) -> bytes:
    """A JSON message as one line on an HTTP/1.0 stream."""
    return payload + b"\n"
