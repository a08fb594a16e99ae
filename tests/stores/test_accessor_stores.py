"""The accessor on every store kind: an access joins the live session wherever it is, writes what
it changed (per attribute, as a request), sees what other processes wrote, and fails cleanly.

Each "process" is a manager with its own store object over one backend (see ``process``)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from servletsession import (
    HttpSessionEvent,
    IllegalStateError,
    SessionAccessor,
    SessionManager,
    StoreUnavailableError,
    get_session,
)
from servletsession.stores import SQLStore

from ..conftest import FakeClock, cookie_header, make_app
from ..test_accessor import Events, Jobs
from .conftest import StoreFactory, stores
from .helpers import Browser

pytestmark = pytest.mark.anyio

KINDS = ("memory", "sqlite", "postgresql", "redis")
SHARED = ("sqlite", "postgresql", "redis")


class Destroyed:
    def __init__(self) -> None:
        self.count = 0

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.count += 1


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    b = Browser()
    yield b
    await b.close()


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def destroyed() -> Destroyed:
    return Destroyed()


def process(
    make: StoreFactory, clock: FakeClock, jobs: Jobs, **options: Any
) -> tuple[SessionManager, Starlette]:
    manager = SessionManager(make(), clock=clock, max_inactive_interval=100, **options)
    return manager, make_app(manager, jobs.routes())


async def values(browser: Browser, app: Starlette) -> dict[str, Any] | None:
    """The session's attributes as a request of ``app`` finds them (``None``: no session)."""
    info = (await browser.get(app, "/info")).json()
    if info is None:
        return None
    return {
        name: (await browser.get(app, f"/get/{name}")).json()["value"] for name in info["names"]
    }


@stores(*KINDS)
async def test_an_access_writes_what_it_changed_for_every_process(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    async with jobs.last.access() as session:
        session["n"] = 1
        session["report"] = "ready"
    assert await values(browser, there) == {"n": 1, "report": "ready"}


@stores(*KINDS)
async def test_another_processs_change_is_visible_inside_an_access(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    await browser.post(there, "/set/colour", params={"value": "blue"})
    async with jobs.last.access() as session:
        assert session.get("colour") == "blue"


@stores(*KINDS)
async def test_an_access_overlapping_a_request_both_changes_persist(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    request = asyncio.create_task(browser.post(here, "/hold"))
    await jobs.holding.wait()
    async with jobs.last.access() as session:
        session["a"] = "access"
    jobs.gate.set()
    assert (await request).json() == ["a", "n", "r"]
    assert await values(browser, there) == {"a": "access", "n": 0, "r": "request"}


@stores(*KINDS)
async def test_listeners_fire_in_the_block_and_async_ones_finish_before_it_exits(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    events = Events()
    _, here = process(store_factory, clock, jobs, listeners=[events])
    await browser.post(here, "/start")
    events.log.clear()
    async with jobs.last.access() as session:
        session["n"] = 1
        assert events.log == [("replaced", "n", 0)]
        session["new"] = "x"
    assert events.log == [("replaced", "n", 0), ("added", "new", "x")]


@stores(*KINDS)
async def test_changes_made_before_the_block_raises_are_written(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")

    async def failing_job() -> None:
        async with jobs.last.access() as session:
            session["n"] = 5
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await failing_job()
    assert await values(browser, there) == {"n": 5}


@stores(*KINDS)
async def test_an_access_is_an_access_for_last_accessed_time_and_the_idle_timeout(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    created = clock.now
    await browser.post(here, "/start")
    clock.advance(50)
    async with jobs.last.access() as session:
        assert session.last_accessed_time == created
    clock.advance(95)  # past the request's idle deadline (100 s + 10 % grace), not the access's
    info = (await browser.get(there, "/info")).json()
    assert info is not None
    assert info["last_accessed_time"] == created + 50


@stores(*KINDS)
async def test_an_expired_session_raises_illegal_state_and_is_destroyed_once(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    destroyed: Destroyed,
) -> None:
    _, here = process(store_factory, clock, jobs, listeners=[destroyed])
    await browser.post(here, "/start")
    clock.advance(111)  # idle 100 s, and the 10 % a shared store may add
    with pytest.raises(IllegalStateError):
        async with jobs.last.access():
            pass
    assert destroyed.count == 1
    with pytest.raises(IllegalStateError):
        async with jobs.last.access():
            pass
    assert destroyed.count == 1


@stores(*KINDS)
async def test_invalidate_in_an_access_ends_the_session_everywhere(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    destroyed: Destroyed,
) -> None:
    _, here = process(store_factory, clock, jobs, listeners=[destroyed])
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    cookie = browser.cookie
    async with jobs.last.access() as session:
        session.invalidate()
    assert destroyed.count == 1
    browser.cookie = cookie
    assert await values(browser, there) is None
    with pytest.raises(IllegalStateError):
        async with jobs.last.access():
            pass


@stores(*KINDS)
async def test_an_id_change_in_this_process_is_followed(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    old = browser.cookie
    await browser.post(here, "/change-id")
    async with jobs.last.access() as session:
        session["after"] = "login"
    assert await values(browser, there) == {"n": 0, "after": "login"}
    browser.cookie = old
    assert await values(browser, there) is None


@stores(*SHARED)
async def test_an_id_change_by_another_process_cannot_be_followed(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    await browser.post(there, "/change-id")
    with pytest.raises(IllegalStateError):
        async with jobs.last.access():
            pass
    assert await values(browser, there) == {"n": 0}  # the session itself lives on


@stores(*KINDS)
async def test_an_access_in_the_request_creating_the_session_is_written_with_its_response(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    response = await browser.post(here, "/access-while-creating")
    assert response.json() == {"same": True, "is_new": True}
    assert await values(browser, there) == {"a": "access", "r": "request"}


@pytest.mark.parametrize("locking", ["none", "session"])
@stores(*KINDS)
async def test_an_access_in_the_request_changing_the_id_is_written_with_its_response(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    locking: Literal["none", "session"],
) -> None:
    """Under ``locking="session"`` it is part of that request: it waits for no lock."""
    _, here = process(store_factory, clock, jobs, locking=locking, lock_timeout=0.3)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    old = browser.cookie
    assert (await browser.post(here, "/access-after-change-id")).json() == {"same": True}
    assert browser.cookie != old
    assert await values(browser, there) == {"a": "access", "n": 0}


@stores(*KINDS)
async def test_an_access_outlasting_the_request_that_created_the_session_writes_on_exit(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    manager, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/create-and-linger")  # the request is over, the access is not
    jobs.gate.set()
    await asyncio.gather(*jobs.tasks)
    assert await values(browser, there) == {"late": "access", "r": "request"}
    if manager.shared:
        assert manager.in_process == {}  # let go, as the end of a request does


@stores(*SHARED)
async def test_with_session_locking_an_access_waits_for_the_request_holding_the_lock(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs, locking="session", lock_timeout=30)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    request = asyncio.create_task(browser.post(here, "/hold"))
    await jobs.holding.wait()
    entered = asyncio.Event()

    async def job() -> None:
        async with jobs.last.access() as session:
            entered.set()
            assert session["r"] == "request"  # written by the request before it let go
            session["a"] = "access"

    access = asyncio.create_task(job())
    await asyncio.sleep(0.2)  # many lock polls: the access must still be waiting
    assert not entered.is_set()
    jobs.gate.set()
    await request
    await asyncio.wait_for(access, 10)
    assert await values(browser, there) == {"a": "access", "n": 0, "r": "request"}


@stores(*SHARED)
async def test_with_session_locking_a_request_waits_for_the_access_holding_the_lock(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs, locking="session", lock_timeout=30)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    jobs.gate.set()
    async with jobs.last.access() as session:
        session["a"] = "access"
        request = asyncio.create_task(browser.post(here, "/hold"))
        await asyncio.sleep(0.2)  # many lock polls: the request must still be waiting
        assert not jobs.holding.is_set()
    assert (await asyncio.wait_for(request, 10)).json() == ["a", "n", "r"]
    assert await values(browser, there) == {"a": "access", "n": 0, "r": "request"}


@stores(*SHARED)
async def test_with_session_locking_an_access_gives_up_after_lock_timeout(
    store_factory: StoreFactory, clock: FakeClock, jobs: Jobs, browser: Browser
) -> None:
    _, here = process(store_factory, clock, jobs, locking="session", lock_timeout=0.3)
    await browser.post(here, "/start")
    request = asyncio.create_task(browser.post(here, "/hold"))
    await jobs.holding.wait()
    with pytest.raises(StoreUnavailableError, match="lock_timeout"):
        async with jobs.last.access():
            pass
    jobs.gate.set()
    assert (await request).json() == ["n", "r"]


@pytest.mark.parametrize("locking", ["none", "session"])
@stores("sqlite")
async def test_an_access_from_a_starlette_background_task_runs_inside_its_request(
    store_factory: StoreFactory,
    clock: FakeClock,
    browser: Browser,
    locking: Literal["none", "session"],
) -> None:
    """A ``BackgroundTask`` runs before the request lets go of its session: its access overlaps
    the request. Under ``locking="session"`` it waits for that request's own lock, in vain."""
    manager = SessionManager(store_factory(), clock=clock, locking=locking, lock_timeout=0.3)

    async def job(accessor: SessionAccessor) -> None:
        async with accessor.access() as session:
            session["report"] = "ready"

    async def start(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["status"] = "running"
        return Response("started", background=BackgroundTask(job, session.accessor()))

    app = make_app(manager, [Route("/start", start, methods=["POST"])])
    await browser.post(app, "/start")  # creates the session
    if locking == "session":
        with pytest.raises(StoreUnavailableError, match="lock_timeout"):
            await browser.post(app, "/start")
    else:
        await browser.post(app, "/start")
        assert await values(browser, app) == {"report": "ready", "status": "running"}


@stores(*SHARED)
async def test_an_accessor_holds_no_session_object(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    manager = SessionManager(store_factory(), clock=clock)
    session = manager.create_session()
    accessor = session.accessor()
    await manager.release(session)
    gone = weakref.ref(session)
    del session
    gc.collect()
    assert gone() is None  # the request's copy is gone; the accessor still finds the session
    async with accessor.access() as found:
        assert found.creation_time == clock.now


# --- a store that cannot answer ------------------------------------------------------------


def outage(monkeypatch: pytest.MonkeyPatch, manager: SessionManager, *methods: str) -> None:
    """Make ``methods`` of the manager's store fail as an unreachable server does."""

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("injected outage")

    for name in methods:
        monkeypatch.setattr(manager.store, name, down)


@stores(*SHARED)
async def test_a_store_down_on_entry_raises_store_unavailable_and_runs_nothing(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, here = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    outage(monkeypatch, manager, "load")
    ran = False
    with pytest.raises(StoreUnavailableError):
        async with jobs.last.access():
            ran = True
    assert not ran
    monkeypatch.undo()
    async with jobs.last.access() as session:  # back: the same session
        assert session["n"] == 0


@stores(*SHARED)
async def test_a_store_down_on_exit_raises_store_unavailable_and_writes_nothing(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")

    async def job() -> None:
        async with jobs.last.access() as session:
            session["n"] = 1
            session["report"] = "ready"
            outage(monkeypatch, manager, "save", "touch", "release_lock")

    with pytest.raises(StoreUnavailableError):
        await job()
    monkeypatch.undo()
    assert await values(browser, there) == {"n": 0}
    async with jobs.last.access() as session:  # nothing of the failed access is pending here
        assert dict(session) == {"n": 0}
    assert await values(browser, there) == {"n": 0}


@stores(*SHARED)
async def test_a_store_that_answers_wrongly_on_exit_fails_the_access_and_writes_nothing(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not an outage (no retry would help): the error is raised as it is; nothing is retried."""
    manager, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")

    async def broken_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.undo()
        raise RuntimeError("the store answered nonsense")

    async def job() -> None:
        async with jobs.last.access() as session:
            session["n"] = 1
            monkeypatch.setattr(manager.store, "save", broken_once)

    with pytest.raises(RuntimeError, match="nonsense"):
        await job()
    assert await values(browser, there) == {"n": 0}


@stores(*SHARED)
async def test_a_lock_release_failing_after_the_save_is_logged_not_raised(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The access's changes are written; raising would say they were not."""
    manager, here = process(store_factory, clock, jobs, locking="session")
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    async with jobs.last.access() as session:
        session["n"] = 1
        outage(monkeypatch, manager, "release_lock")
    monkeypatch.undo()
    assert "after an access was saved" in caplog.text
    assert await values(browser, there) == {"n": 1}


@stores(*SHARED)
async def test_a_failed_access_overlapping_a_request_leaves_the_request_its_own_changes(
    store_factory: StoreFactory,
    clock: FakeClock,
    jobs: Jobs,
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, here = process(store_factory, clock, jobs)
    _, there = process(store_factory, clock, jobs)
    await browser.post(here, "/start")
    request = asyncio.create_task(browser.post(here, "/hold"))
    await jobs.holding.wait()

    async def job() -> None:
        async with jobs.last.access() as session:
            session["a"] = "access"
            outage(monkeypatch, manager, "save", "touch", "release_lock")

    with pytest.raises(StoreUnavailableError):
        await job()
    monkeypatch.undo()
    jobs.gate.set()
    assert (await request).json() == ["n", "r"]  # the access's change was taken back
    assert await values(browser, there) == {"n": 0, "r": "request"}


# --- a websocket message loop ----------------------------------------------------------------


async def status_loop(websocket: WebSocket) -> None:
    """Each message is answered from the session as an access finds it."""
    await websocket.accept()
    session = get_session(websocket, create=False)
    assert session is not None
    accessor = session.accessor()
    try:
        while True:
            await websocket.receive_text()
            async with accessor.access() as current:
                status = current.get("status")
            await websocket.send_text(str(status))
    except WebSocketDisconnect:
        pass


def test_a_websocket_loop_sees_through_an_accessor_what_another_worker_wrote(
    clock: FakeClock, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/ws.db"
    here = SessionManager(SQLStore(url), clock=clock)
    there = SessionManager(SQLStore(url), clock=clock)
    with (
        TestClient(make_app(here, [WebSocketRoute("/ws", status_loop)]),
                   base_url="https://testserver") as http,
        TestClient(make_app(there), base_url="https://testserver") as other,
    ):  # fmt: skip
        http.post("/set/status", params={"value": "running"})
        cookie = cookie_header(http.cookies["sessionid"])
        with http.websocket_connect("/ws", headers=cookie) as socket:
            socket.send_text("?")
            assert socket.receive_text() == "running"
            other.post("/set/status", params={"value": "done"}, headers=cookie)
            socket.send_text("?")
            assert socket.receive_text() == "done"
