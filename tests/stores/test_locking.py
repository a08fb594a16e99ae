"""``locking="session"``: a lock per request with its own token, a lease renewed while its holder
runs, a websocket that holds the lock for its handshake only, and no stale lock that outlives one
lease."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from servletsession import SessionManager, get_session
from servletsession.persistence import Visit
from servletsession.shared import SharedSessions
from servletsession.stores import SQLStore

from ..conftest import FakeClock, cookie_header, make_app
from .conftest import SHARED_KINDS, StoreFactory, stores
from .helpers import Browser

pytestmark = pytest.mark.anyio


async def slow_increment(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    count = session.get_attribute("count", 0)
    await asyncio.sleep(float(request.query_params.get("wait", "0")))
    session["count"] = count + 1
    return PlainTextResponse(str(count + 1))


ROUTES = [Route("/incr", slow_increment, methods=["POST"])]


@stores(*SHARED_KINDS)
async def test_a_request_longer_than_its_lease_keeps_its_lock(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    """The lease (lock_timeout / 2 = 1.5 s) is renewed while the holder runs: a 2 s request and
    a second one queued behind it on another process lose no increment."""
    managers = [
        SessionManager(store_factory(), clock=clock, locking="session", lock_timeout=3.0)
        for _ in range(2)
    ]
    for manager in managers:
        manager.start_reaper()  # starts the keeper that renews leases
    apps = [make_app(manager, ROUTES) for manager in managers]
    browser = Browser()
    await browser.post(apps[0], "/incr")
    other = Browser()
    other.cookie = browser.cookie
    slow, fast = await asyncio.gather(
        browser.post(apps[0], "/incr", params={"wait": "2.0"}),
        _after(0.05, other.post(apps[1], "/incr")),
    )
    assert (slow.status_code, fast.status_code) == (200, 200)
    assert sorted([slow.text, fast.text]) == ["2", "3"]  # one after the other, none lost
    assert (await browser.post(apps[1], "/incr")).text == "4"
    for manager in managers:
        assert isinstance(manager._sessions, SharedSessions)
        assert len(manager._sessions.locks) == 0  # no entry outlives its request
        await manager.close()
    await browser.close()
    await other.close()


async def _after(delay: float, work: object) -> object:
    await asyncio.sleep(delay)
    return await work  # type: ignore[misc]


@stores(*SHARED_KINDS)
async def test_a_lock_left_behind_blocks_its_session_for_one_lease_at_most(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    """A process that took the lock and died (or whose release was lost in an outage) leaves the
    lock in the store: the next request waits at most one lease, not ``3 x lock_timeout``."""
    store = store_factory()
    manager = SessionManager(store, clock=clock, locking="session", lock_timeout=2.0)
    app = make_app(manager, ROUTES)
    browser = Browser()
    await browser.post(app, "/incr")
    dead = SessionManager(store_factory(), clock=clock, locking="session", lock_timeout=2.0)
    visit = Visit()
    assert await dead.join(browser.session_id, visit) is not None  # holds the lock; never released
    started = time.monotonic()
    clock.advance(1.01)  # the lease (1 s) of the dead holder has run out by the store's clock
    response = await browser.post(app, "/incr")
    assert response.status_code == 200
    assert response.text == "2"
    # One lease at most (1 s: Redis counts it in real time, SQL by the clock), never the old
    # 3 x lock_timeout (6 s), and within lock_timeout: no 503.
    assert time.monotonic() - started < 1.5
    await browser.close()
    await manager.close()
    await dead.store.close()


@stores(*SHARED_KINDS)
async def test_a_finishing_request_never_releases_another_requests_lock(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    store = store_factory()
    manager = SessionManager(store, clock=clock, locking="session", lock_timeout=1.0)
    app = make_app(manager, ROUTES)
    browser = Browser()
    await browser.post(app, "/incr")
    first, second = Visit(), Visit()
    assert await manager.join(browser.session_id, first) is not None
    waiting = asyncio.ensure_future(manager.join(browser.session_id, second))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # queued behind the first request
    await manager.release(first)
    assert await waiting is not None  # the second now holds its own lock
    other = SessionManager(store_factory(), clock=clock, locking="session", lock_timeout=0.3)
    refused = await browser.post(make_app(other, ROUTES), "/incr")
    assert refused.status_code == 503  # the first's release did not free the second's lock
    assert "retry-after" in refused.headers
    await manager.release(second)
    assert (await browser.post(make_app(other, ROUTES), "/incr")).status_code == 200
    await browser.close()
    await manager.close()
    await other.close()


def test_a_websocket_holds_the_lock_for_its_handshake_only(
    clock: FakeClock, tmp_path: Path
) -> None:
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    manager = SessionManager(SQLStore(f"sqlite:///{tmp_path}/ws.db"), clock=clock,
                             locking="session", lock_timeout=0.5)  # fmt: skip
    app = make_app(manager, [*ROUTES, WebSocketRoute("/ws", chat)])
    with TestClient(app, base_url="https://testserver") as http:
        http.post("/incr")
        cookie = cookie_header(http.cookies["sessionid"])
        with http.websocket_connect("/ws", headers=cookie) as socket:
            socket.send_text("hi")
            assert socket.receive_text() == "hi"
            started = time.monotonic()
            response = http.post("/incr", headers=cookie)  # the socket is open meanwhile
            assert response.status_code == 200
            assert response.text == "2"
            assert time.monotonic() - started < 0.5  # it did not wait for the socket's lock
