"""``locking="session"``: one lock per request, in the store, so that a session's requests run one
at a time across processes.

Each request takes the lock under a token of its own, so that a finishing request can never
release the next one's lock. The lease is short (half of ``lock_timeout``, at least 1 s) and the
keeper renews it while its holder runs, so that streams of any length keep it, and a lock left
behind by a dead process or a release lost in an outage blocks its session for one lease at most.
Requests of one process queue in the process first, so that they do not poll the store against
each other.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .cookies import session_ref
from .errors import StoreUnavailableError

if TYPE_CHECKING:
    from .persistence import Visit
    from .session import HttpSession
    from .stores.base import SharedStore

logger = logging.getLogger("servletsession")
_MIN_LEASE = 1.0  # seconds: renewed every third of it, even on a busy event loop


class SessionLocks:
    """The session locks the requests of one process hold or wait for."""

    def __init__(self, store: SharedStore, clock: Callable[[], float], timeout: float) -> None:
        self._store = store
        self._clock = clock
        self._timeout = timeout
        self.lease = max(timeout / 2, _MIN_LEASE)
        self._holders: dict[str, Visit] = {}  # lock token -> the visit holding it
        self._queues: dict[str, asyncio.Lock] = {}  # this process's requests, per session
        self._queued: dict[str, int] = {}

    def __len__(self) -> int:
        """How many per-session entries are held (zero once every request is done)."""
        return len(self._holders) + len(self._queues) + len(self._queued)

    async def acquire(self, session_id: str, visit: Visit) -> None:
        """Queue behind this process's other requests of the session, then take the store's
        lock with a token of this request's own; 503 after ``lock_timeout``."""
        give_up = time.monotonic() + self._timeout
        queue = self._queues.get(session_id)
        if queue is None:
            queue = self._queues[session_id] = asyncio.Lock()
        self._queued[session_id] = self._queued.get(session_id, 0) + 1
        try:
            try:
                await asyncio.wait_for(queue.acquire(), self._timeout)
            except TimeoutError:
                raise self._stayed_locked(session_id) from None
            try:
                token = secrets.token_urlsafe(16)
                delay = 0.002
                store, clock = self._store, self._clock
                while not await store.acquire_lock(session_id, token, self.lease, clock()):
                    if time.monotonic() >= give_up:
                        raise self._stayed_locked(session_id)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            except BaseException:
                queue.release()
                raise
            visit.lock_token = token
            visit.queued_id = session_id
            self._holders[token] = visit
        except BaseException:
            self._unqueue(session_id)
            raise

    def _stayed_locked(self, session_id: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"session {session_ref(session_id)} stayed locked by another request for "
            f"lock_timeout={self._timeout} s"
        )

    def token_of(self, session: HttpSession) -> str | None:
        for token, visit in self._holders.items():
            if visit.session is session:
                return token
        return None

    async def release(self, visit: Visit, session_id: str | None = None) -> None:
        """Give back this request's lock (never another's), and its place in the queue."""
        token, visit.lock_token = visit.lock_token, None
        queued, visit.queued_id = visit.queued_id, None
        if token is not None:
            self._holders.pop(token, None)
        session = visit.session
        lock_id = session_id if session is None else (session._previous_id or session._id)
        try:
            if token is not None and lock_id is not None:
                await self._store.release_lock(lock_id, token)
        finally:
            if queued is not None:
                queue = self._queues.get(queued)
                if queue is not None and queue.locked():
                    queue.release()
                self._unqueue(queued)

    def _unqueue(self, session_id: str) -> None:
        left = self._queued.get(session_id, 0) - 1
        if left <= 0:
            self._queued.pop(session_id, None)
            self._queues.pop(session_id, None)
        else:
            self._queued[session_id] = left

    async def renew(self) -> None:
        """Extend the lease of every lock this process's requests hold."""
        now = self._clock()
        for token, visit in list(self._holders.items()):
            holder = visit.session
            if holder is not None and not await self._store.renew_lock(
                holder._previous_id or holder._id, token, self.lease, now
            ):
                logger.warning("lost the lock of %r (its lease ran out)", holder)
