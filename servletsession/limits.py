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
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .changes import SESSION_ID
from .errors import SessionLimitError
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from .config import ManagerSettings
    from .persistence import Visit
    from .session import HttpSession
    from .stats import StatsCounter
    from .stores.base import SessionStore

_COUNT_TTL = 1.0  # seconds a shared store's session count is trusted


class LimitsHost(Protocol):
    """What the limit checks may ask of their manager."""

    settings: ManagerSettings
    store: SessionStore
    shared: bool
    clock: Callable[[], float]

    @property
    def counter(self) -> StatsCounter: ...
    @property
    def in_process(self) -> dict[str, HttpSession]: ...
    async def sessions_of(self, principal: str) -> list[HttpSession]: ...
    async def peek(self, session_id: str) -> HttpSession | None: ...
    async def end(self, session: HttpSession, reason: str = ...) -> bool: ...
    def refuse(self, visit: Visit) -> None: ...
    def principal_changing(self, session: HttpSession, new: str | None) -> None: ...
    def expiry_changed(self, session: HttpSession) -> None: ...


class SessionLimits:
    """The limit checks of one manager."""

    def __init__(self, host: LimitsHost) -> None:
        self._host = host
        settings = host.settings
        self._shared_count = 0
        self._counted_at = -_COUNT_TTL
        self._created_since_count = 0
        #: Whether limits are decided as sessions are saved (the response starts).
        self.enforcing = settings.max_sessions_per_principal is not None or (
            settings.max_active_sessions is not None and settings.max_active_policy == "evict_lru"
        )
        #: Whether a joining request keeps what it found, to undo it if a limit refuses it.
        self.snapshots = settings.max_sessions_per_principal is not None

    @property
    def active(self) -> int:
        """Sessions held now: exact for a live store, the refreshed count otherwise."""
        host = self._host
        if not host.shared:
            return len(host.in_process)
        return self._shared_count + self._created_since_count

    def created(self) -> None:
        self._created_since_count += 1

    async def refresh(self) -> None:
        """Refresh a shared store's count if it is older than a second (one round trip)."""
        host = self._host
        if not host.shared or host.settings.max_active_sessions is None:
            return
        now = time.monotonic()
        if now - self._counted_at >= _COUNT_TTL:
            self._shared_count = await host.store.count()
            self._counted_at = now
            self._created_since_count = 0
            host.counter.max_active = max(host.counter.max_active, self._shared_count)

    def check_create(self) -> None:
        """Refuse a new session under ``"reject"`` when the limit is reached."""
        settings = self._host.settings
        limit = settings.max_active_sessions
        if limit is not None and settings.max_active_policy == "reject" and self.active >= limit:
            self._host.counter.rejected += 1
            raise SessionLimitError(limit, settings.retry_after)

    async def enforce(self, session: HttpSession) -> None:
        """The checks that are decided when ``session`` is saved (see the module docstring).
        Raises [`SessionLimitError`][servletsession.SessionLimitError] for a refused binding; the
        caller undoes the request.
        """
        host = self._host
        settings = host.settings
        if session._principal_changed and session._principal is not None:
            if settings.max_sessions_per_principal is not None:
                await self._limit_principal(session, settings.max_sessions_per_principal)
            if not host.shared:
                session._principal_changed = False  # nothing to write: the index is live
        limit = settings.max_active_sessions
        if (
            limit is not None
            and settings.max_active_policy == "evict_lru"
            and not (session._stored and host.shared)
            and session._is_new
        ):
            held = await host.store.count() + (1 if host.shared else 0)
            if held > limit:
                await self._evict(held - limit, keep=session)

    async def _limit_principal(self, session: HttpSession, limit: int) -> None:
        host = self._host
        principal = session._principal
        assert principal is not None
        mine = {session._id, session._previous_id}
        others = [
            s for s in await host.sessions_of(principal) if s is not session and s._id not in mine
        ]
        if len(others) < limit:
            return
        if host.settings.per_principal_policy == "reject":
            raise SessionLimitError(
                limit,
                host.settings.retry_after,
                f"max_sessions_per_principal={limit} reached for this principal; the request "
                "was refused and changed nothing (end another session, or use policy "
                "'evict_oldest')",
            )
        others.sort(key=lambda other: other._creation_time)
        for other in others[: len(others) - limit + 1]:
            await host.end(other, "evicted")

    async def _evict(self, count: int, keep: HttpSession) -> None:
        host = self._host
        now = host.clock()
        victims = [sid for sid in await host.store.least_recent(count + 1, now) if sid != keep._id]
        for session_id in victims[:count]:
            victim = await host.peek(session_id)
            if victim is not None:
                await host.end(victim, "evicted")

    def undo(self, visit: Visit) -> None:
        """Take back what a request refused by a limit did: a session it created ends unstored;
        an existing one gets back its ID, attributes, principal and timeouts, unsaved."""
        session = visit.session
        assert session is not None
        host = self._host
        host.counter.rejected += 1
        if visit.created:
            session._expire("discarded")
            return
        snapshot = visit.snapshot
        if snapshot is not None:
            session._attributes.clear()
            session._attributes.update(snapshot.attributes)
            host.principal_changing(session, snapshot.principal)
            session._principal = snapshot.principal
            session._max_inactive_interval = snapshot.max_inactive_interval
            session._absolute_timeout = snapshot.absolute_timeout
            if isinstance(host.store, MemoryStore) and session._id != snapshot.session_id:
                new_id, session._id = session._id, snapshot.session_id  # live: renamed at once
                host.store.rename(new_id, session)
            host.expiry_changed(session)
        session._changed_names = None
        renames = session._unsaved.get(SESSION_ID) if session._unsaved else None
        session._unsaved = {SESSION_ID: renames} if renames else None  # refuse takes them back
        session._principal_changed = session._timeouts_changed = False
        host.refuse(visit)
