"""The live dashboard: ``GET /`` and ``GET /login`` serve one static page.

The page (``handlers/static/dashboard/``: HTML, CSS and ES modules, no build step) talks to
the service only through the public REST API and ``/static/arena-realtime.js``; see
``docs/dashboard.md``. ``/login`` is where magic links point (``/login#token=...``) and
``/invite`` where vendor invitations point (``/invite#token=...``); the token stays in the
fragment, so it never reaches this handler or a log line.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from handlers.static_files import STATIC_DIR

INDEX_HTML: Path = STATIC_DIR / "dashboard" / "index.html"

#: Paths that serve the dashboard page; its views are chosen by the URL fragment.
PAGE_PATHS = ("/", "/login", "/invite")


async def dashboard_page(request: web.Request) -> web.FileResponse:
    """The dashboard's HTML; revalidated on every load so a deploy is picked up at once."""
    return web.FileResponse(INDEX_HTML, headers={"Cache-Control": "no-cache"})


def setup_routes(app: web.Application) -> None:
    for path in PAGE_PATHS:
        app.router.add_get(path, dashboard_page)
