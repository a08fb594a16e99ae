"""``SharedSessions``: sessions in a store several processes share (SQL, Redis). The store decides.

A process's [`HttpSession`][servletsession.HttpSession] is only a *share* among that process's
concurrent requests of the session. So:

* every joining request confirms the session with the store as it records its access; a
  session the store no longer has is dropped here, never saved back;
* an end (invalidate, expiry, eviction) is first *claimed* in the store: only the process whose
  delete removed the session fires ``session_destroyed``, once;
* an ID that this process changed or ended is refused here at once (``retired``) and everywhere
  once the store has the change, which is written as the response starts;
* saves write what changed, attribute by attribute, and metadata only when it changed;
* while a request or websocket is in flight, `keep_alive` keeps the stored deadline ahead and
  renews lock leases; the absolute timeout holds however busy the session is;
* a store that cannot answer makes the request *refused* (503): nothing of it is written, and
  the share is dropped so that the next request reads the truth again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from anyio import CancelScope

from .changes import (
    SESSION_ID,
    Unsaved,
    change_journal,
    changes_of,
    id_written,
    put_back,
    record_of,
    refresh,
    take_back,
    to_values,
    track_change,
)
from .errors import StoreUnavailableError
from .listeners import chain, settle
from .locks import SessionLocks
from .session import HttpSession
from .stores.base import StoredSession

if TYPE_CHECKING:
    from .persistence import SessionHost, Visit
    from .stores.serializing import SerializingStore

logger = logging.getLogger("servletsession")
T = TypeVar("T")


class SharedSessions:
    """The `Sessions` strategy for a shared store."""

    def __init__(self, store: SerializingStore, host: SessionHost) -> None:
        self._store = store
        self._host = host
        settings = host.settings
        self._locking = settings.locking == "session"
        self.locks = SessionLocks(store, host.clock, settings.lock_timeout)
        self.in_process: dict[str, HttpSession] = {}
        self.retired: set[str] = set()  # IDs changed or ended here, until the store has it
        self._tickets = itertools.count(1)
        #: For a share with saves under way, the change histories they hold (see ``refuse``).
        self._histories_in_flight: dict[int, list[Unsaved]] = {}

    # --- joining -----------------------------------------------------------------------------

    async def join(self, session_id: str, visit: Visit) -> HttpSession | None:
        if self._locking:
            await self.locks.acquire(session_id, visit)
        try:
            session = await self._confirm(session_id, visit)
        except BaseException:
            with CancelScope(shield=True):  # an anyio cancellation strikes every await again
                await self.release_lock(visit, session_id)
            raise
        if session is None:
            await self.release_lock(visit, session_id)
            return None
        visit.session = session
        return session

    async def _confirm(self, session_id: str, visit: Visit) -> HttpSession | None:
        store, now = self._store, self._host.clock()
        ticket = next(self._tickets)  # loads may complete out of order: the later start wins
        stored = await store.load(session_id, now, touch=True)
        if session_id in self.retired:
            return None  # changed or ended by a request of this process: dead here already
        if stored is None:
            self._drop(session_id)
            return None
        if stored.expires_at <= now:
            visit.ended_found = True
            await self._expire_found(session_id, now)
            return None
        share = self.in_process.get(session_id)
        if share is None or not share._valid:
            session = await self._build(session_id, stored, strict=True)
            if session is None:  # unreadable (logged): gone, and ended once
                visit.ended_found = True
                await self._end_unreadable(session_id, stored)
                return None
            session._snapshot = ticket
            self.in_process[session_id] = share = session
            to_values(session, "session_did_activate")
        elif not share._saving and ticket > max(share._snapshot, share._save_started):
            # No write under way or begun after our read, no later read taken in: ours is newer.
            fresh = self._store.decode_all(session_id, stored.attributes or {}, strict=False)
            refresh(share, stored, fresh or {})
            share._snapshot = ticket
        share._stored_expires = stored.expires_at
        share._begin_access(now, previous=stored.last_access)
        return share

    async def _build(
        self, session_id: str, stored: StoredSession, *, strict: bool, log: bool = True
    ) -> HttpSession | None:
        attributes = self._store.decode_all(
            session_id, stored.attributes or {}, strict=strict, log=log
        )
        if attributes is None:
            return None
        session = HttpSession(
            self._host.owner,
            session_id,
            creation_time=stored.creation_time,
            max_inactive_interval=stored.max_inactive_interval,
            absolute_timeout=stored.absolute_timeout,
            attributes=attributes,
            last_accessed_time=stored.last_access,
            is_new=False,
        )
        session._principal = stored.principal
        session._track_reads = self._host.settings.save_mode == "on_get"
        session._stored_expires = stored.expires_at
        if stored.max_inactive_interval > 0 and math.isfinite(stored.expires_at):
            session._idle_since = stored.expires_at - stored.max_inactive_interval  # the store's
        return session

    async def _end_unreadable(self, session_id: str, stored: StoredSession) -> None:
        """A stored session that cannot be read back is treated as gone: claimed (deleted), and
        destroyed with what can be read, so that created and destroyed still pair up."""
        if await self._store.delete(session_id):
            session = await self._build(session_id, stored, strict=False, log=False)
            if session is not None:
                session._stored = False
                session._expire("invalidated")
                await settle(session)

    def created(self, session: HttpSession, visit: Visit) -> None:
        self.in_process[session._id] = session

    # --- writing -----------------------------------------------------------------------------

    async def flush(self, visit: Visit) -> None:
        """Write what changed now, before the response goes out."""
        session = visit.session
        assert session is not None
        if visit.refused:
            return
        try:
            await settle(session)
            if session._valid:
                await self.push(session)
        except StoreUnavailableError:
            self.refuse(visit)
            raise

    async def release(self, visit: Visit) -> None:
        """The request is done: deliver its pending events, write what is left, let go."""
        session = visit.session
        assert session is not None
        try:
            try:
                if not visit.refused:
                    try:
                        await settle(session)
                    except StoreUnavailableError:
                        self.refuse(visit)
                        raise
            finally:  # refused or cancelled too: the request no longer holds the share
                session._end_access(self._host.clock())
                if session._in_flight == 0 and self.in_process.get(session._id) is session:
                    # Let go now, before writing: a request arriving meanwhile reads the store.
                    del self.in_process[session._id]
            if not visit.refused and session._valid:
                if session._in_flight == 0:
                    to_values(session, "session_will_passivate")  # it leaves the process
                    await settle(session)
                wrote = await self.push(session)
                now = self._host.clock()
                interval = session._max_inactive_interval
                if (
                    not wrote
                    and session._valid
                    and interval > 0
                    and (session._stored_expires < now + interval)
                ):
                    await self.touch(session)  # a long request: idle counts from its end
        finally:
            await self.release_lock(visit)

    def refuse(self, visit: Visit) -> None:
        """The request is answered 503: nothing of it is written (a new session is discarded),
        and the share leaves the map so that the next request reads the truth from the store
        (requests already holding it still write their own changes)."""
        visit.refused = True
        session = visit.session
        if session is None:
            return
        tail = session._listener_tail
        if tail is not None:  # a claim that failed stays, for the request that asked for it
            tail.add_done_callback(_retrieved)
        journal = visit.journal
        touched = journal.pop(id(session), None) if journal is not None else None
        current = session._id
        if touched:  # take back this request's own unwritten changes (also from saves under way)
            take_back(session, journal, touched)
            for history in self._histories_in_flight.get(id(session), ()):
                take_back(session, journal, touched, history)
        for session_id in (current, session._id, session._previous_id):
            if session_id is not None and self.in_process.get(session_id) is session:
                del self.in_process[session_id]
        if session._previous_id is None:  # no ID change away from it is pending any more
            self.retired.discard(session._id)
        if not session._stored and session._valid:
            session._expire("discarded")  # never stored: created and destroyed pair up

    async def push(self, session: HttpSession) -> bool:
        """Write the pending ID change, a new session, or the changes since the last save;
        ``True`` if anything was written. A session the store no longer has is dropped."""
        if session._detached:
            return False
        store, now = self._store, self._host.clock()
        while (previous := session._previous_id) is not None:
            target = session._id
            if session._stored and not await store.rename(previous, target):
                self.retired.discard(previous)
                self._drop(session._id, session)
                return False
            id_written(session, target)  # a change made meanwhile is pending: a round more
            self.retired.discard(previous)
            if session._previous_id is not None:
                self.retired.add(session._previous_id)
        if not session._stored:
            await self._writing(
                session, store.create(session._id, record_of(session, store, now), now)
            )
            session._stored = True
            session._changed_names = session._read_names = session._unsaved = None
            session._principal_changed = session._timeouts_changed = False
            return True
        write, taken = changes_of(session, store, self._host.settings.save_mode)
        if not write and not session._timeouts_changed:
            return False
        if self._locking:
            write.lock_token = self.locks.token_of(session)
        histories = self._histories_in_flight.setdefault(id(session), [])
        histories.append(taken)  # a request refused meanwhile takes its changes out of it
        try:
            expires = await self._writing(session, store.save(session._id, write, now))
        except BaseException:
            put_back(session, write, taken)
            raise
        finally:
            histories[:] = [history for history in histories if history is not taken]
            if not histories:
                del self._histories_in_flight[id(session)]
        if expires is None:
            self._drop(session._id, session)
            return False
        session._stored_expires = expires
        return True

    async def _writing(self, session: HttpSession, write: Awaitable[T]) -> T:
        """A write of ``session``, in ticket order: a read of the store that overlaps it may
        return the old state, and must not be taken into the share."""
        session._save_started = next(self._tickets)
        session._saving += 1
        try:
            return await write
        finally:
            session._saving -= 1
            session._snapshot = next(self._tickets)

    # --- ending ------------------------------------------------------------------------------

    def session_expiring(self, session: HttpSession, reason: str) -> bool:
        session_id = session._id
        if self.in_process.get(session_id) is session:
            del self.in_process[session_id]
        if not session._stored:  # never stored, or already claimed: end it here, now
            self._host.ended(session, reason)
            return True
        self.retired.add(session_id)
        chain(session, self._claim_and_destroy(session, reason))
        return False

    async def _claim_and_destroy(self, session: HttpSession, reason: str) -> None:
        """Delete the session from the store; fire its events only if this delete removed it."""
        ids = [i for i in (session._id, session._previous_id) if i is not None]
        try:
            claimed = False
            for session_id in ids:
                claimed = await self._store.delete(session_id) or claimed
        except BaseException:
            session._expiring = False
            raise
        finally:
            self.retired.difference_update(ids)
        session._stored = False
        session._previous_id = None
        if claimed:
            self._host.ended(session, reason)
            session._destroy()
        else:  # ended, or renamed, by another process: no events here
            session._drop()
            session._detached = True
            self._host.dropped(session)

    async def _expire_found(
        self, session_id: str, now: float, share: HttpSession | None = None
    ) -> None:
        """A joining request (or the keeper) found the session past its deadline: claim it, and
        fire its events here if the claim is ours. Requests of this process still holding it
        (only the absolute timeout strikes a session in use) finish on a detached copy, without
        an error; the events fire on the claimed state."""
        stored = await self._store.claim(session_id, now)
        self._drop(session_id, share)
        if stored is None:
            return
        session = await self._build(session_id, stored, strict=False)
        if session is not None:
            session._stored = False
            session._expire("expired")
            await settle(session)

    def _drop(self, session_id: str, session: HttpSession | None = None) -> None:
        """The store no longer has the session: another process ended it or changed its ID.
        The copy here is detached: requests already holding it finish without an error, and
        nothing of it is ever written back; no new request joins it."""
        target = session if session is not None else self.in_process.get(session_id)
        if target is None:
            return
        for key in (session_id, target._id):
            if self.in_process.get(key) is target:
                del self.in_process[key]
        if target._previous_id is not None:  # its ID change will never be written
            self.retired.discard(target._previous_id)
        if not target._detached:
            target._detached = True
            logger.info("%r was ended by another process; changes made here are dropped", target)
            self._host.dropped(target)

    # --- ID changes --------------------------------------------------------------------------

    def rename_now(self, session: HttpSession, old_id: str) -> None:
        journal = change_journal.get()
        if journal is not None or session._unsaved is not None:  # to take back on a 503
            track_change(session, journal, SESSION_ID, old_id, session._id)
        if self.in_process.get(old_id) is session:
            del self.in_process[old_id]
        if session._detached:
            return  # ended elsewhere: the change is never written, nothing to refuse here
        self.in_process[session._id] = session
        if session._stored and session._previous_id == old_id:
            self.retired.add(old_id)  # the ID the store holds (not an intermediate one)

    # --- looking without joining, reaping, keeping alive ---------------------------------------

    async def peek(self, session_id: str) -> HttpSession | None:
        session = self.in_process.get(session_id)
        if session is None and session_id not in self.retired:
            stored = await self._store.load(session_id, self._host.clock(), touch=False)
            if stored is not None:
                session = await self._build(session_id, stored, strict=True)
        return session if session is not None and session._valid else None

    async def reap(self, batch: int) -> int:
        total = 0
        while not self._host.stopping:
            in_use = [sid for sid, s in self.in_process.items() if s._in_flight]
            claimed = await self._store.claim_expired(self._host.clock(), batch, in_use)
            ended = []
            for session_id, stored in claimed:
                session = await self._build(session_id, stored, strict=False)
                if session is not None:
                    session._stored = False  # claimed: its events are ours
                    session._expire("expired")
                    ended.append(session)
            await asyncio.gather(*(settle(session) for session in ended))
            total += len(claimed)
            if len(claimed) < batch:
                break
        return total

    async def keep_alive(self) -> None:
        """One tick: keep in-flight sessions' deadlines ahead, end those past their absolute
        deadline, renew the lock leases this process's requests hold."""
        now = self._host.clock()
        for session in list(self.in_process.values()):
            if not (session._valid and session._stored and session._in_flight):
                continue
            if session._absolute_deadline() <= now:
                await self._expire_found(session._previous_id or session._id, now, session)
            elif session._max_inactive_interval > 0 and (
                session._stored_expires < now + session._max_inactive_interval
            ):
                await self.touch(session)
        if self._locking:
            await self.locks.renew()

    async def touch(self, session: HttpSession) -> bool:
        if not session._valid or session._detached:
            return False
        session._idle_since = now = self._host.clock()
        if not session._stored:
            return True
        expires = await self._store.touch(session._previous_id or session._id, now)  # stored ID
        if expires is None:
            self._drop(session._id, session)
            return False
        session._stored_expires = expires
        return True

    async def release_lock(self, visit: Visit, session_id: str | None = None) -> None:
        """Give back the request's lock early (a websocket's, after its handshake) or at its end."""
        await self.locks.release(visit, session_id)

    def tick(self) -> float:
        """How often `keep_alive` should run, in seconds of wall time: often enough that
        a lease is renewed twice before it runs out, and a deadline well before it passes."""
        settings = self._host.settings
        candidates = [5.0]
        if settings.max_inactive_interval > 0:
            candidates.append(settings.max_inactive_interval / 4)
        if self._locking:
            candidates.append(self.locks.lease / 3)
        return max(0.05, min(candidates))


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
