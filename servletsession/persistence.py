"""How a manager keeps its store in step with the sessions its requests use.

For a store that leaves the process: load each session once per process however many requests
ask (single flight), take the cross-process lock when ``locking="session"``, write back what
changed (per attribute, with the save mode), delete what ended, and let go of a session when no
request uses it any more. Activation listeners hear about loads and saves here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING

from .cookies import session_ref
from .errors import StoreUnavailableError
from .listeners import HttpSessionEvent, deliver_to_value

if TYPE_CHECKING:
    from .manager import SessionManager
    from .session import HttpSession

logger = logging.getLogger("servletsession")


class StoreSync:
    """The store side of one :class:`~servletsession.SessionManager`."""

    def __init__(self, manager: SessionManager) -> None:
        self._manager = manager
        self.loading: dict[str, asyncio.Future[None]] = {}
        self.locks: dict[str, str] = {}  # session ID -> token of the store lock this process holds

    async def load(self, session_id: str) -> HttpSession | None:
        """Load from the store, once per process however many requests ask at the same time."""
        manager = self._manager
        pending = self.loading.get(session_id)
        if pending is not None:
            await pending
            return manager._live.get(session_id)
        done = asyncio.get_running_loop().create_future()
        self.loading[session_id] = done
        try:
            return await self._adopt(session_id)
        finally:
            del self.loading[session_id]
            done.set_result(None)

    async def load_exclusively(self, session_id: str) -> HttpSession | None:
        """``locking="session"``: every request, of this process or another, takes the store's
        lock before loading, and holds it until it releases the session."""
        manager = self._manager
        token = await self._lock(session_id)
        try:
            session = await self._adopt(session_id)
        except BaseException:
            await manager.store.release_lock(session_id, token)
            raise
        if session is None:
            await manager.store.release_lock(session_id, token)
        else:
            self.locks[session_id] = token
        return session

    async def _adopt(self, session_id: str) -> HttpSession | None:
        manager = self._manager
        session = await manager.store.load(session_id, manager, manager.clock())
        if session is not None:
            session._track_reads = manager._track_reads
            manager._live[session_id] = session
            self.notify_values(session, "session_did_activate")
        return session

    async def _lock(self, session_id: str) -> str:
        manager = self._manager
        token = secrets.token_urlsafe(16)
        give_up = time.monotonic() + manager.settings.lock_timeout
        ttl = manager.settings.lock_timeout * 3
        delay = 0.002
        while not await manager.store.acquire_lock(session_id, token, ttl, manager.clock()):
            if time.monotonic() >= give_up:
                raise StoreUnavailableError(
                    f"session {session_ref(session_id)} stayed locked by another process for "
                    f"lock_timeout={manager.settings.lock_timeout} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return token

    async def save(self, session: HttpSession) -> None:
        """Write what changed since the last save: a pending ID change first, then the
        attributes the save mode picks, with the metadata. On failure everything stays marked,
        so that a later flush or release writes it."""
        manager = self._manager
        if (
            manager._store_is_live
            and session._stored
            and not session._meta_changed
            and session._previous_id is None
        ):
            session._changed_names = None  # live objects: the store already holds the change
            return
        changed = session._take_changes()
        mode = manager.settings.save_mode
        if mode == "always":
            changed.update(session._attributes)
        elif mode == "on_get":
            changed.update(session._take_reads())
        previous = session._previous_id
        if not changed and session._stored and not session._meta_changed and previous is None:
            return
        try:
            if previous is not None and session._stored:
                await manager.store.rename(previous, session)
                if previous in self.locks:
                    self.locks[session._id] = self.locks.pop(previous)
            session._previous_id = None
            if not manager._store_is_live:
                self.notify_values(session, "session_will_passivate")
            if not await manager.store.save(session, changed, manager.clock()):
                logger.warning(
                    "session %r ended in another process while in use here; changes dropped",
                    session,
                )
            session._meta_changed = False
            session._principal_changed = False
        except BaseException:
            if session._previous_id is None:
                session._previous_id = previous
            for name in changed:
                session._mark_changed(name)
            raise

    async def delete_stored(self, session: HttpSession) -> None:
        """Remove an ended session from a store that leaves the process (under its current ID
        and, if it changed during this request, the one it was stored under)."""
        manager = self._manager
        if session._stored and not manager._store_is_live:
            for session_id in {session._id, session._previous_id}:
                if session_id is not None:
                    await manager.store.delete(session_id)
            session._stored = False

    async def forget(self, session: HttpSession) -> None:
        """Let go of a session no request of this process uses any more (persistent stores)."""
        manager = self._manager
        if manager._store_is_live or session._in_flight > 0:
            return
        if manager._live.get(session._id) is session:
            del manager._live[session._id]
        token = self.locks.pop(session._id, None)
        if token is not None:
            await manager.store.release_lock(session._id, token)

    def notify_values(self, session: HttpSession, method_name: str) -> None:
        """Activation events go to the attribute values that listen for them."""
        event = None
        for value in list(session._attributes.values()):
            if hasattr(value, method_name):
                event = event or HttpSessionEvent(session)
                deliver_to_value(session, value, method_name, event)
