"""Where the session ID travels: the cookie, a header (``X-Auth-Token``), or header then cookie.

Every rule runs through real requests; the header carries the same signed ``<id>.<signature>``
value as the cookie, with the same strictness.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from servletsession import (
    ConfigurationError,
    SessionManager,
    SessionMiddleware,
    change_session_id,
    get_session,
    requested_session_id,
)
from servletsession.config import RESERVED_HEADER_PREFIXES, RESERVED_HEADERS
from servletsession.cookies import COOKIE_VALUE_LENGTH, new_session_id

from .conftest import SECRET, FakeClock, client, cookie_header, make_app

pytestmark = pytest.mark.anyio

TOKEN = "x-auth-token"


class Rejections:
    """A ``cookie_rejected`` listener: the reasons heard, in order."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def cookie_rejected(self, event: Any) -> None:
        self.reasons.append(event.reason)


def middleware_of(app: Starlette) -> SessionMiddleware:
    stack: Any = app.build_middleware_stack()
    while not isinstance(stack, SessionMiddleware):
        stack = stack.app
    return stack


def header(value: str) -> dict[str, str]:
    return {TOKEN: value}


# --- header mode ------------------------------------------------------------------------------


async def test_header_mode_hands_out_a_new_session_in_the_header_not_a_cookie(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, id_resolver="header")) as http:
        response = await http.post("/set/a", params={"value": "1"})
    value = response.headers[TOKEN]
    assert len(value) == COOKIE_VALUE_LENGTH
    assert "set-cookie" not in response.headers
    assert await manager.find(value.split(".")[0]) is not None
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["vary"] == "X-Auth-Token"


async def test_header_mode_returning_request_finds_its_session_and_gets_no_header(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, id_resolver="header")) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        response = await http.get("/get/a", headers=header(value))
        info = await http.get("/info", headers=header(value))
    assert response.json() == {"session": True, "value": "1"}
    assert TOKEN not in response.headers
    assert "cache-control" not in response.headers
    assert response.headers["vary"] == "X-Auth-Token"
    assert info.json()["is_new"] is False


async def test_header_mode_change_session_id_sends_the_new_id_and_kills_the_old(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, id_resolver="header")) as http:
        old = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        changed = await http.post("/change-id", headers=header(old))
        new = changed.headers[TOKEN]
        with_old = await http.get("/get/a", headers=header(old))
        with_new = await http.get("/get/a", headers=header(new))
    assert new != old
    assert len(new) == COOKIE_VALUE_LENGTH
    assert changed.headers["cache-control"] == "no-store"
    assert with_old.json() == {"session": False}
    assert with_new.json() == {"session": True, "value": "1"}


async def test_header_mode_invalidate_sends_the_header_empty(manager: SessionManager) -> None:
    async with client(make_app(manager, id_resolver="header")) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        response = await http.post("/invalidate", headers=header(value))
        replayed = await http.get("/get/a", headers=header(value))
    assert response.headers[TOKEN] == ""
    assert response.headers["cache-control"] == "no-store"
    assert "set-cookie" not in response.headers
    assert replayed.json() == {"session": False}
    assert TOKEN not in replayed.headers  # as with a cookie: an unknown ID is not answered


async def test_header_mode_expired_session_is_answered_with_an_empty_header(
    manager: SessionManager, clock: FakeClock
) -> None:
    async with client(make_app(manager, id_resolver="header")) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        clock.advance(1801)
        response = await http.get("/get/a", headers=header(value))
    assert response.json() == {"session": False}
    assert response.headers[TOKEN] == ""


async def cacheable_login(request: Request) -> Response:
    """A page the app marks cacheable, that starts a session (or renames or ends it)."""
    session = get_session(request)
    assert session is not None
    action = request.query_params.get("do")
    if action == "rename":
        change_session_id(request)
    elif action == "end":
        session.invalidate()
    else:
        session["a"] = "1"
    response = Response("x")
    response.raw_headers += [  # two lines: each must be rewritten
        (b"cache-control", b"public, max-age=600, s-maxage=60, must-revalidate"),
        (b"cache-control", b"stale-while-revalidate=30, no-transform"),
    ]
    return response


CACHEABLE = [Route("/cacheable", cacheable_login, methods=["GET", "POST"])]


async def test_header_mode_a_response_carrying_the_id_is_never_stored_by_any_cache(
    manager: SessionManager,
) -> None:
    # A browser's own cache may keep a "private, max-age" response and replay it, with its
    # live token, to a later fetch: only no-store keeps the token out of every cache.
    async with client(make_app(manager, CACHEABLE, id_resolver="header")) as http:
        created = await http.get("/cacheable")
        value = created.headers[TOKEN]
        renamed = await http.get("/cacheable", params={"do": "rename"}, headers=header(value))
        ended = await http.get(
            "/cacheable", params={"do": "end"}, headers=header(renamed.headers[TOKEN])
        )
    for response in (created, renamed, ended):
        assert response.headers.get_list("cache-control") == [
            "no-store, must-revalidate, no-transform"
        ]
    assert ended.headers[TOKEN] == ""


async def test_header_mode_a_returning_request_keeps_the_apps_cache_control(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, CACHEABLE, id_resolver="header")) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        returning = await http.get("/cacheable", headers=header(value))
    assert TOKEN not in returning.headers  # no ID handed out: the app's caching stands
    assert returning.headers.get_list("cache-control") == [
        "public, max-age=600, s-maxage=60, must-revalidate",
        "stale-while-revalidate=30, no-transform",
    ]


async def test_composite_no_store_in_the_header_answer_private_in_the_cookie_answer(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, CACHEABLE, id_resolver="composite")) as http:
        by_header = await http.get("/cacheable", headers=header(""))
        by_cookie = await http.get("/cacheable")
    assert TOKEN in by_header.headers
    assert by_header.headers["cache-control"] == "no-store, must-revalidate, no-transform"
    assert "set-cookie" in by_cookie.headers
    assert by_cookie.headers.get_list("cache-control")[0].startswith("private, max-age=600")


async def test_header_mode_untouched_request_gets_no_session_headers(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, id_resolver="header")) as http:
        response = await http.get("/untouched")
    assert TOKEN not in response.headers
    assert "vary" not in response.headers
    assert (await manager.stats()).created == 0


async def test_header_mode_forged_signature_gets_no_session_and_is_never_adopted(
    manager: SessionManager,
) -> None:
    listener = Rejections()
    manager.add_listener(listener)
    forged = new_session_id() + "." + "A" * 43
    async with client(make_app(manager, id_resolver="header")) as http:
        read = await http.get("/get/a", headers=header(forged))
        created = await http.post("/set/a", params={"value": "1"}, headers=header(forged))
    assert read.json() == {"session": False}
    assert TOKEN not in read.headers  # nothing to clear: no session was named
    assert created.headers[TOKEN].split(".")[0] != forged.split(".")[0]
    assert listener.reasons == ["bad_signature", "bad_signature"]
    assert (await manager.stats()).bad_signatures == 2


async def test_header_mode_signed_but_unknown_id_is_never_adopted(
    manager: SessionManager,
) -> None:
    app = make_app(manager, id_resolver="header")
    unknown = new_session_id()
    signed = middleware_of(app).signed_id(unknown)
    async with client(app) as http:
        read = await http.get("/get/a", headers=header(signed))
        created = await http.post("/set/a", params={"value": "1"}, headers=header(signed))
    assert read.json() == {"session": False}
    assert created.headers[TOKEN].split(".")[0] != unknown
    assert await manager.find(unknown) is None
    assert (await manager.stats()).unknown_ids == 2


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "x" * 10_000,  # oversized: refused on its length, before any HMAC
        new_session_id() + ".",
        new_session_id() + ".short",
        "é" * COOKIE_VALUE_LENGTH,
    ],
    ids=["garbage", "oversized", "no-signature", "short-signature", "non-ascii"],
)
async def test_header_mode_malformed_header_gets_no_session(
    manager: SessionManager, value: str
) -> None:
    listener = Rejections()
    manager.add_listener(listener)
    async with client(make_app(manager, id_resolver="header")) as http:
        response = await http.get("/get/a", headers={TOKEN.encode(): value.encode()})
    assert response.status_code == 200
    assert response.json() == {"session": False}
    assert listener.reasons == ["malformed"]


async def test_header_mode_never_logs_the_header_value(
    manager: SessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    forged = new_session_id() + "." + "A" * 43
    caplog.set_level(logging.DEBUG)
    async with client(make_app(manager, id_resolver="header")) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        await http.get("/get/a", headers=header(value))
        await http.get("/get/a", headers=header(forged))
        await http.post("/invalidate", headers=header(value))
    for secret in (value, value.split(".")[0], forged, forged.split(".")[0]):
        assert secret not in caplog.text


async def test_header_mode_a_header_sent_twice_gets_no_session(manager: SessionManager) -> None:
    """Never guess which of two IDs is meant (the header's cookie tossing), even both valid."""
    listener = Rejections()
    manager.add_listener(listener)
    async with client(make_app(manager, id_resolver="header")) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        response = await http.get("/get/a", headers=[(TOKEN, value), (TOKEN, value)])
    assert response.json() == {"session": False}
    assert listener.reasons == ["duplicate"]


async def test_header_mode_an_empty_header_is_no_session_and_no_rejection(
    manager: SessionManager,
) -> None:
    listener = Rejections()
    manager.add_listener(listener)
    async with client(make_app(manager, id_resolver="header")) as http:
        response = await http.get("/get/a", headers=header(""))
    assert response.json() == {"session": False}
    assert listener.reasons == []


async def test_header_mode_a_cookie_alone_gets_no_session(manager: SessionManager) -> None:
    """A cross-site form post brings only the browser's cookies: in header mode it finds no
    session (so header mode needs no CSRF token), and no cookie is ever set."""
    app = make_app(manager, id_resolver="header")
    async with client(app) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        response = await http.post(
            "/set/a", params={"value": "forged"}, headers=cookie_header(value)
        )
        kept = await http.get("/get/a", headers=header(value))
    assert "set-cookie" not in response.headers
    assert response.headers[TOKEN] != value  # a new session, not the victim's
    assert kept.json() == {"session": True, "value": "1"}


async def test_header_mode_the_apps_own_header_is_not_duplicated(
    manager: SessionManager,
) -> None:
    async def own(request: Request) -> Response:
        get_session(request)["a"] = 1  # type: ignore[index]
        return Response("x", headers={"X-Auth-Token": "chosen-by-the-app"})

    async with client(make_app(manager, [Route("/own", own)], id_resolver="header")) as http:
        response = await http.get("/own")
    assert response.headers.get_list(TOKEN) == ["chosen-by-the-app"]


async def test_header_mode_vary_is_merged_with_the_apps_own(manager: SessionManager) -> None:
    async def vary(request: Request) -> Response:
        get_session(request, create=False)
        return Response("x", headers={"Vary": "Accept-Encoding"})

    async with client(make_app(manager, [Route("/vary", vary)], id_resolver="header")) as http:
        response = await http.get("/vary")
    assert response.headers["vary"] == "Accept-Encoding, X-Auth-Token"


async def test_header_mode_uses_the_configured_header_name(manager: SessionManager) -> None:
    async with client(make_app(manager, id_resolver="header", header_name="X-Session")) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers["x-session"]
        response = await http.get("/get/a", headers={"X-SESSION": value})
        ignored = await http.get("/get/a", headers=header(value))
    assert response.json() == {"session": True, "value": "1"}
    assert response.headers["vary"] == "X-Session"
    assert ignored.json() == {"session": False}


async def test_header_mode_requested_session_id_is_the_headers(manager: SessionManager) -> None:
    async def requested(request: Request) -> Response:
        return JSONResponse(requested_session_id(request))

    app = make_app(manager, [Route("/requested", requested)], id_resolver="header")
    async with client(app) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
        response = await http.get("/requested", headers=header(value))
    assert response.json() == value.split(".")[0]


async def test_signed_id_is_what_the_header_carries(manager: SessionManager) -> None:
    app = make_app(manager, id_resolver="header")
    async with client(app) as http:
        value = (await http.post("/set/a", params={"value": "1"})).headers[TOKEN]
    assert middleware_of(app).signed_id(value.split(".")[0]) == value


def test_websocket_handshake_header_carries_the_id(clock: FakeClock) -> None:
    """Non-browser clients send the header on the handshake (browsers cannot: they use the
    cookie, or composite mode)."""
    manager = SessionManager(clock=clock)

    async def chat(websocket: WebSocket) -> None:
        session = get_session(websocket, create=False)
        await websocket.accept()
        await websocket.send_text(str(session.get_attribute("a")) if session else "none")
        await websocket.close()

    app = make_app(manager, [WebSocketRoute("/ws", chat)], id_resolver="header")
    with TestClient(app, base_url="https://testserver") as http:
        value = http.post("/set/a", params={"value": "hello"}).headers[TOKEN]
        with http.websocket_connect("/ws", headers=header(value)) as ws:
            assert ws.receive_text() == "hello"
        with http.websocket_connect("/ws", headers=cookie_header(value)) as ws:
            assert ws.receive_text() == "none"


def test_websocket_session_created_before_accept_goes_out_in_the_accept_header(
    clock: FakeClock,
) -> None:
    manager = SessionManager(clock=clock)

    async def chat(websocket: WebSocket) -> None:
        get_session(websocket)["greeted"] = True  # type: ignore[index]
        await websocket.accept()
        await websocket.close()

    app = make_app(manager, [WebSocketRoute("/ws", chat)], id_resolver="header")
    with (
        TestClient(app, base_url="https://testserver") as http,
        http.websocket_connect("/ws") as ws,
    ):
        headers: dict[bytes, bytes] = dict(ws.extra_headers or [])
    assert b"set-cookie" not in headers
    assert len(headers[TOKEN.encode()]) == COOKIE_VALUE_LENGTH
    assert b"vary" not in headers  # a handshake is not cached


# --- composite mode --------------------------------------------------------------------------


async def test_composite_without_the_header_uses_and_answers_with_the_cookie(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, id_resolver="composite")) as http:
        created = await http.post("/set/a", params={"value": "1"})
        response = await http.get("/get/a")
    assert created.headers["set-cookie"].startswith("sessionid=")
    assert TOKEN not in created.headers
    assert created.headers["vary"] == "X-Auth-Token, Cookie"
    assert response.json() == {"session": True, "value": "1"}


async def test_composite_an_empty_header_asks_for_the_id_in_the_header(
    manager: SessionManager,
) -> None:
    """A fresh API client sends the header empty to be answered in the header, not a cookie."""
    async with client(make_app(manager, id_resolver="composite")) as http:
        created = await http.post("/set/a", params={"value": "1"}, headers=header(""))
        value = created.headers[TOKEN]
        response = await http.get("/get/a", headers=header(value))
    assert "set-cookie" not in created.headers
    assert response.json() == {"session": True, "value": "1"}


async def test_composite_a_valid_header_wins_and_the_cookie_is_ignored(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, id_resolver="composite")) as http:
        by_cookie = (await http.post("/set/a", params={"value": "cookie"})).cookies["sessionid"]
        http.cookies.clear()
        by_header = (
            await http.post("/set/a", params={"value": "header"}, headers=header(""))
        ).headers[TOKEN]
        both = {**cookie_header(by_cookie), **header(by_header)}
        response = await http.get("/get/a", headers=both)
        changed = await http.post("/change-id", headers=both)
        cookie_only = await http.get("/get/a", headers=cookie_header(by_cookie))
    assert response.json() == {"session": True, "value": "header"}
    assert "set-cookie" not in changed.headers  # answered the way the ID came: in the header
    assert changed.headers[TOKEN] not in ("", by_header)
    assert cookie_only.json() == {"session": True, "value": "cookie"}  # left alone


async def test_composite_a_malformed_header_is_not_made_good_by_a_valid_cookie(
    manager: SessionManager,
) -> None:
    """Strict: a request that has the header is judged by the header alone."""
    listener = Rejections()
    manager.add_listener(listener)
    async with client(make_app(manager, id_resolver="composite")) as http:
        cookie = (await http.post("/set/a", params={"value": "1"})).cookies["sessionid"]
        http.cookies.clear()
        response = await http.get("/get/a", headers={**cookie_header(cookie), TOKEN: "garbage"})
        still = await http.get("/get/a", headers=cookie_header(cookie))
    assert response.json() == {"session": False}
    assert "set-cookie" not in response.headers  # the cookie's session is not touched
    assert listener.reasons == ["malformed"]
    assert still.json() == {"session": True, "value": "1"}


async def test_composite_an_ended_header_session_empties_the_header_not_the_cookie(
    manager: SessionManager,
) -> None:
    async with client(make_app(manager, id_resolver="composite")) as http:
        value = (await http.post("/set/a", params={"value": "1"}, headers=header(""))).headers[
            TOKEN
        ]
        response = await http.post("/invalidate", headers=header(value))
    assert response.headers[TOKEN] == ""
    assert "set-cookie" not in response.headers


async def test_composite_a_cookie_alone_finds_its_session(manager: SessionManager) -> None:
    """So a cross-site form post carries the session in composite mode: it still needs a CSRF
    defence (SameSite=Lax, a token) wherever the browser uses the cookie."""
    async with client(make_app(manager, id_resolver="composite")) as http:
        cookie = (await http.post("/set/a", params={"value": "1"})).cookies["sessionid"]
        http.cookies.clear()
        response = await http.get("/get/a", headers=cookie_header(cookie))
    assert response.json() == {"session": True, "value": "1"}


def test_composite_browser_websocket_uses_the_cookie(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)

    async def chat(websocket: WebSocket) -> None:
        session = get_session(websocket, create=False)
        await websocket.accept()
        await websocket.send_text(str(session.get_attribute("a")) if session else "none")
        await websocket.close()

    app = make_app(manager, [WebSocketRoute("/ws", chat)], id_resolver="composite")
    with TestClient(app, base_url="https://testserver") as http:
        http.post("/set/a", params={"value": "hello"})
        with http.websocket_connect("wss://testserver/ws") as ws:  # its cookie jar, as a browser
            assert ws.receive_text() == "hello"


# --- configuration -----------------------------------------------------------------------------


def test_each_mode_names_its_cookie_and_header() -> None:
    def made(**options: Any) -> SessionMiddleware:
        return SessionMiddleware(Starlette(), secret_key=SECRET, **options)

    assert (made().cookie_name, made().header_name) == ("sessionid", None)
    header_mode = made(id_resolver="header", header_name="X-Session")
    assert (header_mode.cookie_name, header_mode.header_name) == (None, "X-Session")
    composite = made(id_resolver="composite")
    assert (composite.cookie_name, composite.header_name) == ("sessionid", "X-Auth-Token")


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"id_resolver": "query"}, "id_resolver"),
        ({"id_resolver": "header", "header_name": "X Auth"}, "not a valid header name"),
        ({"id_resolver": "header", "header_name": ""}, "not a valid header name"),
        ({"id_resolver": "header", "header_name": "Cookie"}, "choose a name of your own"),
        ({"id_resolver": "header", "header_name": "set-cookie"}, "choose a name of your own"),
        ({"id_resolver": "header", "header_name": "Host"}, "choose a name of your own"),
        ({"id_resolver": "header", "header_name": "Authorization"}, "choose a name of your own"),
        ({"id_resolver": "header", "header_name": "Sec-Token"}, "choose a name of your own"),
        ({"id_resolver": "composite", "header_name": "Vary"}, "choose a name of your own"),
        ({"id_resolver": "header", "max_age": 600}, "sends no cookie"),
        ({"id_resolver": "header", "max_age": 600, "rolling": True}, "sends no cookie"),
        ({"id_resolver": "header", "header_name": 1}, "header_name"),
        ({"secure": 1}, "secure: Input should be a valid boolean"),
        ({"http_only": "false"}, "http_only: Input should be a valid boolean"),
        ({"max_age": True}, "max_age: Input should be a valid integer"),
        ({"max_age": "600"}, "max_age: Input should be a valid integer"),
        ({"max_age": 600.0}, "max_age: Input should be a valid integer"),
        ({"max_age": 10**400}, "max_age: must be a positive number of seconds up to"),
        ({"rolling": 1, "max_age": 600}, "rolling: Input should be a valid boolean"),
    ],
)
def test_wrong_transport_options_fail_at_construction(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        SessionMiddleware(Starlette(), secret_key=SECRET, **options)


@pytest.mark.parametrize(
    "name",
    [
        "Accept", "Location", "Range", "If-None-Match", "If-Anything-New", "Forwarded",
        "X-Forwarded-For", "x-forwarded-anything", "Access-Control-Allow-Origin",
        "Content-Security-Policy", "Content-Anything", "ETag", "User-Agent", "WWW-Authenticate",
        "Cross-Origin-Opener-Policy", "X-Real-IP", "traceparent",
    ],
)  # fmt: skip
def test_header_name_refuses_standard_headers(name: str) -> None:
    for resolver in ("header", "composite"):
        with pytest.raises(ConfigurationError, match="choose a name of your own"):
            SessionMiddleware(
                Starlette(), secret_key=SECRET, id_resolver=resolver, header_name=name
            )


@pytest.mark.parametrize(
    "name", ["X-Auth-Token", "X-Session", "Session-Token", "X-Ifnot", "Contents"]
)
def test_header_name_takes_names_of_your_own(name: str) -> None:
    made = SessionMiddleware(Starlette(), secret_key=SECRET, id_resolver="header", header_name=name)
    assert made.header_name == name


def test_the_docs_list_exactly_the_header_names_refused() -> None:
    """docs/transport.md claims neither more nor less than the code refuses."""
    text = (Path(__file__).parent.parent / "docs" / "transport.md").read_text()
    block = text.split("**Names `header_name` may not take**", 1)[1].split("\n\n", 2)[1]
    prefixes_part, exact_part = block.split("- exactly:", 1)
    prefixes = {name.lower() for name in re.findall(r"`([^`]+)`", prefixes_part)}
    exact = {name.lower() for name in re.findall(r"`([^`]+)`", exact_part)}
    assert prefixes == set(RESERVED_HEADER_PREFIXES)
    assert exact == RESERVED_HEADERS
    for name in exact:  # and each one is refused, as the docs say
        with pytest.raises(ConfigurationError):
            SessionMiddleware(
                Starlette(), secret_key=SECRET, id_resolver="header", header_name=name
            )
