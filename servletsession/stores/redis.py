"""``RedisStore``: sessions in Redis, through redis-py's asyncio client (hiredis when installed).

Layout, under a configurable ``prefix``:

* ``{prefix}{<id>}`` — a hash per session: a field per attribute (``a:<name>``) and metadata
  fields (``#c`` created, ``#l`` last access, ``#e`` deadline, ``#i`` idle interval, ``#a``
  absolute timeout, ``#p`` principal). The braces are a hash tag: the session's keys (hash and
  ``…:lock``) share one Redis Cluster slot. The key's TTL follows the deadline, plus a grace period
  so that the reaper, not Redis, ends the session and its listeners fire.
* ``{prefix}expiries`` — a sorted set of deadlines for the reaper. A deadline that only grows (a
  touch) is not re-filed: the entry runs early, and the reaper re-files what it finds not due.
* ``{prefix}principal:<principal>`` — a set of session IDs per principal; its TTL follows its
  longest-lived member, so that sessions Redis drops by TTL leave no entry behind for long.

Every operation is one Lua script: atomic, and one round trip. A joining request costs one round
trip (it records its access and confirms the session), a writing one two.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Collection, Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from ..cookies import session_ref
from ..errors import StoreUnavailableError
from .base import LockLostError, SessionWrite, StoredSession
from .faults import describe, redis_unavailable
from .redis_scripts import CLAIM, CREATE, DELETE, LOAD, LOCK, RENAME, RENEW, SAVE, UNLOCK
from .serializing import SerializingStore

if TYPE_CHECKING:
    from pydantic import BaseModel

logger = logging.getLogger("servletsession")


class RedisStore(SerializingStore):
    """Sessions in Redis: ``RedisStore("redis://localhost:6379/0")`` or an existing client.

    ``ttl_grace`` (seconds) is added to each key's TTL beyond its deadline, so that the reaper
    has time to claim an expired session and fire its listeners before Redis drops the key.
    """

    def __init__(
        self,
        url: str | aioredis.Redis = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "servletsession:",
        models: Iterable[type[BaseModel]] = (),
        save_period: float = 30.0,
        ttl_grace: float = 3600.0,
        socket_timeout: float = 5.0,
    ) -> None:
        super().__init__(models=models, save_period=save_period)
        if isinstance(url, str):
            self.client: aioredis.Redis = aioredis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        else:
            self.client = url
        self.prefix = prefix
        self._expiries = f"{prefix}expiries"
        self._principals = f"{prefix}principal:"
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

    def key(self, session_id: str) -> str:
        return f"{self.prefix}{{{session_id}}}"

    def _lock_key(self, session_id: str) -> str:
        return self.key(session_id) + ":lock"

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
                                 self._principals, mode, "1" if attributes else "0"]  # fmt: skip
        async with self._answering():
            data = await self._load(keys=[self.key(session_id)], args=args)
        if not data:
            return None
        try:
            stored = _stored([_text(value) for value in data[:6]])
        except ValueError as exc:
            logger.warning(
                "stored session %s has unreadable metadata (%s); treating it as gone",
                session_ref(session_id), exc,
            )  # fmt: skip
            await self.delete(session_id)
            return None
        if attributes:
            stored.attributes = {_text(data[i]): data[i + 1] for i in range(6, len(data) - 1, 2)}
        return stored

    async def create(self, session_id: str, session: StoredSession, now: float) -> None:
        fields: list[Any] = []
        for name, value in (session.attributes or {}).items():
            fields += [name, value]
        expires = "" if math.isinf(session.expires_at) else repr(session.expires_at)
        absolute = "" if session.absolute_timeout is None else repr(session.absolute_timeout)
        args = [repr(now), self._grace_ms, self._principals, session_id,
                repr(session.creation_time), repr(session.last_access), expires,
                session.max_inactive_interval, absolute, session.principal or "",
                *fields]  # fmt: skip
        async with self._answering():
            await self._create(keys=[self.key(session_id), self._expiries], args=args)

    async def save(self, session_id: str, write: SessionWrite, now: float) -> float | None:
        fields: list[Any] = []
        for name, value in write.written.items():
            fields += [name, value]
        absolute = "" if write.absolute_timeout is None else repr(write.absolute_timeout)
        args = [repr(now), repr(self.save_period), self._grace_ms, self._principals, session_id,
                write.lock_token or "", "1" if write.principal_changed else "0",
                write.principal or "", "1" if write.timeouts_changed else "0",
                write.max_inactive_interval, absolute, len(write.written), *fields,
                *write.removed]  # fmt: skip
        keys = [self.key(session_id), self._expiries, self._lock_key(session_id)]
        async with self._answering():
            result = await self._save(keys=keys, args=args)
        if result is None:
            return None
        if result == -1:
            raise LockLostError(
                "the session's lock was taken over while this request held it (its lease ran "
                "out); nothing was saved"
            )
        expires = _text(result)
        return float(expires) if expires else math.inf

    async def delete(self, session_id: str) -> bool:
        keys = [self.key(session_id), self._expiries, self._lock_key(session_id)]
        async with self._answering():
            removed = await self._delete(keys=keys, args=[session_id, self._principals])
        return bool(removed)

    async def claim(self, session_id: str, now: float) -> StoredSession | None:
        keys = [self.key(session_id), self._expiries, self._lock_key(session_id)]
        async with self._answering():
            data = await self._claim(keys=keys, args=[repr(now), session_id, self._principals, "0"])
        return _from_hash(data) if data else None

    async def rename(self, old_id: str, new_id: str) -> bool:
        keys = [self.key(old_id), self.key(new_id), self._expiries, self._lock_key(old_id),
                self._lock_key(new_id)]  # fmt: skip
        async with self._answering():
            moved = await self._rename(keys=keys, args=[old_id, new_id, self._principals])
        return bool(moved)

    async def claim_expired(
        self, now: float, limit: int, in_use: Collection[str] = ()
    ) -> list[tuple[str, StoredSession]]:
        async with self._answering():
            due = await self.client.zrangebyscore(
                self._expiries, "-inf", repr(now), start=0, num=limit
            )
            if not due:
                return []
            ids = [_text(raw) for raw in due]
            busy = [session_id for session_id in ids if session_id in in_use]
            candidates = [session_id for session_id in ids if session_id not in in_use]
            async with self.client.pipeline(transaction=False) as pipe:
                if busy:  # a request of this process is using it: look again in a second
                    pipe.zadd(self._expiries, {session_id: now + 1.0 for session_id in busy})
                for session_id in candidates:
                    await self._claim(
                        keys=[self.key(session_id), self._expiries, self._lock_key(session_id)],
                        args=[repr(now), session_id, self._principals, "1"],
                        client=pipe,
                    )
                results = await pipe.execute()
        claimed = []
        for session_id, data in zip(candidates, results[1 if busy else 0 :], strict=True):
            stored = _from_hash(data) if data else None
            if stored is not None:
                claimed.append((session_id, stored))
        return claimed

    async def count(self) -> int:
        async with self._answering():
            return int(await self.client.zcard(self._expiries))

    async def sessions_of(self, principal: str, now: float) -> list[str]:
        index = self._principals + principal
        async with self._answering():
            members = [_text(m) for m in await self.client.smembers(index)]
            if not members:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for session_id in members:
                    pipe.hmget(self.key(session_id), "#e", "#p")
                found = await pipe.execute()
            live, gone = [], []
            for session_id, (expires, bound) in zip(members, found, strict=True):
                if bound is None or _text(bound) != principal:
                    gone.append(session_id)  # dropped by its TTL, or moved on: clean the index
                elif not expires or float(expires) > now:
                    live.append(session_id)
            if gone:
                await self.client.srem(index, *gone)
        return live

    async def session_ids(self, offset: int, limit: int) -> list[str]:
        async with self._answering():
            members = await self.client.zrange(self._expiries, offset, offset + limit - 1)
        return [_text(m) for m in members]

    async def least_recent(self, count: int, now: float) -> list[str]:
        """The sorted set lags touches, so look at a few more candidates than asked, re-file
        them by their real deadline, and take the earliest."""
        async with self._answering():
            candidates = [
                _text(c) for c in await self.client.zrange(self._expiries, 0, count * 4 + 3)
            ]
            if not candidates:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for session_id in candidates:
                    pipe.hget(self.key(session_id), "#e")
                deadlines = await pipe.execute()
            real: dict[str, float] = {}
            for session_id, expires in zip(candidates, deadlines, strict=True):
                if expires is not None:
                    real[session_id] = float(expires) if expires else math.inf
            if real:
                await self.client.zadd(
                    self._expiries, {sid: min(d, 1e300) for sid, d in real.items()}
                )
        return sorted(real, key=real.__getitem__)[:count]

    async def acquire_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        keys = [self.key(session_id), self._lock_key(session_id)]
        async with self._answering():
            taken = await self._lock(keys=keys, args=[token, max(1, int(lease * 1000))])
        return bool(taken)

    async def renew_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        async with self._answering():
            renewed = await self._renew(
                keys=[self._lock_key(session_id)], args=[token, max(1, int(lease * 1000))]
            )
        return bool(renewed)

    async def release_lock(self, session_id: str, token: str) -> None:
        async with self._answering():
            await self._unlock(keys=[self._lock_key(session_id)], args=[token])

    async def close(self) -> None:
        await self.client.aclose()

    # --- plumbing ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _answering(self) -> AsyncIterator[None]:
        """Every failure that means Redis cannot answer now becomes ``StoreUnavailableError``."""
        try:
            yield
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if redis_unavailable(exc):
                raise StoreUnavailableError(
                    f"Redis session store unavailable: {describe(exc)}"
                ) from exc
            raise

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r}>"


def _stored(meta: list[str]) -> StoredSession:
    creation, last, expires, interval, absolute, principal = meta
    return StoredSession(
        creation_time=float(creation),
        last_access=float(last),
        expires_at=float(expires) if expires else math.inf,
        max_inactive_interval=int(interval),
        absolute_timeout=float(absolute) if absolute else None,
        principal=principal or None,
    )


def _from_hash(data: list[bytes]) -> StoredSession | None:
    """A claimed session from its ``HGETALL``; ``None`` if its metadata is unreadable."""
    fields: dict[str, bytes] = {}
    for index in range(0, len(data) - 1, 2):
        fields[_text(data[index])] = data[index + 1]
    try:
        stored = _stored(
            [_text(fields.get(name, b"")) for name in ("#c", "#l", "#e", "#i", "#a", "#p")]
        )
    except ValueError:
        return None
    stored.attributes = {name[2:]: value for name, value in fields.items() if name.startswith("a:")}
    return stored


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
