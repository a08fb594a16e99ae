"""``LiveSessions``: sessions kept as live objects by a ``MemoryStore`` in this process.

The store is the map of live sessions, so there is nothing to load or save: a request joins the
object itself, an ID change or an end takes effect in the store at once, and the reaper claims due
sessions from the store's deadline heap. A session a request is using never idles out; its
absolute timeout holds however busy it is.

With ``MemoryStore(persist_to=...)`` the sessions also outlive the process: `restore` and `save`
(`servletsession.restart`) run at startup and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import _get_running_loop
from typing import TYPE_CHECKING, Literal

from . import restart
from .listeners import settle

if TYPE_CHECKING:
    from .persistence import SessionHost, Visit
    from .session import HttpSession
    from .stores.memory import MemoryStore

logger = logging.getLogger("servletsession")


def _leave(session: HttpSession, now: float) -> None:
    """A request that joined the live session is done: the idle clock restarts now (the
    session's `_end_access`), and what it read is no longer anybody's to write (the store holds
    the object itself)."""
    session._in_flight -= 1
    session._idle_since = now
    session._read_names = None


class LiveSessions:
    """The `Sessions` strategy for ``MemoryStore``."""

    def __init__(self, store: MemoryStore, host: SessionHost) -> None:
        self._store = store
        self._held = store.sessions  # the store's map of sessions by ID (looked up per request)
        self._host = host
        self._unstarted = store.file is not None  # warn once if sessions come before a start

    async def restore(self) -> None:
        """Startup: bring back what the last shutdown saved (``persist_to``). Never raises: a
        file that cannot be used is logged and the app starts without its sessions."""
        self._unstarted = False
        if self._store.file is None:
            return
        try:
            await restart.restore(self._store, self._host, self._store.file)
        except Exception:
            logger.exception("restoring the saved sessions failed; starting without (some of) them")

    async def save(self) -> None:
        """Shutdown: write the live sessions to the file (``persist_to``). Never raises."""
        if self._store.file is None:
            return
        try:
            await restart.save(self._store, self._host, self._store.file)
        except Exception:
            logger.exception("saving the sessions failed; they end with this process")

    @property
    def in_process(self) -> dict[str, HttpSession]:
        return self._store.sessions

    async def join(self, session_id: str, visit: Visit) -> HttpSession | None:
        session = self.join_now(session_id, visit)
        if session is not False:
            return session
        session = self._store.sessions[session_id]
        visit.ended_found = True
        session._expire("expired")  # found expired: ended then and there
        await settle(session)
        return None

    def join_now(self, session_id: str, visit: Visit) -> HttpSession | Literal[False] | None:
        """`join` when there is nothing to wait for (the common case): the session, joined, or
        ``None``; ``False``, having done nothing, for a session found due, which `join` ends."""
        session = self._held.get(session_id)
        if session is None:
            return None
        # The session's `_begin_access`, here where it is decided whether the session is due
        # (its absolute timeout passed, or idle past its interval with no request using it):
        # then nothing is done, and `join` ends it.
        now = self._host.clock()
        absolute = session._absolute_timeout
        if absolute is not None and session._creation_time + absolute <= now:
            return False
        idle = session._max_inactive_interval
        in_flight = session._in_flight
        if in_flight == 0 and idle > 0 and session._idle_since + idle <= now:
            return False
        session._last_accessed_time = session._this_accessed_time
        session._this_accessed_time = session._idle_since = now
        session._is_new = False
        session._in_flight = in_flight + 1
        session._loop = _get_running_loop() or session._loop  # the app's (new, maybe) loop
        visit.session = session
        return session

    def created(self, session: HttpSession, visit: Visit) -> None:
        if self._unstarted:
            self._unstarted = False
            logger.warning(
                "MemoryStore(persist_to=...) has a session but the manager was never started, so "
                "the sessions saved at the last shutdown were not restored: run the app with "
                "lifespan (uvicorn's default for Starlette and FastAPI) or `async with manager`"
            )
        self._store.add(session)

    async def flush(self, visit: Visit) -> None:
        """Nothing to write: the store holds the object itself."""

    async def release(self, visit: Visit) -> None:
        """The request is done: wait for its pending async events, and end its access however
        that wait ends. A waiter cancelled meanwhile (a client gone, a timeout around an access)
        still ends the access: a session left counted as in use would never idle out."""
        session = visit.session
        assert session is not None
        try:
            if session._listener_tail is not None:
                await settle(session)
        finally:
            _leave(session, self._host.clock())

    def release_now(self, visit: Visit) -> bool:
        """`release` when no async event of the session is pending (nothing to wait for);
        ``False``, having done nothing, otherwise."""
        session = visit.session
        assert session is not None
        if session._listener_tail is not None:
            return False
        session._in_flight -= 1  # `_leave`, spelt out
        session._idle_since = self._host.clock()
        session._read_names = None
        return True

    async def release_lock(self, visit: Visit, session_id: str | None = None) -> None:
        """Nothing to release: one process, one live object."""

    def rename_now(self, session: HttpSession, old_id: str) -> None:
        self._store.rename(old_id, session)

    async def push(self, session: HttpSession) -> bool:
        """Nothing to write: an ID change took effect in the store at once."""
        return False

    def session_expiring(self, session: HttpSession, reason: str) -> bool:
        if session._stored:  # not yet removed by the reaper's claim
            self._store.remove(session)
        self._host.ended(session, reason)
        return True

    async def peek(self, session_id: str) -> HttpSession | None:
        session = self._store.get(session_id)
        return session if session is not None and session._valid else None

    async def reap(self, batch: int) -> int:
        total = 0
        while not self._host.stopping:
            claimed = self._store.claim_expired(self._host.clock(), batch)
            for session in claimed:
                session._expire("expired")
            await asyncio.gather(*(settle(session) for session in claimed))
            total += len(claimed)
            if len(claimed) < batch:
                break
        return total

    async def keep_alive(self) -> None:
        """Nothing to keep: a session in use here is never idle, and nobody else looks."""

    async def touch(self, session: HttpSession) -> bool:
        if not session._valid:
            return False
        session._idle_since = self._host.clock()
        return True
