"""A middleware configuration error surfaces at startup, not as a 500 with a traceback per request.

Starlette builds its middleware stack on the first ASGI call; uvicorn's ``--lifespan auto`` used to
swallow the error raised there and then serve a 500 per request.
"""

from __future__ import annotations

import logging

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from servletsession import ConfigurationError, SessionManager, SessionMiddleware
from servletsession.compat.fastsession import FastSessionMiddleware
from servletsession.startup import MisconfiguredMiddleware

from .conftest import SECRET, client
from .uvicorn_process import UvicornProcess

SHORT = "your-session-secret-key"  # the ChatStream seed's example key: 23 bytes


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def greet(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")


def app_with(middleware: type, **options: object) -> Starlette:
    app = Starlette(routes=[Route("/", hello), WebSocketRoute("/ws", greet)])
    app.add_middleware(middleware, **options)
    return app


def test_direct_construction_still_raises() -> None:
    with pytest.raises(ConfigurationError, match="a key is 23 bytes; use at least 32"):
        SessionMiddleware(Starlette(), secret_key=SHORT)


@pytest.mark.anyio
async def test_direct_construction_raises_inside_a_running_event_loop_too() -> None:
    with pytest.raises(ConfigurationError, match="a key is 23 bytes"):
        SessionMiddleware(Starlette(), secret_key=SHORT)


def test_prebuilding_the_stack_outside_a_server_raises() -> None:
    app = app_with(SessionMiddleware, secret_key=SHORT)
    with pytest.raises(ConfigurationError, match="a key is 23 bytes"):
        app.build_middleware_stack()


def test_a_lifespan_startup_is_refused_with_the_message() -> None:
    app = app_with(SessionMiddleware, secret_key=SHORT)
    with pytest.raises(ConfigurationError) as refused, TestClient(app):
        pytest.fail("the app must not start")
    assert str(refused.value).startswith("SessionMiddleware is misconfigured: secret_key: a key")
    assert "secrets.token_urlsafe(32)" in str(refused.value)


@pytest.mark.anyio
async def test_without_lifespan_one_error_line_and_a_plain_500_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_with(SessionMiddleware, secret_key=SHORT)
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        async with client(app) as http:
            answers = [await http.get("/") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [500, 500, 500]
    assert {answer.text for answer in answers} == {"Internal Server Error\n"}
    lines = [r for r in caplog.records if r.name == "servletsession"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.ERROR
    assert "SessionMiddleware is misconfigured: secret_key: a key is 23 bytes" in lines[0].message
    assert lines[0].exc_info is None


def test_without_lifespan_a_websocket_is_closed_as_an_internal_error() -> None:
    app = app_with(SessionMiddleware, secret_key=SHORT)
    http = TestClient(app)  # not entered: no lifespan
    with pytest.raises(WebSocketDisconnect) as closed, http.websocket_connect("/ws"):
        pass
    assert closed.value.code == 1011


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"secret_key": SECRET, "cookie_nam": "sid"}, "unexpected keyword argument 'cookie_nam'"),
        ({"secret_key": SECRET, "store": "redis://localhost"}, "store must be a SessionStore"),
    ],
    ids=["misspelt-option", "store-url"],
)
def test_a_wrong_option_name_or_type_is_refused_at_startup_too(
    options: dict[str, object], message: str
) -> None:
    app = app_with(SessionMiddleware, **options)
    with pytest.raises(ConfigurationError, match=message), TestClient(app):
        pass


def test_a_subclass_is_named_in_the_message() -> None:
    class AppSessions(SessionMiddleware):
        def __init__(self, app: Starlette, **options: object) -> None:
            super().__init__(app, **options)  # type: ignore[arg-type]

    app = app_with(AppSessions, secret_key=SHORT)
    with pytest.raises(ConfigurationError, match=r"^AppSessions is misconfigured"), TestClient(app):
        pass


class ListeningSessions(SessionMiddleware):
    """A subclass that uses what ``super().__init__()`` set up (a common pattern)."""

    def __init__(self, app: Starlette, **options: object) -> None:
        super().__init__(app, **options)  # type: ignore[arg-type]
        self.manager.add_listener(Audit())


class Audit:
    def session_created(self, event: object) -> None:
        pass


def test_a_subclass_working_after_super_init_is_refused_with_the_message() -> None:
    app = app_with(ListeningSessions, secret_key=SHORT)
    with pytest.raises(ConfigurationError) as refused, TestClient(app):
        pytest.fail("the app must not start")
    assert str(refused.value).startswith("ListeningSessions is misconfigured: secret_key: a key")


@pytest.mark.anyio
async def test_a_subclass_working_after_super_init_without_lifespan_answers_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_with(ListeningSessions, secret_key=SHORT)
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        async with client(app) as http:
            answers = [await http.get("/") for _ in range(2)]
    assert [answer.status_code for answer in answers] == [500, 500]
    lines = [r.message for r in caplog.records if r.name == "servletsession"]
    assert len(lines) == 1
    assert lines[0].startswith("ListeningSessions is misconfigured: secret_key: a key")


def test_a_subclass_that_catches_the_error_of_super_init_gets_it() -> None:
    caught: list[str] = []

    class FallbackSessions(SessionMiddleware):
        def __init__(self, app: Starlette, **options: object) -> None:
            try:
                super().__init__(app, **options)  # type: ignore[arg-type]
            except ConfigurationError as exc:
                caught.append(str(exc))
                super().__init__(app, secret_key=SECRET)

    app = app_with(FallbackSessions, secret_key=SHORT)
    with TestClient(app) as http:
        assert http.get("/").text == "hello"
    assert len(caught) == 1
    assert caught[0].startswith("secret_key: a key is 23 bytes")


def test_a_subclass_of_a_subclass_is_refused_with_the_message_too() -> None:
    class Deeper(ListeningSessions):
        def __init__(self, app: Starlette, **options: object) -> None:
            super().__init__(app, **options)
            self.extra = self.manager.settings

    app = app_with(Deeper, secret_key=SHORT)
    with pytest.raises(ConfigurationError, match=r"^Deeper is misconfigured"), TestClient(app):
        pass


def test_a_subclass_hook_that_skips_super_keeps_the_plain_error_below_it() -> None:
    """A subclass's own ``__init_subclass__`` that forgets ``super()`` leaves the constructors of
    its subclasses undecorated: the instance must then not be replaced under their code (which
    would fail with an ``AttributeError`` instead of the message)."""
    after_super: list[object] = []

    class Registry(SessionMiddleware):
        def __init_subclass__(cls, **kwargs: object) -> None:  # a plugin hook, no super()
            pass

    class Mine(Registry):
        def __init__(self, app: Starlette, **options: object) -> None:
            super().__init__(app, **options)  # type: ignore[arg-type]
            after_super.append(self.manager.settings)

    app = app_with(Mine, secret_key=SHORT)
    with pytest.raises(ConfigurationError, match=r"^secret_key: a key"), TestClient(app):
        pytest.fail("the app must not start")
    assert after_super == []


def test_a_compat_middleware_error_names_the_compat_middleware() -> None:
    app = app_with(FastSessionMiddleware, secret_key=SECRET, manager=SessionManager(), max_age=60)
    with pytest.raises(ConfigurationError) as refused, TestClient(app):
        pass
    assert str(refused.value).startswith("FastSessionMiddleware is misconfigured: max_age=60")


def test_a_valid_middleware_keeps_its_class() -> None:
    app = app_with(SessionMiddleware, secret_key=SECRET)
    with TestClient(app) as http:
        assert http.get("/").text == "hello"
    stack, kinds = app.middleware_stack, []
    while stack is not None:
        kinds.append(type(stack))
        stack = getattr(stack, "app", None)
    assert SessionMiddleware in kinds
    assert MisconfiguredMiddleware not in kinds


# --- under a real uvicorn ----------------------------------------------------------------------


@pytest.mark.parametrize("lifespan", ["auto", "on"])
def test_uvicorn_refuses_to_start_and_says_why(lifespan: str) -> None:
    with UvicornProcess("tests.apps.misconfigured:app", lifespan=lifespan) as server:
        status = server.wait()
    assert server.url is None, "the server must not have started"
    assert status == 3  # uvicorn's STARTUP_FAILURE
    assert "SessionMiddleware is misconfigured: secret_key: a key is 23 bytes" in server.output
    assert "Application startup failed. Exiting." in server.output
    assert "unsupported" not in server.output  # auto mode did not take it for "no lifespan"
    assert "Traceback" not in server.output


def test_uvicorn_without_lifespan_logs_once_and_answers_500() -> None:
    with UvicornProcess("tests.apps.misconfigured:app", lifespan="off") as server:
        assert server.url is not None, server.output
        answers = [httpx2.get(server.url + "/", timeout=10) for _ in range(3)]
        output = server.stop()
    assert [answer.status_code for answer in answers] == [500, 500, 500]
    assert output.count("SessionMiddleware is misconfigured") == 1
    assert "Traceback" not in output


def test_uvicorn_starts_a_well_configured_app() -> None:
    env = {"SS_SECRET": SECRET}
    with UvicornProcess("tests.apps.misconfigured:app", env=env) as server:
        assert server.url is not None, server.output
        assert httpx2.get(server.url + "/", timeout=10).text == "hello"
        output = server.stop()
    assert "Application startup complete." in output
    assert "misconfigured" not in output
