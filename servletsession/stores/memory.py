"""``MemoryStore``: sessions as live Python objects in this process, nothing serialized."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection
from typing import TYPE_CHECKING

from .base import SessionStore

if TYPE_CHECKING:
    from ..session import HttpSession, SessionOwner

_RETRY_IN_FLIGHT = 1.0  # seconds before looking again at a due session a request is still using


class MemoryStore(SessionStore):
    """The default store: one process, live objects.

    The object a request puts in the session is the very object the next request gets back, so a
    conversation history mutated while a response streams is simply kept. Nothing survives a
    restart and nothing is shared between worker processes: use ``SQLStore`` or ``RedisStore``
    for that.

    Expiry is indexed by a heap of ``(deadline, id)`` entries with lazy deletion: an entry whose
    session moved on (touched, renamed, gone) is dropped or pushed again when it comes due. A
    reaper tick therefore costs O(k log n) for the k entries due, never a scan of every session.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, HttpSession] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._by_principal: dict[str, set[str]] = {}

    def live_sessions(self) -> dict[str, HttpSession]:
        return self._sessions

    def expiry_changed(self, session: HttpSession) -> None:
        if session._stored:
            self._schedule(session)

    def principal_changing(self, session: HttpSession, new: str | None) -> None:
        old = session._principal
        if old is not None:
            self._by_principal.get(old, set()).discard(session._id)
        if new is not None:
            self._by_principal.setdefault(new, set()).add(session._id)

    async def load(
        self, session_id: str, owner: SessionOwner, now: float, touch: bool = True
    ) -> HttpSession | None:
        return self._sessions.get(session_id)

    async def save(self, session: HttpSession, changed_names: set[str], now: float) -> bool:
        self._sessions[session._id] = session
        session._stored = True
        self._schedule(session)
        if session._principal is not None:  # its ID may have changed before this first save
            self._by_principal.setdefault(session._principal, set()).add(session._id)
        return True

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def rename(self, old_id: str, session: HttpSession) -> bool:
        if self._sessions.get(old_id) is session:
            del self._sessions[old_id]
        self._sessions[session._id] = session
        session._expiry_mark = None  # the entry under the old ID is stale now
        self._schedule(session)
        if session._principal is not None:
            ids = self._by_principal.setdefault(session._principal, set())
            ids.discard(old_id)
            ids.add(session._id)
        return True

    async def claim_expired(
        self, owner: SessionOwner, now: float, limit: int, in_use: Collection[str] = ()
    ) -> list[HttpSession]:
        heap = self._deadlines
        sessions = self._sessions
        claimed: list[HttpSession] = []
        while heap and heap[0][0] <= now and len(claimed) < limit:
            deadline, session_id = heapq.heappop(heap)
            session = sessions.get(session_id)
            if session is None or session._expiry_mark != deadline:
                continue  # a stale entry: the session is gone, renamed or scheduled again
            session._expiry_mark = None
            actual = session._expires_at()
            if session._in_flight:
                self._push(session, max(actual, now + _RETRY_IN_FLIGHT))
            elif actual > now:
                self._schedule(session)  # it was touched since this entry was pushed
            else:
                del sessions[session_id]
                claimed.append(session)
        return claimed

    async def count(self) -> int:
        return len(self._sessions)

    async def sessions_of(self, principal: str, now: float) -> list[str]:
        ids = self._by_principal.get(principal)
        if not ids:
            return []
        sessions = self._sessions
        live = []
        for session_id in list(ids):  # prune what ended or moved since: the index cleans itself
            session = sessions.get(session_id)
            if session is None or session._principal != principal or not session._valid:
                ids.discard(session_id)
            elif session._in_flight or session._expires_at() > now:
                live.append(session_id)
        if not ids:
            del self._by_principal[principal]
        return live

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

    def _schedule(self, session: HttpSession) -> None:
        """Make sure an entry due no later than the session's deadline is in the heap."""
        deadline = session._expires_at()
        mark = session._expiry_mark
        if deadline != math.inf and (mark is None or deadline < mark):
            self._push(session, deadline)

    def _push(self, session: HttpSession, deadline: float) -> None:
        session._expiry_mark = deadline
        heapq.heappush(self._deadlines, (deadline, session._id))
