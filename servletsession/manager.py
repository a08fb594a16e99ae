"""``SessionManager``: creates, finds, saves, renames, expires and reaps sessions; owns listeners.

It is the only thing that talks to the store. Route code reaches it through the request functions
(``get_session`` and friends); operators and tests may use it directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal

from .config import ManagerSettings, validated
from .cookies import is_well_formed_id, new_session_id
from .errors import IllegalStateError
from .limits import SessionLimits
from .listeners import (
    CookieRejectedEvent,
    HttpSessionEvent,
    ListenerRegistry,
    deliver,
    notify,
    settle,
)
from .persistence import StoreSync
from .reaper import Reaper
from .session import HttpSession
from .stats import SessionStats, StatsCounter
from .stores.base import SessionStore
from .stores.memory import MemoryStore
from .websockets import SessionSockets

if TYPE_CHECKING:
    from pydantic import BaseModel

logger = logging.getLogger("servletsession")

Clock = Callable[[], float]
_REAP_BATCH = 1000


class SessionManager:
    """Owns every session of one app: creation, lookup, ID change, expiry, listeners, stats.

    ``clock`` returns seconds since the epoch; inject one to control time in tests. ``save_mode``
    picks which attributes a request writes back (Spring Session's ``SaveMode``): ``"on_set"``
    those set or removed, ``"on_get"`` also those read, ``"always"`` all. ``locking="session"``
    serialises one session's requests, in this process and across processes (a lock in the
    store, waited for up to ``lock_timeout`` seconds), for apps whose concurrent requests change
    the same attribute; ``MemoryStore`` shares one live object instead and ignores it.
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        *,
        listeners: Iterable[object] = (),
        max_inactive_interval: int = 1800,
        absolute_timeout: float | None = None,
        max_active_sessions: int | None = None,
        max_active_policy: Literal["reject", "evict_lru"] = "reject",
        max_sessions_per_principal: int | None = None,
        per_principal_policy: Literal["reject", "evict_oldest"] = "reject",
        reaper_interval: float = 60.0,
        retry_after: int = 5,
        save_mode: Literal["on_set", "on_get", "always"] = "on_set",
        locking: Literal["none", "session"] = "none",
        lock_timeout: float = 10.0,
        websocket_touch_interval: float | None = 60.0,
        models: Iterable[type[BaseModel]] = (),
        clock: Clock = time.time,
    ) -> None:
        self.settings: ManagerSettings = validated(
            ManagerSettings,
            max_inactive_interval=max_inactive_interval,
            absolute_timeout=absolute_timeout,
            max_active_sessions=max_active_sessions,
            max_active_policy=max_active_policy,
            max_sessions_per_principal=max_sessions_per_principal,
            per_principal_policy=per_principal_policy,
            reaper_interval=reaper_interval,
            retry_after=retry_after,
            save_mode=save_mode,
            locking=locking,
            lock_timeout=lock_timeout,
            websocket_touch_interval=websocket_touch_interval,
        )
        if store is not None and not isinstance(store, SessionStore):
            raise TypeError(
                f"store must be a SessionStore (e.g. MemoryStore()), got {type(store).__name__}"
            )
        self.store: SessionStore = store if store is not None else MemoryStore()
        self.store.allow_models(models)
        checks = type(self.store).check_value is not SessionStore.check_value
        self._value_check = self.store.check_value if checks else None
        self.clock = clock
        self._listeners = ListenerRegistry(listeners)
        self._counter = StatsCounter()
        live = self.store.live_sessions()
        self._store_is_live = live is not None
        # Live store: its own map. Otherwise: the sessions requests of this process are using,
        # so that concurrent requests of one session share one object.
        self._live: dict[str, HttpSession] = live if live is not None else {}
        self._track_reads = self.settings.save_mode == "on_get"
        self._exclusive = self.settings.locking == "session" and not self._store_is_live
        self._reaper = Reaper(self.reap, self.settings.reaper_interval)
        self._limits = SessionLimits(self)
        self._sync = StoreSync(self)
        self._sockets = SessionSockets()
        settings = self.settings
        #: Whether sessions need work as the response starts: a store that leaves the process
        #: saves then, and limits decided at save time are applied then.
        self._enforcing = settings.max_sessions_per_principal is not None or (
            settings.max_active_sessions is not None and settings.max_active_policy == "evict_lru"
        )
        self.flushes = not self._store_is_live or self._enforcing
        self._hook_tasks: set[asyncio.Task[Any]] = set()

    # --- listeners (SessionOwner) ------------------------------------------------------------

    @property
    def listeners(self) -> ListenerRegistry:
        return self._listeners

    def add_listener(self, listener: object) -> None:
        """Register a listener implementing any of the listener protocols' methods."""
        self._listeners.add(listener)

    def remove_listener(self, listener: object) -> None:
        self._listeners.remove(listener)

    @property
    def value_check(self) -> Callable[[str, Any], None] | None:
        return self._value_check

    def expiry_changed(self, session: HttpSession) -> None:
        self.store.expiry_changed(session)

    def principal_changing(self, session: HttpSession, new: str | None) -> None:
        self.store.principal_changing(session, new)

    def session_expiring(self, session: HttpSession, reason: str) -> None:
        if self._live.get(session._id) is session:
            del self._live[session._id]
        self._counter.ended(reason, self.clock() - session._creation_time)
        self._sockets.session_ended(session)

    # --- creation and lookup -----------------------------------------------------------------

    def create_session(self) -> HttpSession:
        """A new session, joined by the calling request; fires ``session_created``.

        Raises :class:`SessionLimitError` when ``max_active_sessions`` is reached.
        """
        settings = self.settings
        self._limits.check_create()
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
        session._track_reads = self._track_reads
        self._live[session_id] = session
        self._limits.created()
        counter = self._counter
        counter.created += 1
        counter.max_active = max(counter.max_active, self._limits.active)
        created = self._listeners.session_created
        if created:
            deliver(session, created, HttpSessionEvent(session))
        return session

    async def find(self, session_id: str) -> HttpSession | None:
        """The live session with this ID, joined by the calling request; ``None`` if there is
        none. A session found past its deadline is expired then and there (its listeners fire)
        and ``None`` is returned: an expired session is never handed out.

        Raises :class:`StoreUnavailableError` if the store cannot be reached.
        """
        if not is_well_formed_id(session_id):
            return None
        return await self.join(session_id)

    async def join(self, session_id: str) -> HttpSession | None:
        """:meth:`find` for an ID already validated (the middleware's, from a signed cookie)."""
        if self._exclusive:
            session = await self._sync.load_exclusively(session_id)
        else:
            session = self._live.get(session_id)
            if session is None and not self._store_is_live:
                session = await self._sync.load(session_id)
        if session is None:
            return None
        now = self.clock()
        if session._in_flight == 0 and session._expires_at() <= now:
            await self._destroy(session, "expired")
            await self._sync.forget(session)
            return None
        session._begin_access(now)
        return session

    # --- saving ------------------------------------------------------------------------------

    async def flush(self, session: HttpSession) -> None:
        """Write what changed now, before the response goes out, so that the browser's next
        request — on any process — sees it; limits decided at save time are applied here."""
        if session._valid and self._enforcing:
            await self._limits.enforce(session)
        if self._store_is_live:
            return
        await settle(session)
        if not session._valid:
            await self._sync.delete_stored(session)
        elif session._stored or session._attributes:
            await self._sync.save(session)

    async def release(self, session: HttpSession) -> None:
        """The calling request is done with ``session``: deliver its pending async events, then
        save what changed — or drop it if it was invalidated, or if it is new and still empty
        (empty sessions are never stored)."""
        if session._listener_tail is not None:
            await settle(session)
        session._end_access(self.clock())
        try:
            if not session._valid:
                await self._sync.delete_stored(session)
            elif session._is_new and not session._attributes and session._in_flight == 0:
                await self._destroy(session, "discarded")
            else:
                if self._enforcing:
                    await self._limits.enforce(session)
                if not (self._store_is_live and session._stored and not session._meta_changed):
                    await self._sync.save(session)
                elif session._previous_id is None:
                    session._changed_names = None  # live objects: the store holds the change
                else:
                    await self._sync.save(session)
        finally:
            if not self._store_is_live:
                await self._sync.forget(session)

    # --- ID change and invalidation ----------------------------------------------------------

    def change_session_id_now(self, session: HttpSession) -> str:
        """Give ``session`` a new ID at once in this process; the store follows on save.

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
        changed = self._listeners.session_id_changed
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
            if previous in self._sync.locks:
                self._sync.locks[new_id] = self._sync.locks.pop(previous)
        return new_id

    async def invalidate(self, session: HttpSession) -> None:
        """``session.invalidate()``, then wait for its listeners and remove it from the store."""
        session.invalidate()
        await settle(session)
        await self._sync.delete_stored(session)

    async def touch(self, session: HttpSession) -> bool:
        """Count a long-lived connection's presence as activity: restart the session's idle
        clock and, on a shared store, its stored deadline. ``False`` if the session has ended —
        here, or in another process (its save finds nothing to update)."""
        if not session._valid:
            return False
        now = self.clock()
        session._idle_since = now
        if self._store_is_live or not session._stored:
            return True
        if await self.store.save(session, set(), now):
            return True
        session._valid = False  # ended elsewhere; that process fired its listeners
        session._stored = False
        if self._live.get(session._id) is session:
            del self._live[session._id]
        self._sockets.session_ended(session)
        return False

    async def _end(self, session: HttpSession, reason: str) -> None:
        """End ``session`` whether a request of this process holds it or it was just loaded."""
        if self._store_is_live or self._live.get(session._id) is session:
            session._expire(reason)
            await settle(session)
            await self._sync.delete_stored(session)
        else:
            await self._destroy(session, reason)

    async def _destroy(self, session: HttpSession, reason: str) -> None:
        """Expire or discard ``session``. In a shared store the deletion is the claim: only the
        process whose delete removed it fires the listeners."""
        if session._stored and not self._store_is_live:
            claimed = await self.store.delete(session._id)
            session._stored = False
            if not claimed:  # another process is expiring it: end it here without events
                session._valid = False
                if self._live.get(session._id) is session:
                    del self._live[session._id]
                return
        session._expire(reason)
        await settle(session)

    # --- principals ------------------------------------------------------------------------

    async def sessions_of(self, principal: str) -> list[HttpSession]:
        """The live sessions bound to ``principal`` (``session.principal``), on every store.

        Sessions a request of this process is using are those very objects; the others are
        read from the store without counting as an access.
        """
        found = []
        for session_id in await self.store.sessions_of(principal, self.clock()):
            session = await self.peek(session_id)
            if session is not None and session._principal == principal:
                found.append(session)
        return found

    async def peek(self, session_id: str) -> HttpSession | None:
        """The valid session with this ID, for looking at, not joining: the object a request of
        this process holds, or else a copy read from the store without counting as an access."""
        session = self._live.get(session_id)
        if session is None and not self._store_is_live:
            session = await self.store.load(session_id, self, self.clock(), touch=False)
        return session if session is not None and session._valid else None

    async def invalidate_all(self, principal: str, keep: HttpSession | str | None = None) -> int:
        """Invalidate every session of ``principal`` except ``keep`` (a session or its ID): log
        out everywhere, or everywhere else after a password change. Returns how many ended;
        each fires ``session_destroyed`` once."""
        keep_id = keep._id if isinstance(keep, HttpSession) else keep
        ended = 0
        for session in await self.sessions_of(principal):
            if session._id != keep_id and session._valid:
                await self._end(session, "invalidated")
                ended += 1
        return ended

    # --- the reaper --------------------------------------------------------------------------

    async def reap(self) -> int:
        """One reaper tick: expire every session past its deadline; return how many.

        Only sessions that are due are touched (the store indexes deadlines), each is claimed by
        exactly one process, and each fires ``session_destroyed`` with its attributes readable.
        """
        now = self.clock()
        total = 0
        while True:
            in_use = (
                [sid for sid, s in self._live.items() if s._in_flight]
                if not self._store_is_live
                else ()
            )
            batch = await self.store.claim_expired(self, now, _REAP_BATCH, in_use)
            for session in batch:
                session._owner = self
                session._expire("expired")
                await settle(session)
            total += len(batch)
            if len(batch) < _REAP_BATCH:
                return total

    @property
    def reaper_running(self) -> bool:
        return self._reaper.running

    def start_reaper(self) -> None:
        """Start the background reaper on the running event loop (idempotent)."""
        self._reaper.start()

    def start_reaper_lazily(self) -> None:
        """Start the reaper unless it runs already or was stopped on purpose (shutdown)."""
        if self._reaper.idle:
            self._reaper.start()

    async def stop_reaper(self) -> None:
        """Stop the background reaper and wait for it to finish its tick."""
        await self._reaper.stop()

    # --- operations --------------------------------------------------------------------------

    async def stats(self) -> SessionStats:
        """Counters since the manager started, and the number of sessions held now."""
        return self._counter.snapshot(await self.store.count())

    async def before_request(self) -> None:
        """Refresh what a request may need decided synchronously (a shared store's count)."""
        await self._limits.refresh()

    def cookie_rejected(self, reason: str, scope: MutableMapping[str, Any]) -> None:
        """Count a refused session cookie and tell the ``cookie_rejected`` listeners.

        ``reason``: ``"malformed"``, ``"duplicate"`` (cookie tossing), ``"bad_signature"`` or
        ``"unknown_id"`` (signed, but no live session: expired, invalidated, replayed).
        """
        self._counter.cookie_rejected(reason)
        hooks = self._listeners.cookie_rejected
        if hooks:
            notify(hooks, CookieRejectedEvent(reason, scope), self._hook_tasks)

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
