"""Session limits: ``max_active_sessions`` and ``max_sessions_per_principal``, and their policies.

OWASP ASVS v5 7.x asks for bounded sessions. The limits are checked where they can be decided:

* ``max_active_sessions`` / ``"reject"``: when the session is created (``get_session``), so the
  request fails at once with ``SessionLimitError`` (the middleware answers ``503`` and
  ``Retry-After``). On a shared store the count is the store's, refreshed at most once a second.
* ``max_active_sessions`` / ``"evict_lru"``: when a new session is first saved (as the response
  starts), by ending the sessions closest to their idle deadline — for sessions with one idle
  timeout, the least recently used. ``session_destroyed`` fires for each.
* ``max_sessions_per_principal``: when a session is bound to a principal and saved; ``"reject"``
  unbinds it and raises ``SessionLimitError``, ``"evict_oldest"`` ends that principal's oldest
  sessions (by creation time).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .errors import SessionLimitError

if TYPE_CHECKING:
    from .manager import SessionManager
    from .session import HttpSession

_COUNT_TTL = 1.0  # seconds a shared store's session count is trusted


class SessionLimits:
    """The limit checks of one manager."""

    def __init__(self, manager: SessionManager) -> None:
        self._manager = manager
        self._shared_count = 0
        self._counted_at = -_COUNT_TTL
        self._created_since_count = 0

    @property
    def active(self) -> int:
        """Sessions held now: exact for a live store, the refreshed count otherwise."""
        manager = self._manager
        if manager._store_is_live:
            return len(manager._live)
        return self._shared_count + self._created_since_count

    def created(self) -> None:
        self._created_since_count += 1

    async def refresh(self) -> None:
        """Refresh a shared store's count if it is older than a second (one round trip)."""
        manager = self._manager
        if manager._store_is_live or manager.settings.max_active_sessions is None:
            return
        now = time.monotonic()
        if now - self._counted_at >= _COUNT_TTL:
            self._shared_count = await manager.store.count()
            self._counted_at = now
            self._created_since_count = 0

    def check_create(self) -> None:
        """Refuse a new session under ``"reject"`` when the limit is reached."""
        settings = self._manager.settings
        limit = settings.max_active_sessions
        if limit is not None and settings.max_active_policy == "reject" and self.active >= limit:
            self._manager._counter.rejected += 1
            raise SessionLimitError(limit, settings.retry_after)

    async def enforce(self, session: HttpSession) -> None:
        """The checks that are decided when ``session`` is saved (see the module docstring)."""
        manager = self._manager
        settings = manager.settings
        if session._principal_changed and session._principal is not None:
            if settings.max_sessions_per_principal is not None:
                await self._limit_principal(session, settings.max_sessions_per_principal)
            if manager._store_is_live:
                session._principal_changed = False  # nothing to write: the index is live
        limit = settings.max_active_sessions
        if (
            limit is not None
            and settings.max_active_policy == "evict_lru"
            and not session._stored
            and session._attributes
        ):
            held = await manager.store.count() + (0 if manager._store_is_live else 1)
            if held > limit:
                await self._evict(held - limit, keep=session)

    async def _limit_principal(self, session: HttpSession, limit: int) -> None:
        manager = self._manager
        principal = session._principal
        assert principal is not None
        others = [s for s in await manager.sessions_of(principal) if s._id != session._id]
        if len(others) < limit:
            return
        if manager.settings.per_principal_policy == "reject":
            manager.store.principal_changing(session, None)
            session._principal = None
            manager._counter.rejected += 1
            raise SessionLimitError(
                limit,
                manager.settings.retry_after,
                f"max_sessions_per_principal={limit} reached for this principal; the session was "
                "not bound to it (end another session, or use policy 'evict_oldest')",
            )
        others.sort(key=lambda other: other._creation_time)
        for other in others[: len(others) - limit + 1]:
            await manager._end(other, "evicted")

    async def _evict(self, count: int, keep: HttpSession) -> None:
        manager = self._manager
        now = manager.clock()
        victims = [
            sid for sid in await manager.store.least_recent(count + 1, now) if sid != keep._id
        ]
        for session_id in victims[:count]:
            victim = await manager.peek(session_id)
            if victim is not None:
                await manager._end(victim, "evicted")
