"""Shared stores: latency per request and round trips per request (counted on the wire)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from sqlalchemy import event

from servletsession.stores import RedisStore, SQLStore

from . import contenders
from .inprocess import call, per_request_us, session_cookie

REDIS_URL = os.environ.get("SERVLETSESSION_TEST_REDIS", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "SERVLETSESSION_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


class CountingConnection(Connection):
    """A real redis-py connection that counts its sends: one send is one round trip."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


@dataclass
class StoreResult:
    name: str
    read_only_us: float
    read_write_us: float
    read_only_round_trips: float
    read_write_round_trips: float


def _counting_redis() -> aioredis.Redis:
    pool = aioredis.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection)
    return aioredis.Redis(connection_pool=pool)


async def _trips(app: Any, path: str, cookie: bytes, counter: Any, requests: int = 50) -> float:
    before = counter()
    for _ in range(requests):
        await call(app, path, cookie)
    return (counter() - before) / requests


async def measure(requests: int = 500) -> list[StoreResult]:
    results = []
    tag = uuid.uuid4().hex[:8]
    redis_store = RedisStore(_counting_redis(), prefix=f"bench:{tag}:", save_period=30)
    sql_store = SQLStore(POSTGRES_URL, table_prefix=f"bench{tag}_", save_period=30)
    statements = [0]

    @event.listens_for(sql_store.engine.sync_engine, "before_cursor_execute")
    def _count(*args: Any) -> None:
        statements[0] += 1

    cases = [
        (contenders.servletsession(redis_store, "RedisStore"), lambda: CountingConnection.sent),
        (contenders.starsessions(_counting_redis()), lambda: CountingConnection.sent),
        (contenders.servletsession(sql_store, "SQLStore (PostgreSQL)"), lambda: statements[0]),
    ]
    try:
        for contender, counter in cases:
            cookie = await session_cookie(contender.app)
            await call(contender.app, "/plain", cookie)  # scripts loaded, connections open
            latency = await per_request_us(
                contender.app, "/rw", cookie, requests=requests, batches=5
            )
            reading = await per_request_us(
                contender.app, "/r", cookie, requests=requests, batches=5
            )
            read_only = await _trips(contender.app, "/r", cookie, counter)
            read_write = await _trips(contender.app, "/rw", cookie, counter)
            results.append(StoreResult(contender.name, reading, latency, read_only, read_write))
    finally:
        async with sql_store.engine.begin() as conn:
            await conn.run_sync(sql_store.metadata.drop_all)
        for contender, _ in cases:
            if contender.close is not None:
                await contender.close()
        client = aioredis.Redis.from_url(REDIS_URL)
        for pattern in (f"bench:{tag}:*", "bench-starsessions:*"):
            keys = [key async for key in client.scan_iter(match=pattern)]
            if keys:
                await client.delete(*keys)
        await client.aclose()
    return results
