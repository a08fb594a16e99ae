"""``RedisStore``'s operations over every shard: the reaper's claims, counts, a principal's
sessions, pages of IDs, the least recently used. Each reads all shards in one pipeline (redis-py
sends one batch per node on a cluster): a few dozen small commands, whatever the number of
sessions.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .base import StoredSession
from .redis_layout import text
from .redis_moves import Where

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .redis_layout import RedisLayout
    from .redis_moves import MovingSessions

__all__ = ["ShardedIndexes", "from_hash", "stored_of"]


class ShardedIndexes:
    """The cross-session half of ``RedisStore`` (a mixin: it uses the store's client, layout,
    claim script and error handling)."""

    client: aioredis.Redis | RedisCluster
    cluster: bool
    layout: RedisLayout
    moves: MovingSessions

    def key(self, session_id: str) -> str:
        raise NotImplementedError

    def _keys(self, session_id: str) -> list[str]:
        raise NotImplementedError

    def answering(self) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def _claim_one(self, session_id: str, now: float, refile: str) -> StoredSession | None:
        raise NotImplementedError

    _claim: Any
    _principal_sessions: Any

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        raise NotImplementedError

    async def claim_expired(
        self, now: float, limit: int, in_use: Collection[str] = ()
    ) -> list[tuple[str, StoredSession]]:
        layout = self.layout
        async with self.answering():
            per_shard = await self._each_shard(
                lambda pipe, shard: pipe.zrangebyscore(
                    layout.index(shard), "-inf", repr(now), start=0, num=limit
                )
            )
            ids = [text(raw) for due in per_shard for raw in due]
            busy = [session_id for session_id in ids if session_id in in_use]
            candidates = [session_id for session_id in ids if session_id not in in_use][:limit]
            if busy:  # a request of this process is using it: look again in a second
                async with self.client.pipeline(transaction=False) as pipe:
                    for session_id in busy:
                        pipe.zadd(layout.index_of(session_id), {session_id: now + 1.0})
                    await pipe.execute()
            results = await self._claims(candidates, now)
        return [(sid, stored) for sid, stored in zip(candidates, results, strict=True) if stored]

    async def _claims(self, session_ids: list[str], now: float) -> list[StoredSession | None]:
        """Claim due sessions: in one pipeline on a single server; on a cluster, a few at a time
        (a script in a cluster pipeline cannot reload itself on a node that lost it)."""
        if self.cluster:
            gate = asyncio.Semaphore(16)

            async def claim(session_id: str) -> StoredSession | None:
                async with gate:
                    return await self._claim_one(session_id, now, "1")

            return list(await asyncio.gather(*(claim(session_id) for session_id in session_ids)))
        client = self.client
        assert not isinstance(client, RedisCluster)
        async with client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                args = [repr(now), session_id, self.layout.principals_of(session_id), "1"]
                await self._claim(keys=self._keys(session_id), args=args, client=pipe)
            replies = await pipe.execute()
        claimed: list[StoredSession | None] = []
        for session_id, data in zip(session_ids, replies, strict=True):
            if data and data[0] == b"#m":  # moving: the move decides
                claimed.append(await self._claim_one(session_id, now, "1"))
            else:
                claimed.append(from_hash(data) if data else None)
        return claimed

    async def count(self) -> int:
        layout = self.layout
        async with self.answering():
            counts = await self._each_shard(lambda pipe, shard: pipe.zcard(layout.index(shard)))
        return sum(int(count) for count in counts)

    async def sessions_of(self, principal: str, now: float) -> list[str]:
        """The principal's live sessions.

        Each shard's set is read with its members' hashes in one script, so no ID change within
        a shard can hide a session. Every shard is read twice, one pass after the other: an ID
        change into another shard adds the new ID before it removes the old, so a session moving
        during the first pass is seen by one pass or the other. A member marked as moving whose
        new ID was not listed is looked up, and the shards are read again (a few rounds at most).
        """
        layout = self.layout
        live: list[str] = []
        seen: set[str] = set()
        async with self.answering():
            for _ in range(8):
                listed: dict[str, tuple[str, str]] = {}
                for _ in range(2 if layout.shards > 1 else 1):
                    for found in await self._principal_pass(principal):
                        for i in range(0, len(found), 3):
                            listed[text(found[i])] = (text(found[i + 1]), text(found[i + 2]))
                moved = False
                for session_id, (expires, target) in listed.items():
                    if session_id in seen:
                        continue
                    seen.add(session_id)
                    if target and target in listed:
                        continue  # moved: its new ID is listed
                    if target and await self.moves.where(session_id, target) is Where.GONE:
                        moved = True  # moved (its new ID unlisted so far) or ended since
                    elif not expires or float(expires) > now:
                        live.append(session_id)
                if not moved:
                    break
        return live

    async def _principal_pass(self, principal: str) -> list[Any]:
        """``PRINCIPAL_SESSIONS`` on every shard: one pipeline (loading the script where a node
        lacks it)."""
        layout, script = self.layout, self._principal_sessions
        if self.cluster:  # no scripts in a cluster pipeline: a few at a time
            gate = asyncio.Semaphore(16)

            async def one(shard: int) -> Any:
                async with gate:
                    return await self._run(script, [layout.principals(shard) + principal],
                                           [layout.key_head(shard), principal])  # fmt: skip

            return list(await asyncio.gather(*(one(shard) for shard in range(layout.shards))))
        for attempt in range(2):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for shard in range(layout.shards):
                        pipe.evalsha(script.sha, 1, layout.principals(shard) + principal,
                                     layout.key_head(shard), principal)  # fmt: skip
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                await self.client.script_load(script.script)
        raise AssertionError("unreachable")

    async def session_ids(self, offset: int, limit: int) -> list[str]:
        """A page of IDs: the shards' deadline indexes one after the other."""
        layout = self.layout
        async with self.answering():
            sizes = [int(size) for size in await self._each_shard(
                lambda pipe, shard: pipe.zcard(layout.index(shard)))]  # fmt: skip
            page: list[str] = []
            for shard, size in enumerate(sizes):
                if offset >= size:
                    offset -= size
                    continue
                wanted = limit - len(page)
                if wanted <= 0:
                    break
                members = await self.client.zrange(layout.index(shard), offset, offset + wanted - 1)
                page += [text(m) for m in members]
                offset = 0
        return page

    async def least_recent(self, count: int, now: float) -> list[str]:
        """The indexes lag touches, so look at a few more candidates than asked in each shard,
        re-file them by their real deadline, and take the earliest."""
        layout = self.layout
        async with self.answering():
            per_shard = await self._each_shard(
                lambda pipe, shard: pipe.zrange(layout.index(shard), 0, count * 4 + 3)
            )
            candidates = [text(c) for found in per_shard for c in found]
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
                async with self.client.pipeline(transaction=False) as pipe:
                    for session_id, deadline in real.items():
                        pipe.zadd(layout.index_of(session_id), {session_id: min(deadline, 1e300)})
                    await pipe.execute()
        return sorted(real, key=real.__getitem__)[:count]

    async def _each_shard(self, command: Any) -> list[Any]:
        """``command(pipe, shard)`` for every shard, in one pipeline (on a cluster, one batch
        per node), answers in shard order."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.layout.shards):
                command(pipe, shard)
            return list(await pipe.execute())


def stored_of(meta: list[str]) -> StoredSession:
    creation, last, expires, interval, absolute, principal = meta
    return StoredSession(
        creation_time=float(creation),
        last_access=float(last),
        expires_at=float(expires) if expires else math.inf,
        max_inactive_interval=int(interval),
        absolute_timeout=float(absolute) if absolute else None,
        principal=principal or None,
    )


def from_hash(data: list[bytes]) -> StoredSession | None:
    """A claimed session from its ``HGETALL``; ``None`` if its metadata is unreadable."""
    fields: dict[str, bytes] = {}
    for index in range(0, len(data) - 1, 2):
        fields[text(data[index])] = data[index + 1]
    try:
        stored = stored_of(
            [text(fields.get(name, b"")) for name in ("#c", "#l", "#e", "#i", "#a", "#p")]
        )
    except ValueError:
        return None
    stored.attributes = {name[2:]: value for name, value in fields.items() if name.startswith("a:")}
    return stored
