"""``SessionManager``: creates, finds, saves, renames, expires and reaps sessions; owns listeners.

It alone talks to the store, through one of two strategies (`servletsession.persistence`): live
objects for ``MemoryStore``, "the store decides" for a shared store. Route code reaches it through
``get_session`` and friends; operators and tests may use it directly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal

from .accessor import Accessors
from .config import ManagerSettings, validated
from .cookies import is_well_formed_id, new_session_id
from .errors import IllegalStateError, SessionLimitError
from .limits import SessionLimits
from .listeners import (
    CookieRejectedEvent,
    HttpSessionEvent,
    ListenerRegistry,
    deliver,
    notify,
    settle,
)
from .live import LiveSessions
from .owner import SessionOwner
from .persistence import Sessions, Snapshot, Visit
from .principals import Principals
from .reaper import Background, Reaper
from .running import Running
from .session import HttpSession
from .shared import SharedSessions
from .stats import SessionStats, StatsCounter
from .stores.base import SessionStore
from .stores.memory import MemoryStore
from .stores.serializing import SerializingStore
from .websockets import Send, SessionSockets, SessionWebSocket

if TYPE_CHECKING:
    from pydantic import BaseModel

logger = logging.getLogger("servletsession")

Clock = Callable[[], float]


class SessionManager(Running):
    """Owns every session of one app: creation, lookup, ID change, expiry, listeners, stats.

    ``clock`` returns seconds since the epoch; inject one to control time in tests. ``save_mode``
    picks which attributes a request writes back (Spring Session's ``SaveMode``): ``"on_set"``
    those set or removed, ``"on_get"`` also those read, ``"always"`` all. ``locking="session"``
    serialises one session's requests, in this process and across processes (a lock per request
    in the store, its lease renewed while the request runs, waited for up to ``lock_timeout``
    seconds), for apps whose concurrent requests change the same attribute; ``MemoryStore``
    shares one live object instead and ignores it. ``shutdown_timeout`` bounds how long stopping
    waits for a reaper tick to deliver the events of the sessions it claimed.
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
        shutdown_timeout: float = 10.0,
        models: Iterable[type[BaseModel]] = (),
        clock: Clock = time.time,
    ) -> None:
        options = {k: v for k, v in locals().items() if k in ManagerSettings.model_fields}
        self.settings: ManagerSettings = validated(ManagerSettings, **options)
        if store is not None and not isinstance(store, SessionStore):
            raise TypeError(
                f"store must be a SessionStore (e.g. MemoryStore()), got {type(store).__name__}"
            )
        self.store: SessionStore = store if store is not None else MemoryStore()
        self.store.allow_models(models)
        checks = type(self.store).check_value is not SessionStore.check_value
        #: `SessionOwner.value_check` and `SessionOwner.listeners`: plain attributes, read on
        #: every ``set_attribute``.
        self.value_check: Callable[[str, Any], None] | None = (
            self.store.check_value if checks else None
        )
        self.clock = clock
        self._listeners = self.listeners = ListenerRegistry(listeners)
        self._counter = StatsCounter()
        self._sessions: Sessions
        if isinstance(self.store, MemoryStore):
            self._sessions = LiveSessions(self.store, self)
        elif isinstance(self.store, SerializingStore):
            self._sessions = SharedSessions(self.store, self)
        else:
            raise TypeError(
                f"{type(self.store).__name__} is neither a MemoryStore nor a SharedStore"
            )
        self.shared = isinstance(self._sessions, SharedSessions)
        self._held = self._sessions.in_process  # the strategy's own dict, for the hot paths
        self._track_reads = self.settings.save_mode == "on_get"
        self._limits = SessionLimits(self)
        live = self._sessions if isinstance(self._sessions, LiveSessions) else None
        #: `join_now` and `release_now`: the live strategy's own, when a request may join or let
        #: go of its session without awaiting anything (live objects, no limit to apply on the
        #: way); else say so at once. Chosen here once: every request calls them.
        self.join_now: Callable[[str, Visit], HttpSession | Literal[False] | None] = (
            live.join_now if live is not None and not self._limits.snapshots else _cannot_join_now
        )
        self.release_now: Callable[[Visit], bool] = (
            live.release_now
            if live is not None and not self._limits.enforcing
            else _cannot_release_now
        )
        #: ``max_active_sessions`` under "reject": checked as each session is created.
        self._create_limited = (
            self.settings.max_active_sessions is not None
            and self.settings.max_active_policy == "reject"
        )
        self._sockets = SessionSockets()
        self._principals = Principals(self.store, self._sessions, self.clock, self.end)
        grace = self.settings.shutdown_timeout
        tasks = [Reaper(self.reap, lambda: self.settings.reaper_interval, grace)]
        if isinstance(self._sessions, SharedSessions):
            tasks.append(Reaper(self.keep_alive, self._sessions.tick, grace, name="keeper"))
        self._background = Background(tasks)
        #: Whether a request must do work as its response starts: a shared store saves then, and
        #: limits decided at save time are applied then.
        self.flushes = self.shared or self._limits.enforcing
        self._hook_tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self._direct: dict[HttpSession, list[Visit]] = {}  # create_session / find callers
        self.accessors = Accessors(self)  # HttpSession.accessor(): work outside any request

    # --- the session's owner (SessionOwner) and the strategies' host (SessionHost) ------------

    @property
    def owner(self) -> SessionOwner:
        return self

    def add_listener(self, listener: object) -> None:
        """Register a listener implementing any of the listener protocols' methods."""
        self._listeners.add(listener)

    def remove_listener(self, listener: object) -> None:
        self._listeners.remove(listener)

    def expiry_changed(self, session: HttpSession) -> None:
        if isinstance(self.store, MemoryStore):
            self.store.expiry_changed(session)

    def principal_changing(self, session: HttpSession, new: str | None) -> None:
        if isinstance(self.store, MemoryStore):
            self.store.principal_changing(session, new)

    def session_expiring(self, session: HttpSession, reason: str) -> bool:
        return self._sessions.session_expiring(session, reason)

    def ended(self, session: HttpSession, reason: str) -> None:
        self._counter.ended(reason, self.clock() - session._creation_time)
        self._sockets.session_ended(session)

    def dropped(self, session: HttpSession) -> None:
        self._sockets.session_ended(session)

    # --- creation and lookup -----------------------------------------------------------------

    def create_session(self, visit: Visit | None = None) -> HttpSession:
        """A new session, joined by the calling request (``visit``; without one, release it
        with [`release`][servletsession.SessionManager.release]); fires ``session_created``. Stored
        as the response starts, with or without attributes.

        Raises [`SessionLimitError`][servletsession.SessionLimitError] when ``max_active_sessions``
        is reached.
        """
        settings = self.settings
        if self._create_limited:
            self._limits.check_create()
        held = self._held
        session_id = new_session_id()
        while session_id in held:  # 256 random bits: never, but cheap
            session_id = new_session_id()
        session = HttpSession(  # positionally: binding keywords costs more, every session
            self,
            session_id,
            self.clock(),
            settings.max_inactive_interval,
            settings.absolute_timeout,
        )
        session._in_flight = 1
        if self._track_reads:
            session._track_reads = True
        if visit is None:
            visit = Visit()
            self._direct.setdefault(session, []).append(visit)
        visit.session = session
        visit.created = True
        self._sessions.created(session, visit)
        counter = self._counter
        counter.created += 1
        if self.shared:  # a shared store's peak is taken when it is counted
            self._limits.created()
        elif len(held) > counter.max_active:  # a live store's is exact
            counter.max_active = len(held)
        created = self._listeners.session_created
        if created:
            deliver(session, created, HttpSessionEvent(session))
        return session

    async def find(self, session_id: str) -> HttpSession | None:
        """The live session with this ID, joined by the caller (give it back with
        [`release`][servletsession.SessionManager.release]); ``None`` if there is none. A session
        found past its deadline is expired then and there (its listeners fire): an expired session
        is never handed out.

        Raises `StoreUnavailableError` if the store cannot answer.
        """
        if not is_well_formed_id(session_id):
            return None
        visit = Visit()
        session = await self.join(session_id, visit)
        if session is not None:
            self._direct.setdefault(session, []).append(visit)
        return session

    async def join(self, session_id: str, visit: Visit) -> HttpSession | None:
        """[`find`][servletsession.SessionManager.find] for the middleware: an ID it verified,
        joined by ``visit``."""
        session = await self._sessions.join(session_id, visit)
        if session is not None and self._limits.snapshots:
            visit.snapshot = Snapshot(
                session._id,
                dict(session._attributes),
                session._principal,
                session._max_inactive_interval,
                session._absolute_timeout,
            )
        return session

    # --- saving ------------------------------------------------------------------------------

    async def flush(self, visit: Visit) -> None:
        """Write what changed now, before the response goes out, so that the browser's next
        request — on any process — sees it; limits decided at save time are applied here. A request
        refused by a limit changes nothing
        ([`SessionLimitError`][servletsession.SessionLimitError])."""
        session = visit.session
        assert session is not None
        if session._valid and self._limits.enforcing and not visit.refused:
            try:
                await self._limits.enforce(session)
            except SessionLimitError:
                self._limits.undo(visit)
                raise
        await self._sessions.flush(visit)

    async def release(self, target: Visit | HttpSession) -> None:
        """The request is done with its session: deliver its pending async events, write what
        changed (or drop it if it ended), let go of it here."""
        visit = target if isinstance(target, Visit) else self._direct_visit(target)
        session = visit.session
        assert session is not None
        try:
            if session._valid and self._limits.enforcing and not visit.refused:
                try:
                    await self._limits.enforce(session)
                except SessionLimitError as exc:
                    logger.warning("%s", exc)
                    self._limits.undo(visit)
        finally:  # cancelled or failed there: still let go of the session
            await self._sessions.release(visit)

    async def release_lock(self, visit: Visit) -> None:
        """Give back the request's session lock early (a websocket holds it for its handshake
        only)."""
        await self._sessions.release_lock(visit)

    def refuse(self, visit: Visit) -> None:
        """The request is answered 503: nothing of it will be written."""
        if isinstance(self._sessions, SharedSessions):
            self._sessions.refuse(visit)
        else:
            visit.refused = True

    def _direct_visit(self, session: HttpSession) -> Visit:
        visits = self._direct.get(session)
        if not visits:
            raise IllegalStateError("release(): this session was not joined by find/create")
        visit = visits.pop()
        if not visits:
            del self._direct[session]
        return visit

    # --- ID change and invalidation ----------------------------------------------------------

    def change_session_id_now(self, session: HttpSession) -> str:
        """Give ``session`` a new ID at once in this process (the old one is refused here from
        now on); the store follows as the response starts, or with
        [`change_session_id`][servletsession.SessionManager.change_session_id].

        Fires ``session_id_changed(event, old_session_id)``. Attributes and creation time stay.
        """
        if not session._valid:
            raise IllegalStateError("change_session_id(): the session has been invalidated")
        old_id = session._id
        new_id = new_session_id()
        while new_id in self._sessions.in_process:
            new_id = new_session_id()
        session._id = new_id
        if session._previous_id is None:
            session._previous_id = old_id
        self._sessions.rename_now(session, old_id)
        self.accessors.renamed(old_id, new_id)
        if isinstance(self.store, MemoryStore):
            session._previous_id = None
        changed = self._listeners.session_id_changed
        if changed:
            deliver(session, changed, HttpSessionEvent(session), old_id)
        return new_id

    async def change_session_id(self, session: HttpSession) -> str:
        """Give ``session`` a new ID here and in the store; the old ID is dead once this returns."""
        new_id = self.change_session_id_now(session)
        await settle(session)
        await self._sessions.push(session)
        return new_id

    async def invalidate(self, session: HttpSession) -> None:
        """``session.invalidate()``, then wait until it is gone from the store and its listeners
        have run."""
        session.invalidate()
        await settle(session)

    async def end(self, session: HttpSession, reason: str = "invalidated") -> bool:
        """End ``session`` (held by a request of this process, or just looked at): claimed in
        the store first, so its ``session_destroyed`` fires once, on one process. ``False`` if
        another process had ended it (or moved it to a new ID) first."""
        session._expire(reason)
        await settle(session)
        return not session._detached

    async def touch(self, session: HttpSession) -> bool:
        """Count a long-lived connection's presence as activity. ``False`` if the session has
        ended — here, or in another process (the store no longer has it)."""
        return await self._sessions.touch(session)

    # --- principals ------------------------------------------------------------------------

    async def sessions_of(self, principal: str) -> list[HttpSession]:
        """The live sessions bound to ``principal`` (``session.principal``), on every store.

        Sessions a request of this process is using are those very objects; the others are
        read from the store without counting as an access.
        """
        return await self._principals.sessions_of(principal)

    async def peek(self, session_id: str) -> HttpSession | None:
        """The valid session with this ID, for looking at, not joining: the object a request of
        this process holds, or else a copy read from the store without counting as an access."""
        return await self._sessions.peek(session_id)

    async def invalidate_all(self, principal: str, keep: HttpSession | str | None = None) -> int:
        """Invalidate every session of ``principal`` except ``keep`` (a session or its ID,
        whatever that session's ID did during the request): log out everywhere, or everywhere
        else after a password change. Returns how many ended; each fires ``session_destroyed``
        once."""
        return await self._principals.invalidate_all(principal, keep)

    # --- websockets --------------------------------------------------------------------------

    def websocket_opened(self, session: HttpSession, send: Send) -> SessionWebSocket:
        """Tie an accepted websocket to its session: kept alive while open, closed with 1008
        when the session ends (here, elsewhere, or at its absolute timeout)."""
        socket = SessionWebSocket(self._sockets, session, send, self.touch, self.end, self.clock,
                                  self.settings.websocket_touch_interval)  # fmt: skip
        socket.start()
        return socket

    # --- operations --------------------------------------------------------------------------

    async def stats(self) -> SessionStats:
        """Counters since the manager started, and the number of sessions held now."""
        counter, active = self._counter, await self.store.count()
        counter.max_active = max(counter.max_active, active)
        return counter.snapshot(active)

    @property
    def counter(self) -> StatsCounter:
        return self._counter

    @property
    def in_process(self) -> dict[str, HttpSession]:
        """The sessions requests of this process are using (all of them, for MemoryStore)."""
        return self._sessions.in_process

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

    def __repr__(self) -> str:
        return (
            f"<SessionManager store={type(self.store).__name__} "
            f"in_process={len(self._sessions.in_process)}>"
        )


def _cannot_join_now(session_id: str, visit: Visit) -> Literal[False]:
    """`SessionManager.join_now` where every join must be awaited (`SessionManager.join`)."""
    return False


def _cannot_release_now(visit: Visit) -> bool:
    """`SessionManager.release_now` where every release must be awaited."""
    return False
