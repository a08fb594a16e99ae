"""Lifecycle listeners: the event classes, the five protocols, and how events are delivered.

The protocols mirror ``jakarta.servlet.http``'s listener interfaces method for method. A listener
object may implement any subset of them, each method sync or ``async def``:

* A sync method runs inline, inside the call that caused it (``set_attribute`` and friends).
* An ``async def`` method is started at once as a task, chained behind the earlier async
  deliveries of the same session, so each listener sees one session's events in the order they
  happened. The middleware awaits the chain before the request finishes and before the session is
  saved (`settle`). The chain lives on the app's event loop: an event caused in another thread
  (a ``def`` endpoint, ``asyncio.to_thread``, an executor, a thread of the app's) is handed to
  that loop, where the app's loop-bound resources (connections, queues, locks) work.
* A listener that raises is logged and skipped (Servlet containers do the same, e.g. Tomcat's
  ``StandardSession.expire()``): it never fails the request or stops the other listeners.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .session import HttpSession

logger = logging.getLogger("servletsession")

#: The session whose listeners are running in this context. An expiring session stays readable
#: to its own listeners (``session_destroyed`` "fires while the session is still readable").
delivering_for: ContextVar[HttpSession | None] = ContextVar(
    "servletsession_delivering", default=None
)


class HttpSessionEvent:
    """``HttpSessionEvent``: the session an event is about."""

    __slots__ = ("session",)

    def __init__(self, session: HttpSession) -> None:
        self.session = session

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.session!r})"


class HttpSessionBindingEvent(HttpSessionEvent):
    """``HttpSessionBindingEvent``: an attribute's name and value.

    On ``attribute_replaced`` the value is the **old** one (Servlet spec, ``getValue()``).
    """

    __slots__ = ("name", "value")

    def __init__(self, session: HttpSession, name: str, value: Any) -> None:
        super().__init__(session)
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"HttpSessionBindingEvent({self.session!r}, name={self.name!r})"


MaybeAwaitable = Awaitable[None] | None


class HttpSessionListener(Protocol):
    """Notified when a session is created and when it is destroyed (invalidated or expired)."""

    def session_created(self, event: HttpSessionEvent) -> MaybeAwaitable: ...
    def session_destroyed(self, event: HttpSessionEvent) -> MaybeAwaitable: ...


class HttpSessionAttributeListener(Protocol):
    """Notified of every attribute added, removed or replaced in any session."""

    def attribute_added(self, event: HttpSessionBindingEvent) -> MaybeAwaitable: ...
    def attribute_removed(self, event: HttpSessionBindingEvent) -> MaybeAwaitable: ...
    def attribute_replaced(self, event: HttpSessionBindingEvent) -> MaybeAwaitable: ...


class HttpSessionBindingListener(Protocol):
    """Implemented by an attribute *value*: told when it is bound to or unbound from a session."""

    def value_bound(self, event: HttpSessionBindingEvent) -> MaybeAwaitable: ...
    def value_unbound(self, event: HttpSessionBindingEvent) -> MaybeAwaitable: ...


class HttpSessionIdListener(Protocol):
    """Notified when a session's ID changes (``change_session_id``)."""

    def session_id_changed(
        self, event: HttpSessionEvent, old_session_id: str
    ) -> MaybeAwaitable: ...


class HttpSessionActivationListener(Protocol):
    """Implemented by an attribute *value*: told before its session is written to a store and
    after it is read back: on a shared store as the session comes into a process and leaves it, with
    ``MemoryStore(persist_to=...)`` at shutdown and startup (Servlet spec 7.7.2: a container that
    migrates or persists sessions)."""

    def session_will_passivate(self, event: HttpSessionEvent) -> MaybeAwaitable: ...
    def session_did_activate(self, event: HttpSessionEvent) -> MaybeAwaitable: ...


class CookieRejectedEvent:
    """A session cookie was refused: ``reason`` is ``"malformed"``, ``"duplicate"`` (cookie
    tossing), ``"bad_signature"`` or ``"unknown_id"``; ``client`` is the peer address the server
    reported (behind a proxy, the proxy's unless the server resolves forwarded headers). The
    cookie's value is never included."""

    __slots__ = ("client", "path", "reason")

    def __init__(self, reason: str, scope: Any) -> None:
        self.reason = reason
        client = scope.get("client")
        self.client: str | None = client[0] if client else None
        self.path: str = scope.get("path", "")

    def __repr__(self) -> str:
        return f"CookieRejectedEvent({self.reason!r}, client={self.client!r}, path={self.path!r})"


class SessionCookieListener(Protocol):
    """Told about every refused session cookie: a hook for intrusion detection (ASVS v5 7.x)."""

    def cookie_rejected(self, event: CookieRejectedEvent) -> MaybeAwaitable: ...


#: Methods a listener registered on the manager may implement.
MANAGER_EVENTS = (
    "session_created",
    "session_destroyed",
    "attribute_added",
    "attribute_removed",
    "attribute_replaced",
    "session_id_changed",
    "cookie_rejected",
)

Method = Callable[..., Any]


class ListenerRegistry:
    """The manager's listeners, indexed by event: an event nobody listens to costs nothing.

    Each event's methods are also an attribute (``registry.attribute_added``): one list per
    event for the registry's lifetime, changed in place, so the hot path reads it directly.
    """

    __slots__ = (
        "_by_event",
        "attribute_added",
        "attribute_removed",
        "attribute_replaced",
        "cookie_rejected",
        "session_created",
        "session_destroyed",
        "session_id_changed",
    )
    attribute_added: list[Method]
    attribute_removed: list[Method]
    attribute_replaced: list[Method]
    cookie_rejected: list[Method]
    session_created: list[Method]
    session_destroyed: list[Method]
    session_id_changed: list[Method]

    def __init__(self, listeners: Iterable[object] = ()) -> None:
        self._by_event: dict[str, list[Method]] = {name: [] for name in MANAGER_EVENTS}
        for name, methods in self._by_event.items():
            setattr(self, name, methods)
        for listener in listeners:
            self.add(listener)

    def add(self, listener: object) -> None:
        found = [name for name in MANAGER_EVENTS if callable(getattr(listener, name, None))]
        if not found:
            raise TypeError(
                f"{type(listener).__name__} implements no listener method; "
                f"define one or more of: {', '.join(MANAGER_EVENTS)}"
            )
        for name in found:
            self._by_event[name].append(getattr(listener, name))

    def remove(self, listener: object) -> None:
        for methods in self._by_event.values():
            methods[:] = [m for m in methods if getattr(m, "__self__", None) is not listener]

    def methods(self, event_name: str) -> list[Method]:
        return self._by_event[event_name]


def deliver(session: HttpSession, methods: Iterable[Method], *args: Any) -> None:
    """Call each listener method with ``args``; chain the async ones (see the module docstring)."""
    for method in methods:
        token = delivering_for.set(session)
        try:
            result = method(*args)
        except Exception:
            _log_failure(method, session)
        else:
            if result is not None and inspect.isawaitable(result):
                chain(session, _guarded(session, method, result))
        finally:
            delivering_for.reset(token)


def notify(methods: Iterable[Method], event: object, tasks: set[asyncio.Task[Any]]) -> None:
    """Deliver an event that belongs to no session: sync methods inline, async ones as tasks
    (kept in ``tasks`` until done). Failures are logged and skipped as for session events."""
    for method in methods:
        try:
            result = method(event)
        except Exception:
            logger.exception("listener %s raised; skipped", getattr(method, "__qualname__", method))
            continue
        if result is not None and inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(_logged(method, result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _logged(method: Method, awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("listener %s raised; skipped", getattr(method, "__qualname__", method))


def deliver_to_value(session: HttpSession, value: Any, method_name: str, *args: Any) -> None:
    """Deliver a binding or activation event to an attribute value, if it listens for it."""
    method = getattr(value, method_name, None)
    if method is not None and callable(method):
        deliver(session, (method,), *args)


def after_pending(session: HttpSession, step: Callable[[], None]) -> None:
    """Run ``step`` once every async delivery already started for ``session`` has finished.

    With nothing pending it runs now. Expiry uses it so that attributes are unbound only after an
    ``async`` ``session_destroyed`` listener has had its chance to read them (Servlet spec:
    ``sessionDestroyed`` is notified while the session is still valid, then the attributes are
    unbound). A delivery handed to the loop from this thread and not yet chained there is pending
    too: the step is handed off behind it (callbacks run in the order they were queued).
    """
    # Hand-offs first: one that lands between the two reads has already set the tail.
    if not _handed_off.get(id(session)) and session._listener_tail is None:
        step()
        return

    async def run_step() -> None:
        token = delivering_for.set(session)
        try:
            step()
        finally:
            delivering_for.reset(token)

    chain(session, run_step())


async def settle(session: HttpSession) -> None:
    """Wait until every async delivery for ``session`` (including ones they trigger) is done.

    A failure of the chain itself (a store claim that could not be made) is raised, and stays:
    every request of the session that settles learns it (an ``invalidate()`` that did not happen
    must not answer as if it had, whichever request met the failure first).

    The wait is shielded: a waiter that is cancelled (a client that went away, a timeout around
    an access) gets its ``CancelledError``, but the chain runs on to its end, so a
    ``session_destroyed`` is delivered and the attributes it guards are still unbound."""
    while (tail := session._listener_tail) is not None:
        await asyncio.shield(tail)
        if session._listener_tail is tail:
            session._listener_tail = None


def chain(session: HttpSession, work: Awaitable[None]) -> None:
    """Run ``work`` after every delivery already started for ``session`` (its event order).

    The chain lives on one event loop, the app's. Called from another thread (a FastAPI or
    Starlette ``def`` endpoint runs in a worker thread, ``asyncio.to_thread``, an executor) it is
    handed to that loop; only where no loop owns the session at all (a script, a sync test) is
    ``work`` run here to completion."""
    here = running_loop()
    owner = _owning_loop(session, here)
    if owner is None:
        # No event loop owns this session: nothing can be pending on one either (a finished
        # tail can be awaited from any loop), so run the delivery to completion here.
        previous = session._listener_tail
        asyncio.run(_in_order(previous, work))
        return
    if owner is here:
        _chain_here(session, work)
        return
    # Another thread's loop owns the chain: the callback chains ``work`` there, behind what is
    # pending. Event order holds: callbacks run in the order they were queued (FIFO), and a
    # worker thread's result is itself delivered to the loop by ``call_soon_threadsafe`` (anyio's
    # ``to_thread.run_sync`` behind ``run_in_threadpool``, and ``run_in_executor`` behind
    # ``asyncio.to_thread``) only after the function returned, so every event the thread queued
    # is chained before the request that awaits the thread resumes, and before it settles the
    # session and saves it. (A thread the app starts and does not wait for is chained whenever
    # it gets there, still in order and on the app's loop.)
    key = id(session)
    with _handed_off_lock:
        _handed_off[key] = _handed_off.get(key, 0) + 1
    try:
        owner.call_soon_threadsafe(_chain_handed_off, session, work)
    except RuntimeError:  # the loop closed meanwhile: nothing of it can be pending any more
        _landed(key)
        asyncio.run(_in_order(None, work))


#: Deliveries handed to a session's loop from another thread and not chained there yet, by
#: ``id(session)``: `after_pending` must wait for them too. The queued callback holds the
#: session, so an ID counted here cannot be reused by another session meanwhile.
_handed_off: dict[int, int] = {}
_handed_off_lock = threading.Lock()


def _chain_handed_off(session: HttpSession, work: Awaitable[None]) -> None:
    try:
        _chain_here(session, work)
    finally:
        _landed(id(session))


def _landed(key: int) -> None:
    with _handed_off_lock:
        left = _handed_off.pop(key) - 1
        if left:
            _handed_off[key] = left


def _chain_here(session: HttpSession, work: Awaitable[None]) -> None:
    session._listener_tail = asyncio.get_running_loop().create_task(
        _in_order(session._listener_tail, work)
    )


async def _in_order(previous: asyncio.Task[None] | None, work: Awaitable[None]) -> None:
    if previous is not None:
        await previous
    await work


def running_loop() -> asyncio.AbstractEventLoop | None:
    """This thread's running event loop, if any (``HttpSession`` records its app's with it)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _owning_loop(
    session: HttpSession, here: asyncio.AbstractEventLoop | None
) -> asyncio.AbstractEventLoop | None:
    """The running loop the session's deliveries belong on: that of its chain (pending or just
    finished), else this thread's, else the app's loop it was last used on (``session._loop``,
    from a thread of ``asyncio.to_thread``, an executor or the app's), else, in an anyio worker
    thread, the loop that started it."""
    tail = session._listener_tail
    if tail is not None:
        loop = tail.get_loop()
        if loop is here or (loop.is_running() and not loop.is_closed()):
            return loop
        if not tail.done():
            # Its loop is gone: the delivery can never finish, so nothing can wait for it.
            session._listener_tail = None
    if here is not None:
        return here
    home = session._loop
    if home is not None and home.is_running() and not home.is_closed():
        return home
    session._loop = home = _worker_threads_loop()
    return home


def _worker_threads_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop that runs this thread's work, if this is an anyio worker thread (where
    Starlette and FastAPI run ``def`` endpoints and dependencies)."""
    try:
        from anyio.from_thread import run_sync
    except ImportError:  # pragma: no cover - Starlette depends on anyio
        return None
    try:
        return run_sync(asyncio.get_running_loop)
    except RuntimeError:  # not an anyio worker thread
        return None


async def _guarded(session: HttpSession, method: Method, awaitable: Awaitable[Any]) -> None:
    token = delivering_for.set(session)
    try:
        await awaitable
    except Exception:
        _log_failure(method, session)
    finally:
        delivering_for.reset(token)


def _log_failure(method: Method, session: HttpSession) -> None:
    owner = getattr(method, "__self__", None)
    where = f"{type(owner).__name__}.{method.__name__}" if owner is not None else repr(method)
    logger.exception("session listener %s raised; skipped (%r)", where, session)
