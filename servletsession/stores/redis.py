"""``RedisStore``: sessions in Redis or Redis Cluster, through redis-py's asyncio client (hiredis
when installed).

Each session is a hash: a field per attribute (``a:<name>``) and metadata fields (``#c`` created,
``#l`` last access, ``#e`` deadline, ``#i`` idle interval, ``#a`` absolute timeout, ``#p``
principal). Its TTL follows the deadline, plus a grace period, so that the reaper, not Redis,
ends the session and its listeners fire. Deadlines are filed in the shard's sorted set for the
reaper; a deadline that only grows (a touch) is not re-filed: the entry runs early, and the
reaper re-files what it finds not due. Principal sets live as long as their longest-lived member.
Key names and shards: see `redis_layout`.

Every operation on a session is one Lua script in one slot: atomic, and one round trip. A joining
request costs one round trip (it records its access and confirms the session), a writing one two.
An ID change whose new ID falls in another slot moves the session in three steps (``move``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ..cookies import session_ref
from ..errors import StoreUnavailableError
from .base import LockLostError, SessionWrite, StoredSession
from .faults import redis_failure
from .redis_indexes import ShardedIndexes, from_hash, stored_of
from .redis_layout import RedisLayout, text
from .redis_moves import MovingSessions, Where
from .redis_scripts import (
    CLAIM,
    CREATE,
    DELETE,
    LOAD,
    LOCK,
    PRINCIPAL_SESSIONS,
    RENAME,
    RENEW,
    SAVE,
    UNLOCK,
)
from .serializing import SerializingStore

if TYPE_CHECKING:
    from pydantic import BaseModel

logger = logging.getLogger("servletsession")

#: Shards of the cross-session indexes on a cluster, unless ``shards=`` says otherwise.
CLUSTER_SHARDS = 64


class RedisStore(ShardedIndexes, SerializingStore):
    """Sessions in Redis: ``RedisStore("redis://localhost:6379/0")``, an existing client, or a
    Redis Cluster: ``RedisStore("redis://node:7000", cluster=True)`` or a ``RedisCluster`` client.

    ``ttl_grace`` (seconds) is added to each key's TTL beyond its deadline, so that the reaper
    has time to claim an expired session and fire its listeners before Redis drops the key.
    ``shards`` splits the deadline index and the principal sets (default: 1 on a single server,
    64 on a cluster); every process sharing the store needs the same ``prefix`` and ``shards``.
    ``socket_timeout`` bounds each operation (connecting included): past it, the request gets
    503.
    """

    def __init__(
        self,
        url: str | aioredis.Redis | RedisCluster = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "servletsession:",
        models: Iterable[type[BaseModel]] = (),
        save_period: float = 30.0,
        ttl_grace: float = 3600.0,
        socket_timeout: float | None = 5.0,
        cluster: bool = False,
        shards: int | None = None,
    ) -> None:
        super().__init__(models=models, save_period=save_period)
        self.client: aioredis.Redis | RedisCluster
        if isinstance(url, str):
            # The client's own socket_timeout would wrap every send in asyncio.wait_for (a task
            # per command on Python 3.11): each operation is bounded in ``answering`` instead.
            timeouts: dict[str, Any] = {
                "socket_timeout": None, "socket_connect_timeout": socket_timeout}  # fmt: skip
            if cluster:  # on MOVED, follow the slot; never drop every connection in use
                self.client = RedisCluster.from_url(url, reinitialize_steps=0, **timeouts)
            else:
                self.client = aioredis.Redis.from_url(url, **timeouts)
        else:
            self.client = url
        self.cluster = isinstance(self.client, RedisCluster)
        if shards is None:
            shards = CLUSTER_SHARDS if self.cluster else 1
        self.layout = RedisLayout(prefix, shards)
        self.prefix = prefix
        self.timeout = socket_timeout
        self._grace_ms = int(ttl_grace * 1000)
        register = self.client.register_script
        self._load = register(LOAD)
        self._create = register(CREATE)
        self._save = register(SAVE)
        self._delete = register(DELETE)
        self._rename = register(RENAME)
        self._claim = register(CLAIM)
        self._lock = register(LOCK)
        self._renew = register(RENEW)
        self._unlock = register(UNLOCK)
        self._principal_sessions = register(PRINCIPAL_SESSIONS)
        self.moves = MovingSessions(self)

    def key(self, session_id: str) -> str:
        return self.layout.key(session_id)

    def _keys(self, session_id: str) -> list[str]:
        """The session's hash, its shard's deadline index and its lock: one slot."""
        layout = self.layout
        return [layout.key(session_id), layout.index_of(session_id), layout.lock_key(session_id)]

    # --- the contract ------------------------------------------------------------------------

    async def load(
        self, session_id: str, now: float, *, touch: bool = True, attributes: bool = True
    ) -> StoredSession | None:
        return await self._read(session_id, now, "1" if touch else "0", attributes)

    async def touch(self, session_id: str, now: float) -> float | None:
        stored = await self._read(session_id, now, "2", False)
        return None if stored is None else stored.expires_at

    async def _read(
        self, session_id: str, now: float, mode: str, attributes: bool
    ) -> StoredSession | None:
        args: list[str | int] = [repr(now), repr(self.save_period), self._grace_ms,
                                 self.layout.principals_of(session_id), mode,
                                 "1" if attributes else "0"]  # fmt: skip
        key = [self.key(session_id)]
        data = await self._run(self._load, key, args)
        if data and data[6]:  # an ID change is moving it: is the move done?
            where = await self.moves.where(session_id, text(data[6]))
            if where is Where.GONE:
                return None
            if where is Where.BACK and mode != "0":  # read again, recording the access
                data = await self._run(self._load, key, args)
        if not data:
            return None
        try:
            stored = stored_of([text(value) for value in data[:6]])
        except ValueError as exc:
            logger.warning(
                "stored session %s has unreadable metadata (%s); treating it as gone",
                session_ref(session_id), exc,
            )  # fmt: skip
            await self.delete(session_id)
            return None
        if attributes:
            stored.attributes = {text(data[i]): data[i + 1] for i in range(8, len(data) - 1, 2)}
        return stored

    async def create(self, session_id: str, session: StoredSession, now: float) -> None:
        fields: list[Any] = []
        for name, value in (session.attributes or {}).items():
            fields += [name, value]
        expires = "" if math.isinf(session.expires_at) else repr(session.expires_at)
        absolute = "" if session.absolute_timeout is None else repr(session.absolute_timeout)
        args = [repr(now), self._grace_ms, self.layout.principals_of(session_id), session_id,
                repr(session.creation_time), repr(session.last_access), expires,
                session.max_inactive_interval, absolute, session.principal or "",
                *fields]  # fmt: skip
        keys = [self.key(session_id), self.layout.index_of(session_id)]
        await self._run(self._create, keys, args)

    async def save(
        self, session_id: str, write: SessionWrite, now: float, *, again: bool = True
    ) -> float | None:
        fields: list[Any] = []
        for name, value in write.written.items():
            fields += [name, value]
        absolute = "" if write.absolute_timeout is None else repr(write.absolute_timeout)
        args = [repr(now), repr(self.save_period), self._grace_ms,
                self.layout.principals_of(session_id), session_id, write.lock_token or "",
                "1" if write.principal_changed else "0", write.principal or "",
                "1" if write.timeouts_changed else "0", write.max_inactive_interval, absolute,
                len(write.written), *fields, *write.removed]  # fmt: skip
        result = await self._run(self._save, self._keys(session_id), args)
        if isinstance(result, list):  # moving to a new ID
            where = await self.moves.where(session_id, text(result[1]))
            if where is Where.BACK and again:
                return await self.save(session_id, write, now, again=False)
            if where is Where.GONE:
                return None
            raise StoreUnavailableError("the session is changing its ID; nothing was saved")
        if result is None:
            return None
        if result == -1:
            raise LockLostError(
                "the session's lock was taken over while this request held it (its lease ran "
                "out); nothing was saved"
            )
        expires = text(result)
        return float(expires) if expires else math.inf

    async def delete(self, session_id: str) -> bool:
        args = [session_id, self.layout.principals_of(session_id)]
        removed = await self._run(self._delete, self._keys(session_id), args)
        if isinstance(removed, list):  # moving to a new ID: delete it where it is
            where = await self.moves.where(session_id, text(removed[1]))
            if where is Where.MOVING:
                raise StoreUnavailableError("the session is changing its ID; nothing was deleted")
            return await self.delete(text(removed[1]) if where is Where.GONE else session_id)
        return bool(removed)

    async def claim(self, session_id: str, now: float) -> StoredSession | None:
        return await self._claim_one(session_id, now, "0")

    async def _claim_one(self, session_id: str, now: float, refile: str) -> StoredSession | None:
        args = [repr(now), session_id, self.layout.principals_of(session_id), refile]
        data = await self._run(self._claim, self._keys(session_id), args)
        if data and data[0] == b"#m":  # moving: claimed only if the move was taken back
            if await self.moves.where(session_id, text(data[1])) is not Where.BACK:
                return None
            data = await self._run(self._claim, self._keys(session_id), args)
            if data and data[0] == b"#m":
                return None
        return from_hash(data) if data else None

    async def rename(self, old_id: str, new_id: str) -> bool:
        layout = self.layout
        if layout.shard_of(old_id) != layout.shard_of(new_id):
            return await self.moves.move(old_id, new_id)
        keys = [layout.key(old_id), layout.key(new_id), layout.index_of(old_id),
                layout.lock_key(old_id), layout.lock_key(new_id)]  # fmt: skip
        args = [old_id, new_id, layout.principals_of(old_id)]
        moved = await self._run(self._rename, keys, args)
        if isinstance(moved, list):  # an earlier move to another slot marked it: where is it?
            where = await self.moves.where(old_id, text(moved[1]))
            if where is Where.MOVING:
                raise StoreUnavailableError(
                    "the session is changing its ID in another request; its ID is unchanged"
                )
            moved = where is Where.BACK and await self._run(self._rename, keys, args) == 1
        return bool(moved)

    async def acquire_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        keys = [self.key(session_id), self.layout.lock_key(session_id)]
        taken = await self._run(self._lock, keys, [token, max(1, int(lease * 1000))])
        return bool(taken)

    async def renew_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        renewed = await self._run(
            self._renew, [self.layout.lock_key(session_id)], [token, max(1, int(lease * 1000))]
        )
        return bool(renewed)

    async def release_lock(self, session_id: str, token: str) -> None:
        await self._run(self._unlock, [self.layout.lock_key(session_id)], [token])

    async def close(self) -> None:
        await self.client.aclose()

    # --- plumbing ----------------------------------------------------------------------------

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """One script, bounded by ``socket_timeout``, failures as in
        [`answering`][servletsession.stores.redis.RedisStore.answering] (the hot path: ``EVALSHA``
        straight on the client, loading the script where a node lacks it)."""
        client = self.client
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    script.sha = await client.script_load(script.script)
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
        except Exception as exc:
            failure = redis_failure(exc, self.timeout)
            if failure is exc:
                raise
            raise failure from exc

    @contextlib.asynccontextmanager
    async def answering(self) -> AsyncIterator[None]:
        """Every failure that means Redis cannot answer now becomes ``StoreUnavailableError``,
        and so does an operation that takes longer than ``socket_timeout``."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except Exception as exc:
            failure = redis_failure(exc, self.timeout)
            if failure is exc:
                raise
            raise failure from exc

    def __repr__(self) -> str:
        shape = f" cluster shards={self.layout.shards}" if self.cluster else ""
        return f"<RedisStore prefix={self.prefix!r}{shape}>"
