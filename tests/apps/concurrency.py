"""The app each worker of the concurrency tests runs: ``uvicorn tests.apps.concurrency:app``.

Configured by environment: ``SS_STORE_URL`` (a Redis or PostgreSQL URL), ``SS_PREFIX`` (keys or
tables of this test run), ``SS_SECRET``, and the policy under test: ``SS_LOCKING`` (``none`` or
``session``), ``SS_LOCK_TIMEOUT`` (seconds), ``SS_SAVE_PERIOD`` (seconds, the stores' touch
throttle).

``GET /_inflight`` says how many requests are inside a deliberately slow handler right now, so
that a test knows a slow request holds its session before it acts on another worker.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Literal, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from servletsession import SessionManager, SessionMiddleware, change_session_id, get_session
from servletsession.session import HttpSession
from servletsession.stores.base import SessionStore
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

_in_flight = 0


async def _slowly(seconds: float) -> None:
    """Sleep inside a handler, counted by ``/_inflight``."""
    global _in_flight
    if seconds <= 0:
        return
    _in_flight += 1
    try:
        await asyncio.sleep(seconds)
    finally:
        _in_flight -= 1


def _seconds(request: Request, name: str) -> float:
    return float(request.query_params.get(name, "0"))


def _attributes(session: HttpSession) -> dict[str, object]:
    return {name: session.get_attribute(name) for name in session.get_attribute_names()}


async def read(request: Request) -> Response:
    """The session's attributes (``null`` without a session), after ``wait`` seconds.

    ``create=1`` asks for the session as a route needing one does: a request whose session was
    lost then gets a new one, and a new cookie."""
    create = request.query_params.get("create") == "1"
    session = get_session(request, create=create)
    await _slowly(_seconds(request, "wait"))
    if session is None or not session.get_attribute_names():
        return JSONResponse(None if session is None else {})
    return JSONResponse(_attributes(session))


async def set_values(request: Request) -> Response:
    """Set every query parameter but ``wait`` as an attribute, after ``wait`` seconds."""
    session = get_session(request)
    assert session is not None
    await _slowly(_seconds(request, "wait"))
    for name, value in request.query_params.items():
        if name != "wait":
            session.set_attribute(name, value)
    return PlainTextResponse("ok")


async def increment(request: Request) -> Response:
    """Add one to the counter ``name`` (after ``wait`` seconds). With ``stream=S`` the response
    streams for S seconds in ``chunks`` parts and adds one more just before its last chunk: a
    request of two increments, one of them while its body streams."""
    session = get_session(request)
    assert session is not None
    name = request.path_params["name"]
    await _slowly(_seconds(request, "wait"))
    count = int(session.get_attribute(name, 0)) + 1
    session.set_attribute(name, count)
    stream = _seconds(request, "stream")
    if stream <= 0:
        return PlainTextResponse(str(count))
    chunks = max(1, int(request.query_params.get("chunks", "6")))

    async def body() -> AsyncIterator[bytes]:
        yield f"{count}\n".encode()
        for _ in range(chunks):
            await _slowly(stream / chunks)
            yield b".\n"
        last = int(session.get_attribute(name, 0)) + 1
        session.set_attribute(name, last)
        yield f"{last}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


async def invalidate(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is not None:
        session.invalidate()
    return JSONResponse(session is not None)


async def invalidate_all(request: Request) -> Response:
    """Log a user out everywhere: ``manager.invalidate_all(user)``, from any request."""
    return JSONResponse(await manager.invalidate_all(request.query_params["user"]))


async def login(request: Request) -> Response:
    """The README's login: remember the user, bind the principal, rotate the ID."""
    session = get_session(request)
    assert session is not None
    user = request.query_params["user"]
    session.set_attribute("user", user)
    session.principal = user
    change_session_id(request)
    return PlainTextResponse("welcome")


async def new_id(request: Request) -> Response:
    if get_session(request, create=False) is None:
        return PlainTextResponse("no session", status_code=401)
    change_session_id(request)
    return PlainTextResponse("changed")


async def password_changed(request: Request) -> Response:
    """The README's password change, in one request: a new ID for this device, then every other
    session of the user ends."""
    session = get_session(request, create=False)
    if session is None or session.principal is None:
        return PlainTextResponse("not logged in", status_code=401)
    change_session_id(request)
    ended = await manager.invalidate_all(session.principal, keep=get_session(request))
    return JSONResponse({"ended": ended})


async def in_flight(request: Request) -> Response:
    return JSONResponse(_in_flight)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


url = os.environ["SS_STORE_URL"]
prefix = os.environ["SS_PREFIX"]
save_period = float(os.environ.get("SS_SAVE_PERIOD", "0"))
store: SessionStore = (
    RedisStore(url, prefix=prefix, save_period=save_period)
    if url.startswith("redis")
    else SQLStore(url, table_prefix=prefix, save_period=save_period)
)
manager = SessionManager(
    store,
    max_inactive_interval=600,
    locking=cast(Literal["none", "session"], os.environ.get("SS_LOCKING", "none")),
    lock_timeout=float(os.environ.get("SS_LOCK_TIMEOUT", "10")),
    retry_after=1,
)
app = Starlette(
    routes=[
        Route("/read", read),
        Route("/set", set_values, methods=["POST"]),
        Route("/incr/{name}", increment, methods=["POST"]),
        Route("/invalidate", invalidate, methods=["POST"]),
        Route("/invalidate-all", invalidate_all, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/change-id", new_id, methods=["POST"]),
        Route("/password-change", password_changed, methods=["POST"]),
        Route("/_inflight", in_flight),
        Route("/_health", health),
    ]
)
app.state.session_manager = manager
app.add_middleware(SessionMiddleware, secret_key=os.environ["SS_SECRET"], manager=manager)
