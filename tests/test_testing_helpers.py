"""servletsession.testing: a session given to a test client, read back, and ended by time.

Sync helpers drive Starlette's TestClient (the app on a portal thread), async ones an httpx
AsyncClient over ASGITransport (the app on the test's loop); both on Starlette and FastAPI, on
MemoryStore and on shared stores against real servers (see tests/stores/conftest.py).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from servletsession import (
    HttpSessionEvent,
    SessionLimitError,
    SessionManager,
    SessionMiddleware,
    SessionStore,
    change_session_id,
    get_session,
)
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore
from servletsession.testing import (
    ManualClock,
    aexpire_due,
    alogin,
    asession_of,
    expire_due,
    find_middleware,
    login,
    session_of,
)

from .conftest import SECRET
from .stores.conftest import REDIS_URL, StoreFactory, _clean, require, store_factory, stores

__all__ = ["store_factory"]  # the fixture, imported for the async store tests

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
BASE = "https://testserver"
Framework = Literal["starlette", "fastapi"]


# --- the app under test ---------------------------------------------------------------------------


async def me(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse(None)
    return JSONResponse(
        {"attributes": dict(session), "principal": session.principal, "is_new": session.is_new}
    )


async def add(request: Request) -> Response:
    """Change the session, then its ID (as a login does): the client must follow."""
    session = get_session(request)
    assert session is not None
    session["items"] = [*session.get("items", []), request.query_params["item"]]
    change_session_id(request)
    return Response("added")


async def logout(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is not None:
        session.invalidate()
    return Response("bye")


ROUTES: list[BaseRoute] = [
    Route("/me", me),
    Route("/add", add, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]


def make_app(framework: Framework, manager: SessionManager, **options: Any) -> Any:
    app: Starlette = FastAPI(routes=ROUTES) if framework == "fastapi" else Starlette(routes=ROUTES)
    app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager, **options)
    return app


class Recorder:
    """What the listeners saw: created sessions, added attributes, destroyed sessions' items."""

    def __init__(self) -> None:
        self.created = 0
        self.added: list[str] = []
        self.destroyed: list[Any] = []

    def session_created(self, event: HttpSessionEvent) -> None:
        self.created += 1

    def attribute_added(self, event: Any) -> None:
        self.added.append(event.name)

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.destroyed.append(event.session.get_attribute("items"))


def sync_store(kind: str, tmp_path: Path, tag: str) -> SessionStore | None:
    """A store for a TestClient test (``None``: the manager's own MemoryStore). It is used and
    closed on the client's portal loop only."""
    if kind == "memory":
        return None
    anyio.run(require, kind)  # skips when the server is unreachable
    if kind == "sqlite":
        return SQLStore(f"sqlite+aiosqlite:///{tmp_path}/sessions.db")
    return RedisStore(REDIS_URL, prefix=f"sstest:{tag}:")


@contextmanager
def app_client(
    kind: str,
    tmp_path: Path,
    framework: Framework = "starlette",
    middleware: dict[str, Any] | None = None,
    **manager_options: Any,
) -> Iterator[tuple[TestClient, SessionManager]]:
    tag = uuid.uuid4().hex[:10]
    manager = SessionManager(sync_store(kind, tmp_path, tag), **manager_options)
    app = make_app(framework, manager, **(middleware or {}))
    with TestClient(app, base_url=BASE) as http:
        try:
            yield http, manager
        finally:
            assert http.portal is not None
            http.portal.call(manager.close)
            http.portal.call(_clean, kind, tag)


SYNC_KINDS = pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
FRAMEWORKS = pytest.mark.parametrize("framework", ["starlette", "fastapi"])


# --- login: a session with attributes and a principal, in one call --------------------------------


@FRAMEWORKS
@SYNC_KINDS
def test_login_gives_a_test_client_a_session_its_next_request_joins(
    kind: str, framework: Framework, tmp_path: Path
) -> None:
    clock = ManualClock()
    with app_client(kind, tmp_path, framework, clock=clock) as (http, manager):
        session = login(http, attributes={"items": ["tea"]}, principal="ada")
        response = http.get("/me")
        found = http.portal.call(manager.sessions_of, "ada")  # type: ignore[union-attr]
    assert response.json() == {
        "attributes": {"items": ["tea"]},
        "principal": "ada",
        "is_new": False,
    }
    assert [s.id for s in found] == [session.id]


@stores("memory", "sqlite", "redis", "postgresql")
@FRAMEWORKS
async def test_alogin_gives_an_async_client_a_session_its_next_request_joins(
    store_factory: StoreFactory, framework: Framework
) -> None:
    manager = SessionManager(store_factory(), clock=ManualClock())
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app(framework, manager)), base_url=BASE
    ) as http:
        session = await alogin(http, attributes={"items": ["tea"]}, principal="ada")
        response = await http.get("/me")
    assert response.json() == {
        "attributes": {"items": ["tea"]},
        "principal": "ada",
        "is_new": False,
    }
    assert [s.id for s in await manager.sessions_of("ada")] == [session.id]
    await manager.close()


def test_login_fires_the_listeners_a_request_creating_the_session_would(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    with app_client("memory", tmp_path, listeners=[recorder]) as (http, _):
        login(http, attributes={"items": [], "theme": "dark"})
    assert recorder.created == 1
    assert recorder.added == ["items", "theme"]


@SYNC_KINDS
def test_login_attributes_have_dict_semantics_none_is_kept(kind: str, tmp_path: Path) -> None:
    with app_client(kind, tmp_path, clock=ManualClock()) as (http, _):
        login(http, attributes={"items": None, "n": 0})
        assert http.get("/me").json()["attributes"] == {"items": None, "n": 0}


def test_login_without_a_portal_runs_on_a_loop_of_its_own() -> None:
    manager = SessionManager(clock=ManualClock())
    http = TestClient(make_app("starlette", manager), base_url=BASE)  # no `with`: no portal
    login(http, attributes={"items": ["tea"]})
    assert http.get("/me").json()["attributes"] == {"items": ["tea"]}


async def test_login_replaces_the_session_cookie_the_client_had(manager: SessionManager) -> None:
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app("starlette", manager)), base_url=BASE
    ) as http:
        await http.post("/add", params={"item": "old"})  # a cookie from the app
        http.cookies.set("sessionid", "stale", domain="testserver")  # and one set by hand
        await alogin(http, attributes={"items": ["new"]})
        assert len([c for c in http.cookies.jar if c.name == "sessionid"]) == 1
        assert (await http.get("/me")).json()["attributes"] == {"items": ["new"]}


@stores("sqlite")
async def test_a_value_the_store_cannot_hold_leaves_no_session_behind(
    store_factory: StoreFactory,
) -> None:
    recorder = Recorder()
    manager = SessionManager(store_factory(), clock=ManualClock(), listeners=[recorder])
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app("starlette", manager)), base_url=BASE
    ) as http:
        with pytest.raises(TypeError, match="bad"):
            await alogin(http, attributes={"bad": object()})
        assert (await manager.stats()).active == 0
        assert recorder.created == 1
        assert len(recorder.destroyed) == 1  # created and destroyed pair up
        assert "sessionid" not in http.cookies
    await manager.close()


@stores("memory", "redis")
async def test_a_limit_refuses_a_login_as_it_would_refuse_the_request(
    store_factory: StoreFactory,
) -> None:
    manager = SessionManager(store_factory(), clock=ManualClock(), max_sessions_per_principal=1)
    app = make_app("starlette", manager)
    async with (
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as first,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as second,
    ):
        kept = await alogin(first, principal="ada")
        with pytest.raises(SessionLimitError):
            await alogin(second, principal="ada")
        assert [s.id for s in await manager.sessions_of("ada")] == [kept.id]
        assert (await second.get("/me")).json() is None
    await manager.close()


@stores("memory", "redis")
async def test_concurrent_logins_of_one_principal_are_all_found(
    store_factory: StoreFactory,
) -> None:
    manager = SessionManager(store_factory(), clock=ManualClock())
    app = make_app("starlette", manager)
    clients = [
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) for _ in range(5)
    ]
    sessions = await asyncio.gather(*(alogin(c, principal="ada") for c in clients))
    answers = await asyncio.gather(*(c.get("/me") for c in clients))
    assert all(r.json()["principal"] == "ada" for r in answers)
    assert {s.id for s in await manager.sessions_of("ada")} == {s.id for s in sessions}
    for c in clients:
        await c.aclose()
    await manager.close()


# --- session_of: the client's session, read back after requests -----------------------------------


@SYNC_KINDS
def test_session_of_follows_the_client_across_an_id_change(kind: str, tmp_path: Path) -> None:
    with app_client(kind, tmp_path, clock=ManualClock()) as (http, _):
        first = login(http, attributes={"items": ["tea"]}).id
        http.post("/add", params={"item": "milk"})  # changes the ID
        session = session_of(http)
    assert session is not None
    assert session.id != first
    assert session["items"] == ["tea", "milk"]


@stores("memory", "sqlite", "redis")
async def test_asession_of_follows_the_client_across_an_id_change(
    store_factory: StoreFactory,
) -> None:
    manager = SessionManager(store_factory(), clock=ManualClock())
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app("fastapi", manager)), base_url=BASE
    ) as http:
        first = (await alogin(http, principal="ada")).id
        await http.post("/add", params={"item": "milk"})
        session = await asession_of(http)
    assert session is not None
    assert session.id != first
    assert session.principal == "ada"
    assert session["items"] == ["milk"]
    await manager.close()


async def test_session_of_is_none_without_a_session_and_after_logout(
    manager: SessionManager,
) -> None:
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app("starlette", manager)), base_url=BASE
    ) as http:
        assert await asession_of(http) is None
        await alogin(http)
        await http.post("/logout")
        assert await asession_of(http) is None


async def test_session_of_ignores_a_cookie_the_middleware_did_not_sign(
    manager: SessionManager,
) -> None:
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app("starlette", manager)), base_url=BASE
    ) as http:
        session = await alogin(http)
        http.cookies.clear()
        http.cookies.set("sessionid", f"{session.id}.{'A' * 43}")  # its ID, a wrong signature
        assert await asession_of(http) is None
        assert (await http.get("/me")).json() is None  # the middleware refuses it too


@stores("memory", "sqlite")
async def test_session_of_is_no_access(store_factory: StoreFactory) -> None:
    clock = ManualClock()
    manager = SessionManager(store_factory(save_period=0), clock=clock, max_inactive_interval=60)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app("starlette", manager)), base_url=BASE
    ) as http:
        session = await alogin(http)
        clock.advance(50)
        seen = await asession_of(http)
        assert seen is not None
        assert seen.last_accessed_time == session.creation_time
        clock.advance(11)  # 61 s since the login: looking at it did not keep it alive
        assert await aexpire_due(http) == 1
    await manager.close()


# --- time: sessions idle out ----------------------------------------------------------------------


@SYNC_KINDS
def test_advancing_the_clock_then_expire_due_fires_session_destroyed(
    kind: str, tmp_path: Path
) -> None:
    clock, recorder = ManualClock(), Recorder()
    options: dict[str, Any] = {"clock": clock, "max_inactive_interval": 60, "listeners": [recorder]}
    with app_client(kind, tmp_path, **options) as (http, _):
        login(http, attributes={"items": ["tea"]})
        clock.advance(59)
        assert expire_due(http) == 0
        clock.advance(60 * 0.1 + 2)  # past the deadline, and a shared store's save_period pad
        assert expire_due(http) == 1
        assert session_of(http) is None
    assert recorder.destroyed == [["tea"]]


@stores("memory", "sqlite", "redis")
async def test_a_request_after_the_deadline_gets_no_session_without_a_reaper_tick(
    store_factory: StoreFactory,
) -> None:
    clock, recorder = ManualClock(), Recorder()
    manager = SessionManager(store_factory(), clock=clock, max_inactive_interval=60,
                             listeners=[recorder])  # fmt: skip
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=make_app("starlette", manager)), base_url=BASE
    ) as http:
        await alogin(http, attributes={"items": ["tea"]})
        clock.advance(67)
        assert await asession_of(http) is not None  # looking ends nothing
        assert (await http.get("/me")).json() is None
        assert await aexpire_due(http) == 0
    assert recorder.destroyed == [["tea"]]
    await manager.close()


def test_manual_clock_starts_now_and_only_moves_forward() -> None:
    import time

    before = time.time()
    clock = ManualClock()
    assert before <= clock() <= time.time()
    assert ManualClock(100).advance(5) == 105 == ManualClock(105)()
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)


# --- header and composite modes -------------------------------------------------------------------


async def test_header_mode_login_and_the_client_follows_the_id_header(
    manager: SessionManager,
) -> None:
    app = make_app("starlette", manager, id_resolver="header")
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        first = (await alogin(http, attributes={"items": []})).id
        assert http.headers["X-Auth-Token"] == find_middleware(app).signed_id(first)
        await http.post("/add", params={"item": "tea"})  # a new ID comes back in the header
        session = await asession_of(http)
        assert session is not None
        assert session.id != first
        assert (await http.get("/me")).json()["attributes"] == {"items": ["tea"]}
        await http.post("/logout")  # the header comes back empty: the client drops it
        assert "X-Auth-Token" not in http.headers
        assert await asession_of(http) is None


@SYNC_KINDS
def test_a_test_client_follows_the_id_header_too(kind: str, tmp_path: Path) -> None:
    header_mode = {"id_resolver": "header"}
    with app_client(kind, tmp_path, "fastapi", header_mode, clock=ManualClock()) as (http, _):
        first = login(http, principal="ada").id
        http.post("/add", params={"item": "tea"})
        session = session_of(http)
        assert session is not None
        assert session.id != first
        assert session.principal == "ada"
        http.post("/logout")
        assert "X-Auth-Token" not in http.headers
        assert http.get("/me").json() is None


def test_composite_mode_login_by_cookie_or_by_header(tmp_path: Path) -> None:
    manager = SessionManager(clock=ManualClock())
    app = make_app("starlette", manager, id_resolver="composite")
    with TestClient(app, base_url=BASE) as http:
        by_header = login(http, attributes={"items": ["h"]}, via="header")
        assert "sessionid" not in http.cookies
        assert http.get("/me").json()["attributes"] == {"items": ["h"]}
        by_cookie = login(http, attributes={"items": ["c"]})  # the cookie, by default
        assert "X-Auth-Token" not in http.headers  # else the header would win
        assert http.get("/me").json()["attributes"] == {"items": ["c"]}
        seen = session_of(http)
    assert seen is not None
    assert seen.id == by_cookie.id != by_header.id


def test_via_a_transport_the_middleware_does_not_read_is_refused(tmp_path: Path) -> None:
    with (
        app_client("memory", tmp_path) as (http, _),
        pytest.raises(ValueError, match="reads no ID header"),
    ):
        login(http, via="header")


# --- finding the middleware, and clear errors -----------------------------------------------------


def test_a_bare_asgi_app_wrapped_by_the_middleware_is_found() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        response = await me(Request(scope, receive))
        await response(scope, receive, send)

    manager = SessionManager(clock=ManualClock())
    app = SessionMiddleware(bare, secret_key=SECRET, manager=manager)
    http = TestClient(app, base_url=BASE)  # no lifespan: the bare app speaks http only
    login(http, principal="ada")
    assert http.get("/").json()["principal"] == "ada"
    assert find_middleware(app) is app


def test_a_mounted_app_is_named_with_app() -> None:
    manager = SessionManager(clock=ManualClock())
    inner = make_app("starlette", manager)
    outer = Starlette(routes=[Mount("/", app=inner)])
    with TestClient(outer, base_url=BASE) as http:
        with pytest.raises(LookupError, match="no SessionMiddleware"):
            login(http)
        login(http, attributes={"items": ["x"]}, app=inner)
        assert http.get("/me").json()["attributes"] == {"items": ["x"]}


def test_an_app_without_the_middleware_is_a_clear_error() -> None:
    with (
        TestClient(Starlette(routes=ROUTES)) as http,
        pytest.raises(
            LookupError, match=r"no SessionMiddleware in the middleware stack of Starlette"
        ),
    ):
        login(http)


def test_two_session_middlewares_are_a_clear_error() -> None:
    app = make_app("starlette", SessionManager())
    app.add_middleware(SessionMiddleware, secret_key=SECRET, cookie_name="other")
    with pytest.raises(LookupError, match="2 SessionMiddleware layers"):
        find_middleware(app)


def test_a_secure_cookie_over_http_is_refused_before_a_session_is_made() -> None:
    manager = SessionManager(clock=ManualClock())
    with TestClient(make_app("starlette", manager)) as http:  # http://testserver
        with pytest.raises(ValueError, match=r"Secure .* https base_url"):
            login(http)
        assert http.portal is not None
        assert http.portal.call(manager.stats).created == 0


def test_secure_false_works_over_http() -> None:
    manager = SessionManager(clock=ManualClock())
    with TestClient(make_app("starlette", manager, secure=False)) as http:
        login(http, principal="ada")
        assert http.get("/me").json()["principal"] == "ada"


def test_a_cookie_domain_the_base_url_is_outside_of_is_a_clear_error() -> None:
    manager = SessionManager(clock=ManualClock())
    app = make_app("starlette", manager, domain="example.com")
    with (
        TestClient(app, base_url=BASE) as http,
        pytest.raises(ValueError, match=r"Domain=example\.com"),
    ):
        login(http)
    with TestClient(app, base_url="https://www.example.com") as http:
        login(http, principal="ada")
        assert http.get("/me").json()["principal"] == "ada"


async def test_the_wrong_kind_of_client_says_which_helper_to_use(
    manager: SessionManager,
) -> None:
    app = make_app("starlette", manager)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as http:
        with pytest.raises(TypeError, match=r"await alogin\(client\)"):
            login(http)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"await asession_of\(client\)"):
            session_of(http)  # type: ignore[arg-type]
    with TestClient(app, base_url=BASE) as sync:
        with pytest.raises(TypeError, match=r"use `login\(client\)`"):
            await alogin(sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"use `expire_due\(client\)`"):
            await aexpire_due(sync)  # type: ignore[arg-type]
    async with httpx2.AsyncClient(base_url=BASE) as remote:
        with pytest.raises(TypeError, match="pass app="):
            await alogin(remote)


# --- the documentation's examples run -------------------------------------------------------------


def test_the_testing_page_examples_pass(tmp_path: Path) -> None:
    """docs/testing.md's python blocks, in order, are one test module: run it with pytest."""
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) >= 4
    (tmp_path / "test_docs_testing.py").write_text("\n\n".join(blocks), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = len(re.findall(r"^(?:async )?def test_", "\n".join(blocks), flags=re.MULTILINE))
    assert re.search(rf"^{tests} passed", result.stdout, flags=re.MULTILINE), result.stdout
