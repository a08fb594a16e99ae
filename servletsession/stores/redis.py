"""``RedisStore``: sessions in Redis, through redis-py's asyncio client (hiredis when installed).

Layout, under a configurable ``prefix``:

* ``{prefix}{<id>}`` — a hash per session: a field per attribute (``a:<name>``) and metadata
  fields (``#c`` created, ``#l`` last access, ``#e`` deadline, ``#i`` idle interval, ``#a``
  absolute timeout). The braces are a hash tag: the session's keys (hash and ``…:lock``) share
  one Redis Cluster slot. The key's TTL follows the idle deadline, plus a grace period so that the
  reaper, not Redis, ends the session and its listeners fire.
* ``{prefix}expiries`` — a sorted set of deadlines. A read-only touch does not update it (that
  keeps a read at one single-key round trip); the reaper re-files entries it finds touched since.

Every multi-step operation is one Lua script: atomic, and one round trip. A read-only request
costs one round trip (load and touch together), a writing one two.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..cookies import session_ref
from ..errors import StoreUnavailableError
from .serializing import SerializingStore

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..session import HttpSession, SessionOwner

logger = logging.getLogger("servletsession")

_LOAD_AND_TOUCH = """
local data = redis.call('HGETALL', KEYS[1])
if #data == 0 then return data end
local now = tonumber(ARGV[1])
local expires = redis.call('HGET', KEYS[1], '#e')
if expires ~= '' and tonumber(expires) <= now then return data end
local period = tonumber(ARGV[2])
if now - tonumber(redis.call('HGET', KEYS[1], '#l')) < period then return data end
local deadline = nil
local interval = tonumber(redis.call('HGET', KEYS[1], '#i'))
if interval > 0 then deadline = now + interval + period end
local absolute = redis.call('HGET', KEYS[1], '#a')
if absolute ~= '' then
  local cap = tonumber(redis.call('HGET', KEYS[1], '#c')) + tonumber(absolute)
  if deadline == nil or cap < deadline then deadline = cap end
end
if deadline == nil then
  redis.call('HSET', KEYS[1], '#l', ARGV[1], '#e', '')
  redis.call('PERSIST', KEYS[1])
else
  redis.call('HSET', KEYS[1], '#l', ARGV[1], '#e', string.format('%.6f', deadline))
  redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - now) * 1000) + tonumber(ARGV[3]))
end
return data
"""

# ARGV: new?, id, deadline ('' = never), ttl_ms, principal-set prefix, n, field1, value1, …
# fieldN, valueN, del…  (a '#p' field among them rebinds the principal index)
_SAVE = """
if ARGV[1] == '0' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], '#p')
local n = tonumber(ARGV[6])
for i = 7, 6 + 2 * n, 2 do
  if ARGV[i] == '#p' and ARGV[i + 1] ~= (old or '') then
    if old and old ~= '' then redis.call('SREM', ARGV[5] .. old, ARGV[2]) end
    if ARGV[i + 1] ~= '' then redis.call('SADD', ARGV[5] .. ARGV[i + 1], ARGV[2]) end
  end
end
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 7, 6 + 2 * n)) end
if #ARGV >= 7 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 7 + 2 * n, #ARGV)) end
if ARGV[3] == '' then
  redis.call('PERSIST', KEYS[1])
  redis.call('ZADD', KEYS[2], '+inf', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
end
return 1
"""

_UNINDEX = """
local function unindex(key, prefix, id)
  local principal = redis.call('HGET', key, '#p')
  if principal and principal ~= '' then redis.call('SREM', prefix .. principal, id) end
end
"""

_DELETE = (
    _UNINDEX
    + """
unindex(KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"""
)

_RENAME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local principal = redis.call('HGET', KEYS[1], '#p')
if principal and principal ~= '' then
  redis.call('SREM', ARGV[3] .. principal, ARGV[1])
  redis.call('SADD', ARGV[3] .. principal, ARGV[2])
end
redis.call('RENAME', KEYS[1], KEYS[2])
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if score then redis.call('ZADD', KEYS[3], score, ARGV[2]) end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RENAME', KEYS[4], KEYS[5]) end
return 1
"""

# Claim one due session: the DEL decides who fires session_destroyed (exactly one caller).
_CLAIM = (
    _UNINDEX
    + """
local expires = redis.call('HGET', KEYS[1], '#e')
if not expires or expires == '' then
  if not expires then redis.call('ZREM', KEYS[2], ARGV[2]) end
  if expires == '' then redis.call('ZADD', KEYS[2], '+inf', ARGV[2]) end
  return false
end
if tonumber(expires) > tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[2], expires, ARGV[2])
  return false
end
local data = redis.call('HGETALL', KEYS[1])
unindex(KEYS[1], ARGV[3], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return data
"""
)

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


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
        self._load_and_touch = register(_LOAD_AND_TOUCH)
        self._save = register(_SAVE)
        self._delete = register(_DELETE)
        self._rename = register(_RENAME)
        self._claim = register(_CLAIM)
        self._unlock = register(_UNLOCK)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}{{{session_id}}}"

    # --- the contract ------------------------------------------------------------------------

    async def load(
        self, session_id: str, owner: SessionOwner, now: float, touch: bool = True
    ) -> HttpSession | None:
        period = repr(self.save_period) if touch else "1e18"  # a period never reached: no touch
        try:
            data = await self._load_and_touch(
                keys=[self.key(session_id)],
                args=[repr(now), period, self._grace_ms],
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        if not data:
            return None
        session = self._rebuild(owner, session_id, data, strict=True)
        if session is None:
            await self.delete(session_id)
        return session

    async def save(self, session: HttpSession, changed_names: set[str], now: float) -> bool:
        deadline = self.session_deadline(session, now)
        is_new = not session._stored
        written, removed = self.encode_changes(
            session, session._attributes if is_new else changed_names
        )
        fields: list[Any] = [
            "#l", repr(session._this_accessed_time),
            "#e", "" if math.isinf(deadline) else repr(deadline),
            "#i", session._max_inactive_interval,
            "#a", "" if session._absolute_timeout is None else repr(session._absolute_timeout),
        ]  # fmt: skip
        if is_new:
            fields += ["#c", repr(session._creation_time)]
        if is_new or session._principal_changed:
            fields += ["#p", session._principal or ""]
        for name, value in written.items():
            fields += ["a:" + name, value]
        ttl_ms = 0 if math.isinf(deadline) else math.ceil((deadline - now) * 1000) + self._grace_ms
        args = [
            "1" if is_new else "0",
            session._id,
            "" if math.isinf(deadline) else repr(deadline),
            max(ttl_ms, 1),
            self._principals,
            len(fields) // 2,
            *fields,
            *("a:" + name for name in removed),
        ]
        try:
            saved = await self._save(keys=[self.key(session._id), self._expiries], args=args)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        if saved:
            session._stored = True
        return bool(saved)

    async def delete(self, session_id: str) -> bool:
        try:
            removed = await self._delete(
                keys=[self.key(session_id), self._expiries], args=[session_id, self._principals]
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        return bool(removed)

    async def rename(self, old_id: str, session: HttpSession) -> bool:
        old, new = self.key(old_id), self.key(session._id)
        try:
            moved = await self._rename(
                keys=[old, new, self._expiries, old + ":lock", new + ":lock"],
                args=[old_id, session._id, self._principals],
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        return bool(moved)

    async def claim_expired(
        self, owner: SessionOwner, now: float, limit: int, in_use: Collection[str] = ()
    ) -> list[HttpSession]:
        try:
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
                        keys=[self.key(session_id), self._expiries],
                        args=[repr(now), session_id, self._principals],
                        client=pipe,
                    )
                results = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        claimed = []
        for session_id, data in zip(candidates, results[1 if busy else 0 :], strict=True):
            if data:
                session = self._rebuild(owner, session_id, data, strict=False)
                if session is not None:
                    session._stored = True
                    claimed.append(session)
        return claimed

    async def count(self) -> int:
        try:
            return int(await self.client.zcard(self._expiries))
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    async def sessions_of(self, principal: str, now: float) -> list[str]:
        index = self._principals + principal
        try:
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
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        return live

    async def session_ids(self, offset: int, limit: int) -> list[str]:
        try:
            return [
                _text(m)
                for m in await self.client.zrange(self._expiries, offset, offset + limit - 1)
            ]
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    async def least_recent(self, count: int, now: float) -> list[str]:
        """The sorted set lags read-only touches, so look at a few more candidates than asked,
        re-file them by their real deadline, and take the earliest."""
        try:
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
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        return sorted(real, key=real.__getitem__)[:count]

    async def acquire_lock(self, session_id: str, token: str, ttl: float, now: float) -> bool:
        try:
            taken = await self.client.set(
                self.key(session_id) + ":lock", token, nx=True, px=max(1, int(ttl * 1000))
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        return bool(taken)

    async def release_lock(self, session_id: str, token: str) -> None:
        try:
            await self._unlock(keys=[self.key(session_id) + ":lock"], args=[token])
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        await self.client.aclose()

    # --- plumbing ----------------------------------------------------------------------------

    def _rebuild(
        self, owner: SessionOwner, session_id: str, data: list[bytes], *, strict: bool
    ) -> HttpSession | None:
        meta: dict[str, str] = {}
        attributes: dict[str, bytes] = {}
        for index in range(0, len(data), 2):
            field = data[index].decode()
            if field.startswith("a:"):
                attributes[field[2:]] = data[index + 1]
            else:
                meta[field] = data[index + 1].decode()
        try:
            expires = meta["#e"]
            return self.rebuild(
                owner,
                session_id,
                creation_time=float(meta["#c"]),
                last_access=float(meta["#l"]),
                expires_at=float(expires) if expires else math.inf,
                max_inactive_interval=int(meta["#i"]),
                absolute_timeout=float(meta["#a"]) if meta.get("#a") else None,
                attributes=attributes,
                principal=meta.get("#p") or None,
                strict=strict,
            )
        except (KeyError, ValueError) as exc:
            logger.warning(
                "stored session %s has unreadable metadata (%s: %s); treating it as gone",
                session_ref(session_id), type(exc).__name__, exc,
            )  # fmt: skip
            return None

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r}>"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unavailable(exc: BaseException) -> StoreUnavailableError:
    return StoreUnavailableError(f"Redis session store unavailable: {type(exc).__name__}: {exc}")
