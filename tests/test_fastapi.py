"""The FastAPI dependencies, through FastAPI's own request handling."""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from importlib.metadata import requires
from typing import Any

import httpx2
import pytest
import websockets.sync.client
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from examples.fastapi_app import app
from servletsession import (
    HttpSession,
    HttpSessionBindingEvent,
    HttpSessionEvent,
    SessionManager,
    get_session,
)
from servletsession import SessionMiddleware as Sessions
from servletsession.fastapi import OptionalSessionDep, SessionDep, optional_session_of, session_of
from servletsession.stores.sql import SQLStore

from .conftest import SECRET, client, cookie_header
from .stores.conftest import StoreFactory, store_factory, stores
from .uvicorn_process import UvicornProcess

__all__ = ["store_factory"]  # the fixture, imported for the store test

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


# --- the dependencies run on the event loop -----------------------------------------------------


def test_the_dependencies_are_coroutine_functions() -> None:
    """FastAPI runs a ``def`` dependency in a worker thread, an ``async def`` one on the loop."""
    assert inspect.iscoroutinefunction(session_of)
    assert inspect.iscoroutinefunction(optional_session_of)


class Where:
    """An async listener that records the thread and event loop it ran on, and finishing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, asyncio.AbstractEventLoop]] = []

    async def _record(self, what: str) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        self.seen.append((what, threading.get_ident(), loop))

    async def session_created(self, event: HttpSessionEvent) -> None:
        await self._record("created")

    async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
        await self._record(f"added {event.name}")


async def test_async_listeners_started_through_the_dependencies_run_on_the_apps_loop() -> None:
    where = Where()
    api = FastAPI()
    api.add_middleware(Sessions, secret_key=SECRET, manager=SessionManager(listeners=[where]))
    route: list[tuple[int, asyncio.AbstractEventLoop]] = []

    @api.post("/start")
    async def start(session: SessionDep) -> None:  # the dependency creates the session
        route.append((threading.get_ident(), asyncio.get_running_loop()))
        session.set_attribute("cart", [])

    @api.post("/more")
    async def more(session: OptionalSessionDep) -> None:
        assert session is not None
        session.set_attribute("user", "ada")

    async with client(api) as http:
        await http.post("/start")
        await http.post("/more")
    assert [what for what, _, _ in where.seen] == ["created", "added cart", "added user"]
    assert {(thread, loop) for _, thread, loop in where.seen} == set(route)


# --- the websocket example from a fresh install -------------------------------------------------


@pytest.mark.parametrize("extra", ["fastapi", "demo"])
def test_the_extra_installs_a_websocket_implementation(extra: str) -> None:
    wanted = re.compile(r"^(websockets|wsproto|uvicorn\[[^]]*standard)", re.IGNORECASE)
    needed = [
        line.split(";")[0]
        for line in requires("servletsession") or []
        if re.search(rf"extra\s*==\s*['\"]{extra}['\"]", line)
    ]
    assert any(wanted.match(line) for line in needed), needed


def test_the_example_websocket_works_under_uvicorn() -> None:
    env = {"APP_SECRET_KEY": SECRET}
    with UvicornProcess("examples.fastapi_app:app", env=env) as server:
        assert server.url is not None, server.output
        socket_url = server.url.replace("http://", "ws://") + "/ws"
        login = httpx2.post(server.url + "/login", params={"user": "ada"}, timeout=10)
        cookie = f"sessionid={login.cookies['sessionid']}"
        with websockets.sync.client.connect(socket_url, open_timeout=10) as socket:
            stranger = socket.recv(timeout=10)
        with websockets.sync.client.connect(
            socket_url, additional_headers={"cookie": cookie}, open_timeout=10
        ) as socket:
            known = socket.recv(timeout=10)
        output = server.stop()
    assert stranger == "hello stranger"
    assert known == "hello ada"
    assert "No supported WebSocket library detected" not in output


class SlowAudit:
    """Async listeners that really await. ``session_created`` is still running when the route's
    worker thread writes attributes: it waits until the thread says it has written them."""

    def __init__(self) -> None:
        self.written = threading.Event()
        self.seen: list[tuple[str, int, asyncio.AbstractEventLoop]] = []

    async def session_created(self, event: HttpSessionEvent) -> None:
        for _ in range(5000):  # at most 5 s: the route's thread signals long before
            if self.written.is_set():
                break
            await asyncio.sleep(0.001)
        self.seen.append(("created", threading.get_ident(), asyncio.get_running_loop()))

    async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
        await asyncio.sleep(0.01)
        self.seen.append((f"added {event.name}", threading.get_ident(), asyncio.get_running_loop()))


def recorded_at_start_and_end(app: Any, audit: SlowAudit, log: list[list[str]]) -> Any:
    """Wrap ``app``: note the events delivered as the response starts and when it is all done."""

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                log.append([what for what, _, _ in audit.seen])
            await send(message)

        await app(scope, receive, noting)
        if scope["type"] == "http":
            log.append([what for what, _, _ in audit.seen])

    return wrapper


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_def_route_with_slow_async_listeners_answers_and_keeps_event_order(
    kind: str, tmp_path: Any
) -> None:
    """A sync route runs in a worker thread while the session's ``session_created`` (started on
    the loop by the async dependency) is still pending: its events are chained on the app's
    loop behind it, in order, and all are delivered before the request ends (on a shared store,
    before the session is saved as the response starts)."""
    audit = SlowAudit()
    store = None if kind == "memory" else SQLStore(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    manager = SessionManager(store, listeners=[audit])
    api = FastAPI()
    api.add_middleware(Sessions, secret_key=SECRET, manager=manager)
    loops: list[tuple[int, asyncio.AbstractEventLoop]] = []

    @api.get("/cart")
    def cart(session: SessionDep) -> dict[str, bool]:
        session["cart"] = ["apple"]
        session["user"] = "ada"
        audit.written.set()
        return {"ok": True}

    @api.get("/loop")
    async def loop() -> None:
        loops.append((threading.get_ident(), asyncio.get_running_loop()))

    log: list[list[str]] = []
    async with client(recorded_at_start_and_end(api, audit, log)) as http:
        response = await http.get("/cart")
        await http.get("/loop")
    await manager.close()
    assert response.status_code == 200
    events = ["created", "added cart", "added user"]
    assert [what for what, _, _ in audit.seen] == events
    assert {(thread, loop) for _, thread, loop in audit.seen} == set(loops)  # the app's loop
    assert log[-2] == events  # when the /cart request ended
    if kind == "sqlite":
        assert log[0] == events  # saved as the response started, after the listeners


async def test_a_starlette_sync_endpoint_delivers_async_events_on_the_apps_loop() -> None:
    """Starlette runs a ``def`` endpoint in a worker thread; a session it creates has its async
    listeners run on the app's loop (where loop-bound resources live), in order."""
    where = Where()

    def sync_route(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["cart"] = ["apple"]
        session["user"] = "ada"
        return Response("ok")

    async def loop(request: Request) -> Response:
        route.append((threading.get_ident(), asyncio.get_running_loop()))
        return Response("ok")

    route: list[tuple[int, asyncio.AbstractEventLoop]] = []
    app = Starlette(routes=[Route("/sync", sync_route), Route("/loop", loop)])
    app.add_middleware(Sessions, secret_key=SECRET, manager=SessionManager(listeners=[where]))
    async with client(app) as http:
        response = await http.get("/sync")
        await http.get("/loop")
    assert response.status_code == 200
    assert [what for what, _, _ in where.seen] == ["created", "added cart", "added user"]
    assert {(thread, loop) for _, thread, loop in where.seen} == set(route)


async def test_a_session_written_from_a_plain_thread_keeps_its_event_order() -> None:
    """``asyncio.to_thread`` (no anyio worker): the pending chain's loop takes the thread's
    events."""
    audit = SlowAudit()
    api = FastAPI()
    api.add_middleware(Sessions, secret_key=SECRET, manager=SessionManager(listeners=[audit]))

    def write(session: HttpSession) -> None:
        session["cart"] = ["apple"]
        session["user"] = "ada"
        audit.written.set()

    @api.get("/cart")
    async def cart(session: SessionDep) -> None:
        await asyncio.to_thread(write, session)

    async with client(api) as http:
        response = await http.get("/cart")
    assert response.status_code == 200
    assert [what for what, _, _ in audit.seen] == ["created", "added cart", "added user"]
    assert len({loop for _, _, loop in audit.seen}) == 1


# --- events caused in other threads: on the app's loop, in the Servlet spec's order -----------


class Logout:
    """``session_destroyed`` (async) reads the user while the session is still readable; the
    unbinding that follows is seen by ``attribute_removed``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, asyncio.AbstractEventLoop | None]] = []

    async def session_destroyed(self, event: HttpSessionEvent) -> None:
        await asyncio.sleep(0)
        user = event.session.get_attribute("user")
        self.seen.append(("destroyed", user, asyncio.get_running_loop()))

    def attribute_removed(self, event: HttpSessionBindingEvent) -> None:
        self.seen.append(("removed", event.name, None))


async def log_in_route(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    session["user"] = "ada"
    return Response("welcome")


async def who_route(request: Request) -> Response:
    session = get_session(request, create=False)
    return Response("nobody" if session is None else str(session.get("user")))


@pytest.mark.parametrize("endpoint", ["async", "def"])
async def test_a_logout_destroys_while_readable_then_unbinds_in_a_def_route_too(
    endpoint: str,
) -> None:
    """Servlet spec order on ``invalidate()``: ``session_destroyed`` (here async) reads the
    attributes, and only then are they unbound, in a ``def`` route (worker thread) exactly as in
    an ``async def`` one."""
    listener = Logout()

    async def async_logout(request: Request) -> Response:
        get_session(request).invalidate()  # type: ignore[union-attr]
        return Response("bye")

    def def_logout(request: Request) -> Response:
        get_session(request).invalidate()  # type: ignore[union-attr]
        return Response("bye")

    logout = async_logout if endpoint == "async" else def_logout
    app = Starlette(routes=[Route("/login", log_in_route), Route("/logout", logout)])
    app.add_middleware(Sessions, secret_key=SECRET, manager=SessionManager(listeners=[listener]))
    async with client(app) as http:
        await http.get("/login")
        assert (await http.get("/logout")).text == "bye"
    loop = asyncio.get_running_loop()
    assert listener.seen == [("destroyed", "ada", loop), ("removed", "user", None)]


def in_a_thread_of(how: str) -> Any:
    """How an ``async def`` route hands blocking work to a thread that is no anyio worker."""

    async def run(function: Any, *args: Any) -> None:
        if how == "to_thread":
            await asyncio.to_thread(function, *args)
        elif how == "executor":
            await asyncio.get_running_loop().run_in_executor(None, function, *args)
        else:  # a thread of the app's own, waited for
            thread = threading.Thread(target=function, args=args)
            thread.start()
            await asyncio.to_thread(thread.join)

    return run


@pytest.mark.parametrize("how", ["to_thread", "executor", "thread"])
async def test_async_listeners_of_events_from_other_threads_run_on_the_apps_loop(
    how: str,
) -> None:
    """An event caused in a thread that is no anyio worker (``asyncio.to_thread``, an executor,
    a thread of the app's) is delivered on the app's loop, where loop-bound resources (an
    ``asyncio.Queue`` made there, a connection pool) work, and before the request ends."""
    seen: list[tuple[str, int, asyncio.AbstractEventLoop]] = []
    run = in_a_thread_of(how)
    queue: asyncio.Queue[str] = asyncio.Queue()

    class Queued:  # nothing async pending when the thread writes: no chain to follow
        async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            seen.append((event.name, threading.get_ident(), asyncio.get_running_loop()))
            await queue.put(event.name)  # bound to the app's loop

    async def write(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        await run(session.set_attribute, "cart", ["apple"])
        return Response("ok")

    app = Starlette(routes=[Route("/write", write)])
    app.add_middleware(Sessions, secret_key=SECRET, manager=SessionManager(listeners=[Queued()]))
    async with client(app) as http:
        assert (await http.get("/write")).text == "ok"
        assert seen == [("cart", threading.get_ident(), asyncio.get_running_loop())]
    assert queue.get_nowait() == "cart"  # delivered before the request ended


@stores("memory", "sqlite", "redis")
async def test_invalidate_from_asyncio_to_thread_ends_the_session_on_any_store(
    store_factory: StoreFactory,
) -> None:
    """``invalidate()`` through ``asyncio.to_thread``: on a shared store the claim that ends the
    session runs on the app's loop (its connections belong there), ``session_destroyed`` fires
    once, readable and on that loop, and the session is gone for the next request."""
    listener = Logout()

    async def logout(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        await asyncio.to_thread(session.invalidate)
        return Response("bye")

    routes = [Route("/login", log_in_route), Route("/logout", logout), Route("/who", who_route)]
    app = Starlette(routes=routes)
    manager = SessionManager(store_factory(), listeners=[listener])
    app.add_middleware(Sessions, secret_key=SECRET, manager=manager)
    async with client(app) as http:
        for _ in range(2):
            http.cookies.clear()
            await http.get("/login")
            assert (await http.get("/logout")).text == "bye"
            assert (await http.get("/who")).text == "nobody"
    await manager.close()
    loop = asyncio.get_running_loop()
    assert listener.seen == 2 * [("destroyed", "ada", loop), ("removed", "user", None)]
