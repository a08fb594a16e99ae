"""The ASGI middleware: cookies, headers, lifespan, websockets, ID change, via real requests."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from servletsession import (
    IllegalStateError,
    SessionManager,
    SessionMiddleware,
    change_session_id,
    get_session,
    is_requested_session_id_valid,
    requested_session_id,
)

from .conftest import SECRET, FakeClock, client, cookie_header, make_app

pytestmark = pytest.mark.anyio


async def test_session_cookie_defaults_are_secure(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        response = await http.post("/set/a", params={"value": "1"})
    cookie = response.headers["set-cookie"]
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value.startswith("sessionid=")
    assert set(attributes) == {"Path=/", "HttpOnly", "Secure", "SameSite=Lax"}


async def test_cookie_value_is_a_256_bit_id_and_its_signature(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        value = http.cookies["sessionid"]
    session_id, signature = value.split(".")
    assert len(session_id) == 43
    assert len(signature) == 43
    assert await manager.find(session_id) is not None


async def test_cookie_options_are_applied(manager: SessionManager) -> None:
    app = make_app(
        manager,
        cookie_name="__Secure-sid",
        same_site="strict",
        domain="example.com",
        max_age=600,
        path="/app",
    )
    async with client(app) as http:
        response = await http.post("/set/a", params={"value": "1"})
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Secure-sid=")
    for part in (
        "Domain=example.com",
        "Max-Age=600",
        "Path=/app",
        "SameSite=Strict",
        "Secure",
        "HttpOnly",
    ):
        assert part in cookie


async def test_untouched_request_gets_no_session_headers(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        response = await http.get("/untouched")
    assert "set-cookie" not in response.headers
    assert "vary" not in response.headers
    assert (await manager.stats()).created == 0


async def test_a_returning_request_gets_no_new_cookie(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        response = await http.post("/set/b", params={"value": "2"})
    assert "set-cookie" not in response.headers


async def test_vary_cookie_whenever_the_session_was_consulted(manager: SessionManager) -> None:
    async def vary(request: Request) -> Response:
        get_session(request, create=False)
        return Response("x", headers={"Vary": "Accept-Encoding"})

    async with client(make_app(manager, [Route("/vary", vary)])) as http:
        response = await http.get("/vary")
        created = await http.post("/set/a", params={"value": "1"})
    assert response.headers["vary"] == "Accept-Encoding, Cookie"
    assert created.headers["vary"] == "Cookie"


async def test_set_cookie_is_appended_to_the_apps_own_cookies(manager: SessionManager) -> None:
    async def theirs(request: Request) -> Response:
        get_session(request)["a"] = 1  # type: ignore[index]
        response = Response("x")
        response.set_cookie("theme", "dark")
        response.set_cookie("lang", "en")
        return response

    async with client(make_app(manager, [Route("/theirs", theirs)])) as http:
        response = await http.get("/theirs")
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 3
    assert cookies[0].startswith("theme=")
    assert cookies[1].startswith("lang=")
    assert cookies[2].startswith("sessionid=")


async def test_cache_control_private_accompanies_set_cookie(manager: SessionManager) -> None:
    async def public(request: Request) -> Response:
        get_session(request)["a"] = 1  # type: ignore[index]
        return Response("x", headers={"Cache-Control": "public, max-age=60"})

    async with client(make_app(manager, [Route("/public", public)])) as http:
        plain = await http.post("/set/a", params={"value": "1"})
        http.cookies.clear()
        rewritten = await http.get("/public")
    assert plain.headers["cache-control"] == "private"
    assert rewritten.headers["cache-control"] == "private, max-age=60"


async def test_invalidate_sends_a_deletion_cookie(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        response = await http.post("/invalidate")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("sessionid=;")
    assert "Max-Age=0" in cookie
    assert "HttpOnly" in cookie
    assert "Secure" in cookie


async def test_creating_a_session_after_the_response_started_raises(
    manager: SessionManager,
) -> None:
    errors: list[str] = []

    async def late(request: Request) -> Response:
        async def body() -> Any:
            yield b"started "
            try:
                get_session(request)
            except IllegalStateError as exc:
                errors.append(str(exc))
            yield b"done"

        return StreamingResponse(body())

    async with client(make_app(manager, [Route("/late", late)])) as http:
        response = await http.get("/late")
    assert response.text == "started done"
    assert errors
    assert "after the response has started" in errors[0]
    assert "set-cookie" not in response.headers


async def test_changing_the_id_after_the_response_started_raises(manager: SessionManager) -> None:
    errors: list[str] = []

    async def late(request: Request) -> Response:
        async def body() -> Any:
            yield b"x"
            try:
                change_session_id(request)
            except IllegalStateError as exc:
                errors.append(str(exc))

        return StreamingResponse(body())

    async with client(make_app(manager, [Route("/late", late)])) as http:
        await http.post("/set/a", params={"value": "1"})
        await http.get("/late")
    assert errors
    assert "after the response has started" in errors[0]


async def test_change_session_id_keeps_attributes_and_kills_the_old_id(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        created = (await http.get("/info")).json()["creation_time"]
        old_cookie = http.cookies["sessionid"]
        response = await http.post("/change-id")
        new_cookie = http.cookies["sessionid"]
        assert "sessionid=" in response.headers["set-cookie"]
        assert new_cookie != old_cookie
        after = (await http.get("/info")).json()
        replay = await http.get("/get/a", headers=cookie_header(old_cookie))
    assert after["names"] == ["a"]
    assert after["creation_time"] == created
    assert replay.json() == {"session": False}


async def test_change_session_id_without_a_session_raises(manager: SessionManager) -> None:
    async def no_session(request: Request) -> Response:
        with pytest.raises(IllegalStateError, match="no session"):
            change_session_id(request)
        return Response("ok")

    async with client(make_app(manager, [Route("/n", no_session)])) as http:
        assert (await http.get("/n")).status_code == 200


async def test_manager_change_session_id_kills_the_old_id_at_once(manager: SessionManager) -> None:
    session = manager.create_session()
    session["a"] = 1
    await manager.release(session)
    old = session.id
    new = await manager.change_session_id(session)
    assert await manager.find(old) is None
    assert await manager.find(new) is session


async def test_requested_session_id_and_its_validity(manager: SessionManager) -> None:
    async def report(request: Request) -> Response:
        return JSONResponse(
            {
                "requested": requested_session_id(request),
                "valid": is_requested_session_id_valid(request),
            }
        )

    async with client(make_app(manager, [Route("/report", report)])) as http:
        assert (await http.get("/report")).json() == {"requested": None, "valid": False}
        await http.post("/set/a", params={"value": "1"})
        session_id = http.cookies["sessionid"].split(".")[0]
        assert (await http.get("/report")).json() == {"requested": session_id, "valid": True}
        await http.post("/invalidate")
        forged = cookie_header(f"{session_id}.{'A' * 43}")
        assert (await http.get("/report", headers=forged)).json() == {
            "requested": None,
            "valid": False,
        }


async def test_a_new_session_created_after_invalidate_gets_its_own_cookie(
    manager: SessionManager,
) -> None:
    async def relogin(request: Request) -> Response:
        old = get_session(request)
        assert old is not None
        old.invalidate()
        fresh = get_session(request)
        assert fresh is not None
        assert fresh is not old
        fresh["user"] = "ada"
        return Response("ok")

    async with client(make_app(manager, [Route("/relogin", relogin, methods=["POST"])])) as http:
        await http.post("/set/a", params={"value": "1"})
        old_cookie = http.cookies["sessionid"]
        response = await http.post("/relogin")
        assert response.headers["set-cookie"].startswith("sessionid=")
        assert "Max-Age=0" not in response.headers["set-cookie"]
        assert http.cookies["sessionid"] != old_cookie
        assert (await http.get("/get/user")).json() == {"session": True, "value": "ada"}


async def test_a_session_created_without_attributes_is_kept(manager: SessionManager) -> None:
    async def touch(request: Request) -> Response:
        get_session(request)
        return Response("ok")

    async with client(make_app(manager, [Route("/touch", touch)])) as http:
        for _ in range(3):
            await http.get("/touch")  # the client's jar carries the cookie: one session
    stats = await manager.stats()
    assert (stats.created, stats.active, stats.discarded_empty) == (1, 1, 0)


async def test_get_session_without_middleware_says_what_to_add() -> None:
    async def route(request: Request) -> Response:
        get_session(request)
        return Response("never")

    app = Starlette(routes=[Route("/", route)])
    with (
        TestClient(app, raise_server_exceptions=True) as http,
        pytest.raises(RuntimeError, match=r"add servletsession\.SessionMiddleware"),
    ):
        http.get("/")


async def test_functions_accept_a_raw_scope(manager: SessionManager) -> None:
    async def raw(request: Request) -> Response:
        session = get_session(request.scope)
        assert session is not None
        session["a"] = "raw"
        return Response(str(is_requested_session_id_valid(request.scope)))

    async with client(make_app(manager, [Route("/raw", raw)])) as http:
        assert (await http.get("/raw")).text == "False"
        assert (await http.get("/get/a")).json()["value"] == "raw"


def test_lifespan_starts_and_stops_the_reaper(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    with TestClient(make_app(manager), base_url="https://testserver"):
        assert manager.reaper_running
    assert not manager.reaper_running


def test_reaper_starts_on_first_request_without_lifespan(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)

    async def running(request: Request) -> Response:
        return Response(str(manager.reaper_running))

    app = make_app(manager, [Route("/running", running)])
    http = TestClient(app, base_url="https://testserver")  # no `with`: no lifespan
    assert http.get("/running").text == "True"


def test_websocket_route_sees_the_session_from_the_handshake(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)

    async def chat(websocket: WebSocket) -> None:
        session = get_session(websocket, create=False)
        await websocket.accept()
        await websocket.send_text(str(session.get_attribute("a")) if session else "none")
        await websocket.close()

    with TestClient(
        make_app(manager, [WebSocketRoute("/ws", chat)]), base_url="https://testserver"
    ) as http:
        http.post("/set/a", params={"value": "hello"})
        with http.websocket_connect("/ws", headers=cookie_header(http.cookies["sessionid"])) as ws:
            assert ws.receive_text() == "hello"


def test_websocket_may_create_a_session_before_accept(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    accepted: list[Any] = []

    async def chat(websocket: WebSocket) -> None:
        session = get_session(websocket)
        assert session is not None
        session["greeted"] = True
        await websocket.accept()
        try:
            get_session(websocket.scope)["x"] = 1  # type: ignore[index]
        except IllegalStateError:
            accepted.append("refused")
        await websocket.close()

    with (
        TestClient(
            make_app(manager, [WebSocketRoute("/ws", chat)]), base_url="https://testserver"
        ) as http,
        http.websocket_connect("/ws") as ws,
    ):
        headers = dict(ws.extra_headers or [])
    assert headers[b"set-cookie"].startswith(b"sessionid=")
    assert accepted == []  # the session existed before accept, so the write went through


async def test_other_scope_types_pass_through(manager: SessionManager) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = SessionMiddleware(app, secret_key=SECRET, manager=manager)
    await middleware({"type": "custom"}, None, None)  # type: ignore[arg-type]
    assert seen == ["custom"]
