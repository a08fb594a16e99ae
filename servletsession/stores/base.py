"""The store contract: where sessions live between requests.

The manager is a store's only caller; route code never sees one. Stores are async, the session API
is not: the middleware loads a request's session before the app runs and saves what changed as the
response goes out. Time is always passed in (``now``), so that one injectable clock rules.

Two kinds of store meet two contracts:

* [`SessionStore`][servletsession.SessionStore] — what every store answers: counts and indexes for
  operators and limits.
* `SharedStore` — a store that several processes share (SQL, Redis). It holds records, not
  live objects, and it is the truth: every request confirms its session with it, every end of a
  session is claimed in it, and it hands each expired session to exactly one process. Its methods
  take and return plain `StoredSession` / `SessionWrite` records; a store author
  reads the docstrings below and knows the job.

``MemoryStore`` keeps live objects in this process and is driven directly by the manager.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import StoreUnavailableError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "LockLostError",
    "SessionStore",
    "SessionWrite",
    "SharedStore",
    "StoreUnavailableError",
    "StoredSession",
]


class LockLostError(StoreUnavailableError):
    """A save under ``locking="session"`` found its lock held by another request (its lease ran
    out while the store could not be reached); the save was refused, nothing was written."""


@dataclass(slots=True)
class StoredSession:
    """A session as a shared store holds it. ``expires_at`` is ``math.inf`` for never;
    ``attributes`` are the stored (encoded) values, ``None`` when only metadata was asked for."""

    creation_time: float
    last_access: float
    expires_at: float
    max_inactive_interval: int
    absolute_timeout: float | None
    principal: str | None
    attributes: dict[str, bytes] | None = None


@dataclass(slots=True)
class SessionWrite:
    """What one save changes: encoded attributes to write, names to delete, and metadata only
    where this request changed it (so that a concurrent request's change is never reverted)."""

    written: dict[str, bytes] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    principal_changed: bool = False
    principal: str | None = None
    timeouts_changed: bool = False
    max_inactive_interval: int = 0
    absolute_timeout: float | None = None
    #: With ``locking="session"``: the token of the request's lock; the save is refused with
    #: `LockLostError` unless that token still holds the session's lock.
    lock_token: str | None = None

    def __bool__(self) -> bool:
        return bool(self.written or self.removed or self.principal_changed)


class SessionStore(ABC):
    """Base class of every store."""

    def check_value(self, name: str, value: Any) -> None:
        """Raise ``TypeError`` naming ``name`` and the type if ``value`` (or ``name``) cannot be
        persisted. Called by ``set_attribute`` so that the caller learns at once, not at save
        time (Servlet spec: ``IllegalArgumentException``)."""

    def allow_models(self, models: Iterable[type[BaseModel]]) -> None:
        """Allow these pydantic model classes as attribute values (serializing stores)."""

    @abstractmethod
    async def count(self) -> int:
        """How many sessions the store holds."""

    @abstractmethod
    async def sessions_of(self, principal: str, now: float) -> list[str]:
        """The IDs of the unexpired sessions bound to ``principal``, from an index (never a
        scan of all sessions). The index follows expiry, invalidation and ID changes, and keeps
        no entry of a session that is gone."""

    @abstractmethod
    async def session_ids(self, offset: int, limit: int) -> list[str]:
        """A page of the stored sessions' IDs, in a stable order: for operators (the admin app,
        the CLI), never for request handling."""

    @abstractmethod
    async def least_recent(self, count: int, now: float) -> list[str]:
        """Up to ``count`` IDs of the sessions closest to their idle deadline (for sessions with
        one idle timeout: the least recently used), for ``evict_lru``."""

    async def close(self) -> None:
        """Release connections and other resources."""


class SharedStore(SessionStore):
    """A store that several processes share. Every method is one round trip where it can be,
    and raises `StoreUnavailableError` when the store cannot answer (never anything
    that would turn into a fresh session or an HTTP 500).

    Deadlines: ``expires_at`` is rewritten only when it has fallen below ``now + interval``; it
    is then set to ``now + interval + pad`` (``pad = min(save_period, 10 % of interval)``), capped
    by the absolute deadline. So a live session never idles out early, an idle one outlives its
    interval by at most ``pad``, and a read costs no deadline write most of the time.
    """

    save_period: float = 30.0

    def pad(self, interval: int) -> float:
        """How far a stored idle deadline may run ahead of the real one."""
        return min(self.save_period, 0.1 * interval) if interval > 0 else 0.0

    def next_deadline(
        self,
        expires_at: float,
        interval: int,
        absolute_timeout: float | None,
        creation_time: float,
        now: float,
        *,
        force: bool = False,
    ) -> float | None:
        """The deadline to write for a session active at ``now``, or ``None`` to keep the stored
        one (``force``: the timeouts changed, always recompute)."""
        cap = creation_time + absolute_timeout if absolute_timeout is not None else math.inf
        if interval <= 0:
            target = cap
        else:
            if not force and expires_at >= now + interval:
                return None
            target = min(now + interval + self.pad(interval), cap)
        return None if target == expires_at and not force else target

    @abstractmethod
    async def load(
        self, session_id: str, now: float, *, touch: bool = True, attributes: bool = True
    ) -> StoredSession | None:
        """The session stored under ``session_id``, or ``None`` if there is none.

        With ``touch`` (a request joins it), in the same round trip: record ``now`` as its last
        access and return the *previous* one in ``last_access``, and rewrite the deadline by the
        rule above. A session found past its deadline is returned untouched (the manager claims
        it). ``attributes=False`` leaves them out (the process holds the session already).
        """

    @abstractmethod
    async def create(self, session_id: str, session: StoredSession, now: float) -> None:
        """Store a new session (its ID is fresh: 256 random bits) with all its attributes."""

    @abstractmethod
    async def save(self, session_id: str, write: SessionWrite, now: float) -> float | None:
        """Apply ``write`` (attributes by name, metadata only where flagged) and refresh the
        deadline by the rule above; return the stored deadline. ``None`` (nothing written) if the
        session is gone: an ended session is never resurrected."""

    @abstractmethod
    async def touch(self, session_id: str, now: float) -> float | None:
        """Count activity at ``now`` (a request still running, an open websocket): refresh the
        deadline by the rule above without recording an access. ``None`` if the session is
        gone."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Remove the session; ``True`` only for the one caller that actually removed it, which
        is therefore the one that fires ``session_destroyed``."""

    @abstractmethod
    async def claim(self, session_id: str, now: float) -> StoredSession | None:
        """Remove the session if its deadline is ``<= now`` and return it (attributes included),
        to exactly one caller; ``None`` if it is gone or not due."""

    @abstractmethod
    async def rename(self, old_id: str, new_id: str) -> bool:
        """Move the stored session to ``new_id``, atomically, with its indexes and lock: once
        this returns, ``old_id`` finds nothing. ``False`` if nothing was stored under ``old_id``."""

    @abstractmethod
    async def claim_expired(
        self, now: float, limit: int, in_use: Collection[str] = ()
    ) -> list[tuple[str, StoredSession]]:
        """Remove and return up to ``limit`` sessions whose deadline is ``<= now`` (attributes
        included), skipping the IDs in ``in_use``. Each is claimed by exactly one caller, even
        with several processes reaping. The cost grows with the sessions due, never with all."""

    @abstractmethod
    async def acquire_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        """Try once to take the session's lock for ``lease`` seconds under ``token``. ``True``
        if taken, or if no session is stored under that ID (nothing to serialize)."""

    @abstractmethod
    async def renew_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        """Extend the lease if ``token`` still holds the lock; ``False`` if it does not."""

    @abstractmethod
    async def release_lock(self, session_id: str, token: str) -> None:
        """Release the lock if ``token`` still holds it (never another request's lock)."""
