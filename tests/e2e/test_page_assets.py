"""The dashboard's files as the server delivers them (no browser): every page path, every
module import resolving, nothing loaded from another origin, the strict CSP on each file."""

from __future__ import annotations

import re
from typing import Any

import pytest

from handlers.static_files import STATIC_DIR

pytestmark = pytest.mark.e2e

DASHBOARD = STATIC_DIR / "dashboard"
_IMPORT_RE = re.compile(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", re.MULTILINE)
_MARKUP_RE = re.compile(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write")
_ASSET_RE = re.compile(r"""(?:src|href)="([^"]+)\"""")


def _resolve(base: str, target: str) -> str:
    if target.startswith("/"):
        return target
    parts = base.rsplit("/", 1)[0].split("/")
    for piece in target.split("/"):
        if piece == "..":
            parts.pop()
        elif piece != ".":
            parts.append(piece)
    return "/".join(parts)


@pytest.mark.parametrize("path", ["/", "/login", "/invite"])
async def test_page_paths_serve_the_dashboard(client: Any, path: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == "default-src 'self'"
    assert response.headers["Cache-Control"] == "no-cache"
    html = await response.text()
    assert '<script type="module" src="/static/dashboard/js/main.js">' in html
    assert "<script>" not in html  # nothing inline: the CSP would block it
    assert " style=" not in html


async def test_magic_link_path_matches_the_page_route(client: Any) -> None:
    from handlers.auth_api import MAGIC_LINK_PATH

    response = await client.get(MAGIC_LINK_PATH)
    assert response.status == 200
    assert "main.js" in await response.text()


async def test_unknown_page_is_a_json_404(client: Any) -> None:
    response = await client.get("/no-such-page")
    assert response.status == 404
    assert (await response.json())["error"] is True


async def test_every_asset_and_module_import_is_served_from_this_origin(client: Any) -> None:
    html = (DASHBOARD / "index.html").read_text()
    pending = [p for p in _ASSET_RE.findall(html) if p.startswith("/static/")]
    assert "/static/dashboard/js/main.js" in pending
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        response = await client.get(path)
        assert response.status == 200, path
        body = await response.text()
        if path.endswith(".js"):
            # Browsers refuse ES modules served with a non-JavaScript type.
            assert response.content_type in {"text/javascript", "application/javascript"}, path
            for target in _IMPORT_RE.findall(body):
                assert not target.startswith(("http:", "https:", "//")), (path, target)
                pending.append(_resolve(path, target))
        assert "eval(" not in body
        assert not _MARKUP_RE.search(body), f"{path}: render text, not markup"
    assert "/static/arena-realtime.js" in seen
    files = {f"/static/dashboard/{p.relative_to(DASHBOARD)}" for p in DASHBOARD.rglob("*.js")}
    assert files <= seen, f"modules nothing imports: {files - seen}"
