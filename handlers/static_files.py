"""Static files (the JavaScript client, the dashboard, API docs) under ``/static``."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"


def setup_routes(app: web.Application) -> None:
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=False)
