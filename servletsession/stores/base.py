"""The store contract: where sessions live between requests.

The manager is a store's only caller; route code never sees one. Stores are async, the session API
is not: the middleware loads a request's session before the app runs and saves what changed after
the response is finished.

A store implements the abstract methods below; each docstring states the guarantee the manager
relies on. The three plain methods have safe defaults.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..session import HttpSession, SessionOwner


class SessionStore(ABC):
    """Base class of every store. Subclass it and implement the abstract methods."""

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

    def expiry_changed(self, session: HttpSession) -> None:
        """A hint that ``session``'s deadline moved (its timeout was changed)."""

    @abstractmethod
    async def load(self, session_id: str, owner: SessionOwner) -> HttpSession | None:
        """Return the session stored under ``session_id``, or ``None`` if there is none.

        May return a session whose deadline has passed: the manager checks expiry itself.
        """

    @abstractmethod
    async def save(self, session: HttpSession, changed_names: set[str]) -> None:
        """Persist ``session``: its metadata, and of its attributes the ``changed_names`` only
        (set or removed since the last save), so that concurrent writers of other attributes
        lose nothing. A session saved for the first time is written whole."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Remove the session; ``True`` only for the one call that actually removed it."""

    @abstractmethod
    async def rename(self, old_id: str, session: HttpSession) -> None:
        """Move the stored session from ``old_id`` to ``session``'s current ID, atomically: once
        this returns, ``old_id`` finds nothing."""

    @abstractmethod
    async def claim_expired(self, now: float, limit: int) -> list[HttpSession]:
        """Remove and return up to ``limit`` sessions whose deadline is ``<= now`` and that no
        request is using, attributes still readable.

        A session is claimed by exactly one caller, even with several processes reaping, so that
        ``session_destroyed`` fires once. The cost must grow with the number of sessions due,
        never with all sessions.
        """

    @abstractmethod
    async def count(self) -> int:
        """How many sessions the store holds."""

    async def close(self) -> None:
        """Release connections and other resources."""
