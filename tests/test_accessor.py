"""``HttpSession.accessor()``: the session used outside any request (Servlet 6.1 ``Accessor``),
on the memory store; tests/stores/test_accessor_stores.py runs the same rules on every store."""

from __future__ import annotations

import asyncio
import gc
import pickle
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from examples import background_task
from servletsession import (
    HttpSessionBindingEvent,
    HttpSessionEvent,
    IllegalStateError,
    SessionAccessor,
    SessionManager,
    change_session_id,
    get_session,
)
from servletsession.cookies import session_ref
from servletsession.stores.memory import MemoryStore
from servletsession.stores.sql import SQLStore

from .conftest import FakeClock, client, cookie_header, make_app

pytestmark = pytest.mark.anyio


class Jobs:
    """What the routes hand to work outside the request: the accessors they made."""

    def __init__(self) -> None:
        self.accessors: list[SessionAccessor] = []
        self.gate = asyncio.Event()  # a request that holds its session until the test says so
        self.holding = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def last(self) -> SessionAccessor:
        return self.accessors[-1]

    async def start(self, request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["n"] = 0
        self.accessors.append(session.accessor())
        return Response("started")

    async def hold(self, request: Request) -> Response:
        """Sets ``r``, then waits for the gate with its session in use."""
        session = get_session(request)
        assert session is not None
        session["r"] = "request"
        self.holding.set()
        await self.gate.wait()
        return JSONResponse(sorted(session.get_attribute_names()))

    async def access_while_creating(self, request: Request) -> Response:
        """Creates a session, then opens an access of it before the response starts."""
        session = get_session(request)
        assert session is not None
        session["r"] = "request"
        async with session.accessor().access() as accessed:
            same = accessed is session
            accessed["a"] = "access"
        return JSONResponse({"same": same, "is_new": session.is_new})

    async def access_after_change_id(self, request: Request) -> Response:
        """Changes the ID of its session, then opens an access through an accessor made before."""
        session = get_session(request, create=False)
        assert session is not None
        accessor = session.accessor()
        change_session_id(request)
        async with accessor.access() as accessed:
            same = accessed is session
            accessed["a"] = "access"
        return JSONResponse({"same": same})

    async def create_and_linger(self, request: Request) -> Response:
        """Creates a session and starts a job whose access outlasts the request."""
        session = get_session(request)
        assert session is not None
        session["r"] = "request"
        accessor = session.accessor()

        async def job() -> None:
            async with accessor.access() as accessed:
                self.holding.set()
                await self.gate.wait()
                accessed["late"] = "access"

        self.tasks.append(asyncio.create_task(job()))
        await self.holding.wait()
        return Response("created")

    def routes(self) -> list[Route]:
        return [
            Route("/start", self.start, methods=["POST"]),
            Route("/hold", self.hold, methods=["POST"]),
            Route("/access-while-creating", self.access_while_creating, methods=["POST"]),
            Route("/access-after-change-id", self.access_after_change_id, methods=["POST"]),
            Route("/create-and-linger", self.create_and_linger, methods=["POST"]),
        ]


class Events:
    """A listener recording attribute and lifecycle events; ``attribute_added`` is async."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
        await asyncio.sleep(0)
        self.log.append(("added", event.name, event.value))

    def attribute_replaced(self, event: HttpSessionBindingEvent) -> None:
        self.log.append(("replaced", event.name, event.value))

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.log.append(("destroyed", sorted(event.session.get_attribute_names())))


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def manager(clock: FakeClock, events: Events) -> AsyncIterator[SessionManager]:
    manager = SessionManager(clock=clock, listeners=[events], max_inactive_interval=100)
    yield manager
    await manager.close()


@pytest.fixture
async def http(manager: SessionManager, jobs: Jobs) -> AsyncIterator[Any]:
    async with client(make_app(manager, jobs.routes())) as http:
        yield http


async def started(http: Any, jobs: Jobs) -> dict[str, str]:
    """A session made by a request, its accessor kept; the cookie that carries it."""
    response = await http.post("/start")
    return cookie_header(response.cookies["sessionid"])


async def test_changes_made_in_an_access_are_seen_by_the_next_request(
    http: Any, jobs: Jobs
) -> None:
    cookie = await started(http, jobs)
    async with jobs.last.access() as session:
        session["n"] = 1
        session["report"] = "ready"
    response = await http.get("/info", headers=cookie)
    assert sorted(response.json()["names"]) == ["n", "report"]
    assert (await http.get("/get/report", headers=cookie)).json()["value"] == "ready"


async def test_an_access_counts_as_an_access_for_last_accessed_time(
    http: Any, jobs: Jobs, clock: FakeClock
) -> None:
    created = clock.now
    cookie = await started(http, jobs)
    clock.advance(10)
    async with jobs.last.access() as session:
        assert session.last_accessed_time == created  # the previous access: the request
    clock.advance(10)
    response = await http.get("/info", headers=cookie)
    assert response.json()["last_accessed_time"] == created + 10  # the access's start


async def test_an_access_restarts_the_idle_timeout(http: Any, jobs: Jobs, clock: FakeClock) -> None:
    cookie = await started(http, jobs)
    clock.advance(90)
    async with jobs.last.access():
        pass
    clock.advance(90)  # 180 s after the request, 90 s after the access: idle 100 s is not up
    assert (await http.get("/get/n", headers=cookie)).json() == {"session": True, "value": 0}


async def test_attribute_listeners_fire_in_the_block_and_async_ones_finish_before_exit(
    http: Any, jobs: Jobs, events: Events
) -> None:
    await started(http, jobs)
    events.log.clear()
    async with jobs.last.access() as session:
        session["n"] = 1
        assert events.log == [("replaced", "n", 0)]  # a sync listener: inline
        session["new"] = "x"
    assert events.log == [("replaced", "n", 0), ("added", "new", "x")]  # async: awaited


async def test_invalidate_in_an_access_ends_the_session(
    http: Any, jobs: Jobs, events: Events
) -> None:
    cookie = await started(http, jobs)
    async with jobs.last.access() as session:
        session.invalidate()
    assert ("destroyed", ["n"]) in events.log
    assert (await http.get("/get/n", headers=cookie)).json() == {"session": False}
    with pytest.raises(IllegalStateError):
        async with jobs.last.access():
            pass


async def test_a_session_that_expired_after_the_accessor_was_made_raises_illegal_state(
    http: Any, jobs: Jobs, events: Events, clock: FakeClock
) -> None:
    await started(http, jobs)
    clock.advance(101)
    ran = False
    with pytest.raises(IllegalStateError, match="ended"):
        async with jobs.last.access():
            ran = True
    assert not ran
    assert events.log.count(("destroyed", ["n"])) == 1  # expired as the access found it
    with pytest.raises(IllegalStateError):
        async with jobs.last.access():
            pass
    assert events.log.count(("destroyed", ["n"])) == 1


async def test_an_accessor_follows_an_id_change_made_in_this_process(http: Any, jobs: Jobs) -> None:
    old = await started(http, jobs)
    changed = await http.post("/change-id", headers=old)
    new = cookie_header(changed.cookies["sessionid"])
    async with jobs.last.access() as session:
        session["after"] = "login"
    assert (await http.get("/get/after", headers=new)).json()["value"] == "login"
    assert (await http.get("/get/after", headers=old)).json() == {"session": False}


async def test_an_access_overlapping_a_request_shares_its_live_object(
    http: Any, jobs: Jobs
) -> None:
    cookie = await started(http, jobs)
    request = asyncio.create_task(http.post("/hold", headers=cookie))
    await jobs.holding.wait()
    async with jobs.last.access() as session:
        assert session["r"] == "request"  # the request's change, not yet saved anywhere
        session["a"] = "access"
    jobs.gate.set()
    assert (await request).json() == ["a", "n", "r"]  # the request sees the access's change


async def test_an_access_inside_the_request_that_created_the_session_joins_it(
    http: Any, jobs: Jobs
) -> None:
    response = await http.post("/access-while-creating")
    assert response.json() == {"same": True, "is_new": True}
    cookie = cookie_header(response.cookies["sessionid"])
    names = (await http.get("/info", headers=cookie)).json()["names"]
    assert sorted(names) == ["a", "r"]


async def test_an_access_inside_a_request_that_changed_the_id_follows_it(
    http: Any, jobs: Jobs
) -> None:
    old = await started(http, jobs)
    response = await http.post("/access-after-change-id", headers=old)
    assert response.json() == {"same": True}
    new = cookie_header(response.cookies["sessionid"])
    assert (await http.get("/get/a", headers=new)).json()["value"] == "access"
    assert (await http.get("/get/a", headers=old)).json() == {"session": False}


async def test_changes_made_before_the_block_raises_are_kept_as_a_request_keeps_them(
    http: Any, jobs: Jobs
) -> None:
    cookie = await started(http, jobs)

    async def failing_job() -> None:
        async with jobs.last.access() as session:
            session["n"] = 5
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await failing_job()
    assert (await http.get("/get/n", headers=cookie)).json()["value"] == 5
    async with jobs.last.access() as session:  # the access was released
        assert session["n"] == 5


async def test_an_accessor_of_an_invalidated_session_cannot_be_made(
    manager: SessionManager,
) -> None:
    session = manager.create_session()
    session.invalidate()
    with pytest.raises(IllegalStateError):
        session.accessor()
    await manager.release(session)


async def test_an_accessor_shows_no_session_id_and_cannot_be_pickled(
    manager: SessionManager,
) -> None:
    session = manager.create_session()
    accessor = session.accessor()
    assert session.id not in repr(accessor)
    assert repr(accessor) == f"<SessionAccessor ref={session_ref(session.id)}>"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(accessor)
    await manager.release(session)


async def test_the_accessors_registry_keeps_nothing_once_its_accessors_are_gone(
    manager: SessionManager,
) -> None:
    sessions = [manager.create_session() for _ in range(3)]
    accessors = [session.accessor() for session in sessions for _ in range(2)]
    assert len(manager.accessors) == 3  # one entry per session, shared by its accessors
    await manager.change_session_id(sessions[0])
    assert len(manager.accessors) == 3  # moved to the new ID, not added
    async with accessors[0].access() as session:
        assert session is sessions[0]
    del accessors
    gc.collect()
    assert len(manager.accessors) == 0
    for session in sessions:
        await manager.release(session)


# --- the example: examples/background_task.py --------------------------------------------------


@pytest.fixture
def gated_report(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The example's slow work, finishing when the test sets the event."""
    gate = asyncio.Event()

    async def build_report(topic: str) -> str:
        await gate.wait()
        return f"A report on {topic}."

    monkeypatch.setattr(background_task, "build_report", build_report)
    return gate


async def test_the_example_job_writes_its_report_into_the_session_later(
    gated_report: asyncio.Event,
) -> None:
    async with client(background_task.app) as http:
        response = await http.post("/reports", params={"topic": "tea"})
        assert (response.status_code, response.json()) == (202, {"status": "running"})
        assert (await http.get("/reports")).json() == {"status": "running", "report": None}
        gated_report.set()
        await asyncio.gather(*background_task.jobs)
        shown = await http.get("/reports")
    assert shown.json() == {"status": "done", "report": "A report on tea."}


async def test_the_example_job_gives_up_quietly_when_the_session_ended_meanwhile(
    gated_report: asyncio.Event,
) -> None:
    manager = background_task.manager
    async with client(background_task.app) as http:
        await http.post("/reports", params={"topic": "tea"})
        cookie = cookie_header(http.cookies["sessionid"])
        session = await manager.find(http.cookies["sessionid"].split(".")[0])  # a logout
        assert session is not None
        await manager.invalidate(session)
        await manager.release(session)
        gated_report.set()
        await asyncio.gather(*background_task.jobs)  # no error: the job returned
        shown = await http.get("/reports", headers=cookie)
    assert shown.json() == {"status": None, "report": None}


def test_the_example_websocket_reads_the_session_through_an_accessor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with TestClient(background_task.app, base_url="https://testserver") as http:
        portal = http.portal
        assert portal is not None
        gate: asyncio.Event = portal.call(_new_event)

        async def build_report(topic: str) -> str:
            await gate.wait()
            return f"A report on {topic}."

        monkeypatch.setattr(background_task, "build_report", build_report)
        http.post("/reports", params={"topic": "tea"})
        cookie = cookie_header(http.cookies["sessionid"])
        with http.websocket_connect("/reports/ws", headers=cookie) as socket:
            socket.send_text("status?")
            assert socket.receive_json() == {"status": "running", "report": None}
            portal.call(gate.set)
            portal.call(_jobs_done)
            socket.send_text("status?")
            assert socket.receive_json() == {"status": "done", "report": "A report on tea."}


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


async def _jobs_done() -> None:
    await asyncio.gather(*background_task.jobs)


# --- an exit cut short by cancellation ----------------------------------------------------------


class GatedListener:
    """An async ``attribute_added`` that runs until the test opens its gate."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.gate = asyncio.Event()

    async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
        self.running.set()
        await self.gate.wait()


async def eventually(condition: Callable[[], bool]) -> bool:
    """``condition()`` became true within a short while (the loop runs other tasks meanwhile)."""
    for _ in range(200):
        if condition():
            return True
        await asyncio.sleep(0.005)
    return condition()


async def test_a_request_cancelled_while_its_events_settle_still_ends_its_access(
    clock: FakeClock,
) -> None:
    listener = GatedListener()
    manager = SessionManager(listeners=[listener], max_inactive_interval=60, clock=clock)
    session = manager.create_session()  # joined as a request joins it
    session["x"] = 1
    release = asyncio.create_task(manager.release(session))
    await listener.running.wait()
    release.cancel()  # the client went away while the response end waited for the listener
    with pytest.raises(asyncio.CancelledError):
        await release
    assert session._in_flight == 0  # not counted as in use for ever
    listener.gate.set()
    clock.advance(61)
    assert await manager.reap() == 1
    await manager.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_access_cancelled_in_its_exit_still_ends_and_writes_it(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"

    def store() -> MemoryStore | SQLStore:
        return MemoryStore() if kind == "memory" else SQLStore(url)

    listener = GatedListener()
    manager = SessionManager(store(), listeners=[listener], max_inactive_interval=60, clock=clock)
    created = manager.create_session()
    session_id = created.id
    accessor = created.accessor()
    await manager.release(created)

    async def job() -> None:
        async with accessor.access() as session:
            session["x"] = 1  # its listener holds the exit until the gate opens

    task = asyncio.create_task(job())
    await listener.running.wait()
    await asyncio.sleep(0)
    task.cancel()  # asyncio.timeout around the access, or a job cancelled at shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    listener.gate.set()  # the exit runs on to its end
    if kind == "memory":
        assert await eventually(lambda: created._in_flight == 0)
        clock.advance(61)
        assert await manager.reap() == 1  # it idles out as any session does
    else:
        assert await eventually(lambda: not manager.in_process)  # let go of here
        other = SessionManager(store(), clock=clock, max_inactive_interval=60)
        found = await other.find(session_id)
        assert found is not None
        assert found["x"] == 1  # what the block wrote is written
        await other.release(found)
        clock.advance(67)  # idle 60 s, and the 10 % a shared store may add
        assert await other.find(session_id) is None  # and it idles out
        await other.close()
        await other.store.close()
    await manager.close()
    await manager.store.close()
