"""``RedisStore`` on a Redis Cluster that fails under load, with real servers only: a master
SIGKILLed (no replicas, then restarted from its AOF), a master failed over to its replica, slots
resharded between masters while sessions use them, and a master stalled by SIGSTOP.

The load runs in process: two apps, each with a ``RedisStore(cluster=True)`` and a
``SessionManager`` of its own (two "processes" on one store), and a dozen browsers, each owning one
session with a counter, alternating between the apps: increments, reads and ID changes. Every
answer is checked as it comes:

* only 200 or 503, and a 503 carries ``Retry-After`` and no ``Set-Cookie``;
* a browser that has a session never gets a ``Set-Cookie`` except from an ID change answered 200,
  never a fresh session (an increment answering 1 again), never a read that finds no session;
* an increment answers exactly one more than the increments answered 200 so far, plus at most the
  increments answered 503 whose request was in flight while a node died or stalled (the server
  may have applied those and lost, or delayed, the answer): none lost, none phantom.

At the end each browser's counter, read through both apps, is the same and agrees with that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from redis.crc import key_slot
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from servletsession import SessionManager, change_session_id, get_session
from servletsession.stores.redis import RedisStore

from ..conftest import make_app
from .helpers import Browser

if TYPE_CHECKING:
    from .servers import PrivateRedisCluster

# The fixture private_redis_cluster.
pytest_plugins = ("tests.stores.servers",)
pytestmark = pytest.mark.anyio

RETRY_AFTER = 2
PER_NODE = 4  # browsers whose session starts on each master
PACE = 0.01  # seconds between a browser's requests after a 200; after a 503, BACKOFF
BACKOFF = 0.03


# --- the app -------------------------------------------------------------------------------------


async def increment(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    count = session.get_attribute("count", 0) + 1
    session.set_attribute("count", count)
    return PlainTextResponse(str(count))


async def read(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse(None)
    return JSONResponse({"count": session.get_attribute("count", 0)})


async def change_id(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse(None)
    change_session_id(request)
    return JSONResponse({"count": session.get_attribute("count", 0)})


ROUTES = [
    Route("/incr", increment, methods=["POST"]),
    Route("/read", read),
    Route("/change", change_id, methods=["POST"]),
]
REQUESTS = {"incr": ("POST", "/incr"), "read": ("GET", "/read"), "change": ("POST", "/change")}


@dataclass
class Process:
    store: RedisStore
    manager: SessionManager
    app: Any


@contextlib.asynccontextmanager
async def processes(
    cluster: PrivateRedisCluster, *, socket_timeout: float = 1.0
) -> AsyncIterator[list[Process]]:
    """Two apps, each with a cluster store and a manager of its own."""
    made: list[Process] = []
    try:
        for _ in range(2):
            store = RedisStore(cluster.url, cluster=True, socket_timeout=socket_timeout)
            manager = SessionManager(store, retry_after=RETRY_AFTER)
            made.append(Process(store, manager, make_app(manager, ROUTES)))
        yield made
    finally:
        for process in made:
            with anyio.CancelScope(shield=True):
                await process.manager.close()


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Call:
    owner: int
    what: str  # "incr", "read", "change"
    process: int
    node: int  # the master that served the session's slot when the test began
    sent: float
    received: float
    status: int
    retry_after: str | None
    set_cookie: str | None
    body: str


@dataclass
class Owner:
    """A browser and its session: increments answered 200 (``acked``) and increments answered
    503 that the store may have applied anyway (``unsure``). ``floor``: with a failover, what
    the replica surely has (writes after it may be lost with the old master)."""

    number: int
    browser: Browser
    acked: int = 0
    unsure: int = 0
    floor: int | None = None
    ids: list[str] = field(default_factory=list)


@dataclass
class Load:
    procs: list[Process]
    slots: Callable[[str], int]  # session ID -> index of its master when the test began
    mix: tuple[str, ...] = ("incr", "read", "incr", "incr", "read", "change")
    owners: list[Owner] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: [start, end] of moments when a node died or stalled: a request in flight then may have
    #: been applied though answered 503 (end inf: still going on).
    faults: list[list[float]] = field(default_factory=list)
    stop: bool = False

    def violation(self, message: str) -> None:
        if not self.violations:  # how the first one came about: its browser's last requests
            owner = self.calls[-1].owner
            t0 = self.faults[0][0] if self.faults else 0.0
            history = [c for c in self.calls if c.owner == owner][-8:]
            message += "\n    its browser's last requests (sent, answered, since the fault):\n" + (
                "\n".join(f"      {c.what} {c.status} {c.sent - t0:+.3f} {c.received - t0:+.3f} "
                          f"app {c.process}: {c.body[:40]!r}" for c in history))  # fmt: skip
        if len(self.violations) < 100:
            self.violations.append(message)

    def node_of(self, owner: Owner) -> int:
        return self.slots(owner.browser.session_id)

    async def new_owners(self, per_node: int) -> None:
        """Browsers with a session each, ``per_node`` of them on each master."""
        wanted = {0: per_node, 1: per_node, 2: per_node}
        for _ in range(per_node * 30):
            if not any(wanted.values()):
                return
            browser = Browser()
            response = await browser.post(self.procs[0].app, "/incr")
            assert response.status_code == 200, response.text
            assert response.text == "1"
            node = self.slots(browser.session_id)
            if wanted[node]:
                wanted[node] -= 1
                owner = Owner(len(self.owners), browser, acked=1, ids=[browser.session_id])
                self.owners.append(owner)
            else:
                await browser.close()
        raise AssertionError(f"sessions do not reach every master: {wanted}")

    async def close(self) -> None:
        for owner in self.owners:
            await owner.browser.close()

    def in_fault(self, sent: float, received: float) -> bool:
        return any(sent <= end and received >= start for start, end in self.faults)

    async def send(self, owner: Owner, what: str, process: int) -> Call:
        method, path = REQUESTS[what]
        browser = owner.browser
        before = browser.cookie
        node = self.node_of(owner)
        sent = time.monotonic()
        response = await browser.request(self.procs[process].app, method, path)
        call = Call(owner.number, what, process, node, sent, time.monotonic(),
                    response.status_code, response.headers.get("retry-after"),
                    response.headers.get("set-cookie"), response.text)  # fmt: skip
        self.calls.append(call)
        self.check(owner, call, before)
        return call

    def check(self, owner: Owner, call: Call, cookie_before: str | None) -> None:
        where = f"{call.what} of browser {owner.number} (master {call.node}) via app {call.process}"
        if call.status not in (200, 503):
            self.violation(f"{where}: HTTP {call.status}: {call.body[:300]!r}")
        if call.status == 503:
            if not (call.retry_after or "").isdigit():
                self.violation(f"{where}: 503 without Retry-After ({call.retry_after!r})")
            if call.set_cookie is not None:
                self.violation(f"{where}: 503 with Set-Cookie {call.set_cookie!r}")
                owner.browser.cookie = cookie_before  # keep checking the session it had
            if call.what == "incr" and self.in_fault(call.sent, call.received):
                owner.unsure += 1
            return
        if call.status != 200:
            return
        if call.set_cookie is not None:
            if call.what != "change":
                self.violation(f"{where}: 200 replaced the cookie: {call.set_cookie[:60]!r}")
                owner.browser.cookie = cookie_before
            else:
                owner.ids.append(owner.browser.session_id)
                if owner.browser.session_id in owner.ids[:-1]:
                    self.violation(f"{where}: the new ID is an old one")
        elif call.what == "change":
            self.violation(f"{where}: an ID change answered 200 without a new cookie")
        if call.what == "incr":
            value = int(call.body)
            low = owner.acked + 1 if owner.floor is None else owner.floor + 1
            high = owner.acked + 1 + owner.unsure
            if not low <= value <= high:
                kind = "lost increments / a fresh session" if value < low else "a phantom"
                self.violation(f"{where}: answered {value}, expected {low}..{high}: {kind}")
            owner.acked = value if owner.floor is not None else owner.acked + 1
            if owner.acked > value:  # pragma: no cover - reported above
                owner.acked = value
        elif call.what in ("read", "change"):
            data = json.loads(call.body)
            if data is None:
                self.violation(f"{where}: found no session")
                return
            low = owner.acked if owner.floor is None else owner.floor
            if not low <= data["count"] <= owner.acked + owner.unsure:
                self.violation(f"{where}: read count={data['count']}, expected "
                               f"{low}..{owner.acked + owner.unsure}")  # fmt: skip

    async def browse(self, owner: Owner) -> None:
        turn = owner.number
        while not self.stop:
            turn += 1
            what = self.mix[turn % len(self.mix)]
            call = await self.send(owner, what, turn % 2)
            await anyio.sleep(PACE if call.status == 200 else BACKOFF)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            for owner in self.owners:
                group.start_soon(self.browse, owner)
            try:
                yield
            finally:
                self.stop = True

    async def until(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        give_up = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > give_up:
                raise AssertionError(f"no {what} within {seconds} s: {self.summary()}")
            await anyio.sleep(0.02)

    def acked_since(self, moment: float) -> Counter[int]:
        return Counter(c.owner for c in self.calls
                       if c.status == 200 and c.sent >= moment)  # fmt: skip

    def everyone_served_since(self, moment: float, count: int = 3) -> Callable[[], bool]:
        def served() -> bool:
            acked = self.acked_since(moment)
            return all(acked[owner.number] >= count for owner in self.owners)

        return served

    async def final_check(self) -> None:
        """Each browser's counter through both apps: the same, all acknowledged increments."""
        for owner in self.owners:
            counts = []
            for process in range(2):
                call = await self.send(owner, "read", process)
                assert call.status == 200, f"browser {owner.number}: {call.status} {call.body}"
                data = json.loads(call.body)
                counts.append(None if data is None else data["count"])
            if counts[0] != counts[1]:
                self.violation(f"browser {owner.number}: the apps read {counts}")

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.calls),
            "statuses": dict(Counter(f"{c.what}:{c.status}" for c in self.calls)),
            "unsure": sum(owner.unsure for owner in self.owners),
            "acked": sum(owner.acked for owner in self.owners),
            "violations": len(self.violations),
        }

    def assert_clean(self) -> None:
        assert not self.violations, "\n".join([str(self.summary()), *self.violations])


def slot_map(cluster: PrivateRedisCluster, store: RedisStore) -> Callable[[str], int]:
    """Session ID -> the index of the master serving its slot now (one ``CLUSTER SLOTS``)."""
    client = cluster.client(0)
    try:
        ranges = client.execute_command("CLUSTER SLOTS")
    finally:
        client.close()
    owner = [-1] * 16384
    for start, end, master, *_ in ranges:
        index = cluster.ports.index(int(master[1]))
        for slot in range(int(start), int(end) + 1):
            owner[slot] = index
    return lambda session_id: owner[key_slot(store.key(session_id).encode())]


@contextlib.asynccontextmanager
async def loaded(
    cluster: PrivateRedisCluster, *, socket_timeout: float = 1.0, mix: tuple[str, ...] = ()
) -> AsyncIterator[Load]:
    async with processes(cluster, socket_timeout=socket_timeout) as procs:
        load = Load(procs, slot_map(cluster, procs[0].store))
        if mix:
            load.mix = mix
        try:
            await load.new_owners(PER_NODE)
            yield load
        finally:
            await load.close()


# --- 1. a master SIGKILLed, no replica -----------------------------------------------------------


async def test_a_killed_master_answers_503_and_its_sessions_come_back_with_it(
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    with anyio.fail_after(25):
        async with loaded(cluster) as load:
            async with load.running():
                await load.until(load.everyone_served_since(0.0), 5, "warm-up")
                # ID changes move sessions between masters: kill the one with most of them now.
                on = Counter(load.node_of(owner) for owner in load.owners)
                victim = on.most_common(1)[0][0]
                killing = time.monotonic()
                load.faults.append([killing, killing])
                await anyio.to_thread.run_sync(cluster.kill, victim)
                killed = load.faults[-1][1] = time.monotonic()
                await anyio.to_thread.run_sync(cluster.wait_state, "fail", 20)
                failed = time.monotonic()  # every live node says fail from about here
                await anyio.sleep(0.5)  # CLUSTERDOWN for a while
                restarting = time.monotonic()
                await anyio.to_thread.run_sync(cluster.restart, victim)
                restarted = time.monotonic()
                await load.until(load.everyone_served_since(restarted), 10, "recovery")
            await load.final_check()

            down = [c for c in load.calls if killed <= c.sent and c.received < restarting]
            on_victim = [c for c in down if c.node == victim]
            assert on_victim, (on, Counter(c.node for c in down), load.summary())
            assert all(c.status == 503 for c in on_victim), load.summary()
            # The other masters keep serving sessions until the cluster is marked FAIL (not every
            # request: after a connection error redis-py rebuilds its slot map and backs off, and
            # a request caught in that may run out of socket_timeout: 503; how many depends on
            # the machine's load, so only "some" is asserted).
            others = [c for c in load.calls
                      if c.node != victim and killed <= c.sent and c.received < failed]  # fmt: skip
            statuses = Counter(c.status for c in others)
            assert statuses[200] >= 1, (
                f"sessions on live masters between the kill and FAIL ({failed - killed:.1f} s): "
                f"{statuses}"
            )
            load.assert_clean()


# --- 2. failover to a replica ----------------------------------------------------------------


@pytest.mark.parametrize("private_redis_cluster", [{"replicas": True}], indirect=True)
async def test_a_failover_answers_503_and_keeps_what_was_written_before(
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    victim, replica = 1, 4
    with anyio.fail_after(25):
        async with loaded(cluster, mix=("incr", "read")) as load:
            async with load.running():
                await load.until(load.everyone_served_since(0.0), 5, "warm-up")
            load.stop = False
            for master in range(3):  # what was written so far is on the replicas
                client = cluster.client(master)
                try:
                    assert client.execute_command("WAIT", 1, 5000) == 1
                finally:
                    client.close()
            for owner in load.owners:
                if load.node_of(owner) == victim:
                    owner.floor = owner.acked  # later writes may go with the old master
            async with load.running():
                await anyio.sleep(0.3)
                killing = time.monotonic()
                load.faults.append([killing, killing])
                await anyio.to_thread.run_sync(cluster.kill, victim)
                load.faults[-1][1] = time.monotonic()
                await load.until(lambda: cluster.role(replica) == "master", 20, "failover")
                promoted = time.monotonic()
                await load.until(load.everyone_served_since(promoted), 10, "recovery")
            await load.final_check()
            load.assert_clean()


# --- 3. resharding under load --------------------------------------------------------------------


def reshard(cluster: PrivateRedisCluster, source: int, target: int, slots: int) -> None:
    ids = cluster.cluster_nodes(0)
    argv = ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{cluster.ports[0]}",
            "--cluster-from", ids[cluster.ports[source]][0],
            "--cluster-to", ids[cluster.ports[target]][0],
            "--cluster-slots", str(slots), "--cluster-yes"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0 or "[ERR]" in result.stdout:
        raise RuntimeError(f"reshard {source} -> {target} exited {result.returncode}:\n"
                           f"{result.stdout[-3000:]}\n{result.stderr}")  # fmt: skip


async def test_resharding_under_load_answers_200_or_503_and_loses_nothing(
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    with anyio.fail_after(25):
        async with loaded(cluster) as load:
            async with load.running():
                await load.until(load.everyone_served_since(0.0), 5, "warm-up")
                # 1000 slots cover about four of the store's 64 shards each way.
                for source, target in ((0, 1), (1, 2), (2, 0), (1, 0)):
                    await anyio.to_thread.run_sync(reshard, cluster, source, target, 1000)
                done = time.monotonic()
                await load.until(load.everyone_served_since(done), 10, "service after resharding")
            await load.final_check()
            load.assert_clean()
            assert sum(c.what == "change" and c.status == 200 for c in load.calls) > 10


# --- 4. a master stalled -------------------------------------------------------------------------


async def test_a_stalled_master_answers_503_within_the_socket_timeout(
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    victim, timeout = 2, 0.5
    pid = cluster.pids[victim]
    assert pid is not None
    with anyio.fail_after(25):
        async with loaded(cluster, socket_timeout=timeout) as load:
            try:
                async with load.running():
                    await load.until(load.everyone_served_since(0.0), 5, "warm-up")
                    stopped = time.monotonic()
                    load.faults.append([stopped, float("inf")])
                    os.kill(pid, signal.SIGSTOP)
                    await anyio.sleep(1.5)  # below the cluster's node timeout (2 s)
                    os.kill(pid, signal.SIGCONT)
                    resumed = load.faults[-1][1] = time.monotonic()
                    await load.until(load.everyone_served_since(resumed), 10, "recovery")
            finally:
                os.kill(pid, signal.SIGCONT)
            await load.final_check()

            # Requests for the stalled master sent early enough that their timeout ran out while it
            # was still stopped (when they were answered depends on the machine's scheduling).
            stalled = [c for c in load.calls
                       if c.node == victim and stopped <= c.sent <= resumed - timeout]  # fmt: skip
            assert stalled, load.summary()
            assert {c.status for c in stalled} == {503}, Counter(c.status for c in stalled)
            # A request makes at most two round trips to the session's node (load, save).
            slow = [round(c.received - c.sent, 2) for c in load.calls
                    if c.status == 503 and c.received - c.sent > 2 * timeout + 0.3]  # fmt: skip
            assert not slow, slow
            load.assert_clean()
