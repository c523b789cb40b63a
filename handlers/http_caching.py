"""Conditional GET and gzip for JSON responses, for every route at once.

* Every ``200`` JSON answer to ``GET``/``HEAD`` carries an ``ETag``: the handler's own (a
  resource version, ``"3"``) or, when it set none, a weak tag of the body's hash. A request whose
  ``If-None-Match`` names that tag (weak comparison, lists and ``*`` understood) gets ``304 Not
  Modified`` with no body, so a client polling a list or a resource re-downloads nothing that
  did not change.
* A JSON body over :data:`MIN_GZIP_BYTES` is gzipped when the client's ``Accept-Encoding``
  allows it; smaller ones are not (the gzip header would eat the gain). Such responses say
  ``Vary: Accept-Encoding``, and a strong ``ETag`` becomes weak (``W/"3"``) because the bytes
  on the wire are no longer the identity representation (``If-Match`` accepts both forms).

Only whole ``web.Response`` JSON bodies are touched: files, streams, the WebSocket upgrade and
its frames, and the Prometheus text of ``/metrics`` pass through unchanged.
"""

from __future__ import annotations

import hashlib

from aiohttp import web
from aiohttp.typedefs import Handler

#: smallest JSON body worth compressing (bytes)
MIN_GZIP_BYTES = 1024

#: headers a 304 repeats from the 200 it stands for (RFC 9110, section 15.4.5)
_KEPT_ON_304 = ("ETag", "Cache-Control", "Content-Location", "Expires", "Vary")


def _opaque(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match: header`` matches ``etag`` (weak comparison)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(candidate) == wanted for candidate in header.split(","))


def accepts_gzip(header: str | None) -> bool:
    """Whether ``Accept-Encoding: header`` allows gzip (``gzip;q=0`` refuses it)."""
    if not header:
        return False
    allowed: dict[str, bool] = {}
    for item in header.lower().split(","):
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        allowed[coding.strip()] = quality > 0
    return allowed.get("gzip", allowed.get("*", False))


def _is_json(response: web.Response) -> bool:
    return response.content_type == "application/json" or response.content_type.endswith("+json")


@web.middleware
async def conditional_get_and_gzip(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``If-None-Match`` → 304 and gzip for JSON responses (see the module docstring)."""
    response = await handler(request)
    if not isinstance(response, web.Response) or response.prepared or not _is_json(response):
        return response
    body = response.body
    if not isinstance(body, bytes | bytearray):
        return response
    if request.method in ("GET", "HEAD") and response.status == 200:
        etag = response.headers.get("ETag")
        if etag is None:
            etag = f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
            response.headers["ETag"] = etag
        if none_match(request.headers.get("If-None-Match"), etag):
            headers = {
                name: response.headers[name] for name in _KEPT_ON_304 if name in response.headers
            }
            return web.Response(status=304, headers=headers)
    if len(body) > MIN_GZIP_BYTES:
        response.headers.add("Vary", "Accept-Encoding")
        if accepts_gzip(request.headers.get("Accept-Encoding")):
            response.enable_compression(web.ContentCoding.gzip)
            etag = response.headers.get("ETag")
            if etag is not None and not etag.startswith("W/"):
                response.headers["ETag"] = f"W/{etag}"
    return response
