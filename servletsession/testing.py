"""Test helpers: give a test client a session, read a client's session back, move time.

What Django's test client offers as ``client.force_login()`` and ``client.session``, for
Starlette's ``TestClient`` (sync: `login`, `session_of`, `expire_due`) and for an
``httpx.AsyncClient`` over ``ASGITransport`` (async: `alogin`, `asession_of`, `aexpire_due`),
on every store; and `ManualClock`, the time a test controls.

A session is made the way a request makes one: created, given its attributes and principal,
written, released — so listeners fire, limits apply and a shared store holds it — without a route
for it. It is made on the event loop the app runs on (the ``TestClient``'s portal thread, or the
test's own loop for an ``AsyncClient``), because a ``MemoryStore``'s live sessions, a store's
connections and async listeners all belong to that loop. The client then carries the signed ID the
middleware would have sent: a cookie in its jar (``Secure`` kept, so an ``https://`` ``base_url``
is needed unless the app sets ``secure=False``), or a default header in header mode.

Nothing here is imported by the rest of the package; ``httpx`` and ``anyio`` are imported when a
helper runs, so importing this module costs no more than importing ``servletsession``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import SessionLimitError, StoreUnavailableError
from .middleware import SessionMiddleware
from .persistence import Visit
from .testing_client import Via, plan, present, presented_id

if TYPE_CHECKING:
    import httpx2
    from starlette.testclient import TestClient

    from .manager import SessionManager
    from .session import HttpSession

__all__ = [
    "ManualClock",
    "aexpire_due",
    "alogin",
    "asession_of",
    "expire_due",
    "find_middleware",
    "login",
    "session_of",
]

T = TypeVar("T")
_MAX_DEPTH = 100  # middleware layers walked before giving up (a cycle, or not an ASGI chain)


class ManualClock:
    """Time that moves only when the test says so: ``SessionManager(clock=ManualClock())``.

    ``start`` is seconds since the epoch (default: now). Every deadline — idle timeout, absolute
    timeout, a shared store's expiry — is measured with the manager's clock, so
    ``clock.advance(max_inactive_interval + 1)`` makes a session idle out without waiting (on a
    shared store, advance past its ``min(save_period, 10 %)`` slack too): the next request
    carrying it gets no session (its ``session_destroyed`` fires then), and `expire_due` ends those
    nobody asks for again, as the background reaper would.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds``; return the new time."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance({seconds}): time only moves forward")
        self._now += seconds
        return self._now

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"


def find_middleware(app: object) -> SessionMiddleware:
    """The one ``SessionMiddleware`` in ``app``'s middleware chain (``app`` itself if it is one).

    Starlette and FastAPI build their middleware stack on the first request; it is built here if
    it is not yet, and the app then uses that very stack (so middleware can no longer be added).
    Only the chain of ``.app`` attributes is walked, not mounted sub-applications: pass a mounted
    app (or the middleware itself) as ``app=`` to the helpers.
    """
    found: list[SessionMiddleware] = []
    node: object = app
    for _ in range(_MAX_DEPTH):
        if isinstance(node, SessionMiddleware):
            found.append(node)
        build = getattr(node, "build_middleware_stack", None)
        if callable(build):  # Starlette, FastAPI
            if getattr(node, "middleware_stack", None) is None:
                node.middleware_stack = build()  # type: ignore[attr-defined]
            node = node.middleware_stack  # type: ignore[attr-defined]
            continue
        inner = getattr(node, "app", None)
        if inner is None or inner is node:
            break
        node = inner
    if len(found) == 1:
        return found[0]
    name = type(app).__name__
    if not found:
        raise LookupError(
            f"no SessionMiddleware in the middleware stack of {name}: add it "
            "(app.add_middleware(SessionMiddleware, ...)), or pass app= the ASGI app it wraps "
            "(a mounted sub-application, or the SessionMiddleware instance itself)"
        )
    raise LookupError(
        f"{len(found)} SessionMiddleware layers in the middleware stack of {name}: pass app= "
        "the one the client's requests should use"
    )


# --- sync: Starlette's TestClient, whose app runs on a portal thread -----------------------------


def login(
    client: TestClient,
    *,
    attributes: Mapping[str, Any] | None = None,
    principal: str | None = None,
    via: Via | None = None,
    app: object | None = None,
) -> HttpSession:
    """Give ``client`` a new session holding ``attributes`` (set as ``session[name] = value``, so
    a ``None`` is kept), bound to ``principal``; return it.

    The session is created on the app's event loop as ``get_session(request)`` (the Servlet
    ``getSession()``) creates one: ``session_created`` and the attribute listeners fire, limits
    apply, a shared store is written. The client carries its signed ID from now on — the cookie in
    its jar, or the ID header in header mode (``via="header"`` picks the header in composite mode)
    — so its next request joins the session, which is then no longer new (``isNew()``: the client
    has joined it). A session the client had is
    left alone. The returned object is the live session on ``MemoryStore``; on a shared store, the
    state at login (read it later with `session_of`).

    Use ``with TestClient(app) as client:`` with a shared store, so that the app and its store
    connections keep one event loop. ``app`` overrides where the middleware is looked for
    (`find_middleware`).
    """
    middleware = find_middleware(_sync_app(client, "login", app))
    carrier = plan(client, middleware, via)
    session = _call(client, lambda: _create(middleware.manager, attributes, principal))
    present(client, middleware, carrier, middleware.signed_id(session.id))
    return session


def session_of(client: TestClient, *, app: object | None = None) -> HttpSession | None:
    """The session ``client`` will present on its next request, as the store has it now; ``None``
    if it has none, or its session ended.

    Looked at, not joined: reading it does not count as an access (``manager.peek``). It follows
    the client rather than an ID: after a request that changed the session's ID, it is the
    session under its new ID. On ``MemoryStore`` it is the live object; on a shared store, a copy.
    It ends nothing: a session past its deadline ends at its next request or at `expire_due`.
    """
    middleware = find_middleware(_sync_app(client, "session_of", app))
    session_id = presented_id(client, middleware)
    if session_id is None:
        return None
    manager = middleware.manager
    return _call(client, lambda: manager.peek(session_id))


def expire_due(client: TestClient, *, app: object | None = None) -> int:
    """Run one reaper tick on the app's loop: end every session past its deadline (by the manager's
    clock) now, firing ``session_destroyed``; return how many ended."""
    manager = find_middleware(_sync_app(client, "expire_due", app)).manager
    return _call(client, manager.reap)


def _sync_app(client: object, helper: str, app: object | None) -> object:
    from starlette.testclient import TestClient

    if not isinstance(client, TestClient):
        raise TypeError(
            f"{helper}() takes a starlette.testclient.TestClient, got {type(client).__name__}; "
            f"for an httpx AsyncClient use `await a{helper}(client)`"
        )
    return client.app if app is None else app


def _call(client: TestClient, run: Callable[[], Awaitable[T]]) -> T:
    """Run ``run()`` on the loop the client's app runs on: the portal of ``with TestClient(...)``,
    or else a portal of its own, as the client makes one per request."""
    portal = client.portal
    if portal is not None:
        return portal.call(run)
    import anyio.from_thread

    with anyio.from_thread.start_blocking_portal(**client.async_backend) as own:
        return own.call(run)


# --- async: an httpx AsyncClient over ASGITransport, whose app runs on the test's loop -----------


async def alogin(
    client: httpx2.AsyncClient,
    *,
    attributes: Mapping[str, Any] | None = None,
    principal: str | None = None,
    via: Via | None = None,
    app: object | None = None,
) -> HttpSession:
    """`login` for an ``httpx.AsyncClient`` whose app runs on this event loop
    (``ASGITransport``; ``app=`` names it otherwise)."""
    middleware = find_middleware(_async_app(client, "alogin", app))
    carrier = plan(client, middleware, via)
    session = await _create(middleware.manager, attributes, principal)
    present(client, middleware, carrier, middleware.signed_id(session.id))
    return session


async def asession_of(
    client: httpx2.AsyncClient, *, app: object | None = None
) -> HttpSession | None:
    """`session_of` for an ``httpx.AsyncClient`` whose app runs on this event loop."""
    middleware = find_middleware(_async_app(client, "asession_of", app))
    session_id = presented_id(client, middleware)
    return None if session_id is None else await middleware.manager.peek(session_id)


async def aexpire_due(client: httpx2.AsyncClient, *, app: object | None = None) -> int:
    """`expire_due` for an ``httpx.AsyncClient`` whose app runs on this event loop."""
    return await find_middleware(_async_app(client, "aexpire_due", app)).manager.reap()


def _async_app(client: object, helper: str, app: object | None) -> object:
    import httpx2
    from starlette.testclient import TestClient

    if isinstance(client, TestClient) or not isinstance(client, httpx2.AsyncClient):
        raise TypeError(
            f"{helper}() takes an httpx AsyncClient, got {type(client).__name__}; "
            f"for Starlette's TestClient use `{helper[1:]}(client)`"
        )
    if app is not None:
        return app
    transport = getattr(client, "_transport", None)
    if isinstance(transport, httpx2.ASGITransport):
        return transport.app
    raise TypeError(
        f"{helper}(): the client does not send to an app through httpx.ASGITransport; pass app= "
        "the ASGI app (it must run on this event loop)"
    )


# --- making the session --------------------------------------------------------------------------


async def _create(
    manager: SessionManager, attributes: Mapping[str, Any] | None, principal: str | None
) -> HttpSession:
    """Create a session as a request does (`SessionManager.create_session`, then the flush at
    response start and the release at its end), so that a limit refuses it as it would refuse the
    request. A value the store cannot hold ends the session made for it before the error
    propagates; nothing half-made is left behind."""
    visit = Visit()
    session = manager.create_session(visit)
    try:
        for name, value in (attributes or {}).items():
            session[name] = value  # dict semantics, as the mapping reads: None is kept
        if principal is not None:
            session.principal = principal
    except BaseException:
        session.invalidate()
        await manager.release(visit)
        raise
    if manager.flushes:
        try:
            await manager.flush(visit)
        except (SessionLimitError, StoreUnavailableError):
            manager.refuse(visit)  # the 503 the middleware would answer: nothing is written
            await manager.release(visit)
            raise
    await manager.release(visit)
    return session
