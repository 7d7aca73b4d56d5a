"""Read-API answers found by fuzzing it (tests/integration/test_api_fuzz.py): a wrong method or an
unknown path under /api/ is a JSON error like every other (it was aiohttp's text/plain), and
``limit`` takes ASCII digits only (int() also took " 5", "1_0" and Arabic-Indic digits)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consumers import access
from consumers.api import add_api_routes

KEY = b"read-api-test-key-0123456789"


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    """The read API behind the access middleware, as the dashboard mounts it; no Redis is reached
    by these requests (each is refused before the read model is asked)."""
    app = web.Application(middlewares=[access.middleware(access.Signer(KEY))])
    add_api_routes(app)
    async with TestClient(TestServer(app)) as c:
        c.session.headers["Authorization"] = f"Bearer {access.Signer(KEY).mint(None, 600)}"
        yield c


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/api/rooms"), ("POST", "/api/sales/s1"),
                                              ("PUT", "/openapi.json")])
async def test_a_wrong_method_is_a_json_405_with_allow(client: TestClient, method: str, path: str) -> None:
    resp = await client.request(method, path)
    assert resp.status == 405
    assert resp.content_type == "application/json"
    assert "GET" in resp.headers["Allow"]
    assert "method not allowed" in orjson.loads(await resp.read())["error"]


async def test_an_unknown_api_path_is_a_json_404(client: TestClient) -> None:
    resp = await client.get("/api/rooms/r1/nothing")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert orjson.loads(await resp.read())["error"].startswith("not found")


@pytest.mark.parametrize("limit", [" 5", "1_0", "\u0665", "+5", "", "5.0", "9" * 40])
async def test_limit_takes_ascii_digits_only(client: TestClient, limit: str) -> None:
    resp = await client.get("/api/rooms", params={"limit": limit})
    assert resp.status == 400
    assert orjson.loads(await resp.read()) == {"error": "limit must be an integer"}


async def test_the_description_is_served_without_a_token(client: TestClient) -> None:
    resp = await client.get("/openapi.json", headers={"Authorization": ""})
    assert resp.status == 200
    assert orjson.loads(await resp.read())["info"]["title"] == "flashsale read API"
