"""A ChatStream-style app written for FastSession runs on servletsession by changing one import."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servletsession import ConfigurationError, SessionManager
from servletsession.compat.fastsession import (
    FasterSessionMiddleware,
    FastSessionMiddleware,
    MemoryStore,
)

from .conftest import SECRET, FakeClock, client

pytestmark = pytest.mark.anyio


async def chat(request: Request) -> Response:
    """The shape of a FastSession route: the state object, a dict-like store mutated in place."""
    session_mgr = request.state.session
    session = session_mgr.get_session()
    history = session.get("history", [])
    history.append(request.query_params["say"])
    session["history"] = history
    response = JSONResponse({"history": history, "id_len": len(session_mgr.get_session_id())})
    response.set_cookie("theme", "dark")
    return response


async def reset(request: Request) -> Response:
    request.state.session.clear_session()
    request.state.session.save_session()
    return Response("cleared")


async def health(request: Request) -> Response:
    return Response(str(hasattr(request.state, "session")))


def chatstream_app(store: MemoryStore, **options: object) -> Starlette:
    app = Starlette(routes=[Route("/chat", chat), Route("/reset", reset), Route("/health", health)])
    app.add_middleware(FastSessionMiddleware, secret_key=SECRET, store=store, http_only=True,
                       secure=True, session_cookie="sid", **options)  # fmt: skip
    return app


async def test_a_fastsession_app_keeps_its_conversation() -> None:
    async with client(chatstream_app(MemoryStore())) as http:
        await http.get("/chat", params={"say": "hello"})
        second = await http.get("/chat", params={"say": "again"})
        await http.get("/reset")
        third = await http.get("/chat", params={"say": "fresh"})
    assert second.json() == {"history": ["hello", "again"], "id_len": 43}
    assert third.json()["history"] == ["fresh"]


async def test_the_apps_own_cookies_are_kept_beside_sid() -> None:
    async with client(chatstream_app(MemoryStore())) as http:
        response = await http.get("/chat", params={"say": "hi"})
    cookies = response.headers.get_list("set-cookie")
    assert any(c.startswith("theme=dark") for c in cookies)
    assert any(c.startswith("sid=") and "HttpOnly" in c and "Secure" in c for c in cookies)


async def test_cookieless_requests_that_never_use_the_session_store_nothing() -> None:
    store = MemoryStore()
    async with client(chatstream_app(store)) as http:
        for _ in range(20):
            http.cookies.clear()
            assert (await http.get("/health")).text == "True"
    assert await store.count() == 0


async def test_skip_session_header_leaves_the_request_without_a_session() -> None:
    app = chatstream_app(
        MemoryStore(), skip_session_header={"header_name": "X-Skip", "header_value": "*"}
    )
    async with client(app) as http:
        assert (await http.get("/health", headers={"x-skip": "yes"})).text == "False"
        assert (await http.get("/health")).text == "True"


async def test_faster_session_middleware_is_the_same_class() -> None:
    assert FasterSessionMiddleware is FastSessionMiddleware


def test_a_short_secret_key_fails_with_a_clear_message() -> None:
    app = Starlette()
    with pytest.raises(ConfigurationError, match="use at least 32"):
        FastSessionMiddleware(app, secret_key="short", store=MemoryStore())


async def test_sessions_now_expire(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock, max_inactive_interval=60)
    app = Starlette(routes=[Route("/chat", chat)])
    app.add_middleware(
        FastSessionMiddleware, secret_key=SECRET, manager=manager, session_cookie="sid"
    )
    async with client(app) as http:
        await http.get("/chat", params={"say": "one"})
        clock.advance(61)
        after = await http.get("/chat", params={"say": "two"})
    assert after.json()["history"] == ["two"]
    assert (await manager.stats()).expired == 1
