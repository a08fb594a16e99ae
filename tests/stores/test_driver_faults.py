"""Each driver's failures, produced for real, and what ``servletsession.stores.faults`` makes of
them: every "cannot answer right now" must count as store unavailable (503 + Retry-After), and
every bug must not (500).

The failures come from real servers: private PostgreSQL clusters and redis-servers that the tests
start, break and stop by PID (see ``servers.py``), the machine's PostgreSQL for failures that
harm nothing (a pool timeout, bad SQL), and SQLite files. No mocks: every exception below was
raised by a driver talking to a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import exc as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from servletsession.cookies import new_session_id
from servletsession.stores import faults
from servletsession.stores.faults import describe, redis_unavailable, sql_unavailable

from .conftest import POSTGRES_URL, require
from .helpers import free_port

if TYPE_CHECKING:
    from .servers import PrivatePostgres, PrivateRedis, RedisFactory

# The fixtures private_postgres, private_redis, redis_factory (and postgres_factory behind them).
pytest_plugins = ("tests.stores.servers",)
pytestmark = pytest.mark.anyio

SECRET = "SECRETVALUE123"


# --- helpers -----------------------------------------------------------------------------------


async def failure(operation: Awaitable[Any]) -> Exception:
    """The exception ``operation`` raises; the test fails if it raises none."""
    try:
        await operation
    except Exception as exc:
        return exc
    pytest.fail("the operation was expected to fail, and succeeded")


def chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and all behind it: ``.orig``, ``__cause__``, ``__context__``."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        link = stack.pop()
        if id(link) not in seen:
            seen.add(id(link))
            yield link
            behind = (link.__context__, link.__cause__, getattr(link, "orig", None))
            stack.extend(b for b in behind if isinstance(b, BaseException))


def sqlstates(exc: BaseException) -> set[str]:
    """Every SQLSTATE along the exception's chain."""
    return {s for link in chain(exc) if isinstance(s := getattr(link, "sqlstate", None), str)}


async def until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 10) -> None:
    """Poll ``condition`` every few milliseconds, failing the test after ``seconds``."""
    give_up = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


EngineFactory = Callable[..., AsyncEngine]


@pytest.fixture
async def engines() -> AsyncIterator[EngineFactory]:
    """Makes engines (no pooling unless asked for, 5 s connect timeout) and disposes of them."""
    made: list[AsyncEngine] = []

    def make(url: str, **options: Any) -> AsyncEngine:
        if "pool_size" not in options:
            options.setdefault("poolclass", NullPool)
        if url.startswith("postgresql"):
            options.setdefault("connect_args", {"timeout": 5})
        engine = create_async_engine(url, **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        with contextlib.suppress(Exception):
            await engine.dispose()


async def execute(engine: AsyncEngine, statement: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(statement), params)).all()


async def autocommit(engine: AsyncEngine) -> AsyncConnection:
    conn = await engine.connect()
    return await conn.execution_options(isolation_level="AUTOCOMMIT")


async def wait_active(engine: AsyncEngine, fragment: str) -> None:
    """Until a statement containing ``fragment`` runs on the server (a fresh connection per look:
    pg_stat_activity is a snapshot per transaction)."""

    async def running() -> bool:
        rows = await execute(
            engine,
            "select 1 from pg_stat_activity where state = 'active'"
            " and pid <> pg_backend_pid() and query like :q",
            q=f"%{fragment}%",
        )
        return bool(rows)

    await until(running, f"a running statement with {fragment!r}")


# --- PostgreSQL: refusals and losses that mean "not now" ---------------------------------------


@pytest.mark.parametrize(
    "private_postgres",
    [{"max_connections": 3, "superuser_reserved_connections": 0, "reserved_connections": 0}],
    indirect=True,
    ids=["max_connections=3"],
)
async def test_too_many_clients_53300_is_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    engine = engines(private_postgres.url)
    async with contextlib.AsyncExitStack() as held:
        opened = 0
        for _ in range(10):
            try:
                await held.enter_async_context(engine.connect())
            except Exception as exc:
                error = exc
                break
            opened += 1
        else:
            pytest.fail("the server never refused a connection")
    assert opened == 3
    # Not an OperationalError: SQLAlchemy's asyncpg dialect wraps it in the plain DBAPIError.
    assert type(error) is sa.DBAPIError
    assert sqlstates(error) == {"53300"}
    assert sql_unavailable(error)
    assert describe(error) == (
        "TooManyConnectionsError: sorry, too many clients already (SQLSTATE 53300)"
    )


async def test_a_pool_timeout_is_unavailable(engines: EngineFactory) -> None:
    await require("postgresql")
    engine = engines(POSTGRES_URL, pool_size=1, max_overflow=0, pool_timeout=0.2)
    async with engine.connect() as held:
        await held.execute(text("select 1"))
        started = time.monotonic()
        error = await failure(engine.connect())
    assert 0.15 < time.monotonic() - started < 2
    assert isinstance(error, sa.TimeoutError)
    assert not isinstance(error, TimeoutError)  # SQLAlchemy's own, not the builtin
    assert sql_unavailable(error)
    assert describe(error).startswith(
        "TimeoutError: QueuePool limit of size 1 overflow 0 reached, connection timed out"
    )
    assert "sqlalche.me" not in describe(error)


async def test_connecting_while_the_server_shuts_down_57P03_is_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    engine = engines(private_postgres.url)
    async with engine.connect() as session:  # a smart shutdown waits for it to end
        await session.execute(text("select 1"))
        await asyncio.to_thread(private_postgres.shutdown_smart)
        error = await failure(engine.connect())
        assert private_postgres.status() == "stopping"
    await asyncio.to_thread(private_postgres.wait_stopped)
    assert type(error) is sa.DBAPIError
    assert sqlstates(error) == {"57P03"}
    assert "the database system is shutting down" in str(error)
    assert sql_unavailable(error)


@pytest.mark.parametrize(
    "private_postgres",
    [{"standby": True, "hot_standby": "off"}],
    indirect=True,
    ids=["standby,hot_standby=off"],
)
async def test_connecting_to_a_standby_not_accepting_connections_57P03_is_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    assert private_postgres.status() == "standby"
    error = await failure(engines(private_postgres.url).connect())
    assert type(error) is sa.DBAPIError
    assert sqlstates(error) == {"57P03"}
    assert "the database system is not accepting connections" in str(error)
    assert sql_unavailable(error)


async def test_a_fast_shutdown_mid_query_57P01_is_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    engine = engines(private_postgres.url)
    async with engine.connect() as conn:
        query = asyncio.ensure_future(conn.execute(text("select pg_sleep(30)")))
        await wait_active(engine, "pg_sleep(30)")
        await asyncio.to_thread(private_postgres.kill, immediate=False)  # pg_ctl stop -m fast
        error = await failure(query)
    assert isinstance(error, sa.DBAPIError)
    assert error.connection_invalidated
    assert {"57P01", "08003"} <= sqlstates(error)  # admin shutdown, then the connection is gone
    assert sql_unavailable(error)
    assert "terminating connection due to administrator command" in describe(error)


async def test_a_backend_crash_and_the_recovery_after_it_are_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    engine = engines(private_postgres.url)
    victim = await engine.connect()
    victim_pid = (await victim.execute(text("select pg_backend_pid()"))).scalar_one()
    async with engine.connect() as conn:
        query = asyncio.ensure_future(conn.execute(text("select pg_sleep(30)")))
        await wait_active(engine, "pg_sleep(30)")
        # SIGKILL of one backend of our private cluster: the postmaster ends every other session
        # (57P02) and reinitialises, refusing connections (57P03) until it has recovered.
        os.kill(victim_pid, signal.SIGKILL)
        error = await failure(query)
    with contextlib.suppress(sa.DBAPIError):
        await victim.close()
    assert isinstance(error, sa.DBAPIError)
    assert error.connection_invalidated
    assert sql_unavailable(error)

    refusals: list[Exception] = []

    async def back() -> bool:
        try:
            await execute(engine, "select 1")
        except Exception as exc:
            refusals.append(exc)
            return False
        return True

    await until(back, "the cluster to recover")
    # Every refusal met while it recovered ("in recovery mode", "not yet accepting connections",
    # or a refused connect) counts as unavailable. How many there are depends on timing.
    for refusal in refusals:
        assert sql_unavailable(refusal), describe(refusal)


async def test_a_connection_the_server_closed_is_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    engine = engines(private_postgres.url)
    async with engine.connect() as conn:
        pid = (await conn.execute(text("select pg_backend_pid()"))).scalar_one()
        admin = await autocommit(engine)
        await admin.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})

        async def gone() -> bool:
            rows = await admin.execute(text("select 1 from pg_stat_activity where pid = :pid"),
                                       {"pid": pid})  # fmt: skip
            return not rows.all()

        await until(gone, "the terminated backend to exit")
        await admin.close()
        error = await failure(conn.execute(text("select 1")))
    # "connection is closed" (InterfaceError) if asyncpg saw the socket close first, "closed in
    # the middle of operation" (08003, after 57P01) if it learnt of it from this query.
    assert isinstance(error, sa.DBAPIError)
    assert error.connection_invalidated
    assert sql_unavailable(error)


async def test_a_killed_server_refuses_and_is_unavailable_until_it_is_back(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    engine = engines(private_postgres.url)
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))
        private_postgres.kill(immediate=True)  # pg_ctl stop -m immediate
        lost = await failure(conn.execute(text("select 1")))
    refused = await failure(engine.connect())
    assert isinstance(lost, sa.DBAPIError)
    assert lost.connection_invalidated
    assert sql_unavailable(lost)
    # SQLAlchemy lets a refused TCP connect through as it is: a bare OSError.
    assert isinstance(refused, ConnectionRefusedError)
    assert sql_unavailable(refused)
    assert describe(refused).startswith("ConnectionRefusedError: [Errno 111]")

    private_postgres.start()  # same port, crash recovery
    assert await execute(engine, "select 1") == [(1,)]


async def test_a_hung_server_times_out_as_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    engine = engines(private_postgres.url, connect_args={"timeout": 0.3})
    postmaster = private_postgres.postmaster_pid()
    assert postmaster is not None
    os.kill(postmaster, signal.SIGSTOP)  # the kernel still accepts the TCP connection
    try:
        error = await failure(engine.connect())
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert isinstance(error, TimeoutError)
    assert sql_unavailable(error)


async def test_transactions_to_retry_and_timeouts_are_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory
) -> None:
    """40001 serialization failure, 40P01 deadlock, 55P03 lock timeout, 57014 statement timeout:
    the server is up, but this statement cannot succeed right now."""
    engine = engines(private_postgres.url)
    setup = await autocommit(engine)
    await setup.execute(text("drop table if exists t"))
    await setup.execute(text("create table t (id int primary key, v int)"))
    await setup.execute(text("insert into t values (1, 0), (2, 0)"))
    await setup.close()
    errors: dict[str, Exception] = {}

    async with engine.connect() as a, engine.connect() as b:
        # 40001: a repeatable-read transaction updates a row changed since its snapshot.
        await a.execution_options(isolation_level="REPEATABLE READ")
        await a.execute(text("select * from t"))
        await b.execute(text("update t set v = v + 1 where id = 1"))
        await b.commit()
        errors["40001"] = await failure(a.execute(text("update t set v = v + 1 where id = 1")))
        await a.rollback()

    async with engine.connect() as a, engine.connect() as b:
        # 40P01: each holds the row the other wants.
        for conn in (a, b):
            await conn.execute(text("set deadlock_timeout = '20ms'"))
        await a.execute(text("update t set v = 1 where id = 1"))
        await b.execute(text("update t set v = 2 where id = 2"))
        first = asyncio.ensure_future(a.execute(text("update t set v = 1 where id = 2")))
        await wait_active(engine, "where id = 2")
        second = asyncio.ensure_future(b.execute(text("update t set v = 2 where id = 1")))
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        errors["40P01"] = next(o for o in outcomes if isinstance(o, Exception))
        await a.rollback()
        await b.rollback()

    async with engine.connect() as a, engine.connect() as b:
        # 55P03: lock_timeout while another transaction holds the row.
        await a.execute(text("select * from t where id = 1 for update"))
        await b.execute(text("set lock_timeout = '20ms'"))
        errors["55P03"] = await failure(b.execute(text("update t set v = 3 where id = 1")))
        await b.rollback()
        await a.rollback()

        # 57014: statement_timeout.
        await b.execute(text("set statement_timeout = '20ms'"))
        errors["57014"] = await failure(b.execute(text("select pg_sleep(5)")))
        await b.rollback()

    for state, error in errors.items():
        assert isinstance(error, sa.DBAPIError)
        assert state in sqlstates(error), (state, describe(error))
        assert sql_unavailable(error), describe(error)


# --- PostgreSQL: errors that retrying will not fix --------------------------------------------


@pytest.mark.parametrize(
    ("statement", "params", "state"),
    [
        ("select * from no_such_table where x = :p", {"p": SECRET}, "42P01"),
        ("selec :p", {"p": SECRET}, "42601"),
        ("select cast(:p as int)", {"p": SECRET}, "22000"),  # asyncpg refuses the argument
        ("select cast(cast(:p as text) as int)", {"p": SECRET}, "22P02"),  # the server does
        ("select 1 / 0 where :p <> ''", {"p": SECRET}, "22012"),
        ("insert into dup values (:p), (:p)", {"p": SECRET}, "23505"),
    ],
    ids=["undefined-table", "syntax", "client-data", "server-data", "division", "unique"],
)
async def test_sql_bugs_are_not_unavailable_and_describe_hides_sql_and_parameters(
    engines: EngineFactory, statement: str, params: dict[str, Any], state: str
) -> None:
    await require("postgresql")
    async with engines(POSTGRES_URL).connect() as conn:
        await conn.execute(text("create temporary table dup (v text primary key)"))
        error = await failure(conn.execute(text(statement), params))
    assert isinstance(error, sa.DBAPIError)
    assert state in sqlstates(error)
    assert not sql_unavailable(error)
    # SQLAlchemy's message has the statement and the parameters; the description has neither.
    assert SECRET in str(error)
    assert "[SQL:" in str(error)
    description = describe(error)
    assert SECRET not in description
    assert "[SQL" not in description
    assert "parameters" not in description
    assert error.statement is not None
    assert error.statement not in description
    assert "\n" not in description
    assert description.endswith(f"(SQLSTATE {state})")


async def test_describe_hides_the_parameters_of_a_statement_the_connection_died_in(
    engines: EngineFactory,
) -> None:
    await require("postgresql")
    # The backend terminates itself in the middle of the statement (57P01): a real connection
    # loss, with a session-ID-like parameter bound to the statement.
    statement = "select pg_terminate_backend(pg_backend_pid()), cast(:sid as text), pg_sleep(1)"
    async with engines(POSTGRES_URL).connect() as conn:
        error = await failure(conn.execute(text(statement), {"sid": SECRET}))
    assert sql_unavailable(error)
    assert SECRET in str(error)
    assert SECRET not in describe(error)
    assert "pg_terminate_backend" not in describe(error)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:{port}/no_such_database",
        "postgresql+asyncpg://no_such_role@127.0.0.1:{port}/postgres",
    ],
    ids=["no-database-3D000", "no-role-28000"],
)
async def test_configuration_errors_are_not_unavailable(
    private_postgres: PrivatePostgres, engines: EngineFactory, url: str
) -> None:
    error = await failure(engines(url.format(port=private_postgres.port)).connect())
    assert sqlstates(error) & {"3D000", "28000"}
    assert not sql_unavailable(error)


# --- SQLite ------------------------------------------------------------------------------------


async def test_sqlite_busy_and_unopenable_are_unavailable_but_sql_errors_are_not(
    tmp_path: Path, engines: EngineFactory
) -> None:
    path = tmp_path / "sessions.db"
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("create table t (x)")
        locker.execute("begin exclusive")  # no one else may read or write
        engine = engines(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0})
        locked = await failure(execute(engine, "select * from t"))
    finally:
        locker.close()
    unopenable = await failure(
        execute(engines(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/s.db"), "select 1")
    )
    no_table = await failure(execute(engine, "select * from no_such_table"))
    syntax = await failure(execute(engine, "selec 1"))

    # All four are sqlite3.OperationalError; only the result code tells an outage from a bug.
    for error in (locked, unopenable, no_table, syntax):
        assert isinstance(error, sa.OperationalError)
    assert "database is locked" in str(locked)
    assert "unable to open database file" in str(unopenable)
    assert sql_unavailable(locked)
    assert sql_unavailable(unopenable)
    assert not sql_unavailable(no_table)
    assert not sql_unavailable(syntax)
    assert describe(locked) == "OperationalError: database is locked"


# --- Redis -------------------------------------------------------------------------------------


RedisClients = Callable[..., aioredis.Redis]


@pytest.fixture
async def redis_clients() -> AsyncIterator[RedisClients]:
    """Makes clients with no retries (a refusal is reported at once) and closes them."""
    made: list[aioredis.Redis] = []

    def make(port: int, *, timeout: float = 2, **options: Any) -> aioredis.Redis:
        client = aioredis.Redis(
            host="127.0.0.1", port=port, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), **options,
        )  # fmt: skip
        made.append(client)
        return client

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            await client.aclose()


WRITE_SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1])"


async def test_writes_to_a_replica_readonly_are_unavailable(
    redis_factory: RedisFactory, redis_clients: RedisClients
) -> None:
    master = redis_factory(config={"repl-diskless-sync-delay": "0"})  # sync at once, not in 5 s
    replica = redis_factory(replicaof=master)
    client = redis_clients(replica.port)

    async def in_sync() -> bool:  # not LOADING the master's dataset (EVAL would say LOADING)
        return (await client.info("replication")).get("master_link_status") == "up"

    await until(in_sync, "the replica to sync with its master")
    key = f"servletsession:{{{SECRET}}}"

    async def transaction() -> Any:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, "a", "1")
            pipe.expire(key, 60)
            return await pipe.execute()

    errors = {
        "command": await failure(client.set(key, "v")),
        "script": await failure(client.eval(WRITE_SCRIPT, 1, key, "v")),
        "transaction": await failure(transaction()),
    }
    for how, error in errors.items():
        assert isinstance(error, rx.ReadOnlyError), how
        assert redis_unavailable(error), how
        assert SECRET not in describe(error), how
        assert describe(error).startswith(
            "ReadOnlyError: You can't write against a read only replica."
        )
    # redis-py names the command and its arguments (the session's key) in a pipeline's error.
    assert SECRET in str(errors["transaction"])


async def test_a_killed_redis_is_unavailable_until_it_is_back(
    private_redis: PrivateRedis, redis_clients: RedisClients
) -> None:
    client = redis_clients(private_redis.port)
    assert await client.ping()
    private_redis.kill()  # SIGKILL
    lost = await failure(client.get("k"))
    refused = await failure(redis_clients(private_redis.port).get("k"))
    for error in (lost, refused):
        assert isinstance(error, rx.ConnectionError)
        assert redis_unavailable(error)
    assert isinstance(refused.__cause__ or refused.__context__, ConnectionRefusedError)

    private_redis.start()  # same port
    assert await redis_clients(private_redis.port).ping()


async def test_a_hung_redis_times_out_as_unavailable(
    private_redis: PrivateRedis, redis_clients: RedisClients
) -> None:
    client = redis_clients(private_redis.port, timeout=0.2)
    assert await client.ping()
    assert private_redis.pid is not None
    os.kill(private_redis.pid, signal.SIGSTOP)
    try:
        error = await failure(client.get("k"))
    finally:
        os.kill(private_redis.pid, signal.SIGCONT)
    assert isinstance(error, rx.TimeoutError)
    assert redis_unavailable(error)


async def test_a_hung_redis_gives_503_within_the_store_timeout_and_no_stale_reply(
    private_redis: PrivateRedis,
) -> None:
    """RedisStore bounds each operation itself (``socket_timeout``); the connection a timed-out
    operation used is dropped, so no later operation reads the reply it left behind."""
    from servletsession import StoreUnavailableError
    from servletsession.stores.base import SessionWrite, StoredSession
    from servletsession.stores.redis import RedisStore

    store = RedisStore(f"redis://127.0.0.1:{private_redis.port}/0", socket_timeout=0.2)
    session_id, now = new_session_id(), 1_700_000_000.0
    record = StoredSession(creation_time=now, last_access=now, expires_at=now + 60,
                           max_inactive_interval=60, absolute_timeout=None, principal=None,
                           attributes={"a": b'["j",1]'})  # fmt: skip
    try:
        await store.create(session_id, record, now)
        assert private_redis.pid is not None
        os.kill(private_redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=r"did not answer within 0\.2 s"):
                await store.save(session_id, SessionWrite(written={"a": b'["j",2]'}), now)
            assert time.monotonic() - started < 1.5
        finally:
            os.kill(private_redis.pid, signal.SIGCONT)
        for _ in range(5):  # a stale reply would answer one of these with another's data
            assert await store.load(new_session_id(), now, touch=False) is None
            found = await store.load(session_id, now, touch=False)
            assert found is not None
            assert found.attributes is not None
            assert found.attributes["a"] in (b'["j",1]', b'["j",2]')
    finally:
        await store.close()


async def _maxclients(factory: RedisFactory, clients: RedisClients) -> Exception:
    server = factory(maxclients="1")
    holder = clients(server.port)

    async def holds_the_only_slot() -> bool:
        try:
            return bool(await holder.ping())
        except rx.ConnectionError:  # the slot is not free yet: the start-up probe's connection
            return False

    await until(holds_the_only_slot, "a client to take the only slot")
    return await failure(clients(server.port).get("k"))


async def _masterdown(factory: RedisFactory, clients: RedisClients) -> Exception:
    server = factory(replicaof=free_port(), config={"replica-serve-stale-data": "no"})
    return await failure(clients(server.port).get("k"))


async def _noreplicas(factory: RedisFactory, clients: RedisClients) -> Exception:
    server = factory(config={"min-replicas-to-write": "1"})
    return await failure(clients(server.port).set("k", "v"))


async def _noreplicas_in_a_script(factory: RedisFactory, clients: RedisClients) -> Exception:
    server = factory(config={"min-replicas-to-write": "1"})
    return await failure(clients(server.port).eval(WRITE_SCRIPT, 1, "k", "v"))


async def _oom(factory: RedisFactory, clients: RedisClients) -> Exception:
    server = factory(maxmemory="1")
    return await failure(clients(server.port).set("k", "v"))


async def _clusterdown(factory: RedisFactory, clients: RedisClients) -> Exception:
    nodes = factory.root / f"nodes-{free_port()}.conf"
    # cluster-port: the bus port is otherwise the port + 10000, which may be taken or > 65535.
    server = factory(config={"cluster-enabled": "yes", "cluster-config-file": str(nodes),
                             "cluster-port": str(free_port())})  # fmt: skip
    return await failure(clients(server.port).get("k"))  # no slot is served yet


async def _loading(factory: RedisFactory, clients: RedisClients) -> Exception:
    # 2000 keys at 1 ms each: two seconds of loading after a restart, answering LOADING.
    server = factory(
        config={"key-load-delay": "1000", "loading-process-events-interval-bytes": "1024"}
    )
    client = clients(server.port)
    async with client.pipeline(transaction=False) as pipe:
        for number in range(2000):
            pipe.set(f"key{number}", "x" * 100)
        await pipe.execute()
    await client.save()
    server.kill()
    server.start(wait=False)
    errors: list[Exception] = []

    async def answered() -> bool:
        try:
            await clients(server.port).get("key1")
        except rx.ConnectionError as exc:
            if isinstance(exc.__cause__ or exc.__context__, ConnectionRefusedError):
                return False  # not listening yet
            errors.append(exc)
            return True
        pytest.fail("the dataset loaded before any command met LOADING")

    await until(answered, "the restarted server to listen")
    return errors[0]


async def _busy(factory: RedisFactory, clients: RedisClients) -> Exception:
    server = factory(config={"busy-reply-threshold": "10"})
    runner = clients(server.port, timeout=10)
    endless = asyncio.ensure_future(runner.eval("while true do end", 0))
    errors: list[Exception] = []

    async def busy() -> bool:
        try:
            await clients(server.port).get("k")
        except rx.ResponseError as exc:
            errors.append(exc)
            return True
        return False

    try:
        await until(busy, "BUSY")
    finally:
        with contextlib.suppress(rx.ResponseError):
            await clients(server.port).script_kill()
        with contextlib.suppress(rx.ResponseError):
            await endless  # "Script killed by user with SCRIPT KILL..."
    return errors[0]


@pytest.mark.parametrize(
    ("produce", "kind"),
    [
        (_maxclients, rx.ConnectionError),
        (_masterdown, rx.MasterDownError),
        (_noreplicas, rx.ResponseError),
        (_noreplicas_in_a_script, rx.ResponseError),
        (_oom, rx.OutOfMemoryError),
        (_clusterdown, rx.ClusterDownError),
        (_loading, rx.BusyLoadingError),
        (_busy, rx.ResponseError),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
async def test_redis_refusals_that_mean_not_now_are_unavailable(
    redis_factory: RedisFactory,
    redis_clients: RedisClients,
    produce: Callable[[RedisFactory, RedisClients], Awaitable[Exception]],
    kind: type[Exception],
) -> None:
    error = await produce(redis_factory, redis_clients)
    assert isinstance(error, kind), repr(error)
    assert redis_unavailable(error), describe(error)


async def _wrongtype(client: aioredis.Redis) -> Any:
    await client.lpush("list", "x")
    return await client.get("list")


async def _wrongtype_in_a_script(client: aioredis.Redis) -> Any:
    await client.lpush("list", "x")
    return await client.eval("return redis.call('GET', KEYS[1])", 1, "list")


async def _script_error(client: aioredis.Redis) -> Any:
    await client.set("text", "not a number")
    return await client.eval("return redis.call('INCR', KEYS[1])", 1, "text")


async def _client_data_error(client: aioredis.Redis) -> Any:
    return await client.set("k", {"not": "encodable"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "produce",
    [_wrongtype, _wrongtype_in_a_script, _script_error, _client_data_error],
    ids=lambda value: value.__name__.strip("_"),
)
async def test_redis_errors_that_retrying_will_not_fix_are_not_unavailable(
    private_redis: PrivateRedis,
    redis_clients: RedisClients,
    produce: Callable[[aioredis.Redis], Awaitable[Any]],
) -> None:
    error = await failure(produce(redis_clients(private_redis.port)))
    assert isinstance(error, rx.RedisError)
    assert not redis_unavailable(error), describe(error)


async def test_describe_hides_a_session_id_that_a_redis_error_echoes(
    private_redis: PrivateRedis, redis_clients: RedisClients
) -> None:
    session_id = new_session_id()
    client = redis_clients(private_redis.port)
    key = f"servletsession:{{{session_id}}}"
    error = await failure(client.execute_command("NOSUCHCOMMAND", key))  # type: ignore[no-untyped-call]
    assert isinstance(error, rx.ResponseError)
    assert session_id in str(error)  # "unknown command ..., with args beginning with: '<key>'"
    assert not redis_unavailable(error)
    assert session_id not in describe(error)
    assert describe(error).startswith("ResponseError: unknown command 'NOSUCHCOMMAND'")


async def test_redis_authentication_errors_are_configuration_errors(
    redis_factory: RedisFactory, redis_clients: RedisClients
) -> None:
    server = redis_factory(requirepass="the-password")
    no_password = await failure(redis_clients(server.port).get("k"))
    wrong_password = await failure(redis_clients(server.port, password="wrong").get("k"))
    for error in (no_password, wrong_password):
        assert isinstance(error, rx.AuthenticationError)  # a ConnectionError subclass...
        assert not redis_unavailable(error)  # ...but a wrong password will not fix itself
        assert "the-password" not in describe(error)


# --- the module itself -------------------------------------------------------------------------


def test_faults_needs_neither_driver_installed() -> None:
    """With SQLAlchemy, asyncpg and redis all unimportable, the module still imports and still
    recognises a real refused connection."""
    program = """
import importlib.util, socket, sys
for name in ("sqlalchemy", "asyncpg", "redis"):
    sys.modules[name] = None  # any import of it fails
spec = importlib.util.spec_from_file_location("faults", sys.argv[1])
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2)
except OSError as exc:
    refused = exc
print(faults.sql_unavailable(refused), faults.redis_unavailable(refused),
      faults.sql_unavailable(ValueError("x")), faults.redis_unavailable(ValueError("x")))
print(faults.describe(refused))
"""
    result = subprocess.run(
        [sys.executable, "-c", program, faults.__file__, str(free_port())],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    verdicts, description = result.stdout.splitlines()
    assert verdicts.split() == ["True", "True", "False", "False"]
    assert description.startswith("ConnectionRefusedError: [Errno 111]")
