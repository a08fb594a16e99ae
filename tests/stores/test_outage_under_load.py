"""A store that cannot answer, under load, with real servers only: every request that needs the
session gets 503 with Retry-After — never a fresh session, never a replaced or deleted cookie,
never a 500 — and once the store is back the same cookie finds the same data, with no increment
lost and none applied that was answered 503.

* A private PostgreSQL cluster and a private redis-server are killed while two real uvicorn
  workers (``tests/apps/multiprocess.py``) serve ten clients, then restarted on the same port.
* A private cluster refuses with "too many clients" (53300) while the test holds every slot, and
  a one-connection pool times out while the test holds its connection.

Every server here is the test's own (``servers.py``), started and stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import httpx2
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from servletsession import SessionManager, get_session
from servletsession.stores.sql import SQLStore

from ..conftest import SECRET, make_app
from .helpers import Browser, UvicornWorkers
from .test_faults import ROUTES  # one increment route for both fault files

if TYPE_CHECKING:
    from .servers import PrivatePostgres, PrivateRedis, RedisFactory

# The fixtures private_postgres and redis_factory (and postgres_factory behind them).
pytest_plugins = ("tests.stores.servers",)
pytestmark = pytest.mark.anyio


CLIENTS = 10  # browsers, each owning one session with a counter
WARM = 5  # increments each client has had answered 200 before the store is killed
TARGET = 25  # ...and in total, by the end
AFTER = 5  # ...and after the store is back
DOWN_FOR = 1.5  # seconds the load goes on against a dead store
PACE = 0.01  # seconds between a client's increments; after a 503 or an error, BACKOFF
BACKOFF = 0.03
READ_PACE = 0.015
MAX_ATTEMPTS = 600  # per client and loop: the load is bounded even if the store never returns
RECOVERY_LIMIT = 5.0  # seconds after the restart by which every client must have a 200 again


# --- two real workers --------------------------------------------------------------------------


class Workers(UvicornWorkers):
    """Two uvicorn processes of ``tests/apps/multiprocess.py`` on one store; their output goes to
    a log file each, read back for the report."""

    def __init__(self, store_url: str, prefix: str, directory: Path) -> None:
        env = {"SS_STORE_URL": store_url, "SS_PREFIX": prefix,
               "SS_EVENTS": str(directory / "events.log"), "SS_SECRET": SECRET}  # fmt: skip
        super().__init__("tests.apps.multiprocess:app", env, log_dir=directory)
        self.start()


@contextlib.asynccontextmanager
async def running_workers(store_url: str, prefix: str, directory: Path) -> AsyncIterator[Workers]:
    workers = await anyio.to_thread.run_sync(Workers, store_url, prefix, directory)
    try:
        yield workers
    finally:
        await anyio.to_thread.run_sync(workers.stop)


# --- the load ----------------------------------------------------------------------------------


#: What each kind of request of the load is.
REQUESTS = {
    "incr": ("POST", "/incr/count"),  # an owner's increment
    "read": ("GET", "/read"),  # an owner's read
    "newcomer": ("POST", "/incr/count"),  # a first increment, with no cookie
    "health": ("GET", "/_health"),  # needs no session
}


@dataclass
class Outage:
    """Monotonic times: the kill began at ``killing``; the store is down from ``killed`` (the
    kill had completed) until ``restarting`` (the restart began); it accepts connections again
    from ``restarted``."""

    killing: float = math.inf
    killed: float = math.inf
    restarting: float = math.inf
    restarted: float = math.inf

    def in_doubt(self, record: Record) -> bool:
        """A request in flight while the server died: its write may have been applied by the
        server and the answer lost with it, which no client can tell from a write not applied."""
        return record.sent < self.killed and record.received >= self.killing


@dataclass
class Owner:
    """One browser and its session: how many of its increments were answered 200, how many were
    cut (a transport error: the response may or may not have been applied), how many were
    answered 503 while in flight as the server died (in doubt: see :meth:`Outage.in_doubt`)."""

    number: int
    cookie: str | None = None
    acked: int = 0
    cut: int = 0
    in_doubt: int = 0
    acked_after_restart: int = 0
    done: bool = False

    @property
    def unsure(self) -> int:
        """How many increments not answered 200 may nevertheless have been applied."""
        return self.cut + self.in_doubt


@dataclass
class Record:
    owner: int  # -1: a request of no owner (a newcomer without a cookie, a health check)
    what: str  # "incr", "read", "newcomer", "health"
    worker: int
    sent: float
    received: float
    status: int | None  # None: a transport error
    retry_after: str | None = None
    set_cookie: str | None = None
    body: str = ""
    error: str = ""


@dataclass
class Load:
    http: httpx2.AsyncClient
    urls: list[str]
    outage: Outage
    owners: list[Owner] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    replaced_cookies: int = 0

    def __post_init__(self) -> None:
        self.owners = [Owner(number) for number in range(CLIENTS)]

    def violation(self, message: str) -> None:
        if len(self.violations) < 200:  # enough to diagnose; the count is in the summary
            self.violations.append(message)

    async def send(self, owner: Owner | None, what: str, worker: int) -> Record:
        method, path = REQUESTS[what]
        cookie = owner.cookie if owner is not None else None
        headers = {"cookie": f"sessionid={cookie}"} if cookie else {}
        sent = time.monotonic()
        try:
            response = await self.http.request(method, self.urls[worker] + path, headers=headers)
        except httpx2.TransportError as exc:
            record = Record(-1 if owner is None else owner.number, what, worker, sent,
                            time.monotonic(), None, error=repr(exc))  # fmt: skip
        else:
            record = Record(
                -1 if owner is None else owner.number, what, worker, sent, time.monotonic(),
                response.status_code, response.headers.get("retry-after"),
                response.headers.get("set-cookie"), response.text,
            )  # fmt: skip
            if what in ("newcomer", "health") and "cookie" in response.request.headers:
                self.violation(f"a {what} request carried a cookie: the test is wrong")
        self.records.append(record)
        self._check(owner, record)
        return record

    def _check(self, owner: Owner | None, record: Record) -> None:
        where = f"{record.what} of client {record.owner} on worker {record.worker}"
        if record.status is not None and record.status not in (200, 503):
            self.violation(f"{where}: HTTP {record.status}: {record.body[:200]!r}")
        if record.status == 503:
            if not (record.retry_after or "").isdigit():
                self.violation(f"{where}: 503 without a Retry-After: {record.retry_after!r}")
            if record.set_cookie is not None:
                self.violation(f"{where}: 503 with a Set-Cookie: {record.set_cookie!r}")
        down = record.sent >= self.outage.killed and record.received < self.outage.restarting
        if down and record.what != "health" and record.status != 503:
            self.violation(f"{where}: {record.status or record.error} while the store was down")
        if down and record.what == "health" and record.status != 200:
            self.violation(f"{where}: a request that needs no session got {record.status}")
        cookie = record.set_cookie
        if cookie is not None and cookie.startswith("sessionid="):
            if owner is not None and owner.cookie is None and record.status == 200:
                owner.cookie = cookie.split(";")[0].split("=", 1)[1]  # its first: the session
            elif record.what != "newcomer" or record.status != 200:
                self.replaced_cookies += 1
                self.violation(f"{where}: HTTP {record.status} replaced or deleted the cookie")

    async def increments(self, owner: Owner) -> None:
        for attempt in range(MAX_ATTEMPTS):
            if owner.acked >= TARGET and owner.acked_after_restart >= AFTER:
                break
            record = await self.send(owner, "incr", (owner.number + attempt) % 2)
            if record.status == 200:
                value = int(record.body)
                expected = owner.acked + 1
                if not expected <= value <= expected + owner.unsure:
                    self.violation(
                        f"client {owner.number}: increment answered {value}, expected {expected}"
                        f" (+ up to {owner.cut} cut, {owner.in_doubt} in doubt): "
                        + ("an increment was lost" if value < expected else "a phantom increment")
                    )
                owner.acked += 1
                if record.sent >= self.outage.restarted:
                    owner.acked_after_restart += 1
                await anyio.sleep(PACE)
            else:
                if record.status is None:
                    owner.cut += 1
                elif self.outage.in_doubt(record):
                    owner.in_doubt += 1
                await anyio.sleep(BACKOFF)
        else:
            self.violation(f"client {owner.number}: gave up after {MAX_ATTEMPTS} attempts")
        owner.done = True

    async def reads(self, owner: Owner) -> None:
        """Reads of the same session, overlapping its increments, on the other worker first."""
        for attempt in range(MAX_ATTEMPTS):
            if owner.done:
                break
            if owner.cookie is None:
                await anyio.sleep(READ_PACE)
                continue
            acked_before = owner.acked
            record = await self.send(owner, "read", (owner.number + attempt + 1) % 2)
            if record.status == 200:
                data = json.loads(record.body)
                if data is None:
                    self.violation(f"client {owner.number}: a read found no session")
                else:
                    count = data.get("count", 0)
                    # Sees every increment answered before it was sent; at most the one in
                    # flight (and any cut) beyond those answered by now.
                    high = owner.acked + owner.unsure + 1
                    if not acked_before <= count <= high:
                        self.violation(f"client {owner.number}: a read saw count={count}, "
                                       f"outside [{acked_before}, {high}]")  # fmt: skip
            await anyio.sleep(READ_PACE if record.status == 200 else BACKOFF)

    async def control(self, kill: Callable[[], None], restart: Callable[[], None]) -> None:
        """Kill the store mid-load; while it is down, newcomers and health checks; restart it."""
        while min(owner.acked for owner in self.owners) < WARM:  # noqa: ASYNC110
            await anyio.sleep(0.005)
        self.outage.killing = time.monotonic()
        await anyio.to_thread.run_sync(kill)
        self.outage.killed = time.monotonic()
        deadline = self.outage.killed + DOWN_FOR
        turn = 0
        while time.monotonic() < deadline:
            turn += 1
            await self.send(None, "newcomer" if turn % 2 else "health", turn % 2)
            await anyio.sleep(0.05)
        self.outage.restarting = time.monotonic()
        await anyio.to_thread.run_sync(restart)
        self.outage.restarted = time.monotonic()

    async def final_counts(self) -> dict[int, list[int | None]]:
        """Each client's counter as each worker reads it, after the load."""
        counts: dict[int, list[int | None]] = {}
        for owner in self.owners:
            counts[owner.number] = []
            for worker in range(2):
                record = await self.send(owner, "read", worker)
                data = json.loads(record.body) if record.status == 200 else None
                counts[owner.number].append(None if data is None else data.get("count"))
        return counts

    def summary(self, workers: Workers, finals: dict[int, list[int | None]]) -> dict[str, Any]:
        outage = self.outage
        statuses = Counter(str(r.status or "transport-error") for r in self.records)
        down = [r for r in self.records
                if r.sent >= outage.killed and r.received < outage.restarting]  # fmt: skip
        after = [r for r in self.records if r.sent >= outage.restarted and r.what != "health"]
        first_ok: dict[int, float] = {}
        for record in sorted(after, key=lambda r: r.received):
            if record.status == 200 and record.owner >= 0:
                first_ok.setdefault(record.owner, record.received - outage.restarted)
        lost = phantom = applied_unsure = 0
        for owner in self.owners:
            counts = finals[owner.number]
            if len(set(counts)) > 1:
                self.violation(f"client {owner.number}: the workers read {counts}")
            count = min((c or 0) for c in counts)
            lost += max(0, owner.acked - count)
            phantom += max(0, count - owner.acked - owner.unsure)
            applied_unsure += max(0, min(count, owner.acked + owner.unsure) - owner.acked)
        log = workers.log()
        return {
            "requests": len(self.records),
            "statuses": dict(statuses),
            "503_while_down": sum(r.status == 503 for r in down),
            "session_requests_while_down": sum(r.what != "health" for r in down),
            "500s": sum(r.status == 500 for r in self.records),
            "other_statuses": sum(r.status not in (200, 503, None) for r in self.records),
            "transport_errors": sum(r.status is None for r in self.records),
            "cut_increments": sum(owner.cut for owner in self.owners),
            "in_doubt_increments": sum(owner.in_doubt for owner in self.owners),
            # applied though not answered 200 (cut, or answered 503 in doubt)
            "unsure_applied": applied_unsure,
            "replaced_or_deleted_cookies": self.replaced_cookies,
            "acked_increments": sum(owner.acked for owner in self.owners),
            "lost_increments": lost,
            "phantom_increments": phantom,
            "503_after_restart": sum(r.status == 503 for r in after),
            "last_503_after_restart_seconds": round(
                max((r.received - outage.restarted for r in after if r.status == 503), default=0),
                3,
            ),
            "kill_seconds": round(outage.killed - outage.killing, 3),
            "outage_seconds": round(outage.restarting - outage.killed, 3),
            "restart_seconds": round(outage.restarted - outage.restarting, 3),
            "recovery_first_200_seconds": round(min(first_ok.values(), default=math.inf), 3),
            "recovery_all_clients_seconds": round(
                max(first_ok.values()) if len(first_ok) == CLIENTS else math.inf, 3
            ),
            "worker_log_503_lines": log.count("answering 503"),
            "worker_log_tracebacks": log.count("Traceback"),
            "violations": len(self.violations),
        }


async def load_through_an_outage(
    workers: Workers, kill: Callable[[], None], restart: Callable[[], None]
) -> tuple[Load, dict[str, Any]]:
    limits = httpx2.Limits(max_connections=3 * CLIENTS)
    async with httpx2.AsyncClient(timeout=15, limits=limits) as http:
        load = Load(http, workers.urls, Outage())
        with anyio.fail_after(40):
            async with anyio.create_task_group() as group:
                group.start_soon(load.control, kill, restart)
                for owner in load.owners:
                    group.start_soon(load.increments, owner)
                    group.start_soon(load.reads, owner)
            finals = await load.final_counts()
        summary = load.summary(workers, finals)
    print(f"\noutage under load: {json.dumps(summary)}")
    return load, summary


def check(load: Load, summary: dict[str, Any], workers: Workers) -> None:
    context = f"{json.dumps(summary)}\nfirst violations: {load.violations[:20]}"
    assert summary["500s"] == 0, context
    assert summary["other_statuses"] == 0, context
    assert summary["replaced_or_deleted_cookies"] == 0, context
    assert summary["503_while_down"] > 0, context
    assert summary["503_while_down"] == summary["session_requests_while_down"], context
    assert summary["lost_increments"] == 0, context
    assert summary["phantom_increments"] == 0, context
    assert summary["recovery_all_clients_seconds"] < RECOVERY_LIMIT, context
    assert all(owner.acked >= TARGET for owner in load.owners), context
    late = [r for r in load.records
            if r.sent >= load.outage.restarted + RECOVERY_LIMIT and r.status != 200]  # fmt: skip
    assert not late, f"{context}\nnot 200 long after the restart: {late[:5]}"
    assert not load.violations, f"{context}\n{workers.log()[-3000:]}"


# --- 1. PostgreSQL killed under load -----------------------------------------------------------


@pytest.mark.parametrize(
    "private_postgres",
    # An acknowledged commit must survive the immediate stop: with synchronous_commit=off
    # (servers.py's default) the last commits may still be in WAL buffers when the server dies.
    # fsync stays off: only the server dies, not the machine, and write() reached the kernel.
    [{"synchronous_commit": "on"}],
    indirect=True,
    ids=["synchronous_commit=on"],
)
async def test_postgresql_killed_under_load_answers_503_then_the_same_cookies_find_their_data(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    prefix = "outage_"
    store = SQLStore(private_postgres.url, table_prefix=prefix)
    await store.create_tables()
    await store.close()
    try:
        async with running_workers(private_postgres.url, prefix, tmp_path) as workers:
            load, summary = await load_through_an_outage(
                workers,
                kill=lambda: private_postgres.kill(immediate=True),  # pg_ctl stop -m immediate
                restart=private_postgres.start,  # same port, crash recovery
            )
            check(load, summary, workers)
    finally:
        await _drop_tables(private_postgres.url, prefix)


async def _drop_tables(url: str, prefix: str) -> None:
    """The cluster may be handed to a later test (servers.PostgresFactory): leave nothing."""
    with contextlib.suppress(Exception):
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"drop table if exists {prefix}attributes, "
                                        f"{prefix}sessions"))  # fmt: skip
        finally:
            await engine.dispose()


# --- 2. Redis killed under load ----------------------------------------------------------------


@pytest.fixture
def durable_redis(redis_factory: RedisFactory) -> PrivateRedis:
    """A private redis-server whose data survives SIGKILL: every write is in the append-only file
    (in its own directory) before it is answered."""
    server = redis_factory(appendonly="yes", appendfsync="always")
    client = redis.Redis(port=server.port)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        client.close()
    return server


async def test_redis_killed_under_load_answers_503_then_the_same_cookies_find_their_data(
    durable_redis: PrivateRedis, tmp_path: Path
) -> None:
    async with running_workers(durable_redis.url, "outage:", tmp_path) as workers:
        load, summary = await load_through_an_outage(
            workers,
            kill=durable_redis.kill,  # SIGKILL, by PID
            restart=durable_redis.start,  # same port, same append-only file
        )
        check(load, summary, workers)


# --- 3. PostgreSQL refusing: too many clients, a pool timeout ------------------------------------


@dataclass
class Refused:
    """What a refusing store made of one request."""

    status: int
    retry_after: str | None
    set_cookie: str | None


async def refused_round(browser: Browser, app: Any) -> list[Refused]:
    """While the store refuses: an increment and a read of an existing session, and a newcomer's
    first increment."""
    responses = [
        await browser.post(app, "/incr"),
        await browser.get(app, "/get/count"),
        await Browser().post(app, "/incr"),
    ]
    return [Refused(r.status_code, r.headers.get("retry-after"), r.headers.get("set-cookie"))
            for r in responses]  # fmt: skip


@contextlib.contextmanager
def servletsession_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        yield


async def hold_every_slot(port: int, held: list[asyncpg.Connection], slots: int) -> None:
    """Open connections until the server has no slot left, and check that it refuses the next.
    The backends of connections just closed may still be exiting: a refusal before every slot
    is ours is waited out."""

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                     database="postgres", timeout=5)  # fmt: skip

    give_up = time.monotonic() + 10
    while len(held) < slots:
        try:
            held.append(await connect())
        except asyncpg.TooManyConnectionsError:
            if time.monotonic() > give_up:
                raise
            await anyio.sleep(0.02)
    with pytest.raises(asyncpg.TooManyConnectionsError):
        held.append(await connect())


@pytest.mark.parametrize(
    "private_postgres",
    [{"max_connections": 3, "superuser_reserved_connections": 0, "reserved_connections": 0}],
    indirect=True,
    ids=["max_connections=3"],
)
async def test_too_many_clients_answers_503_then_the_same_cookie_finds_its_data(
    private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLStore(private_postgres.url, table_prefix="refusal_")
    manager = SessionManager(store, retry_after=3)
    app = make_app(manager, ROUTES)
    browser = Browser()
    held: list[asyncpg.Connection] = []
    try:
        with anyio.fail_after(20):
            assert (await browser.post(app, "/incr")).text == "1"
            assert (await browser.post(app, "/incr")).text == "2"
            cookie = browser.cookie
            await store.engine.dispose()  # the app must open a connection for its next request
            await hold_every_slot(private_postgres.port, held, slots=3)

            with servletsession_errors(caplog):
                refused = await refused_round(browser, app)
            untouched = await Browser().get(app, "/untouched")
            assert refused == [Refused(503, "3", None)] * 3
            assert browser.cookie == cookie
            assert untouched.status_code == 200  # a request that needs no session is served
            assert "too many clients already (SQLSTATE 53300)" in caplog.text
            assert "answering 503" in caplog.text

            for conn in held:
                await conn.close()
            held.clear()
            again = await browser.post(app, "/incr")
            assert again.status_code == 200
            assert again.text == "3"  # the same session; the refused increment was not applied
            assert "set-cookie" not in again.headers
            assert browser.cookie == cookie
    finally:
        for conn in held:
            await conn.close()
        await browser.close()
        await manager.close()
        await _drop_tables(private_postgres.url, "refusal_")


async def test_a_pool_timeout_answers_503_then_the_same_cookie_finds_its_data(
    private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_async_engine(private_postgres.url, pool_size=1, max_overflow=0,
                                 pool_timeout=0.2)  # fmt: skip
    store = SQLStore(engine, table_prefix="pool_")
    manager = SessionManager(store, retry_after=4)
    app = make_app(manager, ROUTES)
    browser = Browser()
    try:
        with anyio.fail_after(20):
            assert (await browser.post(app, "/incr")).text == "1"
            cookie = browser.cookie
            async with engine.connect() as held:  # the pool's only connection
                await held.execute(text("select 1"))
                started = time.monotonic()
                with servletsession_errors(caplog):
                    refused = await refused_round(browser, app)
                took = time.monotonic() - started
            assert refused == [Refused(503, "4", None)] * 3
            assert browser.cookie == cookie
            assert 0.15 * 3 < took < 10  # each waited for the pool, then gave up
            assert "QueuePool limit of size 1 overflow 0 reached" in caplog.text
            assert "answering 503" in caplog.text

            again = await browser.post(app, "/incr")
            assert again.status_code == 200
            assert again.text == "2"
            assert "set-cookie" not in again.headers
    finally:
        await browser.close()
        await manager.close()
        await _drop_tables(private_postgres.url, "pool_")


async def test_an_increment_answered_503_is_not_written_by_a_request_sharing_its_session(
    private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """Two requests of one browser in one process share the session: the increment's save meets
    a pool timeout (503); the other request, a read that changes nothing, saves after the pool
    is free again. The refused increment must not reach the store through it."""
    engine = create_async_engine(private_postgres.url, pool_size=1, max_overflow=0,
                                 pool_timeout=0.2)  # fmt: skip
    store = SQLStore(engine, table_prefix="overlap_")
    entered = {"read": anyio.Event(), "incr": anyio.Event()}
    go = {"read": anyio.Event(), "incr": anyio.Event()}

    async def held_read(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        entered["read"].set()
        await go["read"].wait()
        return PlainTextResponse("read")

    async def held_increment(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session.set_attribute("count", session.get_attribute("count", 0) + 1)
        entered["incr"].set()
        await go["incr"].wait()
        return PlainTextResponse(str(session.get_attribute("count")))

    manager = SessionManager(store)
    routes = [*ROUTES, Route("/held-read", held_read),
              Route("/held-incr", held_increment, methods=["POST"])]  # fmt: skip
    app = make_app(manager, routes)
    browser = Browser()
    responses: dict[str, httpx2.Response] = {}
    try:
        with anyio.fail_after(20):
            assert (await browser.post(app, "/incr")).text == "1"
            cookie = browser.cookie

            async def call(name: str, method: str, path: str) -> None:
                responses[name] = await browser.request(app, method, path)

            async with anyio.create_task_group() as group:
                group.start_soon(call, "read", "GET", "/held-read")
                await entered["read"].wait()
                group.start_soon(call, "incr", "POST", "/held-incr")
                await entered["incr"].wait()
                async with engine.connect() as held:  # the pool's only connection
                    await held.execute(text("select 1"))
                    with servletsession_errors(caplog):
                        go["incr"].set()
                        while "incr" not in responses:  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                go["read"].set()
            assert responses["incr"].status_code == 503
            assert "QueuePool limit" in caplog.text
            assert responses["read"].status_code == 200
            assert browser.cookie == cookie
            assert (await browser.get(app, "/get/count")).json() == {"session": True, "value": 1}
    finally:
        await browser.close()
        await manager.close()
        await _drop_tables(private_postgres.url, "overlap_")
