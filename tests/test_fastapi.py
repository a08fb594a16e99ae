"""The FastAPI dependencies, through FastAPI's own request handling."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from examples.fastapi_app import app

from .conftest import client, cookie_header

pytestmark = pytest.mark.anyio


async def test_session_dependency_keeps_the_cart_across_requests() -> None:
    async with client(app) as http:
        await http.post("/cart", params={"item": "tea"})
        second = await http.post("/cart", params={"item": "milk"})
        shown = await http.get("/cart")
    assert second.json() == {"items": ["tea", "milk"]}
    assert shown.json() == {"items": ["tea", "milk"]}


async def test_optional_session_dependency_creates_nothing() -> None:
    async with client(app) as http:
        response = await http.get("/cart")
    assert response.json() == {"items": []}
    assert "set-cookie" not in response.headers


async def test_dependencies_add_nothing_to_the_openapi_schema() -> None:
    schema = app.openapi()
    assert [p["name"] for p in schema["paths"]["/cart"]["post"]["parameters"]] == ["item"]
    assert "parameters" not in schema["paths"]["/cart"]["get"]
    assert [p["name"] for p in schema["paths"]["/login"]["post"]["parameters"]] == ["user"]
    assert "HttpSession" not in str(schema)


def test_session_dependency_in_a_websocket_route() -> None:
    with TestClient(app, base_url="https://testserver") as http:
        http.post("/login", params={"user": "ada"})
        cookie = cookie_header(http.cookies["sessionid"])
        with http.websocket_connect("/ws", headers=cookie) as ws:
            assert ws.receive_text() == "hello ada"
        with http.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hello stranger"
