"""PostgreSQL's request path (``stores/postgres.py``): one statement per operation, sent by asyncpg
on a connection of the engine's pool. What it must keep from the SQLAlchemy path it replaced: the
deadline rule to the last bit, the lock token's veto, a refusal for a session that is gone, and
every failure of a connection as ``StoreUnavailableError`` (never a broken connection handed to
the next request, never a session ID in an error)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest

from servletsession.errors import ConfigurationError, StoreUnavailableError
from servletsession.stores.base import LockLostError, SessionWrite, StoredSession
from servletsession.stores.sql import SQLStore

from .conftest import POSTGRES_URL, require

pytestmark = pytest.mark.anyio

SID = "s" * 43  # shaped like a session ID: describe() would redact it, the test looks for it
NOW = 1_000_000.0


@pytest.fixture
async def store() -> AsyncIterator[SQLStore]:
    await require("postgresql")
    store = SQLStore(POSTGRES_URL, table_prefix=f"pgpath{id(object()) % 10**8}_", save_period=30)
    await store.create_tables()
    yield store
    async with store.engine.begin() as conn:
        await conn.run_sync(store.metadata.drop_all)
    await store.close()


@pytest.fixture
async def other() -> AsyncIterator[asyncpg.Connection]:
    """A second client of the server: holds row locks, ends the store's connections."""
    conn = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""))
    yield conn
    await conn.close()


def record(
    *, interval: int = 1800, expires_at: float = NOW + 1800, absolute: float | None = None
) -> StoredSession:
    return StoredSession(creation_time=NOW - 100, last_access=NOW - 50, expires_at=expires_at,
                         max_inactive_interval=interval, absolute_timeout=absolute,
                         principal=None, attributes={"a": b"1"})  # fmt: skip


def expected(store: SQLStore, stored: StoredSession, now: float, force: bool = False) -> float:
    target = store.next_deadline(
        stored.expires_at, stored.max_inactive_interval, stored.absolute_timeout,
        stored.creation_time, now, force=force,
    )  # fmt: skip
    return stored.expires_at if target is None else target


DEADLINE_CASES = {
    "kept: far from due": record(),
    "renewed: within the interval": record(expires_at=NOW + 1000),
    "renewed, capped by the absolute timeout": record(expires_at=NOW + 10, absolute=900.0),
    "an interval of 7: a pad of 0.7000000000000001": record(interval=7, expires_at=NOW + 1),
    "never idles out": record(interval=0, expires_at=math.inf),
    "never idles out, absolute cap": record(interval=-1, expires_at=math.inf, absolute=5000.0),
}


@pytest.mark.parametrize("stored", DEADLINE_CASES.values(), ids=DEADLINE_CASES.keys())
async def test_the_sql_deadline_rule_is_the_python_rule_to_the_bit(
    store: SQLStore, stored: StoredSession
) -> None:
    now = NOW + 0.123456789
    await store.create(SID, stored, NOW)
    loaded = await store.load(SID, now)
    assert loaded is not None
    assert loaded.expires_at == expected(store, stored, now)
    assert loaded.last_access == stored.last_access  # the previous access
    assert loaded.attributes == {"a": b"1"}
    again = await store.load(SID, now + 1, touch=False)
    assert again is not None
    assert again.last_access == now  # this access was recorded
    assert again.expires_at == loaded.expires_at


async def test_a_timeouts_change_recomputes_the_deadline_from_the_new_timeouts(
    store: SQLStore,
) -> None:
    await store.create(SID, record(), NOW)
    write = SessionWrite(timeouts_changed=True, max_inactive_interval=60, absolute_timeout=None)
    deadline = await store.save(SID, write, NOW + 5)
    assert deadline == NOW + 5 + 60 + 6  # now + interval + pad (10 % of 60)
    loaded = await store.load(SID, NOW + 6, touch=False)
    assert loaded is not None
    assert (loaded.max_inactive_interval, loaded.expires_at) == (60, deadline)


async def test_an_expired_session_is_returned_untouched(store: SQLStore) -> None:
    await store.create(SID, record(expires_at=NOW - 1), NOW)
    loaded = await store.load(SID, NOW)
    assert loaded is not None
    assert (loaded.expires_at, loaded.last_access) == (NOW - 1, NOW - 50)
    assert await store.touch(SID, NOW) == NOW - 1
    again = await store.load(SID, NOW, touch=False)
    assert again is not None
    assert again.last_access == NOW - 50


async def test_a_save_writes_and_removes_by_name_and_never_resurrects(store: SQLStore) -> None:
    await store.create(SID, record(), NOW)
    write = SessionWrite(written={"b": b"2", "a": b"3"}, removed=["a"],
                         principal_changed=True, principal="ann")  # fmt: skip
    assert await store.save(SID, write, NOW) == NOW + 1800  # far from due: kept
    loaded = await store.load(SID, NOW, touch=False)
    assert loaded is not None
    assert (loaded.attributes, loaded.principal) == ({"b": b"2"}, "ann")  # removal wins
    assert await store.delete(SID)
    assert await store.save(SID, SessionWrite(written={"c": b"4"}), NOW) is None
    assert await store.load(SID, NOW) is None


async def test_a_save_under_a_lock_taken_over_writes_nothing(store: SQLStore) -> None:
    await store.create(SID, record(), NOW)
    assert await store.acquire_lock(SID, "mine", 5, NOW)
    assert await store.acquire_lock(SID, "theirs", 5, NOW + 10)  # my lease ran out
    with pytest.raises(LockLostError):
        await store.save(SID, SessionWrite(written={"a": b"9"}, lock_token="mine"), NOW + 10)
    loaded = await store.load(SID, NOW + 10, touch=False)
    assert loaded is not None
    assert loaded.attributes == {"a": b"1"}
    write = SessionWrite(written={"a": b"9"}, lock_token="theirs")
    assert await store.save(SID, write, NOW + 10) is not None


async def test_a_connection_the_server_ended_while_idle_is_replaced_unseen(
    store: SQLStore, other: asyncpg.Connection
) -> None:
    await store.create(SID, record(), NOW)
    fairy = await store.engine.raw_connection()
    pid = fairy.driver_connection.get_server_pid()  # type: ignore[union-attr]
    fairy.close()
    assert await other.fetchval("select pg_terminate_backend($1)", pid)
    with anyio.fail_after(5):
        while True:  # the pooled connection learns of its end
            await anyio.sleep(0.01)
            fairy = await store.engine.raw_connection()
            fairy.close()
            if fairy.dbapi_connection is None or pid != await _pid(store):
                break
    assert await store.load(SID, NOW) is not None


async def _pid(store: SQLStore) -> int:
    fairy = await store.engine.raw_connection()
    try:
        pid: int = fairy.driver_connection.get_server_pid()  # type: ignore[union-attr]
        return pid
    finally:
        fairy.close()


async def wait_for_lock_wait(other: asyncpg.Connection, table: str) -> int:
    """The PID of the backend waiting for a row lock in a statement on ``table``."""
    with anyio.fail_after(5):
        while True:
            pid = await other.fetchval(
                "select pid from pg_stat_activity where wait_event_type = 'Lock' "
                "and position($1 in query) > 0",
                table,
            )
            if pid is not None:
                return int(pid)
            await anyio.sleep(0.01)


async def test_a_connection_ended_mid_statement_is_unavailable_and_never_reused(
    store: SQLStore, other: asyncpg.Connection
) -> None:
    await store.create(SID, record(), NOW)
    table = store.sessions.name
    failure: list[BaseException] = []

    async def save() -> None:
        try:
            await store.save(SID, SessionWrite(written={"a": b"2"}), NOW)
        except BaseException as exc:
            failure.append(exc)

    async with other.transaction():
        await other.execute(f"select 1 from {table} where id = $1 for update", SID)  # noqa: S608
        async with anyio.create_task_group() as group:
            group.start_soon(save)
            pid = await wait_for_lock_wait(other, table)
            assert await other.fetchval("select pg_terminate_backend($1)", pid)
    assert len(failure) == 1
    assert isinstance(failure[0], StoreUnavailableError)
    assert "administrator command" in str(failure[0])  # what the log line will say
    assert SID not in str(failure[0])
    loaded = await store.load(SID, NOW, touch=False)  # on a fresh connection
    assert loaded is not None
    assert loaded.attributes == {"a": b"1"}


async def test_a_statement_cancelled_mid_flight_leaves_no_busy_connection(
    store: SQLStore, other: asyncpg.Connection
) -> None:
    await store.create(SID, record(), NOW)
    table = store.sessions.name
    async with other.transaction():
        await other.execute(f"select 1 from {table} where id = $1 for update", SID)  # noqa: S608
        with anyio.move_on_after(0.2):
            await store.save(SID, SessionWrite(written={"a": b"2"}), NOW)
    with anyio.fail_after(5):
        assert await store.load(SID, NOW, touch=False) is not None
        assert await store.save(SID, SessionWrite(written={"a": b"3"}), NOW) is not None


async def test_a_bug_raises_one_line_without_the_session_id(store: SQLStore) -> None:
    await store.create(SID, record(), NOW)
    async with store.engine.begin() as conn:
        await conn.run_sync(store.attributes.drop)
    with pytest.raises(RuntimeError) as raised:
        await store.load(SID, NOW)
    assert not isinstance(raised.value, StoreUnavailableError)  # a bug: HTTP 500, not 503
    assert "UndefinedTableError" in str(raised.value)
    assert SID not in str(raised.value)
    assert raised.value.__suppress_context__
    async with store.engine.begin() as conn:
        await conn.run_sync(store.attributes.create)


@pytest.mark.parametrize("prefix", ["sessions; drop table x; --", "a-b", "9lives", "x" * 45])
def test_a_table_prefix_that_is_not_a_plain_identifier_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="table_prefix"):
        SQLStore("sqlite+aiosqlite:///:memory:", table_prefix=prefix)


async def test_a_removal_ordered_after_a_concurrent_insert_wins(
    store: SQLStore, other: asyncpg.Connection
) -> None:
    """Another save holds the session's row lock and inserts ``x``; this save, removing ``x``,
    waits for it and commits last: ``x`` is gone (a DELETE from the statement's earlier snapshot
    would not see the row; the removal is an upsert of a tombstone, which does)."""
    await store.create(SID, record(), NOW)
    sessions, attributes = store.sessions.name, store.attributes.name
    holding = other.transaction()
    await holding.start()
    lock = f'SELECT 1 FROM "{sessions}" WHERE id = $1 FOR UPDATE'  # noqa: S608
    await other.execute(lock, SID)
    insert = f'INSERT INTO "{attributes}" VALUES ($1, $2, $3)'  # noqa: S608
    await other.execute(insert, SID, "x", "1")
    async with anyio.create_task_group() as group:
        group.start_soon(store.save, SID, SessionWrite(removed=["x"]), NOW)
        await anyio.sleep(0.2)  # the save waits for the row lock
        await holding.commit()
    loaded = await store.load(SID, NOW, touch=False)
    assert loaded is not None
    assert loaded.attributes == {"a": b"1"}
    again = await store.save(SID, SessionWrite(written={"x": b"2"}), NOW)  # set again after
    assert again is not None
    loaded = await store.load(SID, NOW, touch=False)
    assert loaded is not None
    assert loaded.attributes == {"a": b"1", "x": b"2"}
    await store.save(SID, SessionWrite(removed=["x"]), NOW)
    await store.save(SID, SessionWrite(removed=["a"]), NOW)  # sweeps x's tombstone
    select = f'SELECT name, value FROM "{attributes}" WHERE session_id = $1'  # noqa: S608
    rows = await other.fetch(select, SID)
    assert [(row["name"], row["value"]) for row in rows] == [("a", None)]
    claimed = await store.claim(SID, NOW + 10**6)
    assert claimed is not None
    assert claimed.attributes == {}
