"""The store contract: where sessions live between requests.

The manager is a store's only caller; route code never sees one. Stores are async, the session API
is not: the middleware loads a request's session before the app runs and saves what changed as the
response goes out. Time is always passed in (``now``), so that one injectable clock rules.

A store implements the abstract methods below; each docstring states the guarantee the manager
relies on. The other methods have defaults that suit a store keeping everything in one process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import StoreUnavailableError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..session import HttpSession, SessionOwner

__all__ = ["SessionStore", "StoreUnavailableError"]


class SessionStore(ABC):
    """Base class of every store. Subclass it and implement the abstract methods."""

    # --- synchronous hooks (called from route code, must not do I/O) --------------------------

    def live_sessions(self) -> dict[str, HttpSession] | None:
        """The store's own ID → session map, if it keeps live objects in this process.

        A store that returns a dict promises that it *is* the storage: the manager reads and
        updates it directly, and ``load`` is never called. Serializing stores return ``None``.
        """
        return None

    def check_value(self, name: str, value: Any) -> None:
        """Raise ``TypeError`` naming ``name`` and the type if ``value`` cannot be persisted.

        Called by ``set_attribute`` so that the caller learns at once, not at save time.
        """

    def allow_models(self, models: Iterable[type[BaseModel]]) -> None:
        """Allow these pydantic model classes as attribute values (serializing stores)."""

    def expiry_changed(self, session: HttpSession) -> None:
        """A hint that ``session``'s deadline moved (its timeout was changed)."""

    def principal_changing(self, session: HttpSession, new: str | None) -> None:
        """A hint that ``session`` is being bound to principal ``new`` (``None``: unbound);
        stores that persist write the principal with the session's next save."""

    # --- the contract ------------------------------------------------------------------------

    @abstractmethod
    async def load(
        self, session_id: str, owner: SessionOwner, now: float, touch: bool = True
    ) -> HttpSession | None:
        """Return the session stored under ``session_id``, or ``None`` if there is none.

        May return a session whose deadline has passed (the manager expires it, claiming it with
        ``delete``). With ``touch``, a store that throttles last-access writes refreshes the
        stored deadline when its ``save_period`` has passed, in the same round trip if it can;
        without, it only reads (operators listing sessions). A stored session that cannot be
        read back is logged, removed, and reported as ``None``.
        """

    @abstractmethod
    async def save(self, session: HttpSession, changed_names: set[str], now: float) -> bool:
        """Persist ``session``'s metadata and, of its attributes, only ``changed_names`` (set or
        removed since the last save), so that concurrent writers of other attributes lose
        nothing. A session saved for the first time is written whole. Returns ``False`` (and
        writes nothing) if a stored session vanished meanwhile: it is never resurrected."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Remove the session; ``True`` only for the one caller that actually removed it, which
        is therefore the one that fires ``session_destroyed`` when it expires."""

    @abstractmethod
    async def rename(self, old_id: str, session: HttpSession) -> bool:
        """Move the stored session from ``old_id`` to ``session``'s current ID, atomically: once
        this returns, ``old_id`` finds nothing. ``False`` if nothing was stored under ``old_id``."""

    @abstractmethod
    async def claim_expired(
        self, owner: SessionOwner, now: float, limit: int, in_use: Collection[str] = ()
    ) -> list[HttpSession]:
        """Remove and return up to ``limit`` sessions whose deadline is ``<= now``, skipping the
        IDs in ``in_use`` (requests of this process are using them), attributes still readable.

        A session is claimed by exactly one caller, even with several processes reaping, so that
        ``session_destroyed`` fires once. The cost must grow with the number of sessions due,
        never with all sessions.
        """

    @abstractmethod
    async def count(self) -> int:
        """How many sessions the store holds."""

    @abstractmethod
    async def sessions_of(self, principal: str, now: float) -> list[str]:
        """The IDs of the unexpired sessions bound to ``principal``, from an index (never a
        scan of all sessions). The index follows expiry, invalidation and ID changes."""

    @abstractmethod
    async def session_ids(self, offset: int, limit: int) -> list[str]:
        """A page of the stored sessions' IDs, in a stable order: for operators (the admin app,
        the CLI), never for request handling."""

    @abstractmethod
    async def least_recent(self, count: int, now: float) -> list[str]:
        """Up to ``count`` IDs of the sessions closest to their idle deadline (for sessions with
        one idle timeout: the least recently used), for ``evict_lru``."""

    async def acquire_lock(self, session_id: str, token: str, ttl: float, now: float) -> bool:
        """Try once to take the session's cross-process lock for ``ttl`` seconds.

        ``True`` if taken (or if this store needs no lock: everything is in one process)."""
        return True

    async def release_lock(self, session_id: str, token: str) -> None:
        """Release the lock if ``token`` still holds it."""

    async def close(self) -> None:
        """Release connections and other resources."""
