"""Round trips per request, counted on the wire (Redis) and per statement (SQL): no store call
that is not needed. These are the guards behind the benchmark targets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio.lowlevel
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from sqlalchemy import event
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from servletsession import SessionManager, get_session
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

from ..conftest import FakeClock, make_app
from .conftest import REDIS_URL, StoreFactory, require, stores
from .helpers import Browser

pytestmark = pytest.mark.anyio


class CountingConnection(Connection):
    """A real redis-py connection that counts what it sends: one send is one round trip."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
async def counted_redis() -> AsyncIterator[RedisStore]:
    await require("redis")
    pool = aioredis.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection)
    store = RedisStore(aioredis.Redis(connection_pool=pool), prefix="sstest:trips:", save_period=30)
    yield store
    keys = [key async for key in store.client.scan_iter(match="sstest:trips:*")]
    if keys:
        await store.client.delete(*keys)
    await store.close()


async def trips(browser: Browser, app: Any, method: str, path: str, **options: Any) -> int:
    before = CountingConnection.sent
    response = await browser.request(app, method, path, **options)
    assert response.status_code == 200
    return CountingConnection.sent - before


async def test_redis_read_only_request_costs_one_round_trip(
    counted_redis: RedisStore, clock: FakeClock
) -> None:
    app = make_app(SessionManager(counted_redis, clock=clock))
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    await browser.get(app, "/get/a")  # scripts are loaded into Redis once, on first use
    assert await trips(browser, app, "GET", "/get/a") == 1
    clock.advance(31)  # past save_period: the touch rides on the same round trip
    assert await trips(browser, app, "GET", "/get/a") == 1
    await browser.close()


async def test_redis_writing_request_costs_two_round_trips(
    counted_redis: RedisStore, clock: FakeClock
) -> None:
    app = make_app(SessionManager(counted_redis, clock=clock))
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    await browser.post(app, "/set/b", params={"value": "2"})
    assert await trips(browser, app, "POST", "/set/c", params={"value": "3"}) == 2
    await browser.close()


async def test_redis_new_session_costs_one_round_trip(
    counted_redis: RedisStore, clock: FakeClock
) -> None:
    app = make_app(SessionManager(counted_redis, clock=clock))
    first = Browser()
    await first.post(app, "/set/a", params={"value": "1"})  # loads the scripts
    fresh = Browser()
    assert await trips(fresh, app, "POST", "/set/a", params={"value": "1"}) == 1
    await first.close()
    await fresh.close()


async def test_redis_request_without_a_session_costs_nothing(
    counted_redis: RedisStore, clock: FakeClock
) -> None:
    app = make_app(SessionManager(counted_redis, clock=clock))
    browser = Browser()
    assert await trips(browser, app, "GET", "/untouched") == 0
    assert await trips(browser, app, "GET", "/info") == 0
    await browser.close()


@stores("sqlite")
async def test_sqlite_statements_per_request(store_factory: StoreFactory, clock: FakeClock) -> None:
    store = store_factory(save_period=30)
    assert isinstance(store, SQLStore)
    statements: list[str] = []

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.split()[0].upper() in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
            statements.append(statement.split()[0].upper())

    app = make_app(SessionManager(store, clock=clock))
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    statements.clear()
    await browser.get(app, "/get/a")
    # Read-only: the session with its attributes, and this request's access recorded (the
    # deadline rewrite is throttled, the last access never is: it is the next request's
    # last_accessed_time).
    assert statements == ["SELECT", "UPDATE"]
    statements.clear()
    await browser.post(app, "/set/b", params={"value": "2"})
    # Writing: the same, then the save: the session row locked (confirming it still exists),
    # and the one attribute; no metadata rewritten.
    assert statements == ["SELECT", "UPDATE", "SELECT", "INSERT"]
    await browser.close()


class DriverLog:
    """Every statement a PostgreSQL store's connections send, counted at the driver: asyncpg's
    query log (the statements the store sends through asyncpg, and the ``BEGIN``/``COMMIT`` of
    any transaction) and SQLAlchemy's cursor events (statements sent through SQLAlchemy)."""

    def __init__(self, store: SQLStore) -> None:
        self.statements: list[str] = []
        engine = store.engine.sync_engine
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "before_cursor_execute", self._cursor)

    def _checkout(self, dbapi_connection: Any, *args: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(self._logged)

    def _logged(self, record: Any) -> None:
        self.statements.append(" ".join(record.query.split()))

    def _cursor(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(" ".join(statement.split()))

    async def during(self, browser: Browser, app: Any, method: str, path: str,
                     **options: Any) -> list[str]:  # fmt: skip
        await self._settle()
        self.statements.clear()
        response = await browser.request(app, method, path, **options)
        assert response.status_code == 200
        await self._settle()
        return list(self.statements)

    async def _settle(self) -> None:
        for _ in range(3):  # asyncpg hands each record to the loggers with call_soon
            await anyio.lowlevel.checkpoint()


def transaction_control(statements: list[str]) -> list[str]:
    return [s for s in statements if s.split()[0].upper() in {"BEGIN", "COMMIT", "ROLLBACK"}]


@stores("postgresql")
async def test_postgresql_read_only_request_is_one_statement(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    store = store_factory(save_period=30)
    assert isinstance(store, SQLStore)
    log = DriverLog(store)
    app = make_app(SessionManager(store, clock=clock))
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    await browser.get(app, "/get/a")  # the statement is prepared on its connection once
    # One statement records the access and returns the session with its attributes; no
    # transaction around it (BEGIN and COMMIT would be round trips of their own).
    read = await log.during(browser, app, "GET", "/get/a")
    assert len(read) == 1, read
    assert read[0].startswith("WITH touched AS (UPDATE")
    clock.advance(31)  # past save_period: the deadline's renewal rides on the same statement
    assert await log.during(browser, app, "GET", "/get/a") == read
    await browser.close()


@stores("postgresql")
async def test_postgresql_writing_request_is_two_statements(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    store = store_factory(save_period=30)
    assert isinstance(store, SQLStore)
    log = DriverLog(store)
    app = make_app(
        SessionManager(store, clock=clock), [Route("/rewrite", rewrite, methods=["POST"])]
    )
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    # Writing: the load, then one save that checks, writes and returns the deadline.
    written = await log.during(browser, app, "POST", "/set/b", params={"value": "2"})
    assert len(written) == 2, written
    assert transaction_control(written) == []
    assert written[1].startswith("WITH old AS (SELECT")
    # Everything a save can carry at once: a removal, a write, the principal, the timeouts.
    everything = await log.during(browser, app, "POST", "/rewrite")
    assert len(everything) == 2, everything
    assert transaction_control(everything) == []
    shown = await browser.get(app, "/info")
    assert shown.json()["names"] == ["b", "c"]
    assert shown.json()["max_inactive_interval"] == 600
    await browser.close()


async def rewrite(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    session.remove_attribute("a")
    session.set_attribute("c", "3")
    session.principal = "bob"
    session.max_inactive_interval = 600
    return Response("rewritten")


@stores("postgresql")
async def test_postgresql_new_session_is_one_statement(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    store = store_factory(save_period=30)
    assert isinstance(store, SQLStore)
    log = DriverLog(store)
    app = make_app(SessionManager(store, clock=clock))
    await Browser().post(app, "/set/a", params={"value": "1"})  # tables created
    fresh = Browser()
    created = await log.during(fresh, app, "POST", "/set/a", params={"value": "1"})
    assert len(created) == 1, created
    assert transaction_control(created) == []
    await fresh.close()
