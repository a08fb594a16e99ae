"""Shared stores: latency per request and round trips per request (counted on the wire).

PostgreSQL is measured against its floor, in the same run and in interleaved batches (so that
the machine's drift hits all alike): one asyncpg round trip, ``select 1`` on one connection.
Its statements are counted at the driver: asyncpg's query log (the store's own statements, and any
``BEGIN``/``COMMIT``) plus SQLAlchemy's cursor events (statements sent through SQLAlchemy).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from servletsession.stores import RedisStore, SQLStore

from . import cluster, contenders
from .inprocess import _discard, _receive, _scope, call, session_cookie

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
    #: PostgreSQL rows: the floor measured alongside (one asyncpg ``select 1`` round trip).
    floor_us: float | None = None


def _counting_redis(**options: Any) -> aioredis.Redis:
    """A client as each library builds it from a URL (``options``: what that library passes)."""
    pool = aioredis.ConnectionPool.from_url(
        REDIS_URL, connection_class=CountingConnection, **options
    )
    return aioredis.Redis(connection_pool=pool)


#: How RedisStore builds its client from a URL: no per-socket timeout (it bounds each operation
#: itself), so a send is not wrapped in ``asyncio.wait_for``. starsessions' RedisStore uses
#: ``Redis.from_url(url)`` as it is.
OURS = {"socket_timeout": None, "socket_connect_timeout": 5.0}


async def _trips(app: Any, path: str, cookie: bytes, counter: Any, requests: int = 50) -> float:
    await asyncio.sleep(0)  # asyncpg hands its query log over with call_soon
    before = counter()
    for _ in range(requests):
        await call(app, path, cookie)
    await asyncio.sleep(0)
    return (counter() - before) / requests


class DriverStatements:
    """Counts what an engine's connections send: asyncpg's query log (statements sent by asyncpg
    directly, ``BEGIN``/``COMMIT`` included) and SQLAlchemy's ``before_cursor_execute``."""

    def __init__(self, store: SQLStore) -> None:
        self.count = 0
        self.active = False
        engine = store.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "checkout", self._checkout)

    def _statement(self, *args: Any) -> None:
        self.count += self.active

    def _logged(self, record: Any) -> None:
        self.count += self.active

    def _checkout(self, dbapi_connection: Any, *args: Any) -> None:
        if self.active:  # logging costs time: only while counting
            dbapi_connection.driver_connection.add_query_logger(self._logged)

    def counted(self) -> int:
        return self.count


def _postgres_store(tag: str, **connect: Any) -> SQLStore:
    if not connect:
        return SQLStore(POSTGRES_URL, table_prefix=f"bench{tag}_", save_period=30)
    engine = create_async_engine(POSTGRES_URL, connect_args={"server_settings": connect})
    return SQLStore(engine, table_prefix=f"bench{tag}_", save_period=30)


async def postgres(requests: int, rounds: int = 9) -> list[StoreResult]:
    """The floor, then SQLStore's read-only and read+write requests against it. Twice: with the
    server's own commit settings (durable: a save waits for the WAL flush), and with
    ``synchronous_commit=off`` on the store's connections (what the code costs when the disk does
    not)."""
    floor = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""))
    tag = uuid.uuid4().hex[:8]
    made = [
        ("PostgreSQL", _postgres_store(tag)),
        ("PostgreSQL, synchronous_commit=off", _postgres_store(tag, synchronous_commit="off")),
    ]
    try:
        results = [
            await _postgres_case(label, store, floor, requests, rounds) for label, store in made
        ]
    finally:
        await floor.close()
        for _, store in made:
            async with store.engine.begin() as conn:
                await conn.run_sync(store.metadata.drop_all)
            await store.close()
    floor_us = statistics.median(r.floor_us or 0.0 for r in results)
    name = "floor: asyncpg `select 1`, one connection"
    return [StoreResult(name, floor_us, floor_us, 1, 1, floor_us), *results]


async def _postgres_case(
    label: str, store: SQLStore, floor: Any, requests: int, rounds: int
) -> StoreResult:
    """Batches of the floor, of read-only and of read+write requests take turns (the machine's
    drift hits all alike); then the statements per request."""
    contender = contenders.servletsession(store, f"SQLStore ({label})")
    counter = DriverStatements(store)
    cookie = await session_cookie(contender.app)
    batches = {
        "floor": _batch(lambda: floor.fetchval("select 1")),
        "r": _batch(lambda: contender.app(_scope("/r", cookie), _receive, _discard)),
        "rw": _batch(lambda: contender.app(_scope("/rw", cookie), _receive, _discard)),
    }
    for batch in batches.values():  # warm up: connections open, statements prepared
        await batch(min(requests, 300))
    samples: dict[str, list[float]] = {key: [] for key in batches}
    for _ in range(rounds):
        for key, batch in batches.items():
            samples[key].append(await batch(requests))
    floor_us, read_us, write_us = (statistics.median(samples[key]) for key in batches)
    counter.active = True
    read_only = await _trips(contender.app, "/r", cookie, counter.counted)
    read_write = await _trips(contender.app, "/rw", cookie, counter.counted)
    if contender.close is not None:
        await contender.close()
    name = (
        f"servletsession SQLStore ({label}): "
        f"{read_us / floor_us:.1f}× and {write_us / floor_us:.1f}× the floor"
    )
    return StoreResult(name, read_us, write_us, read_only, read_write, floor_us)


def _batch(request: Any) -> Any:
    async def run(count: int) -> float:
        began = time.perf_counter_ns()
        for _ in range(count):
            await request()
        return (time.perf_counter_ns() - began) / count / 1000

    return run


async def redis(requests: int, rounds: int = 9) -> list[StoreResult]:
    """The floor (one redis-py ``GET`` on the same kind of client), servletsession's RedisStore,
    starsessions' RedisStore and RedisStore on a three-master cluster: batches take turns, so
    that the machine's drift hits all alike; then the round trips per request."""
    tag = uuid.uuid4().hex[:8]
    floor = aioredis.Redis.from_url(REDIS_URL, **OURS)
    await floor.set(f"bench:{tag}:floor", "x")
    ours = contenders.servletsession(
        RedisStore(_counting_redis(**OURS), prefix=f"bench:{tag}:", save_period=30), "RedisStore"
    )
    theirs = contenders.starsessions(_counting_redis())
    made = [("ours", ours), ("theirs", theirs)]
    running = cluster.BenchCluster().start() if cluster.available() else None
    if running is not None:
        store = RedisStore(running.url, cluster=True, prefix=f"bench:{tag}:", save_period=30)
        made.append(("cluster", contenders.servletsession(store, "RedisStore on a cluster")))
    try:
        batches = {"floor": _batch(lambda: floor.get(f"bench:{tag}:floor"))}
        cookies = {}
        for key, contender in made:
            cookie = cookies[key] = await session_cookie(contender.app)
            for path in ("/r", "/rw"):
                batches[f"{key} {path}"] = _batch(
                    lambda app=contender.app, path=path, cookie=cookie: app(
                        _scope(path, cookie), _receive, _discard
                    )
                )
        for batch in batches.values():  # warm up: scripts loaded, connections open
            await batch(min(requests, 300))
        samples: dict[str, list[float]] = {key: [] for key in batches}
        for _ in range(rounds):
            for key, batch in batches.items():
                samples[key].append(await batch(requests))
        median = {key: statistics.median(values) for key, values in samples.items()}
        floor_us = median["floor"]
        results = [StoreResult("floor: redis-py `GET` (RedisStore's client settings)", floor_us,
                               floor_us, 1, 1, floor_us)]  # fmt: skip
        for key, contender in made:
            counter = (lambda: CountingConnection.sent) if key != "cluster" else None
            trips = [await _trips(contender.app, path, cookies[key], counter)
                     if counter else float("nan") for path in ("/r", "/rw")]  # fmt: skip
            results.append(StoreResult(contender.name, median[f"{key} /r"],
                                       median[f"{key} /rw"], *trips, floor_us))  # fmt: skip
        return results
    finally:
        await floor.delete(f"bench:{tag}:floor")
        await floor.aclose()
        for _, contender in made:
            if contender.close is not None:
                await contender.close()
        if running is not None:
            running.stop()
        client = aioredis.Redis.from_url(REDIS_URL)
        for pattern in (f"bench:{tag}:*", "bench-starsessions:*"):
            keys = [key async for key in client.scan_iter(match=pattern)]
            if keys:
                await client.delete(*keys)
        await client.aclose()


async def measure(requests: int = 500) -> list[StoreResult]:
    """Redis rows (floor first), then PostgreSQL rows (floor first)."""
    return await redis(requests) + await postgres(requests)
