"""Lifecycle rules of sessions, one rule per test, on every store kind each applies to.

Each test drives real requests (a :class:`Browser` carrying its cookie between apps, i.e.
processes sharing one store) over real ASGI against real stores; time is a :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from servletsession import (
    HttpSessionEvent,
    SessionManager,
    SessionMiddleware,
    get_session,
)
from servletsession.fastapi import SessionDep
from servletsession.shared import SharedSessions
from servletsession.stores.memory import MemoryStore
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

from ..conftest import BASIC_ROUTES, SECRET, FakeClock, make_app
from ..conftest import login as readme_login
from .conftest import REDIS_URL, SHARED_KINDS, StoreFactory, stores
from .helpers import Browser

pytestmark = pytest.mark.anyio

# --- routes ----------------------------------------------------------------------------------


async def state(request: Request) -> Response:
    """Everything the request's session holds, without creating one."""
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse({"session": False})
    return JSONResponse(
        {
            "session": True,
            "attributes": {name: session.get_attribute(name) for name in session},
            "principal": session.principal,
            "max_inactive_interval": session.max_inactive_interval,
        }
    )


async def login(request: Request) -> Response:
    """A login that remembers the user, then binds the principal (no ID change)."""
    session = get_session(request)
    assert session is not None
    session["user"] = request.query_params["user"]
    session.principal = request.query_params["user"]
    return Response("welcome")


login_rotating = readme_login  # the README's login: remember, bind, rotate the ID


ROUTES: list[BaseRoute] = [
    Route("/state", state),
    Route("/login", login, methods=["POST"]),
    Route("/login-rotating", login_rotating, methods=["POST"]),
]


class Destroyed:
    """Records the ID of every session whose ``session_destroyed`` fired."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.ids.append(event.session.id)


# --- fixtures --------------------------------------------------------------------------------

Process = Callable[..., tuple[SessionManager, Starlette]]


@pytest.fixture
async def processes(store_factory: StoreFactory, clock: FakeClock) -> AsyncIterator[Process]:
    """Makes 'processes': each its own store object and manager over the shared backend, and
    its app. Their background tasks are stopped before the stores close."""
    made: list[SessionManager] = []

    def process(
        *,
        store_options: dict[str, Any] | None = None,
        routes: Sequence[BaseRoute] = ROUTES,
        **manager_options: Any,
    ) -> tuple[SessionManager, Starlette]:
        manager = SessionManager(
            store_factory(**(store_options or {})), clock=clock, **manager_options
        )
        made.append(manager)
        return manager, make_app(manager, routes)

    yield process
    for manager in made:
        await manager.stop_reaper()


@pytest.fixture
async def browsers() -> AsyncIterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def new() -> Browser:
        made.append(Browser())
        return made[-1]

    yield new
    for browser in made:
        await browser.close()


def kind_of(make: StoreFactory) -> str:
    return make.kind  # type: ignore[attr-defined,no-any-return]


def deleted_cookie(response: Any) -> bool:
    cookie = response.headers.get("set-cookie", "")
    return cookie.startswith("sessionid=;") and "Max-Age=0" in cookie


# --- A. last_accessed_time -------------------------------------------------------------------


@stores()
async def test_last_accessed_time_is_the_start_of_the_previous_request_even_within_save_period(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser]
) -> None:
    _, first = processes(store_options={"save_period": 30})
    _, second = processes(store_options={"save_period": 30})
    browser = browsers()
    starts = [clock.now]
    await browser.post(first, "/set/a", params={"value": "1"})
    for turn in range(4):  # read-only requests 5 s apart: none rewrites the deadline
        clock.advance(5)
        starts.append(clock.now)
        info = (await browser.get((first, second)[turn % 2], "/info")).json()
        assert info["last_accessed_time"] == starts[-2]
        assert info["is_new"] is False


# --- B. idle overshoot on shared stores ------------------------------------------------------


@stores(*SHARED_KINDS)
@pytest.mark.parametrize("interval", [1, 100])
async def test_an_idle_session_outlives_its_interval_by_at_most_the_pad(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser], interval: int
) -> None:
    destroyed = Destroyed()
    manager, app = processes(store_options={"save_period": 30}, max_inactive_interval=interval,
                             listeners=[destroyed])  # fmt: skip
    store = manager.store
    assert isinstance(store, SQLStore | RedisStore)
    pad = min(30.0, 0.1 * interval)
    asked, reaped = browsers(), browsers()
    for browser in (asked, reaped):
        await browser.post(app, "/set/a", params={"value": "1"})
    clock.advance(interval / 2)
    for browser in (asked, reaped):
        assert (await browser.get(app, "/info")).json() is not None
    last_activity = clock.now
    ids = [asked.session_id, reaped.session_id]
    for session_id in ids:
        stored = await store.load(session_id, clock.now, touch=False, attributes=False)
        assert stored is not None
        assert (
            last_activity + interval <= stored.expires_at <= last_activity + interval + pad + 1e-6
        )

    clock.advance(interval + pad + 0.001)
    assert (await asked.get(app, "/info")).json() is None
    assert await manager.reap() == 1  # the other one, by the reaper
    assert sorted(destroyed.ids) == sorted(ids)
    assert await store.count() == 0


@stores()
@pytest.mark.parametrize("interval", [1, 100])
async def test_a_session_used_every_nine_tenths_of_its_interval_never_idles_out(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser], interval: int
) -> None:
    destroyed = Destroyed()
    manager, app = processes(store_options={"save_period": 30}, max_inactive_interval=interval,
                             listeners=[destroyed])  # fmt: skip
    browser = browsers()
    await browser.post(app, "/set/a", params={"value": "1"})
    session_id = browser.session_id
    for _ in range(25):
        clock.advance(0.9 * interval)
        assert await manager.reap() == 0
        assert (await browser.get(app, "/get/a")).json() == {"session": True, "value": "1"}
        store = manager.store
        if isinstance(store, SQLStore | RedisStore):
            stored = await store.load(session_id, clock.now, touch=False, attributes=False)
            assert stored is not None
            assert stored.expires_at >= clock.now + interval
    assert browser.session_id == session_id
    assert destroyed.ids == []


# --- C. absolute timeout -----------------------------------------------------------------------


@stores()
async def test_the_absolute_timeout_holds_however_busy_the_session_is(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser]
) -> None:
    destroyed = Destroyed()
    manager, app = processes(absolute_timeout=100, listeners=[destroyed])
    browser = browsers()
    created = clock.now
    await browser.post(app, "/set/a", params={"value": "1"})
    session_id = browser.session_id
    held = await manager.find(session_id)  # a long request, in flight until after the deadline
    assert held is not None
    while clock.now + 10 < created + 100:
        clock.advance(10)
        assert (await browser.get(app, "/get/a")).json() == {"session": True, "value": "1"}
    clock.now = created + 100.5
    refused = await browser.get(app, "/get/a")
    assert refused.json() == {"session": False}
    await manager.release(held)
    assert (await browser.get(app, "/get/a")).json() == {"session": False}
    assert await manager.reap() == 0
    assert destroyed.ids == [session_id]
    assert await manager.store.count() == 0
    assert deleted_cookie(refused)  # the browser is told to drop the dead session's cookie


# --- D. metadata only when changed -------------------------------------------------------------


@stores()
async def test_a_concurrent_attribute_save_does_not_revert_a_metadata_change(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser]
) -> None:
    joined, go = asyncio.Event(), asyncio.Event()

    async def promote(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        session.max_inactive_interval = 555
        session.principal = "alice"
        return Response("promoted")

    async def add_to_cart(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        joined.set()
        await go.wait()  # the promotion is saved meanwhile, on the other process
        session["cart"] = ["tea", "milk"]
        return Response("added")

    routes = [*ROUTES, Route("/promote", promote, methods=["POST"]),
              Route("/cart", add_to_cart, methods=["POST"])]  # fmt: skip
    a, first = processes(routes=routes)
    b, second = processes(routes=routes)
    browser = browsers()
    await browser.post(first, "/set/cart", params={"value": "empty"})
    session_id = browser.session_id
    cart = asyncio.create_task(browser.post(second, "/cart"))
    await asyncio.wait_for(joined.wait(), 2)
    assert (await browser.post(first, "/promote")).status_code == 200
    go.set()
    assert (await cart).status_code == 200

    shown = (await browser.get(first, "/state")).json()
    assert shown["attributes"] == {"cart": ["tea", "milk"]}
    assert shown["max_inactive_interval"] == 555
    assert shown["principal"] == "alice"
    for manager in (a, b):
        assert [s.id for s in await manager.sessions_of("alice")] == [session_id]
    store = a.store
    if isinstance(store, SQLStore | RedisStore):  # the stored row/hash itself
        stored = await store.load(session_id, clock.now, touch=False, attributes=False)
        assert stored is not None
        assert (stored.principal, stored.max_inactive_interval) == ("alice", 555)


# --- E. what set_attribute refuses -------------------------------------------------------------

BAD_NAMES = ["a\x00b", "a\ud800"]
BAD_VALUES: list[Any] = [
    "x\ud800",
    ["ok", "x\udc00"],
    {"k\ud800": 1},
    {"deep": [{"\udfff": "v"}]},
    {"k": ["\ud800"]},
]


@stores()
async def test_set_attribute_refuses_what_no_shared_store_can_write_and_memory_accepts_it(
    store_factory: StoreFactory,
    processes: Process,
    browsers: Callable[[], Browser],
) -> None:
    outcomes: list[tuple[str, str | None]] = []  # (name, TypeError message or None)

    async def try_bad(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        attempts = [(name, "v") for name in BAD_NAMES]
        attempts += [(f"value{i}", value) for i, value in enumerate(BAD_VALUES)]
        for name, value in attempts:
            try:
                session.set_attribute(name, value)
            except TypeError as exc:
                outcomes.append((name, str(exc)))
            else:
                outcomes.append((name, None))
        return Response("tried")

    async def names(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        return JSONResponse(sorted(ascii(name) for name in session))

    routes = [*ROUTES, Route("/bad", try_bad, methods=["POST"]), Route("/names", names)]
    _, app = processes(routes=routes)
    browser = browsers()
    await browser.post(app, "/set/kept", params={"value": "1"})
    assert (await browser.post(app, "/bad")).status_code == 200
    stored = (await browser.get(app, "/names")).json()
    if kind_of(store_factory) == "memory":
        assert all(message is None for _, message in outcomes), outcomes
        assert len(stored) == 1 + len(BAD_NAMES) + len(BAD_VALUES)
    else:
        assert len(outcomes) == len(BAD_NAMES) + len(BAD_VALUES)
        for name, message in outcomes:
            assert message is not None, f"{name!r} was accepted"
            assert repr(name) in message  # the TypeError names the attribute
        assert stored == ["'kept'"]  # nothing refused was stored, nothing else lost


@stores()
async def test_the_mapping_view_stores_none_while_set_attribute_none_removes(
    processes: Process, browsers: Callable[[], Browser]
) -> None:
    async def put_none(request: Request) -> Response:
        request.session["k"] = None
        return Response("ok")

    async def look(request: Request) -> Response:
        return JSONResponse(
            {"present": "k" in request.session, "value": request.session.get("k", "absent")}
        )

    async def remove_by_none(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        session.set_attribute("k", None)
        return Response("ok")

    routes = [*ROUTES, Route("/put-none", put_none, methods=["POST"]), Route("/look", look),
              Route("/remove-by-none", remove_by_none, methods=["POST"])]  # fmt: skip
    _, first = processes(routes=routes)
    _, second = processes(routes=routes)
    browser = browsers()
    await browser.post(first, "/put-none")  # creates the session: the first write does
    assert (await browser.get(second, "/look")).json() == {"present": True, "value": None}
    await browser.post(second, "/remove-by-none")
    assert (await browser.get(first, "/look")).json() == {"present": False, "value": "absent"}


@stores()
async def test_a_principal_with_nul_is_refused_with_value_error(
    processes: Process, browsers: Callable[[], Browser]
) -> None:
    refused: list[str] = []

    async def bind(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        for principal in ("al\x00ice", "al\ud800ice"):
            with pytest.raises(ValueError, match="principal"):
                session.principal = principal
            refused.append(principal)
        return JSONResponse(session.principal)

    _, app = processes(routes=[*ROUTES, Route("/bind", bind, methods=["POST"])])
    browser = browsers()
    assert (await browser.post(app, "/bind")).json() is None
    assert len(refused) == 2
    assert (await browser.get(app, "/state")).json()["principal"] is None


# --- F. store errors are logged without session IDs or bound parameters ------------------------


@stores("sqlite", "postgresql")
async def test_a_store_error_in_a_save_is_logged_without_the_session_id_or_parameters(
    store_factory: StoreFactory,
    processes: Process,
    browsers: Callable[[], Browser],
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, _ = processes()
    store = manager.store
    assert isinstance(store, SQLStore)
    raw = create_async_engine(store.engine.url.render_as_string(hide_password=False))

    async def sabotage(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        async with raw.begin() as conn:  # behind the store's back
            await conn.execute(text(f"drop table {store.attributes.name}"))
        session["cart"] = ["tea"]
        return Response("saved?")

    app = make_app(manager, [*ROUTES, Route("/sabotage", sabotage, methods=["POST"])])
    browser = browsers()
    await browser.post(app, "/set/a", params={"value": "1"})
    session_id = browser.session_id
    caplog.set_level(logging.INFO)  # what a deployment logs (drivers log parameters at DEBUG)
    try:
        response = await browser.post(app, "/sabotage")
    except Exception as exc:  # as a server (uvicorn) logs what escapes the app
        logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=exc)
        status = "raised " + type(exc).__name__
    else:
        status = str(response.status_code)
    finally:
        await raw.dispose()
    print(f"the sabotaged request: {status}")  # reported, not asserted
    assert caplog.text, "the store error was logged nowhere"
    assert session_id not in caplog.text
    assert "[parameters:" not in caplog.text


# --- G. nothing grows without bound ------------------------------------------------------------


@stores("memory")
async def test_the_memory_principal_index_empties_after_logins_logouts_and_expiries(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser]
) -> None:
    manager, app = processes(max_inactive_interval=60)
    store = manager.store
    assert isinstance(store, MemoryStore)
    devices = [browsers() for _ in range(200)]
    for i, device in enumerate(devices):
        path = "/login-rotating" if i % 2 else "/login"
        assert (await device.post(app, path, params={"user": f"user{i % 20}"})).status_code == 200
    for device in devices[::3]:
        assert (await device.post(app, "/invalidate")).status_code == 200
    clock.advance(61)
    for device in devices[1::3]:  # found expired by a request
        assert (await device.get(app, "/state")).json() == {"session": False}
    await manager.reap()  # the rest, by the reaper
    assert store.sessions == {}
    assert store._by_principal == {}
    assert store._deadlines == []


async def ttls(client: aioredis.Redis, *keys: str) -> list[int]:
    """The keys' PTTLs read at one instant (one MULTI: Redis's clock stands still in it)."""
    async with client.pipeline(transaction=True) as pipe:
        for key in keys:
            pipe.pttl(key)
        return [int(ttl) for ttl in await pipe.execute()]


@stores("redis")
async def test_redis_principal_sets_end_with_their_sessions(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser]
) -> None:
    manager, app = processes(max_inactive_interval=60)
    store = manager.store
    assert isinstance(store, RedisStore)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        leaving = [browsers() for _ in range(3)]
        for i, device in enumerate(leaving):
            path = "/login-rotating" if i % 2 else "/login"
            await device.post(app, path, params={"user": "leaver"})
        assert await client.exists(store.layout.principals(0) + "leaver") == 1
        for device in leaving:
            await device.post(app, "/invalidate")
        assert await client.exists(store.layout.principals(0) + "leaver") == 0

        staying = browsers()
        await staying.post(app, "/login-rotating", params={"user": "stayer"})
        session_key, principal_key = (
            store.key(staying.session_id),
            store.layout.principals(0) + "stayer",
        )
        for _ in range(3):  # the session's TTL moves on; the principal set's follows it
            set_ttl, key_ttl = await ttls(client, principal_key, session_key)
            assert 0 < set_ttl <= key_ttl
            clock.advance(50)
            assert (await staying.get(app, "/state")).json()["principal"] == "stayer"
    finally:
        await client.aclose()


@stores("redis")
async def test_a_redis_principal_set_goes_when_its_session_key_expires_by_ttl(
    processes: Process, browsers: Callable[[], Browser]
) -> None:
    manager, app = processes(store_options={"ttl_grace": 0.0}, absolute_timeout=0.05)
    store = manager.store
    assert isinstance(store, RedisStore)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        browser = browsers()
        await browser.post(app, "/login-rotating", params={"user": "ttl"})
        session_key = store.key(browser.session_id)
        principal_key = store.layout.principals(0) + "ttl"
        set_ttl, key_ttl = await ttls(client, principal_key, session_key)
        assert 0 < set_ttl <= key_ttl
        for _ in range(40):  # Redis drops the key by its TTL (~50 ms), not the reaper
            if not await client.exists(session_key):
                break
            await asyncio.sleep(0.01)
        assert await client.exists(session_key) == 0
        assert await client.exists(principal_key) == 0
    finally:
        await client.aclose()


@stores(*SHARED_KINDS)
async def test_session_locking_leaves_no_bookkeeping_behind(
    processes: Process, browsers: Callable[[], Browser]
) -> None:
    manager, app = processes(locking="session")
    sessions = manager._sessions
    assert isinstance(sessions, SharedSessions)
    busy, leaving, rotating = browsers(), browsers(), browsers()
    for browser in (busy, leaving, rotating):
        await browser.post(app, "/set/seed", params={"value": "0"})
    await asyncio.gather(
        *(busy.post(app, f"/set/k{i}", params={"value": str(i)}) for i in range(8)),
        *(busy.get(app, "/info") for _ in range(4)),
        leaving.get(app, "/info"),
        leaving.post(app, "/invalidate"),
        rotating.post(app, "/login-rotating", params={"user": "rot"}),
        rotating.get(app, "/info"),
    )
    assert len((await busy.get(app, "/info")).json()["names"]) == 9
    assert (await rotating.get(app, "/state")).json()["principal"] == "rot"
    locks = sessions.locks
    assert locks._queues == {}
    assert locks._queued == {}
    assert locks._holders == {}
    assert len(locks) == 0
    assert sessions.retired == set()
    assert manager.in_process == {}


@stores(*SHARED_KINDS)
async def test_in_process_is_empty_once_every_request_has_ended(
    processes: Process, clock: FakeClock, browsers: Callable[[], Browser]
) -> None:
    first, app = processes(max_inactive_interval=60)
    second, other = processes(max_inactive_interval=60)
    devices = [browsers() for _ in range(6)]
    for device in devices:
        await device.post(app, "/login-rotating", params={"user": "u"})
    await asyncio.gather(
        *(d.get((app, other)[i % 2], "/info") for i, d in enumerate(devices)),
        *(d.post(other, "/set/x", params={"value": "1"}) for d in devices[:3]),
        devices[4].post(app, "/invalidate"),
        devices[5].post(other, "/change-id"),
    )
    clock.advance(61)
    await devices[0].get(app, "/info")  # found expired
    await second.reap()
    for manager in (first, second):
        assert manager.in_process == {}
        sessions = manager._sessions
        assert isinstance(sessions, SharedSessions)
        assert sessions.retired == set()


# --- H. a request refused by a limit -------------------------------------------------------------


def wrapped_starlette(manager: SessionManager) -> Any:
    return SessionMiddleware(
        Starlette(routes=[*ROUTES, *BASIC_ROUTES]), secret_key=SECRET, manager=manager
    )


def wrapped_fastapi(manager: SessionManager) -> Any:
    api = FastAPI()

    @api.post("/set/{name}")
    async def set_value(name: str, value: str, session: SessionDep) -> dict[str, list[str]]:
        session.set_attribute(name, value)
        return {"names": session.get_attribute_names()}

    return SessionMiddleware(api, secret_key=SECRET, manager=manager)


@stores()
@pytest.mark.parametrize("wrap", [wrapped_starlette, wrapped_fastapi], ids=["starlette", "fastapi"])
async def test_max_active_reject_answers_503_however_the_middleware_is_mounted(
    processes: Process,
    browsers: Callable[[], Browser],
    wrap: Callable[[SessionManager], Any],
) -> None:
    manager, _ = processes(max_active_sessions=1, max_active_policy="reject")
    app = wrap(manager)
    first, second = browsers(), browsers()
    assert (await first.post(app, "/set/a", params={"value": "1"})).status_code == 200
    refused = await second.post(app, "/set/a", params={"value": "2"})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "set-cookie" not in refused.headers
    assert second.cookie is None
    assert await manager.store.count() == 1


@stores()
async def test_a_login_refused_by_the_per_principal_limit_changes_nothing(
    processes: Process, browsers: Callable[[], Browser]
) -> None:
    manager, app = processes(max_sessions_per_principal=1, per_principal_policy="reject")
    first, second, fresh = browsers(), browsers(), browsers()
    assert (await first.post(app, "/login", params={"user": "alice"})).status_code == 200
    assert (await second.post(app, "/set/cart", params={"value": "tea"})).status_code == 200
    second_id = second.session_id

    refused = await second.post(app, "/login", params={"user": "alice"})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert second.session_id == second_id
    shown = (await second.get(app, "/state")).json()
    assert shown == {"session": True, "attributes": {"cart": "tea"}, "principal": None,
                     "max_inactive_interval": 1800}  # fmt: skip
    assert [s.id for s in await manager.sessions_of("alice")] == [first.session_id]

    count = await manager.store.count()
    refused = await fresh.post(app, "/login", params={"user": "alice"})
    assert refused.status_code == 503
    assert "set-cookie" not in refused.headers
    assert fresh.cookie is None
    assert await manager.store.count() == count


@stores()
async def test_a_rotating_login_refused_by_the_per_principal_limit_keeps_the_old_id(
    processes: Process, browsers: Callable[[], Browser]
) -> None:
    manager, app = processes(max_sessions_per_principal=1, per_principal_policy="reject")
    first, second = browsers(), browsers()
    assert (await first.post(app, "/login-rotating", params={"user": "bob"})).status_code == 200
    assert (await second.post(app, "/set/cart", params={"value": "tea"})).status_code == 200
    refused = await second.post(app, "/login-rotating", params={"user": "bob"})
    assert refused.status_code == 503
    assert "set-cookie" not in refused.headers
    shown = (await second.get(app, "/state")).json()
    assert shown == {"session": True, "attributes": {"cart": "tea"}, "principal": None,
                     "max_inactive_interval": 1800}  # fmt: skip
    assert [s.id for s in await manager.sessions_of("bob")] == [first.session_id]


@stores()
async def test_a_login_refused_by_the_per_principal_limit_keeps_no_timeout_change(
    processes: Process, browsers: Callable[[], Browser]
) -> None:
    async def remembered_login(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session.max_inactive_interval = 7 * 86400  # "remember me"
        session["user"] = request.query_params["user"]
        session.principal = request.query_params["user"]
        return Response("welcome")

    routes = [*ROUTES, Route("/remembered-login", remembered_login, methods=["POST"])]
    _, app = processes(routes=routes, max_sessions_per_principal=1)
    first, second = browsers(), browsers()
    assert (await first.post(app, "/login", params={"user": "eve"})).status_code == 200
    assert (await second.post(app, "/set/cart", params={"value": "tea"})).status_code == 200
    refused = await second.post(app, "/remembered-login", params={"user": "eve"})
    assert refused.status_code == 503
    shown = (await second.get(app, "/state")).json()
    assert shown == {"session": True, "attributes": {"cart": "tea"}, "principal": None,
                     "max_inactive_interval": 1800}  # fmt: skip


# --- I. shutdown during a reaper tick ------------------------------------------------------------


@stores()
async def test_stopping_the_reaper_mid_tick_loses_and_repeats_no_destroyed_event(
    processes: Process, clock: FakeClock
) -> None:
    delivered: list[str] = []
    delivering = asyncio.Event()

    class SlowListener:
        async def session_destroyed(self, event: HttpSessionEvent) -> None:
            delivering.set()
            await asyncio.sleep(0.01)
            delivered.append(event.session.id)

    manager, _ = processes(max_inactive_interval=60, reaper_interval=0.01,
                           listeners=[SlowListener()])  # fmt: skip
    ids = []
    for _ in range(10):
        session = manager.create_session()
        ids.append(session.id)
        await manager.release(session)
    assert await manager.store.count() == 10
    clock.advance(3600)
    manager.start_reaper()
    await asyncio.wait_for(delivering.wait(), 2)
    await manager.stop_reaper()
    assert not manager.reaper_running
    assert sorted(delivered) == sorted(ids)
    assert await manager.store.count() == 0


# --- J. a copy ended or renamed by another process --------------------------------------------


@stores(*SHARED_KINDS)
@pytest.mark.parametrize("elsewhere", ["/login-rotating", "/invalidate"])
async def test_a_request_whose_session_another_process_ended_or_renamed_sends_no_cookie(
    processes: Process, browsers: Callable[[], Browser], elsewhere: str
) -> None:
    """A long request on process A holds the session while the browser's next request, on
    process B, changes its ID (or logs out) and gets its new cookie (or a deletion). A's
    response comes last: it must not delete the browser's newer cookie, and its write is
    dropped (the session it held is gone from the store)."""
    joined, go = asyncio.Event(), asyncio.Event()

    async def slow(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        joined.set()
        await go.wait()  # the other process changes the ID, or ends the session, meanwhile
        session["late"] = "write"
        return Response("done")

    routes = [*ROUTES, Route("/slow", slow, methods=["POST"])]
    _, first = processes(routes=routes)
    _, second = processes(routes=routes)
    browser = browsers()
    await browser.post(first, "/set/cart", params={"value": "tea"})
    slow_request = asyncio.create_task(browser.post(first, "/slow"))
    await asyncio.wait_for(joined.wait(), 2)
    answer = await browser.post(second, elsewhere, params={"user": "alice"})
    assert answer.status_code == 200
    cookie_after = browser.cookie
    go.set()
    late = await slow_request
    assert late.status_code == 200
    assert "set-cookie" not in late.headers
    assert browser.cookie == cookie_after
    shown = (await browser.get(second, "/state")).json()
    if elsewhere == "/login-rotating":  # the browser still holds its renamed, logged-in session
        assert shown["principal"] == "alice"
        assert shown["attributes"] == {"cart": "tea", "user": "alice"}
    else:
        assert shown == {"session": False}


# --- K. stats ----------------------------------------------------------------------------------


@stores()
async def test_max_active_is_the_most_sessions_held_at_once_not_the_number_created(
    processes: Process, clock: FakeClock
) -> None:
    manager, _ = processes(max_inactive_interval=60)
    made = []
    for _ in range(3):
        session = manager.create_session()
        await manager.release(session)
        made.append(session)
    assert (await manager.stats()).max_active == 3
    for session in made[:2]:
        joined = await manager.find(session.id)
        assert joined is not None
        await manager.invalidate(joined)
    for _ in range(2):  # five created in all, never more than three held at once
        await manager.release(manager.create_session())
    stats = await manager.stats()
    assert (stats.created, stats.active, stats.max_active) == (5, 3, 3)
