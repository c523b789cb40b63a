"""Every route also answers with a trailing slash (``/api/v1/requests/``, ``/health/``).

An alias, never a redirect: a redirect would turn ``POST /api/v1/auth/login/`` into a ``GET``
(or make the client send its body twice), so clients written against a slash-terminated API
would break. :class:`TrailingSlashAlias` is registered after every other resource; the router
only asks it about paths no real route matched, and it resolves the same path without its
final slash against the whole router. The match it returns belongs to the real route, so the
handler, its ``match_info``, middlewares, CORS and the route label in logs and metrics are
exactly those of the path without the slash, and OpenAPI lists each path once (this resource
has no routes of its own).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo, _InfoDict, _Resolve
from yarl import URL


class TrailingSlashAlias(web.AbstractResource):
    """Resolves ``/x/`` as ``/x`` (one slash only: ``/x//`` stays a 404)."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        super().__init__(name=None)
        self._router = router

    @property
    def canonical(self) -> str:
        # Indexed under "/", so the router asks it last, after every real candidate.
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        raise RuntimeError("the trailing-slash alias has no URL of its own")

    async def resolve(self, request: web.Request) -> _Resolve:
        path = request.rel_url.path
        if len(path) < 2 or not path.endswith("/") or path.endswith("//"):
            return None, set()
        alias = request.clone(rel_url=request.rel_url.with_path(path[:-1]))
        match = await self._router.resolve(alias)
        if isinstance(match, UrlMappingMatchInfo) and match.http_exception is None:
            return match, set()
        exception = match.http_exception
        allowed = getattr(exception, "allowed_methods", None) or set()
        return None, set(allowed)

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the trailing-slash alias cannot be moved under a prefix")

    def get_info(self) -> _InfoDict:
        return {}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter(())


def setup(app: web.Application) -> None:
    """Install the alias; call after every route is registered."""
    app.router.register_resource(TrailingSlashAlias(app.router))
