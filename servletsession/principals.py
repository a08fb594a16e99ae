"""The per-principal view of sessions: a user's sessions, and "log out everywhere" (ASVS 7.4)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .session import HttpSession

if TYPE_CHECKING:
    from .persistence import Sessions
    from .stores.base import SessionStore


_ROUNDS = 5


class Principals:
    """Finds and ends the sessions bound to a principal, through the store's index."""

    def __init__(
        self,
        store: SessionStore,
        sessions: Sessions,
        clock: Callable[[], float],
        end: Callable[[HttpSession, str], Awaitable[bool]],
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._clock = clock
        self._end = end

    async def sessions_of(self, principal: str) -> list[HttpSession]:
        found = []
        for session_id in await self._store.sessions_of(principal, self._clock()):
            session = await self._sessions.peek(session_id)
            # The store's index decides, unless this process has rebound the session and not
            # written it yet (a share may hold an older principal than the store).
            if session is not None and (
                session._principal == principal or not session._principal_changed
            ):
                found.append(session)
        return found

    async def invalidate_all(self, principal: str, keep: HttpSession | str | None) -> int:
        """End every session of ``principal`` but ``keep``. A kept session is recognised under
        its ID and, if a request changed it and the store does not have the change yet, the
        ID the store still holds it under."""
        if isinstance(keep, HttpSession):
            kept = {keep._id, keep._previous_id}
        else:
            kept = {keep}
            held = self._sessions.in_process.get(keep) if keep is not None else None
            if held is not None:
                kept.add(held._previous_id)
        kept.discard(None)
        ended = 0
        for _ in range(_ROUNDS):  # a session renamed meanwhile is found again under its new ID
            pending = [
                session
                for session in await self.sessions_of(principal)
                if session is not keep
                and session._id not in kept
                and session._previous_id not in kept
                and session._valid
            ]
            if not pending:
                break
            for session in pending:
                if await self._end(session, "invalidated"):
                    ended += 1
        return ended
