"""Starting and stopping a manager: the reaper, the keeper, and what lifespan runs.

A mixin of `SessionManager`, kept apart so that the manager's module holds the session
lifecycle (create, find, save, rename, end) and this one the process's: lifespan startup restores
``MemoryStore(persist_to=...)`` sessions and starts the background tasks; shutdown stops them,
lets a reaper tick deliver what it claimed, and saves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from .live import LiveSessions

if TYPE_CHECKING:
    from .persistence import Sessions
    from .reaper import Background
    from .stores.base import SessionStore

_REAP_BATCH = 200  # claimed, then delivered together: one unit of a reaper tick


class Running:
    """The background work of a `SessionManager` and its start and stop."""

    _sessions: Sessions
    _background: Background
    store: SessionStore
    stopping: bool

    async def reap(self) -> int:
        """One reaper tick: expire every session past its deadline; return how many.

        Only sessions that are due are touched (the store indexes deadlines), each is claimed by
        exactly one process, and each fires ``session_destroyed`` with its attributes readable.
        """
        return await self._sessions.reap(_REAP_BATCH)

    async def keep_alive(self) -> None:
        """One keeper tick (shared stores): sessions in use here stay ahead of their deadline,
        their lock leases are renewed, and their absolute timeout is enforced."""
        await self._sessions.keep_alive()

    @property
    def reaper_running(self) -> bool:
        return self._background.running

    def start_reaper(self) -> None:
        """Start the background reaper (and keeper) on the running event loop (idempotent)."""
        self._background.start()

    def start_reaper_lazily(self) -> None:
        """Start the reaper unless it runs already or was stopped on purpose (shutdown)."""
        if self._background.idle:
            self._background.start()

    async def stop_reaper(self) -> None:
        """Stop the reaper and keeper; a tick under way claims nothing more and finishes
        delivering what it claimed (bounded by ``shutdown_timeout``)."""
        self.stopping = True
        try:
            await self._background.stop()
        finally:
            self.stopping = False

    async def start(self) -> None:
        """Lifespan startup, ``async with``: restore ``MemoryStore(persist_to=)``, start reaping."""
        if isinstance(self._sessions, LiveSessions):
            await self._sessions.restore()
        self.start_reaper()

    async def stop(self) -> None:
        """Lifespan shutdown, ``close()``: stop reaping, save ``MemoryStore(persist_to=)``."""
        await self.stop_reaper()
        if isinstance(self._sessions, LiveSessions):
            await self._sessions.save()

    async def close(self) -> None:
        """Stop the reaper (and save, see `stop`) and close the store."""
        await self.stop()
        await self.store.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
