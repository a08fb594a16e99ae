"""A request answered 503 (its store is down) takes back only its own unwritten changes, never
another concurrent request's: the rule on the shared stores, where the concurrent requests of a
process share one session object. One rule per test, on SQLite, PostgreSQL and Redis.

Most tests drive requests on a manager as the middleware does (join, changes inside the request's
change journal, flush, ``refuse`` on a 503, release), so that the order of two requests' changes
and of the outage is exact; the others drive real requests over ASGI. The stores are real ones
that fail while ``down`` is set (``FlakySQLStore``, ``FlakyRedisStore``); time is a FakeClock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servletsession import SessionManager, StoreUnavailableError, change_session_id, get_session
from servletsession.changes import change_journal
from servletsession.persistence import Visit
from servletsession.session import HttpSession
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

from ..conftest import FakeClock, make_app
from ..conftest import login as readme_login
from .conftest import POSTGRES_URL, SHARED_KINDS, _clean, redis_store, require, use_cluster
from .helpers import Browser
from .test_model import FlakyRedisStore, FlakySQLStore

pytestmark = pytest.mark.anyio

T = TypeVar("T")
FlakyStore = FlakySQLStore | FlakyRedisStore


# --- harness ---------------------------------------------------------------------------------


class InFlight:
    """One request under way on ``manager``, driven as the middleware drives it."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.journal: dict[int, dict[str, Any]] = {}
        self.visit = Visit()
        self.visit.journal = self.journal

    @property
    def session(self) -> HttpSession:
        assert self.visit.session is not None
        return self.visit.session

    def run(self, code: Callable[[], T]) -> T:
        """Run ``code`` inside the request (its changes go to the request's journal)."""
        token = change_journal.set(self.journal)
        try:
            return code()
        finally:
            change_journal.reset(token)

    async def arun(self, code: Callable[[], Awaitable[T]]) -> T:
        token = change_journal.set(self.journal)
        try:
            return await code()
        finally:
            change_journal.reset(token)

    async def join(self, session_id: str) -> HttpSession | None:
        return await self.arun(lambda: self.manager.join(session_id, self.visit))

    async def flush(self) -> bool:
        """The response starts: ``True`` if answered as the app said, ``False`` if 503."""
        try:
            await self.arun(lambda: self.manager.flush(self.visit))
        except StoreUnavailableError:
            self.manager.refuse(self.visit)
            return False
        return True

    async def release(self) -> None:
        await self.arun(lambda: self.manager.release(self.visit))


class Backend:
    """One shared store of one kind, and the processes (managers) over it."""

    def __init__(self, kind: str, tmp_path: Path, clock: FakeClock) -> None:
        self.kind, self.tmp_path, self.clock = kind, tmp_path, clock
        self.tag = uuid.uuid4().hex[:10]  # the prefix ``_clean`` removes
        self.stores: list[FlakyStore] = []
        self.managers: list[SessionManager] = []
        self.observer = self._store(SQLStore, RedisStore)  # reads without touching

    def _store(self, sql: type[SQLStore], redis: type[RedisStore]) -> SQLStore | RedisStore:
        if self.kind == "sqlite":
            return sql(f"sqlite+aiosqlite:///{self.tmp_path}/sessions.db", save_period=0)
        if self.kind == "postgresql":
            return sql(POSTGRES_URL, table_prefix=f"t{self.tag}_", save_period=0)
        return redis_store(self.kind, self.tag, redis, save_period=0)

    def process(self, **options: Any) -> SessionManager:
        """A new process: its own store object (``.store.down`` is an outage) and manager."""
        store = self._store(FlakySQLStore, FlakyRedisStore)
        assert isinstance(store, FlakySQLStore | FlakyRedisStore)
        self.stores.append(store)
        manager = SessionManager(store, clock=self.clock, max_inactive_interval=600, **options)
        self.managers.append(manager)
        return manager

    async def new_session(self, manager: SessionManager, **attributes: Any) -> str:
        """A session stored by a request that set ``attributes``; its ID."""
        request = InFlight(manager)
        session = request.run(lambda: manager.create_session(request.visit))
        for name, value in attributes.items():
            request.run(partial(session.set_attribute, name, value))
        assert await request.flush()
        await request.release()
        return session.id

    async def stored(self, session_id: str) -> dict[str, Any] | None:
        """What the store holds under ``session_id``: attributes and principal."""
        record = await self.observer.load(session_id, self.clock(), touch=False)
        if record is None:
            return None
        attributes = self.observer.decode_all(session_id, record.attributes or {}, strict=False)
        return {"attributes": attributes, "principal": record.principal}

    async def close(self) -> None:
        for manager in self.managers:
            await manager.close()
        await self.observer.close()
        await _clean(self.kind, self.tag)


@pytest.fixture(params=SHARED_KINDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Backend]:
    """A shared store of each kind (unreachable: skipped, or failed under CI=true)."""
    kind: str = request.param
    use_cluster(request, kind)
    await require(kind)
    made = Backend(kind, tmp_path, clock)
    try:
        yield made
    finally:
        await made.close()


async def two_requests(
    backend: Backend, **attributes: Any
) -> tuple[SessionManager, str, InFlight, InFlight]:
    """One process, a stored session with ``attributes``, and two requests A and B that joined it
    (they share one session object)."""
    manager = backend.process()
    session_id = await backend.new_session(manager, **attributes)
    a, b = InFlight(manager), InFlight(manager)
    assert await a.join(session_id) is not None
    assert await b.join(session_id) is a.session
    return manager, session_id, a, b


async def refused(request: InFlight) -> None:
    """``request``'s response starts while its process's store is down: answered 503."""
    store = request.manager.store
    assert isinstance(store, FlakySQLStore | FlakyRedisStore)
    store.down = True
    try:
        assert not await request.flush()
    finally:
        store.down = False


async def whoami(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse(None)
    return JSONResponse({"user": session.get("user"), "principal": session.principal})


# --- attributes and principal ----------------------------------------------------------------


async def test_a_refused_request_takes_back_only_its_own_attribute_changes(
    backend: Backend,
) -> None:
    """Rule: B's 503 takes back B's unwritten changes only. A's change made after B's to the same
    name stays, and so does a change made outside any request; a name only B set goes."""
    _, session_id, a, b = await two_requests(backend, x=0, y=0)
    session = a.session
    a.run(lambda: session.set_attribute("x", "A1"))
    b.run(lambda: session.set_attribute("x", "B"))
    a.run(lambda: session.set_attribute("x", "A2"))
    session.set_attribute("y", "outside")  # no request's journal
    b.run(lambda: session.set_attribute("y", "B"))
    b.run(lambda: session.set_attribute("z", "B"))
    await refused(b)
    assert dict(session._attributes) == {"x": "A2", "y": "outside"}
    assert await a.flush()
    await a.release()
    await b.release()
    stored = await backend.stored(session_id)
    assert stored is not None
    assert stored["attributes"] == {"x": "A2", "y": "outside"}


async def test_a_refused_request_takes_back_only_its_own_principal_change(
    backend: Backend,
) -> None:
    """Rule: A binds a principal, B then unbinds it and is answered 503: B's unbinding is taken
    back, A's binding shows and is written."""
    _, session_id, a, b = await two_requests(backend, a=1)
    a.run(lambda: setattr(a.session, "principal", "alice"))
    b.run(lambda: setattr(b.session, "principal", None))
    await refused(b)
    assert a.session.principal == "alice"
    assert await a.flush()
    await a.release()
    await b.release()
    stored = await backend.stored(session_id)
    assert stored is not None
    assert stored["principal"] == "alice"


@pytest.mark.parametrize("save_mode", ["always", "on_get"])
async def test_a_refused_change_is_not_written_by_a_request_that_read_the_attribute(
    backend: Backend, save_mode: str
) -> None:
    """Rule: under save modes that write what a request read, B's refused change of ``x`` is not
    written by A's save, which writes A's own change."""
    manager = backend.process(save_mode=save_mode)
    session_id = await backend.new_session(manager, x=0, y=0)
    a, b = InFlight(manager), InFlight(manager)
    await a.join(session_id)
    await b.join(session_id)
    session = a.session
    b.run(lambda: session.set_attribute("x", "B"))
    a.run(lambda: session.get_attribute("x"))
    a.run(lambda: session.set_attribute("y", "A"))
    await refused(b)
    assert await a.flush()
    await a.release()
    await b.release()
    stored = await backend.stored(session_id)
    assert stored is not None
    assert stored["attributes"] == {"x": 0, "y": "A"}


@pytest.mark.parametrize("change", ["bind the same principal", "remove the same attribute"])
async def test_repeating_another_requests_unwritten_change_makes_it_ones_own_too(
    backend: Backend, change: str
) -> None:
    """Rule: B makes a change, A makes the same one before it is written (a no-op on the shared
    object), then B is answered 503: the change is A's too, so it stays and A writes it."""
    _, session_id, a, b = await two_requests(backend, user="alice")
    session = a.session
    for request in (b, a):
        if change == "bind the same principal":
            request.run(partial(setattr, session, "principal", "alice"))
        else:
            request.run(partial(session.remove_attribute, "user"))
    await refused(b)
    expected = ("alice", {"user": "alice"}) if change == "bind the same principal" else (None, {})
    assert (a.session.principal, dict(a.session._attributes)) == expected
    assert await a.flush()
    await a.release()
    await b.release()
    stored = await backend.stored(session_id)
    assert stored is not None
    assert (stored["principal"], stored["attributes"]) == expected


async def test_a_refused_change_a_failing_save_carried_is_not_written_later(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: A's save, under way, carries B's change; B is answered 503 (its change is taken back),
    then A's save fails too. The next request's save writes its own change, not B's (nor A's)."""
    manager = backend.process()
    session_id = await backend.new_session(manager, x=0)
    a, b, c = InFlight(manager), InFlight(manager), InFlight(manager)
    for request in (a, b, c):
        await request.join(session_id)
    b.run(lambda: b.session.set_attribute("x", "B's"))
    a.run(lambda: a.session.set_attribute("y", "A's"))
    store = manager.store
    saving, finish = asyncio.Event(), asyncio.Event()

    async def failing_save(*args: Any, **kwargs: Any) -> Any:  # the save times out
        saving.set()
        await finish.wait()
        raise StoreUnavailableError("save timed out (injected)")

    monkeypatch.setattr(store, "save", failing_save)
    a_flush = asyncio.create_task(a.flush())
    await asyncio.wait_for(saving.wait(), 5)
    monkeypatch.undo()
    b.run(lambda: b.session.set_attribute("z", 1))
    await refused(b)
    finish.set()
    assert not await a_flush
    assert dict(c.session._attributes) == {"x": 0}
    c.run(lambda: c.session.set_attribute("w", "C's"))
    assert await c.flush()
    for request in (a, b, c):
        await request.release()
    stored = await backend.stored(session_id)
    assert stored is not None
    assert stored["attributes"] == {"x": 0, "w": "C's"}


# --- ID changes and ends ----------------------------------------------------------------------


async def test_a_refused_request_takes_back_its_own_id_change_not_an_earlier_one(
    backend: Backend,
) -> None:
    """Rule: A changes the ID (id0 -> id1), B changes it again (id1 -> id2) and is answered 503:
    the session goes back to A's ID, which A writes."""
    manager, session_id, a, b = await two_requests(backend, a=1)
    first = a.run(lambda: manager.change_session_id_now(a.session))
    b.run(lambda: manager.change_session_id_now(b.session))
    await refused(b)
    assert a.session.id == first
    assert await a.flush()
    await a.release()
    await b.release()
    assert await backend.stored(session_id) is None
    assert await backend.stored(first) is not None


async def test_the_old_id_of_a_pending_id_change_stays_refused_after_another_requests_503(
    backend: Backend,
) -> None:
    """Rule: A changes the ID (the old one is refused in its process at once); B is answered 503.
    B's refusal does not make the old ID joinable again before A's rename is written (a request
    with the old cookie would get a copy whose writes are lost)."""
    manager, session_id, a, b = await two_requests(backend, a=1)
    new_id = a.run(lambda: manager.change_session_id_now(a.session))
    b.run(lambda: b.session.set_attribute("x", 1))
    await refused(b)
    late = InFlight(manager)
    assert await late.join(session_id) is None
    assert await a.flush()
    await a.release()
    await b.release()
    stored = await backend.stored(new_id)
    assert stored is not None
    assert stored["attributes"] == {"a": 1}
    assert await backend.stored(session_id) is None


async def test_a_logout_whose_end_cannot_be_claimed_is_answered_503(backend: Backend) -> None:
    """Rule: A logs out (invalidate) while the store is down, and B, sharing the session, is
    answered 503 for the end it could not claim. A is answered 503 too, not 200 'logged out'
    while the store keeps the session; once the store is back, logging out works."""
    manager, session_id, a, b = await two_requests(backend, a=1)
    store = manager.store
    assert isinstance(store, FlakySQLStore | FlakyRedisStore)
    store.down = True
    a.run(a.session.invalidate)
    assert not await b.flush()
    assert not await a.flush()
    store.down = False
    await a.release()
    await b.release()
    assert await backend.stored(session_id) is not None
    again = InFlight(manager)
    assert await again.join(session_id) is not None
    again.run(again.session.invalidate)
    assert await again.flush()
    await again.release()
    assert await backend.stored(session_id) is None


async def test_a_refused_id_change_keeps_a_later_one_of_another_request(backend: Backend) -> None:
    """Rule: a double-submitted login during a store blip, over ASGI. Both requests join the
    pre-login session; B changes the ID, then A; B is answered 503. A's ID change is A's own: A
    is answered 200 with the cookie of its new ID, under which the session is logged in, and the
    pre-login ID is gone (no session fixation)."""
    manager = backend.process()
    store = manager.store
    assert isinstance(store, FlakySQLStore | FlakyRedisStore)
    a_joined, b_renamed, a_renamed, b_answered = (asyncio.Event() for _ in range(4))

    async def login(request: Request) -> Response:
        first = request.query_params["who"] == "B"
        assert get_session(request, create=False) is not None
        if first:
            await a_joined.wait()
        else:  # both joined the pre-login session before either changes its ID
            a_joined.set()
            await b_renamed.wait()
        response = await readme_login(request)
        if first:
            b_renamed.set()
            await a_renamed.wait()
            store.down = True  # the blip hits B's response
        else:
            a_renamed.set()
            await b_answered.wait()  # A's response starts after B was answered
        return response

    app = make_app(manager, [Route("/login", login, methods=["POST"]),
                             Route("/whoami", whoami)])  # fmt: skip
    browser, stale = Browser(), Browser()
    try:
        await browser.post(app, "/set/anon", params={"value": "yes"})
        stale.cookie = pre_login = browser.cookie
        b_task = asyncio.create_task(browser.post(app, "/login?who=B&user=alice"))
        a_task = asyncio.create_task(browser.post(app, "/login?who=A&user=alice"))
        b_answer = await asyncio.wait_for(b_task, 5)
        store.down = False
        b_answered.set()
        a_answer = await asyncio.wait_for(a_task, 5)
        assert (b_answer.status_code, a_answer.status_code) == (503, 200)
        assert a_answer.headers.get("set-cookie", "").startswith("sessionid=")
        assert browser.cookie != pre_login
        assert (await browser.get(app, "/whoami")).json() == {"user": "alice", "principal": "alice"}
        assert (await stale.get(app, "/whoami")).json() is None
    finally:
        await browser.close()
        await stale.close()


@pytest.mark.parametrize("action", ["/invalidate", "/change-id"])
async def test_a_late_end_or_id_change_on_a_copy_renamed_elsewhere_sends_no_cookie(
    backend: Backend, action: str
) -> None:
    """Rule: a long request on process 1 holds the session while the browser's next request logs
    in on process 2 (new ID). Process 1's request then logs out or changes the ID of its copy,
    now detached: it is answered 200 without Set-Cookie, and the browser stays logged in under
    process 2's ID. (A late write on such a copy: test_lifecycle_rules.py.)"""
    joined, go = asyncio.Event(), asyncio.Event()

    async def slow(request: Request) -> Response:
        assert get_session(request, create=False) is not None
        joined.set()
        await go.wait()  # process 2 changes the ID meanwhile
        if action == "/invalidate":
            session = get_session(request, create=False)
            assert session is not None
            session.invalidate()
        else:
            change_session_id(request)
        return Response("done")

    routes = [Route("/slow", slow, methods=["POST"]), Route("/whoami", whoami),
              Route("/login", readme_login, methods=["POST"])]  # fmt: skip
    first, second = (make_app(backend.process(), routes) for _ in range(2))
    browser = Browser()
    try:
        await browser.post(first, "/set/cart", params={"value": "tea"})
        slow_request = asyncio.create_task(browser.post(first, "/slow"))
        await asyncio.wait_for(joined.wait(), 5)
        assert (await browser.post(second, "/login", params={"user": "alice"})).status_code == 200
        logged_in = browser.cookie
        go.set()
        late = await asyncio.wait_for(slow_request, 5)
        assert late.status_code == 200
        assert "set-cookie" not in late.headers
        assert browser.cookie == logged_in
        for app in (first, second):
            assert (await browser.get(app, "/whoami")).json() == {
                "user": "alice",
                "principal": "alice",
            }
    finally:
        await browser.close()
