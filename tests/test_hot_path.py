"""The per-request path kept lean (issue 13) without changing what it does: each shortcut here is
held to the behaviour of the slower code it replaced."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from servletsession import SessionLimitError, SessionManager, SessionMiddleware, get_session
from servletsession import cookies as cookies_module
from servletsession.cookies import _KeyedSha256, is_well_formed_id, new_session_id

from .conftest import SECRET

pytestmark = pytest.mark.anyio

# --- session IDs from a batch -------------------------------------------------------------------


def test_batched_ids_are_256_random_bits_spelt_as_token_urlsafe() -> None:
    ids = [new_session_id() for _ in range(3 * cookies_module._ID_BATCH + 7)]
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        assert is_well_formed_id(session_id)
        raw = base64.urlsafe_b64decode(session_id + "=")
        assert len(raw) == 32
        # The canonical spelling of those bytes, as secrets.token_urlsafe(32) gives it.
        assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == session_id


def test_threads_drawing_ids_at_once_never_share_one() -> None:
    drawn: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(drawn))

    def draw(into: list[str]) -> None:
        start.wait()
        for _ in range(2000):
            into.append(new_session_id())

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [session_id for into in drawn for session_id in into]
    assert len(every) == 8 * 2000
    assert len(set(every)) == len(every)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_never_hands_out_the_ids_its_parent_drew() -> None:
    new_session_id()  # the parent holds a batch now
    upcoming = list(cookies_module._unused_ids)
    assert upcoming, "the parent has no batch to inherit"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the IDs it draws, then leave without cleanup
        try:
            drawn = "\n".join(new_session_id() for _ in range(len(upcoming)))
            os.write(write_end, drawn.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    assert len(child_ids) == len(upcoming)
    assert not child_ids & set(upcoming), "the child handed out its parent's IDs"


# --- HMAC with the key's pads hashed once -------------------------------------------------------


@pytest.mark.parametrize("key_length", [0, 1, 31, 32, 63, 64, 65, 200])
def test_the_keyed_mac_is_hmac_sha256(key_length: int) -> None:
    key = os.urandom(key_length)
    mac = _KeyedSha256(key)
    for message in (b"", b"x", os.urandom(43), os.urandom(64), os.urandom(1000)):
        expected = base64.urlsafe_b64encode(hmac.digest(key, message, "sha256")).rstrip(b"=")
        assert mac.signature(message) == expected
        assert mac.signature(message) == expected, "a MAC changed the key's precomputed state"


def test_the_keyed_mac_is_safe_to_share_between_threads() -> None:
    key = hashlib.sha256(b"k").digest()
    mac = _KeyedSha256(key)
    messages = [os.urandom(43) for _ in range(200)]
    expected = [
        base64.urlsafe_b64encode(hmac.digest(key, m, "sha256")).rstrip(b"=") for m in messages
    ]
    failures: list[int] = []

    def check() -> None:
        for _ in range(20):
            for index, message in enumerate(messages):
                if mac.signature(message) != expected[index]:
                    failures.append(index)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- a request leaves nothing for the garbage collector -----------------------------------------


async def _counter(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    session["n"] = session.get("n", 0) + 1
    return PlainTextResponse(str(session["n"]))


async def _plain(request: Request) -> Response:
    return PlainTextResponse("plain")


def _app(manager: SessionManager) -> Starlette:
    app = Starlette(routes=[Route("/count", _counter), Route("/plain", _plain)])
    app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager)
    return app


class _ServerCycle:
    """What a server's per-request object looks like to the app: its ``send`` is a bound method
    of an object that holds the scope (uvicorn's ``RequestResponseCycle`` does)."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.status = 0
        self.cookie: bytes | None = None

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message["headers"]:
                if name == b"set-cookie":
                    self.cookie = value.split(b";")[0]

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}


def _scope(path: str, cookie: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"test")] + ([(b"cookie", cookie)] if cookie is not None else [])
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "https", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("t", 443),
    }  # fmt: skip


async def _call(app: Starlette, path: str, cookie: bytes | None = None) -> _ServerCycle:
    cycle = _ServerCycle(_scope(path, cookie))
    await app(cycle.scope, cycle.receive, cycle.send)
    assert cycle.status == 200
    return cycle


@pytest.fixture
def collector_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("collector_paused")
@pytest.mark.parametrize("request_kind", ["new session", "returning session", "untouched"])
async def test_a_finished_request_leaves_no_reference_cycle(request_kind: str) -> None:
    """A request's objects are freed by reference counting as it ends. A cycle through the
    scope (the scope holds the request's session view, which held the server's send, whose
    object holds the scope) left every request to the garbage collector: through uvicorn,
    more time than the whole middleware costs."""
    manager = SessionManager()
    app = _app(manager)
    cookie = (await _call(app, "/count")).cookie
    assert cookie is not None
    path, sent = {
        "new session": ("/count", None),
        "returning session": ("/count", cookie),
        "untouched": ("/plain", None),
    }[request_kind]
    await _call(app, path, sent)  # anything built lazily on a first request
    gc.collect()
    for _ in range(20):
        await _call(app, path, sent)
    assert gc.collect() == 0, "requests left objects only the garbage collector frees"
    await manager.close()


# --- shortcuts that must not skip a listener or a header ----------------------------------------


class _BoundInt(int):
    """A built-in type's subclass with binding methods: exact built-ins are not asked, their
    subclasses are."""

    events: list[str]

    def value_bound(self, event: Any) -> None:
        self.events.append(f"bound {event.name}")

    def value_unbound(self, event: Any) -> None:
        self.events.append(f"unbound {event.name}")


async def test_a_subclass_of_a_builtin_with_binding_methods_is_told() -> None:
    manager = SessionManager()
    session = manager.create_session()
    events: list[str] = []
    value = _BoundInt(5)
    value.events = events
    session["n"] = value
    session["n"] = 6  # a plain int replaces it: the old value is unbound
    assert events == ["bound n", "unbound n"]
    await manager.release(session)
    await manager.close()


async def test_a_response_object_sent_twice_gets_the_session_headers_once_each_time() -> None:
    """The app's header list may be a Response's own (``raw_headers``), sent again by a route
    that returns one shared object: the session's headers go into a new list every time."""
    shared = PlainTextResponse("same object")

    async def reused(request: Request) -> Response:
        get_session(request)
        return shared

    manager = SessionManager()
    app = Starlette(routes=[Route("/reused", reused)])
    app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager)
    before = list(shared.raw_headers)
    for _ in range(3):
        seen: list[list[tuple[bytes, bytes]]] = []

        async def send(message: dict[str, Any], into: list[Any] = seen) -> None:
            if message["type"] == "http.response.start":
                into.append(list(message["headers"]))

        await app(_scope("/reused", None), _ServerCycle({}).receive, send)
        (headers,) = seen
        names = [name for name, _ in headers]
        assert names.count(b"set-cookie") == 1
        assert names.count(b"vary") == 1
        assert names.count(b"cache-control") == 1
    assert shared.raw_headers == before, "the Response's own header list was changed"
    await manager.close()


async def test_response_headers_given_as_any_iterable_are_all_kept() -> None:
    """ASGI allows any iterable of headers: the session's are added and the app's all kept,
    whether or not the app set caching headers of its own."""
    manager = SessionManager()

    def app_with(headers: list[tuple[bytes, bytes]]) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            session = get_session(scope)
            assert session is not None
            await send({"type": "http.response.start", "status": 200, "headers": iter(headers)})
            await send({"type": "http.response.body", "body": b"ok"})

        return SessionMiddleware(app, secret_key=SECRET, manager=manager)

    for own in ([(b"x-app", b"1")], [(b"x-app", b"1"), (b"cache-control", b"max-age=60")]):
        cycle = _ServerCycle(_scope("/", None))
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], into: list[Any] = sent) -> None:
            into.append(message)

        await app_with(own)(cycle.scope, cycle.receive, send)
        names = [name for name, _ in sent[0]["headers"]]
        assert b"x-app" in names
        assert b"set-cookie" in names
        assert b"vary" in names
        assert names.count(b"cache-control") == 1
    await manager.close()


async def test_every_awaitable_send_returns_is_a_coroutine_a_task_can_run() -> None:
    """The app's ``send`` returns the server's own coroutine, or one of ours when it drops a
    message (after a 503): either way ``asyncio.create_task(send(...))`` works."""
    manager = SessionManager(max_active_sessions=1)
    outcomes: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        with contextlib.suppress(SessionLimitError):  # the app answers anyway: the
            get_session(scope)  # middleware has answered 503 instead
        start = send({"type": "http.response.start", "status": 200, "headers": []})
        assert asyncio.iscoroutine(start)
        await asyncio.create_task(start)
        await asyncio.create_task(send({"type": "http.response.body", "body": b"x"}))
        outcomes.append("sent")

    middleware = SessionMiddleware(app, secret_key=SECRET, manager=manager)
    statuses = []
    for _ in range(2):  # the first takes the one session allowed, the second is refused
        cycle = _ServerCycle(_scope("/", None))
        await middleware(cycle.scope, cycle.receive, cycle.send)
        statuses.append(cycle.status)
    assert statuses == [200, 503]
    assert outcomes == ["sent", "sent"]
    await manager.close()


async def test_a_send_after_the_app_returned_is_an_error_not_silently_dropped() -> None:
    """A task the app leaves behind that sends once the request is over is told so, as the
    server would have told it (the middleware let go of the server's send as the request
    ended)."""
    manager = SessionManager()
    late: list[asyncio.Task[None]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_session(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})

        async def later() -> None:
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"late"})

        late.append(asyncio.create_task(later()))

    middleware = SessionMiddleware(app, secret_key=SECRET, manager=manager)
    cycle = _ServerCycle(_scope("/", None))
    await middleware(cycle.scope, cycle.receive, cycle.send)
    with pytest.raises(RuntimeError, match="after the app returned"):
        await late[0]
    await manager.close()
