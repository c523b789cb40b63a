"""The generated OpenAPI document and the interactive docs page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from handlers.openapi import build_spec, describe


class _Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class _Filter(BaseModel):
    limit: int = 10


@describe(
    summary="Make a thing",
    tags=("things",),
    body=_Thing,
    query=_Filter,
    responses={201: _Thing},
    errors=(403,),
    headers={"If-Match": "version"},
    path_formats={"id": "uuid"},
)
async def _make_thing(request: web.Request) -> web.Response:
    """Long description."""
    return web.json_response({})


async def _undocumented(request: web.Request) -> web.Response:
    return web.json_response({})


def test_build_spec_describes_routes_from_the_router() -> None:
    app = web.Application()
    app.router.add_post("/things/{id}", _make_thing)
    app.router.add_get("/hidden", _undocumented)
    spec = build_spec(app)
    assert spec["openapi"] == "3.1.0"
    assert list(spec["paths"]) == ["/things/{id}"]
    op = spec["paths"]["/things/{id}"]["post"]
    assert op["summary"] == "Make a thing"
    assert op["description"] == "Long description."
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/_Thing"
    }
    params = {(p["in"], p["name"]): p for p in op["parameters"]}
    assert params[("path", "id")]["schema"] == {"type": "string", "format": "uuid"}
    assert params[("query", "limit")]["required"] is False
    assert ("header", "If-Match") in params
    assert set(op["responses"]) == {"201", "400", "401", "403", "500", "503"}
    error = op["responses"]["403"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorEnvelope"}
    schemas = spec["components"]["schemas"]
    assert schemas["_Thing"]["additionalProperties"] is False
    assert "ErrorEnvelope" in schemas
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_openapi_json_is_served(client: Any) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"] == "3.1.0"
    assert "ErrorEnvelope" in spec["components"]["schemas"]


async def test_docs_page_loads_only_same_origin_assets(client: Any) -> None:
    response = await client.get("/api/docs")
    assert response.status == 200
    html = await response.text()
    assert "<script>" not in html
    assert "http" not in html.replace("/static/", "")
    for asset in (
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
        "/static/api-docs/init.js",
    ):
        assert asset in html
        loaded = await client.get(asset)
        assert loaded.status == 200, asset


async def test_redoc_page_loads_only_same_origin_assets(client: Any) -> None:
    response = await client.get("/api/redoc")
    assert response.status == 200
    html = await response.text()
    assert "<script>" not in html
    assert "http" not in html.replace("/static/", "")
    assert 'spec-url="/api/openapi.json"' in html
    asset = "/static/vendor/redoc/redoc.standalone.js"
    assert asset in html
    loaded = await client.get(asset)
    assert loaded.status == 200
    assert "javascript" in loaded.headers["Content-Type"]


async def test_the_first_versions_docs_paths_still_answer(client: Any) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    for path in ("/api/v1/schema/", "/api/v1/schema"):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 200, path
        assert await response.json() == spec
    for path, marker in (
        ("/api/v1/docs/", "swagger-ui-bundle.js"),
        ("/api/v1/redoc/", "redoc.standalone.js"),
    ):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 200, path
        assert marker in await response.text()


def test_the_ui_assets_come_from_the_installed_package_not_our_tree() -> None:
    import handlers
    from handlers.openapi import ui_assets

    ours = Path(handlers.__file__).resolve().parent
    for folder in ui_assets():
        assert ours not in folder.resolve().parents
    assert not (ours / "static" / "swagger-ui").exists()


async def test_marketplace_operations_are_described_from_the_handler_models(client: Any) -> None:
    from services.marketplace.models import ProposalStatusChange, RequestCreate

    spec = await (await client.get("/api/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/api/v1/requests"]) == {"get", "post"}
    assert set(paths["/api/v1/requests/{id}"]) == {"get", "patch", "delete"}
    assert set(paths["/api/v1/proposals/{id}/status"]) == {"put"}
    put = paths["/api/v1/proposals/{id}/status"]["put"]
    assert {"200", "400", "401", "403", "404", "409", "412"} <= set(put["responses"])
    assert any(p["name"] == "If-Match" for p in put["parameters"])
    schemas = spec["components"]["schemas"]
    for model in (RequestCreate, ProposalStatusChange):
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        generated.pop("$defs", None)
        assert schemas[model.__name__] == generated
    listing = paths["/api/v1/requests"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 100
