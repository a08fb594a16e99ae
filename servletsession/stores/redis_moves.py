"""ID changes that move a session to another slot of a Redis Cluster (no ``RENAME`` across slots).

Servlet 3.1 ``changeSessionId()`` keeps the session and gives it a new ID. When the new ID's
shard is another slot, ``RedisStore`` moves it in three one-slot steps:

1. ``MOVE_OUT`` marks the old hash as moving (``#m`` the new ID, ``#t`` a lease in the servers'
   time) and returns its contents. From now on it is read but never written: a save, a delete, a
   claim or a lock of it first asks this module where the session is.
2. ``MOVE_IN`` writes the new hash, its deadline and principal entries, and the lock: the move
   commits here. It refuses once the lease is about to run out.
3. ``MOVE_DONE`` removes the old hash and its index entries. If it fails, whoever next meets the
   marked old hash finds the commit record ``MOVE_IN`` left in the new slot (it outlives the old
   hash, and the new session too) and finishes the job; the record goes with it.

So at every moment exactly one of the IDs is the session: the old one until ``MOVE_IN``, the new
one after. A move abandoned before ``MOVE_IN`` (its process died, the new slot's node was down)
is taken back by ``MOVE_ABORT`` once its lease has run out; until then the old ID can be read
but writes to it answer 503 (retry), never lost or applied to a session about to move.
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from typing import TYPE_CHECKING

from ..errors import StoreUnavailableError
from .redis_layout import text
from .redis_scripts import MOVE_ABORT, MOVE_DONE, MOVE_IN, MOVE_OUT

if TYPE_CHECKING:
    from .redis import RedisStore

logger = logging.getLogger("servletsession")

#: Seconds a move may take from MOVE_OUT to MOVE_IN (server time), and the part of it kept clear
#: of the end, for the clocks of two cluster nodes to disagree by.
LEASE, MARGIN = 5.0, 2.0


class Where(Enum):
    """Where a session marked as moving is."""

    GONE = "gone"  # the new ID is the session (or the session ended): the old one is not
    MOVING = "moving"  # the move has not committed and may still
    BACK = "back"  # the move was abandoned and taken back: the old ID is the session again


class MovingSessions:
    """The moves of one ``RedisStore``."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        register = store.client.register_script
        self._out = register(MOVE_OUT)
        self._in = register(MOVE_IN)
        self._done = register(MOVE_DONE)
        self._abort = register(MOVE_ABORT)

    async def move(self, old_id: str, new_id: str) -> bool:
        """Give the session ``old_id`` the ID ``new_id`` in another slot; ``False`` if there is no
        session ``old_id`` any more (ended, or moved by another process)."""
        store, layout = self._store, self._store.layout
        began = time.monotonic()
        async with store.answering():
            out = await self._out(keys=[layout.key(old_id), layout.lock_key(old_id)],
                                  args=[new_id, LEASE])  # fmt: skip
            if out and out[0] == b"#m":  # another move marked it first
                where = await self.where(old_id, text(out[1]))
                if where is Where.MOVING:
                    raise StoreUnavailableError(
                        "the session is changing its ID in another request; its ID is unchanged"
                    )
                if where is Where.GONE:
                    return False
                out = await self._out(keys=[layout.key(old_id), layout.lock_key(old_id)],
                                      args=[new_id, LEASE])  # fmt: skip
                if out and out[0] == b"#m":
                    raise StoreUnavailableError(
                        "the session is changing its ID in another request; its ID is unchanged"
                    )
            if not out:
                return False
            hash_ttl, lock_value, lock_ttl, lease = out[0], out[1], out[2], text(out[3])
            # MOVE_IN commits only while this request still waits for it (in the servers' time:
            # the move began at lease - LEASE, and this request gives up ``timeout`` after it
            # began here), and clear of the lease's end: a move answered 503 never commits later.
            commit_by = float(lease) - MARGIN
            if store.timeout is not None:
                remaining = store.timeout - (time.monotonic() - began) - MARGIN / 20
                commit_by = min(commit_by, float(lease) - LEASE + remaining)
            fields = out[4:]
            meta = {text(fields[i]): text(fields[i + 1])
                    for i in range(0, len(fields), 2) if fields[i][:1] == b"#"}  # fmt: skip
            keys = [layout.key(new_id), layout.index_of(new_id), layout.lock_key(new_id),
                    layout.moved_key(new_id)]  # fmt: skip
            record_ttl = int(hash_ttl) + int(2 * LEASE * 1000) if int(hash_ttl) > 0 else 0
            args = [commit_by, lease, new_id, layout.principals_of(new_id), hash_ttl, lock_value,
                    lock_ttl, meta.get("#e", ""), meta.get("#p", ""), old_id, record_ttl,
                    *fields]  # fmt: skip
            try:
                moved_in = await self._in(keys=keys, args=args)
            except Exception:
                # The reply may be what was lost (a dropped connection): if the commit record is
                # there the move happened, and answering 503 would strand the session under an ID
                # no browser holds. (If this check cannot answer either, the 503 stands.)
                if not await store.client.exists(layout.moved_key(new_id)):
                    raise
                moved_in = 1
        if not moved_in:
            raise StoreUnavailableError(
                "the session could not move to its new ID in time; its ID is unchanged"
            )
        try:
            await self._finish(old_id, new_id)
        except StoreUnavailableError as exc:  # committed: whoever meets the old hash cleans it
            logger.warning("a moved session's old hash stays for now (%s)", exc)
        return True

    async def where(self, old_id: str, new_id: str) -> Where:
        """Where the session marked as moving from ``old_id`` to ``new_id`` is; a committed move
        is finished on the way, an abandoned one taken back.

        The lease is looked at *before* the new hash: once it has run out no ``MOVE_IN`` can
        commit, so a new hash missing then is missing for good, and taking the mark off is safe.
        """
        store, layout = self._store, self._store.layout
        old_key = [layout.key(old_id)]
        async with store.answering():
            lease = text(await self._abort(keys=old_key, args=[new_id, "0"]))
            if lease == "clear":
                return Where.BACK
            if await store.client.exists(layout.key(new_id), layout.moved_key(new_id)):
                await self._finish(old_id, new_id)  # committed (the new one may have ended)
                return Where.GONE
            if lease == "gone":
                return Where.GONE
            if lease == "runs":
                return Where.MOVING
            await self._abort(keys=old_key, args=[new_id, "1"])
        return Where.BACK

    async def _finish(self, old_id: str, new_id: str) -> None:
        """The old hash goes; then the commit record, which only the old hash needed."""
        store, layout = self._store, self._store.layout
        keys = [layout.key(old_id), layout.index_of(old_id), layout.lock_key(old_id)]
        async with store.answering():
            await self._done(keys=keys, args=[old_id, new_id, layout.principals_of(old_id)])
            await store.client.delete(layout.moved_key(new_id))
