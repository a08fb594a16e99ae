"""``SessionAccessor``: a session used outside any request (Servlet 6.1 ``HttpSession.Accessor``).

A background task, a websocket message loop or a queue consumer in this process gets an accessor
from the session inside a request (``session.accessor()``) and later, when it has something to
read or write, opens an *access*::

    async with accessor.access() as session:
        session["summary"] = summary

The spec: "the container behaves as if the call [...] occurs during the processing of an HTTP
request for the same session". So an access is a request without HTTP: it joins the session the
way the middleware does (an expired session is expired then and there, a shared store confirms
the session and records the access, ``locking="session"`` takes the lock), the block runs with
the joined object, and the exit writes what changed and delivers pending async listener events,
as the end of a request does.

An accessor follows its session through ID changes made in this process (``change_session_id``
at login, during the job), through a small registry of the IDs accessors hold; the registry
keeps its entries only while an accessor refers to them. An ID changed by another worker of a
shared store cannot be followed: the old ID is gone everywhere, and the access raises
`IllegalStateError` as for an ended session (the spec raises on any ID change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from .changes import change_journal
from .cookies import session_ref
from .errors import IllegalStateError, StoreUnavailableError
from .listeners import settle
from .persistence import Visit

if TYPE_CHECKING:
    from .session import HttpSession

logger = logging.getLogger("servletsession")


class AccessHost(Protocol):
    """What an access may ask of its manager: join and release a session as a request does."""

    shared: bool
    clock: Callable[[], float]

    @property
    def in_process(self) -> dict[str, HttpSession]: ...
    async def join(self, session_id: str, visit: Visit) -> HttpSession | None: ...
    async def flush(self, visit: Visit) -> None: ...
    async def release(self, target: Visit) -> None: ...
    def refuse(self, visit: Visit) -> None: ...


class _Target:
    """The ID of the session some accessors follow, as it is now in this process."""

    __slots__ = ("__weakref__", "session_id")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id


class Accessors:
    """The targets of one manager's accessors, by current ID. Held weakly: an entry goes when the
    last accessor of its session does, so jobs that never come back leak nothing."""

    def __init__(self, host: AccessHost) -> None:
        self._host = host
        self._targets: weakref.WeakValueDictionary[str, _Target] = weakref.WeakValueDictionary()

    def accessor(self, session: HttpSession) -> SessionAccessor:
        target = self._targets.get(session._id)
        if target is None:
            target = self._targets[session._id] = _Target(session._id)
        return SessionAccessor(self._host, target)

    def renamed(self, old_id: str, new_id: str) -> None:
        """A session of this process changed its ID: its accessors follow it."""
        target = self._targets.pop(old_id, None)
        if target is not None:
            target.session_id = new_id
            self._targets[new_id] = target

    def __len__(self) -> int:
        return len(self._targets)


class SessionAccessor:
    """A handle on one session for work outside any request (Servlet 6.1 ``HttpSession.Accessor``);
    get it with [`HttpSession.accessor`][servletsession.HttpSession.accessor].

    It holds no session object, only the way back to the session, so it can be kept as long as
    the work lasts; it follows the session through ID changes made in this process. It is for
    work in the app's own process, and cannot be pickled (a job queue in another process would
    carry the session ID, a bearer credential, out of the app).
    """

    __slots__ = ("_host", "_target")

    def __init__(self, host: AccessHost, target: _Target) -> None:
        self._host = host
        self._target = target

    @contextlib.asynccontextmanager
    async def access(self) -> AsyncIterator[HttpSession]:
        """``async with accessor.access() as session:`` — use the live session as a request would.

        Entering joins the session: it counts as an access (``last_accessed_time`` in the next
        access or request is this access's start; the idle timeout restarts), with
        ``locking="session"`` it waits for the session's lock, and on a shared store it sees what
        other workers wrote. An access overlapping requests of the session in this process shares
        their live object, as concurrent requests do. Listeners fire as the block changes the
        session; ``session.invalidate()`` ends it. Leaving — also when the block raises — writes
        what the block changed (on a shared store, attribute by attribute as a request does) and
        waits for pending async listener events; if the task is cancelled meanwhile, the exit
        still runs to its end (in a task of its own) while the ``CancelledError`` goes up at
        once. An access opened while the request that created the session or changed its ID is
        still running joins that request's object instead (the store cannot know the session
        under that ID yet), and that request's response writes it.

        Raises [`IllegalStateError`][servletsession.IllegalStateError] on entry if the session has
        ended: invalidated, expired (its ``session_destroyed`` fires then, if nobody saw it
        before), gone from the store, or its ID changed by another worker.

        Raises `StoreUnavailableError` if the store cannot answer, on entry (the block does not
        run) or while writing on exit (nothing of the block is written, and what it changed is
        taken back).
        """
        host, visit = self._host, Visit()
        session, in_process = await self._join(visit)
        token = change_journal.set(visit.journal)  # not the journal of a request around us
        try:
            yield session
        finally:
            change_journal.reset(token)
            if in_process and _unwritten(session):  # its request still has it to write
                await _to_the_end(_leave(host, session))
            else:
                await _to_the_end(_save(host, visit))

    async def _join(self, visit: Visit) -> tuple[HttpSession, bool]:
        """The session, joined by ``visit`` (or, ``True``, in process with a request of it)."""
        host = self._host
        session_id = self._target.session_id
        share = host.in_process.get(session_id)
        was_new = share is not None and share._is_new
        if share is not None and host.shared and _unwritten(share):
            # Created, or renamed, by a request of this process still in flight: the store cannot
            # know it yet. Join that request's object; its response writes both.
            share._begin_access(host.clock())
            share._is_new = was_new
            visit.session = share  # saved as a request's, should that request end first
            return share, True
        if host.shared:
            visit.journal = {}  # this access's own changes, to take back if its save fails
        session = await host.join(session_id, visit)
        if session is None:
            raise IllegalStateError(
                "access(): the session has ended (invalidated, expired, removed from the store, "
                "or its ID was changed by another worker)"
            )
        if was_new and session is share:
            session._is_new = True  # no request has carried its ID yet: still new
        return session, False

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a SessionAccessor works only in the process that made it; it cannot be pickled"
        )

    def __repr__(self) -> str:
        return f"<SessionAccessor ref={session_ref(self._target.session_id)}>"


#: Exits still running after the task that awaited them was cancelled (held: a task nobody
#: references may be collected before it finishes).
_running_on: set[asyncio.Task[None]] = set()


async def _to_the_end(exit: Coroutine[Any, Any, None]) -> None:
    """Run an access's exit to its end, even if the task awaiting it is cancelled.

    The exit ends the access (the session's in-use count), writes what the block changed and
    releases the lock: cut short, the session would count as in use for ever, never idle out,
    and a lock would be held to its lease's end. So it runs in a task of its own, awaited through
    a shield: a cancelled waiter (``asyncio.timeout`` around the access, ``task.cancel()``) gets
    its ``CancelledError`` at once, and the exit goes on; what it raises then is logged.
    """
    task = asyncio.create_task(exit)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        _running_on.add(task)
        task.add_done_callback(_ran_on)
        raise


def _ran_on(task: asyncio.Task[None]) -> None:
    _running_on.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.warning(
            "an access whose caller was cancelled failed while leaving its session: %r", error
        )


def _unwritten(share: HttpSession) -> bool:
    """The store does not have this share under its current ID yet."""
    return (
        share._valid
        and not share._detached
        and (not share._stored or share._previous_id is not None)
    )


async def _leave(host: AccessHost, session: HttpSession) -> None:
    """End an access joined in process: the request holding the session writes it."""
    try:
        await settle(session)
    finally:
        session._end_access(host.clock())


async def _save(host: AccessHost, visit: Visit) -> None:
    """Write what the access changed, as the end of a request does; on failure, write nothing."""
    try:
        await host.flush(visit)
    except BaseException:
        host.refuse(visit)  # take back this access's changes: never half-written
        with contextlib.suppress(StoreUnavailableError):
            await host.release(visit)
        raise
    try:
        await host.release(visit)
    except StoreUnavailableError as exc:
        # Everything the block changed is written; only refreshing the deadline or releasing
        # the lock failed, which the keeper and the lock's lease make good.
        logger.warning("session store unavailable after an access was saved: %s", exc)
