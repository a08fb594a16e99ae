"""The same app and routes under each session middleware: the contenders of every scenario.

Routes: ``/rw`` reads a counter from the session and writes it back incremented; ``/r`` only
reads it; ``/plain`` never touches the session. Each contender gives the route its own way of
reaching the session.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.sessions import SessionMiddleware as StarletteCookieSessions
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

SECRET = secrets.token_urlsafe(32)
Access = Callable[[Request], Awaitable[Any]]


@dataclass
class Contender:
    name: str
    app: Starlette
    close: Callable[[], Awaitable[None]] | None = None


def _app(access: Access | None) -> Starlette:
    async def read_write(request: Request) -> Response:
        if access is None:
            return PlainTextResponse("0")
        session = await access(request)
        count = session.get("n", 0) + 1
        session["n"] = count
        return PlainTextResponse(str(count))

    async def read_only(request: Request) -> Response:
        if access is None:
            return PlainTextResponse("0")
        session = await access(request)
        return PlainTextResponse(str(session.get("n", 0)))

    async def plain(request: Request) -> Response:
        return PlainTextResponse("plain")

    return Starlette(
        routes=[Route("/rw", read_write), Route("/r", read_only), Route("/plain", plain)]
    )


def bare() -> Contender:
    return Contender("bare Starlette", _app(None))


def starlette_cookie() -> Contender:
    async def access(request: Request) -> Any:
        return request.session

    app = _app(access)
    app.add_middleware(StarletteCookieSessions, secret_key=SECRET)
    return Contender("Starlette SessionMiddleware", app)


def starsessions(redis_client: Any = None) -> Contender:
    """starsessions with its ``InMemoryStore``, or its ``RedisStore`` on ``redis_client``."""
    from starsessions import InMemoryStore, SessionMiddleware, load_session

    async def access(request: Request) -> Any:
        await load_session(request)
        return request.session

    store_kind = "memory" if redis_client is None else "redis"
    if redis_client is None:
        store: Any = InMemoryStore()
    else:
        from starsessions.stores.redis import RedisStore

        store = RedisStore(connection=redis_client, prefix="bench-starsessions:")
    app = _app(access)
    app.add_middleware(SessionMiddleware, store=store, cookie_https_only=False)
    return Contender(
        f"starsessions {'InMemoryStore' if store_kind == 'memory' else 'RedisStore'}", app
    )


def fastsession() -> Contender:
    from fastsession import FastSessionMiddleware, MemoryStore

    async def access(request: Request) -> Any:
        return request.state.session.get_session()

    app = _app(access)
    app.add_middleware(FastSessionMiddleware, secret_key=SECRET, store=MemoryStore(), secure=False)
    return Contender("FastSession", app)


def servletsession(
    store: Any = None, label: str = "MemoryStore", **manager_options: Any
) -> Contender:
    from servletsession import SessionManager, SessionMiddleware, get_session

    async def access(request: Request) -> Any:
        return get_session(request)

    manager = SessionManager(store, **manager_options)
    app = _app(access)
    app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager)
    return Contender(f"servletsession {label}", app, manager.close)
