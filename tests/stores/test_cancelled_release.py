"""A request cancelled while it lets go of its session (a client that went away, a server that
cancels the app's task) still lets go of it: the share leaves the process, and the session can
idle out. Without this, a share "in use" for ever is kept alive by the keeper and never expires."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from servletsession import HttpSessionBindingEvent, SessionManager, get_session
from servletsession.context import RequestSession

from ..conftest import FakeClock, client, make_app
from .conftest import StoreFactory, stores

pytestmark = pytest.mark.anyio


class SlowListener:
    """An async attribute listener that takes its time (a database write, say)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = 0

    async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
        self.started.set()
        await asyncio.sleep(0.05)
        self.finished += 1


async def _stored_session_id(manager: SessionManager) -> str:
    session = manager.create_session()
    session_id = session.id
    await manager.release(session)
    return session_id


@stores("memory", "sqlite", "redis")
async def test_a_release_cancelled_while_its_events_settle_still_lets_go(
    store_factory: StoreFactory,
) -> None:
    clock = FakeClock()
    listener = SlowListener()
    manager = SessionManager(
        store_factory(), clock=clock, max_inactive_interval=60, listeners=[listener]
    )
    session_id = await _stored_session_id(manager)
    session = await manager.find(session_id)
    assert session is not None
    session.set_attribute("report", "ready")  # its async listener starts now
    release = asyncio.create_task(manager.release(session))
    await listener.started.wait()
    release.cancel()
    with pytest.raises(asyncio.CancelledError):
        await release
    assert session._in_flight == 0, "the cancelled request still holds the session"
    if manager.shared:
        assert session_id not in manager.in_process
    await asyncio.sleep(0.1)
    assert listener.finished == 1, "cancelling the waiter cancelled the listener"
    clock.advance(3600)
    await manager.reap()
    assert await manager.find(session_id) is None, "the session never idled out"
    await manager.close()


@stores("sqlite")
async def test_finishing_a_request_cancelled_on_its_first_session_releases_the_next(
    store_factory: StoreFactory,
) -> None:
    """A request that used two sessions (it created one after invalidating the other), and
    is cancelled while the first is released, still releases the second."""
    listener = SlowListener()
    manager = SessionManager(store_factory(), clock=FakeClock(), listeners=[listener])
    first_id = await _stored_session_id(manager)
    second_id = await _stored_session_id(manager)
    context = RequestSession(manager, None)
    for session_id in (first_id, second_id):
        context.requested_id = session_id
        await context.load()
    first, second = (visit.session for visit in context.visits)
    assert first is not None
    assert second is not None
    first.set_attribute("slow", 1)
    finish = asyncio.create_task(context.finish())
    await listener.started.wait()
    finish.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finish
    assert first._in_flight == 0
    assert second._in_flight == 0
    assert first_id not in manager.in_process
    assert second_id not in manager.in_process
    await manager.close()


@stores("sqlite", "redis")
async def test_a_request_an_anyio_scope_cancels_still_gives_back_its_session_lock(
    store_factory: StoreFactory,
) -> None:
    """anyio cancellation (a cancel scope or task group outside the middleware, as when a
    client goes away) strikes every later await again; the middleware still saves and unlocks,
    so the session's next request does not wait for the lock's lease to run out."""
    manager = SessionManager(store_factory(), locking="session", lock_timeout=4)

    async def login(request: Request) -> Response:
        get_session(request).set_attribute("user", "alice")
        return PlainTextResponse("ok")

    async def slow(request: Request) -> Response:
        get_session(request).set_attribute("n", 1)
        await asyncio.sleep(5)  # the client goes away meanwhile
        return PlainTextResponse("late")

    async def fast(request: Request) -> Response:
        return PlainTextResponse(str(get_session(request).get_attribute("user")))

    inner = make_app(manager, [Route("/login", login), Route("/slow", slow), Route("/fast", fast)])

    async def gives_up(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/slow":
            with anyio.move_on_after(0.2):
                await inner(scope, receive, send)
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await inner(scope, receive, send)

    async with client(gives_up) as browser:
        await browser.get("/login")
        assert (await browser.get("/slow")).status_code == 504
        started = time.monotonic()
        answer = await browser.get("/fast")
        waited = time.monotonic() - started
    assert answer.text == "alice"
    assert waited < 1.0, f"the next request waited {waited:.1f} s for a lock nobody held"
    await manager.close()
