"""Real store backends for the contract suite: Memory, SQLite, PostgreSQL, Redis.

Server URLs come from ``SERVLETSESSION_TEST_POSTGRES`` and ``SERVLETSESSION_TEST_REDIS``. A server
that cannot be reached skips its tests with the reason — except under ``CI=true``, where the
suite refuses to skip and fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from servletsession import MemoryStore, SessionStore
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

if TYPE_CHECKING:
    from .servers import PrivateRedisCluster

POSTGRES_URL = os.environ.get(
    "SERVLETSESSION_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SERVLETSESSION_TEST_REDIS", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"

STORE_KINDS = ["memory", "sqlite", "postgresql", "redis", "redis-cluster"]
#: Stores that several processes can share ("redis-cluster": a private three-master cluster).
SHARED_KINDS = ["sqlite", "postgresql", "redis", "redis-cluster"]

_reachable: dict[str, str | None] = {}


async def _probe(kind: str) -> str | None:
    """``None`` if the server answers, else why not."""
    try:
        if kind == "postgresql":
            engine = create_async_engine(POSTGRES_URL)
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("select 1"))
            finally:
                await engine.dispose()
        elif kind == "redis":
            client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
            try:
                await client.ping()
            finally:
                await client.aclose()
    except Exception as exc:
        return f"{kind} at {POSTGRES_URL if kind == 'postgresql' else REDIS_URL}: {exc!r}"
    return None


async def require(kind: str) -> None:
    if kind not in _reachable:
        _reachable[kind] = await _probe(kind)
    reason = _reachable[kind]
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true refuses to skip store tests: cannot reach {reason}")
        pytest.skip(f"cannot reach {reason}")


StoreFactory = Callable[..., SessionStore]

#: The shared cluster's URL while the ``redis_cluster`` fixture is up.
CLUSTER_URL = [""]


def use_cluster(request: pytest.FixtureRequest, kind: str) -> None:
    """Start the shared cluster if ``kind`` is "redis-cluster" (for tests that make their own
    stores with :func:`redis_store`)."""
    if kind == "redis-cluster":
        request.getfixturevalue("redis_cluster")


def redis_store(kind: str, tag: str, store_class: type[RedisStore] = RedisStore,
                **options: Any) -> RedisStore:  # fmt: skip
    """A RedisStore of ``kind`` ("redis" or "redis-cluster") under the test prefix of ``tag``."""
    if kind == "redis-cluster":
        assert CLUSTER_URL[0], "use_cluster(request, kind) starts the cluster first"
        return store_class(CLUSTER_URL[0], cluster=True, prefix=f"sstest:{tag}:", **options)
    return store_class(REDIS_URL, prefix=f"sstest:{tag}:", **options)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    """One private Redis Cluster (3 masters, no replicas: see ``servers.PrivateRedisCluster``)
    shared by the whole test session: started the first time a test asks for it (~3 s), stopped
    by PID at the end. The "redis-cluster" store kind runs on it (:func:`use_cluster`). Tests
    must not break it; ``private_redis_cluster`` (servers.py) is one a test may kill nodes of.
    """
    from .servers import new_redis_cluster  # servers.py imports this module

    # No kill/restart here, so a longer node timeout: a busy machine must not make the nodes
    # declare each other failed (the cluster would answer CLUSTERDOWN to every test).
    cluster = new_redis_cluster(
        tmp_path_factory.mktemp("redis-cluster"),
        node_timeout_ms=5000,
        config={"appendfsync": "everysec"},
    )
    CLUSTER_URL[0] = cluster.url
    try:
        yield cluster
    finally:
        CLUSTER_URL[0] = ""
        cluster.stop()


@pytest.fixture
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Makes stores of the test's kind that all share one backend (like several processes)."""
    kind: str = request.param
    use_cluster(request, kind)
    await require(kind)
    tag = uuid.uuid4().hex[:10]
    made: list[SessionStore] = []
    shared_memory = MemoryStore()

    def make(**options: object) -> SessionStore:
        store: SessionStore
        if kind == "memory":
            store = shared_memory
        elif kind == "sqlite":
            store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/sessions.db", **options)  # type: ignore[arg-type]
        elif kind == "postgresql":
            store = SQLStore(POSTGRES_URL, table_prefix=f"t{tag}_", **options)  # type: ignore[arg-type]
        else:
            store = redis_store(kind, tag, **options)
        made.append(store)
        return store

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    await _clean(kind, tag)
    for store in made:
        await store.close()


async def _clean(kind: str, tag: str) -> None:
    if kind == "postgresql":
        engine = create_async_engine(POSTGRES_URL)
        async with engine.begin() as conn:
            await conn.execute(text(f"drop table if exists t{tag}_attributes, t{tag}_sessions"))
        await engine.dispose()
    elif kind == "redis":
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"sstest:{tag}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    elif kind == "redis-cluster":
        cluster = RedisCluster.from_url(CLUSTER_URL[0])
        for key in [key async for key in cluster.scan_iter(match=f"sstest:{tag}:*")]:
            await cluster.delete(key)
        await cluster.aclose()


def stores(*kinds: str) -> pytest.MarkDecorator:
    """Parametrize a test over store kinds (``store_factory`` then yields that kind)."""
    return pytest.mark.parametrize("store_factory", kinds or STORE_KINDS, indirect=True)
