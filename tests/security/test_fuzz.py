"""Hypothesis fuzzes the Cookie header through the real middleware: never a 500, never a session
that the server did not issue to this client. Synchronous (Hypothesis drives a TestClient), so
it builds its own stores instead of using the async store fixtures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from servletsession import MemoryStore, SessionManager, SessionStore
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

from ..conftest import make_app
from ..stores.conftest import POSTGRES_URL, REDIS_URL, require

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
cookie_values = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.builds(
        lambda a, b, sep: (a + sep + b).encode(),
        st.text(ALPHABET, min_size=40, max_size=46),
        st.text(ALPHABET, min_size=40, max_size=46),
        st.sampled_from([".", "", "..", ";", " "]),
    ),
)
cookie_headers = st.one_of(
    cookie_values.map(lambda value: b"sessionid=" + value),
    st.lists(cookie_values, min_size=1, max_size=4).map(
        lambda values: b"; ".join(b"sessionid=" + value for value in values)
    ),
    st.binary(max_size=400),
)


def make_store(kind: str, tmp_path: Path) -> tuple[SessionStore, Callable[[], None]]:
    """A store of ``kind`` and how to clean up after it."""
    if kind == "memory":
        return MemoryStore(), lambda: None
    asyncio.run(require(kind))
    tag = uuid.uuid4().hex[:10]
    if kind == "sqlite":
        return SQLStore(f"sqlite:///{tmp_path}/fuzz.db"), lambda: None
    if kind == "postgresql":
        return SQLStore(POSTGRES_URL, table_prefix=f"f{tag}_"), lambda: None

    def clean_redis() -> None:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"sstest:{tag}:*"))
        if keys:
            client.delete(*keys)
        client.close()

    return RedisStore(REDIS_URL, prefix=f"sstest:{tag}:"), clean_redis


async def drop_tables(store: SessionStore) -> None:
    if isinstance(store, SQLStore):
        async with store.engine.begin() as conn:
            await conn.run_sync(store.metadata.drop_all)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql", "redis"])
def test_fuzzed_cookie_headers_never_500_and_never_adopt(kind: str, tmp_path: Path) -> None:
    store, clean = make_store(kind, tmp_path)
    manager = SessionManager(store)
    with TestClient(make_app(manager), base_url="https://testserver") as http:
        assert http.post("/set/a", params={"value": "real"}).status_code == 200
        real_cookie = http.cookies["sessionid"]
        http.cookies.clear()

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(header=cookie_headers)
        def attack(header: bytes) -> None:
            response = http.get("/get/a", headers={"cookie": header})
            assert response.status_code == 200
            if real_cookie.encode() not in header:
                assert response.json() == {"session": False}

        attack()
        real = http.get("/get/a", headers={"cookie": f"sessionid={real_cookie}"})
        assert real.json() == {"session": True, "value": "real"}
        if kind == "postgresql":
            http.portal.call(drop_tables, store)
        http.portal.call(manager.close)
    clean()
