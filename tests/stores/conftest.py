"""Real store backends for the contract suite: Memory, SQLite, PostgreSQL, Redis.

Server URLs come from ``SERVLETSESSION_TEST_POSTGRES`` and ``SERVLETSESSION_TEST_REDIS``. A server
that cannot be reached skips its tests with the reason — except under ``CI=true``, where the
suite refuses to skip and fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from servletsession import MemoryStore, SessionStore
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

POSTGRES_URL = os.environ.get(
    "SERVLETSESSION_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SERVLETSESSION_TEST_REDIS", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"

STORE_KINDS = ["memory", "sqlite", "postgresql", "redis"]
SHARED_KINDS = ["sqlite", "postgresql", "redis"]  # stores that several processes can share

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


@pytest.fixture
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Makes stores of the test's kind that all share one backend (like several processes)."""
    kind: str = request.param
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
            store = RedisStore(REDIS_URL, prefix=f"sstest:{tag}:", **options)  # type: ignore[arg-type]
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


def stores(*kinds: str) -> pytest.MarkDecorator:
    """Parametrize a test over store kinds (``store_factory`` then yields that kind)."""
    return pytest.mark.parametrize("store_factory", kinds or STORE_KINDS, indirect=True)
