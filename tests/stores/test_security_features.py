"""OWASP ASVS v5 chapter 7 features, on every store: ID rotation, timeouts, limits, principals."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servletsession import (
    HttpSessionEvent,
    SessionManager,
    SessionMiddleware,
    change_session_id,
    get_session,
)

from ..conftest import SECRET, FakeClock, make_app
from .conftest import StoreFactory, stores
from .helpers import Browser

pytestmark = pytest.mark.anyio
OTHER_KEY = "a-second-secret-key-for-rotation-0123456789"


class Destroyed:
    def __init__(self) -> None:
        self.ended: list[str | None] = []

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.ended.append(event.session.get_attribute("name"))


async def login(request: Request) -> Response:
    """The README's login: bind the principal and rotate the ID (ASVS 7.2.4)."""
    session = get_session(request)
    assert session is not None
    session.set_attribute("name", request.query_params["user"])
    session.principal = request.query_params["user"]
    change_session_id(request)
    return Response("welcome")


async def whoami(request: Request) -> Response:
    session = get_session(request, create=False)
    return JSONResponse(session.principal if session is not None else None)


ROUTES = [Route("/login", login, methods=["POST"]), Route("/whoami", whoami)]


def manager_on(make: StoreFactory, clock: FakeClock, **options: Any) -> SessionManager:
    return SessionManager(
        make(save_period=0) if make.kind != "memory" else make(), clock=clock, **options
    )  # type: ignore[attr-defined]


@stores()
async def test_dropping_a_key_invalidates_cookies_signed_only_with_it(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    manager = manager_on(store_factory, clock)
    old_app = make_app(manager, ROUTES)
    browser = Browser()
    await browser.post(old_app, "/set/a", params={"value": "1"})
    rotated = Starlette(routes=old_app.routes)
    rotated.add_middleware(SessionMiddleware, secret_key=[SECRET, OTHER_KEY], manager=manager)
    assert (await browser.get(rotated, "/get/a")).json()["session"] is True
    dropped = Starlette(routes=old_app.routes)
    dropped.add_middleware(SessionMiddleware, secret_key=[OTHER_KEY], manager=manager)
    assert (await browser.get(dropped, "/get/a")).json() == {"session": False}
    assert (await manager.stats()).bad_signatures == 1
    await browser.close()


@stores()
async def test_per_session_absolute_timeout_is_enforced_on_lookup(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    listener = Destroyed()
    manager = manager_on(store_factory, clock, max_inactive_interval=600, listeners=[listener])

    async def short(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["name"] = "short-lived"
        session.absolute_timeout = 100
        return Response("ok")

    app = make_app(manager, [Route("/short", short, methods=["POST"])])
    browser = Browser()
    await browser.post(app, "/short")
    for _ in range(3):
        clock.advance(30)
        assert (await browser.get(app, "/get/name")).json()["session"] is True
    clock.advance(11)
    assert (await browser.get(app, "/get/name")).json() == {"session": False}
    assert listener.ended == ["short-lived"]
    await browser.close()


@stores()
async def test_absolute_timeout_is_enforced_by_the_reaper(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    listener = Destroyed()
    manager = manager_on(store_factory, clock, max_inactive_interval=600, absolute_timeout=100,
                         listeners=[listener])  # fmt: skip
    browser = Browser()
    await browser.post(make_app(manager, ROUTES), "/set/name", params={"value": "abs"})
    clock.advance(101)
    assert await manager.reap() == 1
    assert listener.ended == ["abs"]
    await browser.close()


@stores()
async def test_max_active_reject_refuses_new_sessions_with_503(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    manager = manager_on(store_factory, clock, max_active_sessions=2, retry_after=9)
    app = make_app(manager, ROUTES)
    browsers = [Browser() for _ in range(3)]
    statuses = [(await b.post(app, "/set/a", params={"value": "1"})).status_code for b in browsers]
    assert statuses == [200, 200, 503]
    assert (await browsers[0].get(app, "/get/a")).json()["session"] is True
    stats = await manager.stats()
    assert (stats.rejected, stats.active) == (1, 2)
    for b in browsers:
        await b.close()


@stores()
async def test_max_active_evict_lru_ends_the_least_recently_used(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    listener = Destroyed()
    manager = manager_on(store_factory, clock, max_active_sessions=2, max_active_policy="evict_lru",
                         listeners=[listener])  # fmt: skip
    app = make_app(manager, ROUTES)
    first, second, third = Browser(), Browser(), Browser()
    await first.post(app, "/set/name", params={"value": "first"})
    clock.advance(10)
    await second.post(app, "/set/name", params={"value": "second"})
    clock.advance(10)
    await first.get(app, "/get/name")  # first is now more recent than second
    clock.advance(10)
    assert (await third.post(app, "/set/name", params={"value": "third"})).status_code == 200
    assert listener.ended == ["second"]
    assert (await first.get(app, "/get/name")).json()["session"] is True
    assert (await second.get(app, "/get/name")).json()["session"] is False
    stats = await manager.stats()
    assert (stats.evicted, stats.active) == (1, 2)
    for b in (first, second, third):
        await b.close()


@stores()
async def test_sessions_of_and_invalidate_all_keeping_the_current_one(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    listener = Destroyed()
    manager = manager_on(store_factory, clock, listeners=[listener])
    app = make_app(manager, ROUTES)
    devices = [Browser() for _ in range(3)]
    stranger = Browser()
    for device in devices:
        await device.post(app, "/login", params={"user": "ada"})
    await stranger.post(app, "/login", params={"user": "bob"})
    assert len(await manager.sessions_of("ada")) == 3
    current = next(s for s in await manager.sessions_of("ada") if s.id == devices[0].session_id)
    assert await manager.invalidate_all("ada", keep=current) == 2
    assert [(await d.get(app, "/whoami")).json() for d in devices] == ["ada", None, None]
    assert (await stranger.get(app, "/whoami")).json() == "bob"
    assert listener.ended == ["ada", "ada"]
    assert [s.id for s in await manager.sessions_of("ada")] == [devices[0].session_id]
    for b in (*devices, stranger):
        await b.close()


@stores()
async def test_the_principal_index_follows_expiry_invalidation_and_id_change(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    manager = manager_on(store_factory, clock, max_inactive_interval=60)
    app = make_app(manager, ROUTES)
    expiring, leaving, rotating = Browser(), Browser(), Browser()
    for browser in (expiring, leaving, rotating):
        await browser.post(app, "/login", params={"user": "ada"})
    await leaving.post(app, "/invalidate")
    before = rotating.session_id
    await rotating.post(app, "/change-id")
    assert sorted(s.id for s in await manager.sessions_of("ada")) == sorted(
        [expiring.session_id, rotating.session_id]
    )
    assert before not in {s.id for s in await manager.sessions_of("ada")}
    clock.advance(45)
    await rotating.get(app, "/whoami")
    clock.advance(20)
    assert await manager.reap() == 1  # the expiring one
    assert [s.id for s in await manager.sessions_of("ada")] == [rotating.session_id]
    for b in (expiring, leaving, rotating):
        await b.close()


@stores()
async def test_per_principal_limit_evict_oldest(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    listener = Destroyed()
    manager = manager_on(
        store_factory,
        clock,
        max_sessions_per_principal=2,
        per_principal_policy="evict_oldest",
        listeners=[listener],
    )
    app = make_app(manager, ROUTES)
    devices = [Browser() for _ in range(3)]
    for device in devices:
        await device.post(app, "/login", params={"user": "ada"})
        clock.advance(1)
    assert [(await d.get(app, "/whoami")).json() for d in devices] == [None, "ada", "ada"]
    assert listener.ended == ["ada"]
    for b in devices:
        await b.close()


@stores()
async def test_per_principal_limit_reject(store_factory: StoreFactory, clock: FakeClock) -> None:
    manager = manager_on(store_factory, clock, max_sessions_per_principal=1)
    app = make_app(manager, ROUTES)
    first, second = Browser(), Browser()
    assert (await first.post(app, "/login", params={"user": "ada"})).status_code == 200
    refused = await second.post(app, "/login", params={"user": "ada"})
    assert refused.status_code == 503
    assert "retry-after" in refused.headers
    assert (await first.get(app, "/whoami")).json() == "ada"
    assert len(await manager.sessions_of("ada")) == 1
    for b in (first, second):
        await b.close()


async def test_cookie_rejected_hook_gets_the_reason_but_never_the_value(clock: FakeClock) -> None:
    seen: list[Any] = []

    class Watch:
        async def cookie_rejected(self, event: Any) -> None:
            seen.append((event.reason, event.client, event.path, repr(event)))

    manager = SessionManager(clock=clock, listeners=[Watch()])
    app = make_app(manager, ROUTES)
    browser = Browser()
    browser.cookie = "A" * 43 + "." + "B" * 43
    await browser.get(app, "/whoami")
    await asyncio.sleep(0)
    assert seen[0][:3] == ("bad_signature", "127.0.0.1", "/whoami")
    assert "A" * 20 not in seen[0][3]
    await browser.close()
