"""``MemoryStore``: sessions as live Python objects in this process, nothing serialized."""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .base import SessionStore
from .memory_file import SessionFile

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..session import HttpSession

_NEVER = math.inf
_RETRY_IN_FLIGHT = 1.0  # seconds before looking again at a due session a request is still using


class MemoryStore(SessionStore):
    """The default store: one process, live objects.

    The object a request puts in the session is the very object the next request gets back, so a
    conversation history mutated while a response streams is simply kept. Nothing is shared
    between worker processes: use ``SQLStore`` or ``RedisStore`` for that.

    ``persist_to`` (a file path) keeps sessions across a restart, as Tomcat's ``StandardManager``
    does: they are written to that file when the app shuts down (lifespan shutdown, after the
    app's own handlers; ``manager.close()``) and read back when it starts (lifespan startup;
    ``async with manager``), with the same IDs, so the same cookies join them again. Values are
    written as JSON (pydantic models from the manager's ``models=`` allow-list), never pickled;
    see `servletsession.restart` for what is kept and which events fire. One process only: the
    file is this process's, and holds session IDs (``0600``).

    Expiry is indexed by a heap of ``(deadline, id)`` entries with lazy deletion: an entry whose
    session moved on (touched, renamed, gone) is dropped or pushed again when it comes due. A
    reaper tick therefore costs O(k log n) for the k entries due, never a scan of every session.
    The principal index loses a session's entry the moment the session goes.

    The manager drives it directly (its methods are synchronous: nothing here waits).
    """

    def __init__(self, *, persist_to: str | os.PathLike[str] | None = None) -> None:
        self._sessions: dict[str, HttpSession] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._by_principal: dict[str, set[str]] = {}
        #: Where sessions wait while the app is down (``persist_to``), or ``None``.
        self.file = SessionFile(persist_to) if persist_to is not None else None

    def allow_models(self, models: Iterable[type[BaseModel]]) -> None:
        if self.file is not None:
            self.file.serializer.allow(models)

    # --- the manager's side ------------------------------------------------------------------

    @property
    def sessions(self) -> dict[str, HttpSession]:
        """The live sessions by ID (read it; change it through the methods below)."""
        return self._sessions

    def get(self, session_id: str) -> HttpSession | None:
        return self._sessions.get(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def add(self, session: HttpSession) -> None:
        """Hold a new session (or one whose ID changed) from now on. Its deadline is worked out
        first: if that fails, the store is left as it was (never a session held but unscheduled,
        which nothing would ever expire)."""
        self._schedule(session)
        self._sessions[session._id] = session
        session._stored = True
        if session._principal is not None:
            self._by_principal.setdefault(session._principal, set()).add(session._id)

    def remove(self, session: HttpSession) -> bool:
        """Let go of ``session``; ``True`` if it was held (the caller ends it, once)."""
        if self._sessions.get(session._id) is not session:
            return False
        self._forget(session)
        return True

    def _forget(self, session: HttpSession) -> None:
        del self._sessions[session._id]
        session._stored = False
        self._unindex(session._principal, session._id)

    def rename(self, old_id: str, session: HttpSession) -> None:
        """``session`` now goes by its new ID; ``old_id`` finds nothing from now on."""
        if self._sessions.get(old_id) is session:
            del self._sessions[old_id]
        self._unindex(session._principal, old_id)
        session._expiry_mark = None  # the heap entry under the old ID is stale now
        self.add(session)

    def expiry_changed(self, session: HttpSession) -> None:
        if session._stored:
            self._schedule(session)

    def principal_changing(self, session: HttpSession, new: str | None) -> None:
        if not session._stored:
            return  # indexed when it is added
        self._unindex(session._principal, session._id)
        if new is not None:
            self._by_principal.setdefault(new, set()).add(session._id)

    def claim_expired(self, now: float, limit: int) -> list[HttpSession]:
        """Remove and return up to ``limit`` sessions past their deadline. A session a request
        is using is not idle, but its absolute timeout holds however busy it is."""
        heap = self._deadlines
        sessions = self._sessions
        claimed: list[HttpSession] = []
        while heap and heap[0][0] <= now and len(claimed) < limit:
            deadline, session_id = heapq.heappop(heap)
            session = sessions.get(session_id)
            if session is None or session._expiry_mark != deadline:
                continue  # a stale entry: the session is gone, renamed or scheduled again
            session._expiry_mark = None
            if session._in_flight:
                if session._absolute_deadline() <= now:
                    self._forget(session)
                    claimed.append(session)
                else:
                    self._push(session, max(session._expires_at(), now + _RETRY_IN_FLIGHT))
            elif session._expires_at() > now:
                self._schedule(session)  # it was touched since this entry was pushed
            else:
                self._forget(session)
                claimed.append(session)
        return claimed

    # --- the common contract -----------------------------------------------------------------

    async def count(self) -> int:
        return len(self._sessions)

    async def sessions_of(self, principal: str, now: float) -> list[str]:
        sessions = self._sessions
        return [
            session_id
            for session_id in self._by_principal.get(principal, ())
            if (session := sessions.get(session_id)) is not None
            and (session._in_flight or session._expires_at() > now)
        ]

    async def session_ids(self, offset: int, limit: int) -> list[str]:
        return list(itertools.islice(self._sessions, offset, offset + limit))

    async def least_recent(self, count: int, now: float) -> list[str]:
        """Pop heap entries until the earliest ``count`` are current, then put them back."""
        heap, sessions = self._deadlines, self._sessions
        found: list[tuple[float, str]] = []
        while heap and len(found) < count:
            deadline, session_id = heapq.heappop(heap)
            session = sessions.get(session_id)
            if session is None or session._expiry_mark != deadline:
                continue
            actual = session._expires_at()
            if actual > deadline:  # touched since: file it where it belongs and look again
                self._push(session, actual)
                continue
            found.append((deadline, session_id))
        for entry in found:
            heapq.heappush(heap, entry)
        return [session_id for _, session_id in found]

    # --- plumbing ----------------------------------------------------------------------------

    def _unindex(self, principal: str | None, session_id: str) -> None:
        if principal is None:
            return
        ids = self._by_principal.get(principal)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_principal[principal]

    def _schedule(self, session: HttpSession) -> None:
        """Make sure an entry due no later than the session's deadline is in the heap."""
        deadline = session._expires_at()
        mark = session._expiry_mark
        if deadline != _NEVER and (mark is None or deadline < mark):
            session._expiry_mark = deadline  # `_push`, spelt out: once per new session
            heapq.heappush(self._deadlines, (deadline, session._id))

    def _push(self, session: HttpSession, deadline: float) -> None:
        session._expiry_mark = deadline
        heapq.heappush(self._deadlines, (deadline, session._id))
