"""``SessionManager``: creates, finds, renames, expires and reaps sessions; owns the listeners.

It is the only thing that talks to the store. Route code reaches it through the middleware's
request functions (``get_session`` and friends); operators and tests may use it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from .config import ManagerSettings, validated
from .cookies import is_well_formed_id, new_session_id
from .errors import IllegalStateError, SessionLimitError
from .listeners import HttpSessionEvent, ListenerRegistry, deliver, settle
from .session import HttpSession
from .stats import SessionStats, StatsCounter
from .stores.base import SessionStore
from .stores.memory import MemoryStore

logger = logging.getLogger("servletsession")

Clock = Callable[[], float]
_REAP_BATCH = 1000


class SessionManager:
    """Owns every session of one app: creation, lookup, ID change, expiry, listeners, stats.

    ``clock`` returns seconds since the epoch; inject one to control time in tests. The reaper
    runs every ``reaper_interval`` seconds once started (the middleware starts it on lifespan
    startup, or on the first request when the server sends no lifespan events).
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        *,
        listeners: Iterable[object] = (),
        max_inactive_interval: int = 1800,
        absolute_timeout: float | None = None,
        max_active_sessions: int | None = None,
        reaper_interval: float = 60.0,
        retry_after: int = 5,
        clock: Clock = time.time,
    ) -> None:
        self.settings: ManagerSettings = validated(
            ManagerSettings,
            max_inactive_interval=max_inactive_interval,
            absolute_timeout=absolute_timeout,
            max_active_sessions=max_active_sessions,
            reaper_interval=reaper_interval,
            retry_after=retry_after,
        )
        if store is not None and not isinstance(store, SessionStore):
            raise TypeError(
                f"store must be a SessionStore (e.g. MemoryStore()), got {type(store).__name__}"
            )
        self.store: SessionStore = store if store is not None else MemoryStore()
        self.clock = clock
        self._listeners = ListenerRegistry(listeners)
        self._counter = StatsCounter()
        live = self.store.live_sessions()
        self._store_is_live = live is not None
        # Live store: its own map. Otherwise: the sessions requests of this process are using,
        # so that concurrent requests of one session share one object.
        self._live: dict[str, HttpSession] = live if live is not None else {}
        self._reaper: asyncio.Task[None] | None = None
        self._reaper_stopped = False

    # --- listeners (SessionOwner) ------------------------------------------------------------

    @property
    def listeners(self) -> ListenerRegistry:
        return self._listeners

    def add_listener(self, listener: object) -> None:
        """Register a listener implementing any of the listener protocols' methods."""
        self._listeners.add(listener)

    def remove_listener(self, listener: object) -> None:
        self._listeners.remove(listener)

    def check_value(self, name: str, value: Any) -> None:
        self.store.check_value(name, value)

    def expiry_changed(self, session: HttpSession) -> None:
        self.store.expiry_changed(session)

    def session_expiring(self, session: HttpSession, reason: str) -> None:
        if self._live.get(session._id) is session:
            del self._live[session._id]
        self._counter.ended(reason, self.clock() - session._creation_time)

    # --- creation and lookup -----------------------------------------------------------------

    def create_session(self) -> HttpSession:
        """A new session, joined by the calling request; fires ``session_created``.

        Raises :class:`SessionLimitError` when ``max_active_sessions`` is reached.
        """
        settings = self.settings
        limit = settings.max_active_sessions
        if limit is not None and len(self._live) >= limit:
            self._counter.rejected += 1
            raise SessionLimitError(limit, settings.retry_after)
        session_id = new_session_id()
        while session_id in self._live:  # 256 random bits: never, but a guarantee is cheap
            session_id = new_session_id()
        session = HttpSession(
            self,
            session_id,
            creation_time=self.clock(),
            max_inactive_interval=settings.max_inactive_interval,
            absolute_timeout=settings.absolute_timeout,
        )
        session._in_flight = 1
        self._live[session_id] = session
        counter = self._counter
        counter.created += 1
        counter.max_active = max(counter.max_active, len(self._live))
        created = self._listeners.methods("session_created")
        if created:
            deliver(session, created, HttpSessionEvent(session))
        return session

    async def find(self, session_id: str) -> HttpSession | None:
        """The live session with this ID, joined by the calling request; ``None`` if there is
        none. A session found past its deadline is expired then and there (its listeners fire)
        and ``None`` is returned: an expired session is never handed out."""
        if not is_well_formed_id(session_id):
            return None
        now = self.clock()
        session = self._live.get(session_id)
        if session is None and not self._store_is_live:
            session = await self.store.load(session_id, self)
            if session is not None:
                self._live[session_id] = session
        if session is None:
            self._counter.unknown_ids += 1
            return None
        if session._in_flight == 0 and session._expires_at() <= now:
            await self._destroy(session, "expired")
            self._counter.unknown_ids += 1
            return None
        session._begin_access(now)
        return session

    async def release(self, session: HttpSession) -> None:
        """The calling request is done with ``session``: deliver its pending async events, then
        save what changed — or drop it if it was invalidated, or if it is new and still empty
        (empty sessions are never stored)."""
        await settle(session)
        session._end_access(self.clock())
        if not session._valid:
            if session._stored and not self._store_is_live:
                await self.store.delete(session._id)
            return
        if session._is_new and not session._attributes and session._in_flight == 0:
            await self._destroy(session, "discarded")
            return
        changed = session._take_changes()
        if changed or not session._stored or session._meta_changed or session._previous_id:
            session._meta_changed = False
            previous, session._previous_id = session._previous_id, None
            if previous is not None and session._stored:
                await self.store.rename(previous, session)
            await self.store.save(session, changed)
        if session._in_flight == 0 and not self._store_is_live:
            self._live.pop(session._id, None)

    # --- ID change and invalidation ----------------------------------------------------------

    def change_session_id_now(self, session: HttpSession) -> str:
        """Give ``session`` a new ID at once in this process; the store follows at release.

        Fires ``session_id_changed(event, old_session_id)``. Attributes and creation time stay.
        """
        if not session._valid:
            raise IllegalStateError("change_session_id(): the session has been invalidated")
        old_id = session._id
        new_id = new_session_id()
        while new_id in self._live:
            new_id = new_session_id()
        if self._live.get(old_id) is session:
            del self._live[old_id]
        session._id = new_id
        self._live[new_id] = session
        if session._previous_id is None:
            session._previous_id = old_id
        changed = self._listeners.methods("session_id_changed")
        if changed:
            deliver(session, changed, HttpSessionEvent(session), old_id)
        return new_id

    async def change_session_id(self, session: HttpSession) -> str:
        """Give ``session`` a new ID here and in the store; the old ID is dead once this returns."""
        new_id = self.change_session_id_now(session)
        await settle(session)
        previous, session._previous_id = session._previous_id, None
        if previous is not None and session._stored:
            await self.store.rename(previous, session)
        return new_id

    async def invalidate(self, session: HttpSession) -> None:
        """``session.invalidate()``, then wait for its listeners and remove it from the store."""
        session.invalidate()
        await settle(session)
        if session._stored and not self._store_is_live:
            await self.store.delete(session._id)

    async def _destroy(self, session: HttpSession, reason: str) -> None:
        session._expire(reason)
        await settle(session)
        if session._stored and not self._store_is_live:
            await self.store.delete(session._id)

    # --- the reaper --------------------------------------------------------------------------

    async def reap(self) -> int:
        """One reaper tick: expire every session past its deadline; return how many.

        Only sessions that are due are touched (the store indexes deadlines), and each fires
        ``session_destroyed`` with its attributes still readable.
        """
        now = self.clock()
        total = 0
        while True:
            batch = await self.store.claim_expired(now, _REAP_BATCH)
            for session in batch:
                session._expire("expired")
                await settle(session)
            total += len(batch)
            if len(batch) < _REAP_BATCH:
                return total

    @property
    def reaper_running(self) -> bool:
        return self._reaper is not None and not self._reaper.done()

    def start_reaper(self) -> None:
        """Start the background reaper on the running event loop (idempotent)."""
        if self.reaper_running:
            return
        self._reaper_stopped = False
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    def start_reaper_lazily(self) -> None:
        """Start the reaper unless it runs already or was stopped on purpose (shutdown)."""
        if self._reaper is None and not self._reaper_stopped:
            self.start_reaper()

    async def stop_reaper(self) -> None:
        """Stop the background reaper and wait for it to finish its tick."""
        self._reaper_stopped = True
        task, self._reaper = self._reaper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _reap_forever(self) -> None:
        interval = self.settings.reaper_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception:
                logger.exception("session reaper tick failed; retrying in %s s", interval)

    # --- operations --------------------------------------------------------------------------

    async def stats(self) -> SessionStats:
        """Counters since the manager started, and the number of sessions held now."""
        return self._counter.snapshot(await self.store.count())

    def note_bad_cookie(self) -> None:
        self._counter.bad_cookies += 1

    async def close(self) -> None:
        """Stop the reaper and close the store."""
        await self.stop_reaper()
        await self.store.close()

    async def __aenter__(self) -> SessionManager:
        self.start_reaper()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<SessionManager store={type(self.store).__name__} live={len(self._live)}>"
