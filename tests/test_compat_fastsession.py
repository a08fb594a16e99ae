"""A ChatStream-style app written for FastSession runs on servletsession by changing one import."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from servletsession import (
    ConfigurationError,
    HttpSessionBindingEvent,
    HttpSessionEvent,
    SessionManager,
)
from servletsession.compat.fastsession import (
    FasterSessionMiddleware,
    FastSessionDict,
    FastSessionMiddleware,
    MemoryStore,
)

from .conftest import SECRET, FakeClock, client, cookie_header
from .uvicorn_process import UvicornProcess

pytestmark = pytest.mark.anyio

SEED_KEY = "your-session-secret-key"  # ChatStream's example key: 23 bytes


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


Check = Callable[[FastSessionDict], Any]
_checks: dict[str, Check] = {}


async def probe(request: Request) -> Response:
    """Runs the check a test registered on the request's session; returns what it returns."""
    return JSONResponse(_checks[request.path_params["name"]](request.state.session.get_session()))


def chatstream_app(store: MemoryStore | None = None, **options: Any) -> Starlette:
    routes = [Route("/chat", chat), Route("/reset", reset), Route("/health", health),
              Route("/probe/{name}", probe)]  # fmt: skip
    app = Starlette(routes=routes)
    if "manager" not in options:
        options["store"] = store if store is not None else MemoryStore()
    options.setdefault("secret_key", SECRET)
    app.add_middleware(FastSessionMiddleware, http_only=True, secure=True, session_cookie="sid",
                       **options)  # fmt: skip
    return app


@pytest.fixture
def checks() -> Iterator[dict[str, Check]]:
    yield _checks
    _checks.clear()


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
    [sid] = [c for c in cookies if c.startswith("sid=")]
    assert {"HttpOnly", "Secure", "Path=/", "SameSite=Lax"} <= {a.strip() for a in sid.split(";")}
    assert "Max-Age" not in sid, "max_age=0: a browser-session cookie"


async def test_a_fastsession_cookie_gets_a_fresh_session() -> None:
    from itsdangerous import URLSafeTimedSerializer

    old = URLSafeTimedSerializer(SEED_KEY).dumps({"sid": "0939b4a7-1964-4ca5-94cd-f99498a79dc9"})
    async with client(chatstream_app(secret_key=SEED_KEY)) as http:
        response = await http.get("/chat", params={"say": "hi"}, headers=cookie_header(old, "sid"))
    assert response.status_code == 200
    assert response.json()["history"] == ["hi"]
    assert response.cookies["sid"] != old


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


async def test_a_skip_header_without_header_value_matches_as_in_fastsession(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """FastSession compared the request's header (``None`` when absent) with the entry's
    ``header_value`` (``None`` when missing): such an entry skips requests *without* the header.
    Kept, with a warning that says what it does."""
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        app = chatstream_app(MemoryStore(), skip_session_header={"header_name": "X-Skip"})
        async with client(app) as http:
            without = (await http.get("/health")).text
            with_it = (await http.get("/health", headers={"x-skip": "yes"})).text
    assert [without, with_it] == ["False", "True"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "servletsession"]
    assert len(warnings) == 1
    assert "has no 'header_value'" in warnings[0]
    assert "matches requests that do NOT send X-Skip" in warnings[0]


async def test_skip_headers_in_a_tuple_and_the_first_of_repeated_headers() -> None:
    skip = ({"header_name": "X-Skip", "header_value": "yes"},)
    async with client(chatstream_app(MemoryStore(), skip_session_header=skip)) as http:
        first_yes = await http.get("/health", headers=[("x-skip", "yes"), ("x-skip", "no")])
        first_no = await http.get("/health", headers=[("x-skip", "no"), ("x-skip", "yes")])
    assert [first_yes.text, first_no.text] == ["False", "True"]


@pytest.mark.parametrize(
    "skip",
    [
        {"header_value": "yes"},
        {"header_name": "", "header_value": "yes"},
        {"header_name": "X-Skip", "header_value": 1},
        {"header_name": "X-Skip", "header_value": "\u2603"},
        ["X-Skip"],
        "X-Skip",
        42,
    ],
    ids=["no-name", "empty-name", "int-value", "not-latin-1", "not-a-dict", "a-string", "int"],
)
async def test_a_malformed_skip_header_is_a_configuration_error(skip: Any) -> None:
    with pytest.raises(ConfigurationError, match="skip_session_header"):
        FastSessionMiddleware(Starlette(), secret_key=SECRET, skip_session_header=skip)
    app = chatstream_app(MemoryStore(), skip_session_header=skip)
    with (
        pytest.raises(ConfigurationError, match=r"misconfigured: .*skip_session_header"),
        TestClient(app),
    ):
        pass


async def test_faster_session_middleware_is_the_same_class() -> None:
    assert FasterSessionMiddleware is FastSessionMiddleware


async def test_sessions_now_expire(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock, max_inactive_interval=60)
    app = chatstream_app(manager=manager)
    async with client(app) as http:
        await http.get("/chat", params={"say": "one"})
        clock.advance(61)
        after = await http.get("/chat", params={"say": "two"})
    assert after.json()["history"] == ["two"]
    assert (await manager.stats()).expired == 1


# --- secret_key: every key FastSession accepted ----------------------------------------------


async def test_the_seed_key_is_accepted_with_one_warning_at_construction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        app = chatstream_app(secret_key=SEED_KEY)
        async with client(app) as http:
            first = await http.get("/chat", params={"say": "hello"})
            second = await http.get("/chat", params={"say": "again"})
            third = await http.get("/chat", params={"say": "more"})
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 200]
    assert third.json()["history"] == ["hello", "again", "more"]
    warnings = [r for r in caplog.records if r.name == "servletsession"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "secret_key is weak (23 bytes" in warnings[0].message
    assert "secrets.token_urlsafe(32)" in warnings[0].message
    assert SEED_KEY not in warnings[0].message


@pytest.mark.parametrize(
    "key",
    [
        "",
        "x",
        b"bytes",
        ["old-short-key", "new-short-key"],
        [SECRET, "short"],
        ("old-short-key", "new-short-key"),
        (SECRET, SECRET[::-1]),
    ],
    ids=["empty", "one-char", "bytes", "short-list", "long-then-short", "short-tuple", "tuple"],
)
async def test_short_keys_fastsession_accepted_still_work(key: Any) -> None:
    async with client(chatstream_app(secret_key=key)) as http:
        await http.get("/chat", params={"say": "a"})
        second = await http.get("/chat", params={"say": "b"})
    assert second.status_code == 200
    assert second.json()["history"] == ["a", "b"]


async def test_a_tuple_of_keys_signs_with_its_last_key_as_a_list_does() -> None:
    """itsdangerous (under FastSession) took any sequence of keys, the last one signing."""
    keys, store = ("old-short-key", "new-short-key"), MemoryStore()
    async with client(chatstream_app(store, secret_key=keys)) as by_tuple:
        cookie = (await by_tuple.get("/chat", params={"say": "a"})).cookies["sid"]
    sent = cookie_header(cookie, "sid")
    async with client(chatstream_app(store, secret_key=list(keys))) as by_list:
        again = await by_list.get("/chat", params={"say": "b"}, headers=sent)
    async with client(chatstream_app(store, secret_key=keys[1])) as newest:
        known = await newest.get("/chat", params={"say": "c"}, headers=sent)
    async with client(chatstream_app(store, secret_key=keys[0])) as oldest:
        unknown = await oldest.get("/chat", params={"say": "d"}, headers=sent)
    assert again.json()["history"] == ["a", "b"]  # a list of the same keys accepts its cookie
    assert known.json()["history"] == ["a", "b", "c"]  # it was signed with the last key
    assert unknown.json()["history"] == ["d"]


async def test_a_long_key_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        async with client(chatstream_app(secret_key=SECRET)) as http:
            assert (await http.get("/chat", params={"say": "a"})).status_code == 200
    assert not [r for r in caplog.records if r.name == "servletsession"]


async def test_workers_with_the_same_short_key_accept_each_others_cookies() -> None:
    """The key is derived deterministically: two processes with one key and one store agree."""
    store = MemoryStore()
    async with (
        client(chatstream_app(store, secret_key=SEED_KEY)) as one,
        client(chatstream_app(store, secret_key=SEED_KEY)) as two,
        client(chatstream_app(store, secret_key="another-short-key")) as other,
    ):
        first = await one.get("/chat", params={"say": "hi"})
        sid = first.cookies["sid"]
        same = await two.get("/chat", params={"say": "there"}, headers=cookie_header(sid, "sid"))
        foreign = await other.get("/chat", params={"say": "x"}, headers=cookie_header(sid, "sid"))
    assert same.json()["history"] == ["hi", "there"]
    assert foreign.json()["history"] == ["x"]


async def test_a_cookie_signed_with_the_raw_short_key_is_refused() -> None:
    """The short key itself never signs: only the key derived from it does."""
    from itsdangerous import TimestampSigner

    store = MemoryStore()
    async with client(chatstream_app(store, secret_key=SEED_KEY)) as http:
        first = await http.get("/chat", params={"say": "hi"})
        session_id = first.cookies["sid"].rsplit(".", 2)[0]
        forged = TimestampSigner(SEED_KEY).sign(session_id).decode()
        http.cookies.clear()
        replay = await http.get("/chat", params={"say": "x"}, headers=cookie_header(forged, "sid"))
    assert replay.json()["history"] == ["x"]


# --- logger= ----------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def app_logger() -> Iterator[tuple[logging.Logger, Collect]]:
    target = logging.getLogger("tests.chatstream")
    handler = Collect()
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    target.propagate = False
    yield target, handler
    target.removeHandler(handler)


@pytest.fixture
def library_lines() -> Iterator[Collect]:
    library = logging.getLogger("servletsession")
    handler = Collect()
    library.addHandler(handler)
    yield handler
    library.removeHandler(handler)


class Failing:
    """A listener that fails, sync and async: the library logs each failure at ERROR."""

    def attribute_added(self, event: HttpSessionBindingEvent) -> None:
        raise RuntimeError("sync listener failed")

    async def attribute_replaced(self, event: HttpSessionBindingEvent) -> None:
        raise RuntimeError("async listener failed")


async def test_the_weak_key_warning_goes_to_the_given_logger(
    app_logger: tuple[logging.Logger, Collect], library_lines: Collect
) -> None:
    target, seen = app_logger
    chatstream_app(secret_key=SEED_KEY, logger=target).build_middleware_stack()
    assert [(r.levelno, "secret_key is weak" in r.getMessage()) for r in seen.records] == [
        (logging.WARNING, True)
    ]
    assert library_lines.records == []


async def test_the_library_lines_of_this_app_go_to_the_given_logger(
    app_logger: tuple[logging.Logger, Collect], library_lines: Collect
) -> None:
    target, seen = app_logger
    mine = chatstream_app(manager=SessionManager(listeners=[Failing()]), logger=target)
    others = chatstream_app(manager=SessionManager(listeners=[Failing()]))
    async with client(mine) as http:
        await http.get("/chat", params={"say": "a"})  # attribute_added: sync failure
        await http.get("/chat", params={"say": "b"})  # attribute_replaced: in a task
    assert [r.getMessage().split(" raised")[0] for r in seen.records] == [
        "session listener Failing.attribute_added",
        "session listener Failing.attribute_replaced",
    ]
    assert all(r.levelno == logging.ERROR and r.exc_info for r in seen.records)
    assert library_lines.records == []
    async with client(others) as http:
        await http.get("/chat", params={"say": "a"})
    assert len(library_lines.records) == 1, "an app without logger= logs as usual"
    assert len(seen.records) == 2


async def test_a_fastsession_style_logger_object_gets_the_lines(library_lines: Collect) -> None:
    class ConsoleLogger:  # FastSession's own fallback logger has debug and info only
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, line: str) -> None:
            self.lines.append(line)

        def debug(self, line: str) -> None:
            self.lines.append(line)

    console = ConsoleLogger()
    app = chatstream_app(secret_key=SEED_KEY, manager=SessionManager(listeners=[Failing()]),
                         logger=console)  # fmt: skip
    async with client(app) as http:
        assert (await http.get("/chat", params={"say": "a"})).status_code == 200
    assert len(console.lines) == 2
    assert console.lines[0].startswith("FastSessionMiddleware: secret_key is weak")
    assert console.lines[1].startswith("session listener Failing.attribute_added raised")
    assert "RuntimeError: sync listener failed" in console.lines[1]
    assert library_lines.records == []


async def test_a_logger_adapter_over_the_library_logger_logs_each_line_once(
    library_lines: Collect,
) -> None:
    """A ``LoggerAdapter`` over ``servletsession`` leads back to the bridge: its lines are the
    library's, logged once, not diverted again and again (which answered 500)."""
    adapter = logging.LoggerAdapter(logging.getLogger("servletsession"), {"app": "chat"})
    app = chatstream_app(manager=SessionManager(listeners=[Failing()]), logger=adapter)
    async with client(app) as http:
        answer = await http.get("/chat", params={"say": "a"})
    assert answer.status_code == 200
    assert [r.getMessage().split(" raised")[0] for r in library_lines.records] == [
        "session listener Failing.attribute_added"
    ]


async def test_a_logger_adapter_over_the_apps_logger_gets_the_lines(
    app_logger: tuple[logging.Logger, Collect], library_lines: Collect
) -> None:
    target, seen = app_logger
    adapter = logging.LoggerAdapter(target, {"app": "chat"})
    app = chatstream_app(manager=SessionManager(listeners=[Failing()]), logger=adapter)
    async with client(app) as http:
        assert (await http.get("/chat", params={"say": "a"})).status_code == 200
    assert [r.getMessage().split(" raised")[0] for r in seen.records] == [
        "session listener Failing.attribute_added"
    ]
    assert seen.records[0].__dict__["app"] == "chat"  # the adapter's extra
    assert library_lines.records == []


async def test_a_logger_object_that_logs_to_the_library_logger_does_not_loop(
    library_lines: Collect,
) -> None:
    class Forwarding:  # an app's wrapper that writes to the library logger
        def error(self, line: str) -> None:
            logging.getLogger("servletsession").error("forwarded: %s", line.splitlines()[0])

    app = chatstream_app(manager=SessionManager(listeners=[Failing()]), logger=Forwarding())
    async with client(app) as http:
        assert (await http.get("/chat", params={"say": "a"})).status_code == 200
    lines = [r.getMessage() for r in library_lines.records]
    assert len(lines) == 1
    assert lines[0].startswith("forwarded: session listener Failing.attribute_added raised")


async def test_the_misconfigured_line_goes_to_the_given_logger(
    app_logger: tuple[logging.Logger, Collect], library_lines: Collect
) -> None:
    target, seen = app_logger
    app = chatstream_app(manager=SessionManager(), max_age=60, logger=target)
    async with client(app) as http:  # no lifespan: the stand-in answers 500 and logs once
        answers = [(await http.get("/chat", params={"say": "a"})).status_code for _ in range(2)]
    assert answers == [500, 500]
    assert [r.levelno for r in seen.records] == [logging.ERROR]
    assert seen.records[0].getMessage().startswith("FastSessionMiddleware is misconfigured: max_")
    assert library_lines.records == []


def test_websocket_and_reaper_lines_go_to_the_given_logger(
    app_logger: tuple[logging.Logger, Collect], library_lines: Collect, clock: FakeClock
) -> None:
    """The reaper, started by the app's lifespan, and a websocket log to the app's logger too."""

    class FailsOnDestroy(Failing):
        def session_destroyed(self, event: HttpSessionEvent) -> None:
            raise RuntimeError("destroy listener failed")

    async def socket(websocket: WebSocket) -> None:
        websocket.state.session.get_session()["greeted"] = True  # Failing.attribute_added
        await websocket.accept()
        await websocket.close()

    target, seen = app_logger
    manager = SessionManager(listeners=[FailsOnDestroy()], clock=clock, max_inactive_interval=60,
                             reaper_interval=0.01)  # fmt: skip
    app = chatstream_app(manager=manager, logger=target)
    app.router.routes.append(WebSocketRoute("/ws", socket))
    with TestClient(app, base_url="https://testserver") as http:
        with http.websocket_connect("/ws"):
            pass
        clock.advance(61)
        give_up = time.monotonic() + 10
        while len(seen.records) < 2 and time.monotonic() < give_up:
            time.sleep(0.01)
    assert [r.getMessage().split(" raised")[0] for r in seen.records] == [
        "session listener FailsOnDestroy.attribute_added",
        "session listener FailsOnDestroy.session_destroyed",
    ]
    assert library_lines.records == []


# --- max_age: the session ends as FastSession's signed timestamp ended it ------------------------


async def test_max_age_ends_the_session_max_age_seconds_after_it_began(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock, absolute_timeout=60)
    async with client(chatstream_app(manager=manager, max_age=60)) as http:
        first = await http.get("/chat", params={"say": "a"})
        sid = first.cookies["sid"]
        http.cookies.clear()  # the cookie is replayed as is, as a browser would until Max-Age
        clock.advance(30)
        busy = await http.get("/chat", params={"say": "b"}, headers=cookie_header(sid, "sid"))
        clock.advance(29)
        last = await http.get("/chat", params={"say": "c"}, headers=cookie_header(sid, "sid"))
        clock.advance(2)
        after = await http.get("/chat", params={"say": "d"}, headers=cookie_header(sid, "sid"))
    assert next(c for c in first.headers.get_list("set-cookie") if "Max-Age=60" in c)[:4] == "sid="
    assert "sid" not in busy.cookies, "not rolling: FastSession signed its cookie once"
    assert last.json()["history"] == ["a", "b", "c"]
    assert after.json()["history"] == ["d"]
    assert after.cookies["sid"] != sid


async def test_max_age_without_a_manager_sets_the_absolute_timeout() -> None:
    middleware = FastSessionMiddleware(Starlette(), secret_key=SECRET, max_age=3600)
    assert middleware.app.manager.settings.absolute_timeout == 3600
    browser_session = FastSessionMiddleware(Starlette(), secret_key=SECRET)
    assert browser_session.app.manager.settings.absolute_timeout is None


async def test_max_age_with_a_manager_without_absolute_timeout_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"SessionManager\(\.\.\., absolute_timeout=60\)"):
        FastSessionMiddleware(Starlette(), secret_key=SECRET, manager=SessionManager(), max_age=60)


# --- the session is the dict FastSession's users knew ------------------------------------------


async def test_none_values_are_kept_as_in_a_dict(checks: dict[str, Check]) -> None:
    def store_none(session: FastSessionDict) -> list[Any]:
        session["answer"] = None
        return [session["answer"], "answer" in session, session.get("answer", "default")]

    checks["put"] = store_none
    checks["read"] = lambda session: ["answer" in session, session.copy()]
    async with client(chatstream_app()) as http:
        put = await http.get("/probe/put")
        read = await http.get("/probe/read")
    assert put.json() == [None, True, None]
    assert read.json() == [True, {"answer": None}]


async def test_copy_is_a_plain_dict_detached_from_the_session(checks: dict[str, Check]) -> None:
    def copy_it(session: FastSessionDict) -> list[Any]:
        session.update(a=1, b=[1])
        snapshot = session.copy()
        snapshot["a"] = 2
        return [type(snapshot) is dict, type(copy.copy(session)) is dict, session["a"]]

    checks["copy"] = copy_it
    async with client(chatstream_app()) as http:
        assert (await http.get("/probe/copy")).json() == [True, True, 1]


async def test_merging_with_the_pipe_operator_gives_plain_dicts(checks: dict[str, Check]) -> None:
    def merge(session: FastSessionDict) -> list[Any]:
        session.update(a=1, b=2)
        right = session | {"b": 3, "c": 4}
        left = {"b": 3, "c": 4} | session
        return [type(right) is dict, right, type(left) is dict, left, session.copy()]

    checks["merge"] = merge
    async with client(chatstream_app()) as http:
        answer = (await http.get("/probe/merge")).json()
    assert answer == [
        True, {"a": 1, "b": 3, "c": 4}, True, {"b": 2, "c": 4, "a": 1}, {"a": 1, "b": 2}
    ]  # fmt: skip


async def test_in_place_merge_writes_through_the_session(checks: dict[str, Check]) -> None:
    added: list[str] = []

    class Added:
        def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            added.append(event.name)

    def merge_in(session: FastSessionDict) -> bool:
        before = session
        session |= {"x": 1, "y": None}
        return session is before

    checks["merge"] = merge_in
    checks["read"] = lambda session: session.copy()
    app = chatstream_app(manager=SessionManager(listeners=[Added()]))
    async with client(app) as http:
        assert (await http.get("/probe/merge")).json() is True
        assert (await http.get("/probe/read")).json() == {"x": 1, "y": None}
    assert added == ["x", "y"]


async def test_json_of_a_copy_and_dict_of_the_session(checks: dict[str, Check]) -> None:
    def dump(session: FastSessionDict) -> list[Any]:
        session.update({"history": ["hi"], "n": None})
        return [json.loads(json.dumps(session.copy())), dict(session)]

    checks["dump"] = dump
    async with client(chatstream_app()) as http:
        answer = (await http.get("/probe/dump")).json()
    assert answer == [{"history": ["hi"], "n": None}] * 2


async def test_equality_with_dicts(checks: dict[str, Check]) -> None:
    def compare(session: FastSessionDict) -> list[bool]:
        session["a"] = 1
        reflected = {"a": 1} == session  # noqa: SIM300  # dict.__eq__ defers to the view
        return [session == {"a": 1}, reflected, session != {"a": 2},
                session == {"a": 1, "b": 2}, session == [("a", 1)]]  # fmt: skip

    checks["compare"] = compare
    async with client(chatstream_app()) as http:
        assert (await http.get("/probe/compare")).json() == [True, True, True, False, False]


async def test_the_dict_methods_apps_use(checks: dict[str, Check]) -> None:
    def use(session: FastSessionDict) -> dict[str, Any]:
        session.update({"a": 1}, b=2)
        seen = {
            "setdefault_new": session.setdefault("c", []),
            "setdefault_old": session.setdefault("a", 99),
            "pop": session.pop("b"),
            "pop_missing": session.pop("zzz", "default"),
            "get_missing": session.get("zzz"),
            "keys": sorted(session.keys()),
            "values": sorted(map(str, session.values())),
            "items": sorted((k, str(v)) for k, v in session.items()),
            "len": len(session),
            "iter": sorted(session),
            "reversed": list(reversed(session)),
            "deepcopy": copy.deepcopy(session),
            "repr": repr(session),
        }
        del session["c"]
        seen["after_del"] = session.copy()
        session["z"] = 0
        seen["popitem"] = session.popitem()
        session.clear()
        seen["after_clear"] = session.copy()
        return seen

    checks["use"] = use
    async with client(chatstream_app()) as http:
        seen = (await http.get("/probe/use")).json()
    assert seen == {
        "setdefault_new": [], "setdefault_old": 1, "pop": 2, "pop_missing": "default",
        "get_missing": None, "keys": ["a", "c"], "values": ["1", "[]"],
        "items": [["a", "1"], ["c", "[]"]], "len": 2, "iter": ["a", "c"], "reversed": ["c", "a"],
        "deepcopy": {"a": 1, "c": []}, "repr": "{'a': 1, 'c': []}",
        "after_del": {"a": 1}, "popitem": ["z", 0], "after_clear": {},
    }  # fmt: skip


async def test_popitem_takes_the_last_item_as_a_dict_does(checks: dict[str, Check]) -> None:
    def pops(session: FastSessionDict) -> list[Any]:
        plain: dict[str, Any] = {}
        for name, value in (("first", 1), ("second", 2), ("last", 3)):
            session[name] = plain[name] = value
        session["first"] = plain["first"] = 10  # replacing keeps the place, as in a dict
        taken = [list(session.popitem()) for _ in range(3)]
        expected = [list(plain.popitem()) for _ in range(3)]
        try:
            session.popitem()
        except KeyError:
            empty = "KeyError"
        return [taken == expected, taken, empty]

    checks["pops"] = pops
    async with client(chatstream_app()) as http:
        answer = (await http.get("/probe/pops")).json()
    assert answer == [True, [["last", 3], ["second", 2], ["first", 10]], "KeyError"]


async def test_it_is_a_mapping_view_not_a_dict_subclass(checks: dict[str, Check]) -> None:
    def kinds(session: FastSessionDict) -> list[bool]:
        try:
            json.dumps(session)
        except TypeError:
            dumps_fails = True
        else:
            dumps_fails = False
        return [isinstance(session, dict), isinstance(session, MutableMapping),
                isinstance(session, Mapping), dumps_fails, "__cause__" in session]  # fmt: skip

    checks["kinds"] = kinds
    async with client(chatstream_app()) as http:
        assert (await http.get("/probe/kinds")).json() == [False, True, True, True, False]


async def test_get_session_is_the_same_object_within_a_request() -> None:
    async def twice(request: Request) -> Response:
        state = request.state.session
        first = state.get_session()
        same = state.get_session() is first
        first.session.invalidate()
        fresh = state.get_session()
        return JSONResponse([same, fresh is not first, fresh.session is not first.session])

    app = chatstream_app()
    app.router.routes.append(Route("/twice", twice))
    async with client(app) as http:
        assert (await http.get("/twice")).json() == [True, True, True]


# --- the seed under a real uvicorn, lifespan "auto" --------------------------------------------


def test_the_seed_app_serves_under_uvicorn_with_lifespan_auto() -> None:
    with UvicornProcess("tests.apps.fastsession_seed:app", lifespan="auto") as server:
        assert server.url is not None, server.output
        with httpx2.Client(base_url=server.url, timeout=10) as http:
            answers = [http.post("/chat", params={"say": word}) for word in ("one", "two")]
        output = server.stop()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[1].json() == {"history": ["one", "two"]}
    assert "Application startup complete." in output
    assert output.count("chatstream WARNING FastSessionMiddleware: secret_key is weak") == 1
    assert "Traceback" not in output
