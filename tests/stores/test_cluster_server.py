"""The private Redis Clusters of ``servers.py`` work with redis-py's asyncio ``RedisCluster``: keys
spread over the three masters, a master killed by PID fails the commands for its slots (and,
once the others mark it FAIL, the whole cluster answers CLUSTERDOWN), and restarted it rejoins
with its data from its AOF. With replicas, a replica takes over a killed master.

The exceptions are the ones redis-py 8 raises; each must count as "store unavailable" for
``servletsession.stores.faults.redis_unavailable``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from redis import exceptions as rx
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from servletsession.stores.faults import redis_unavailable

if TYPE_CHECKING:
    from .servers import PrivateRedisCluster

# The fixture private_redis_cluster (redis_cluster, the shared one, is in conftest.py).
pytest_plugins = ("tests.stores.servers",)
pytestmark = pytest.mark.anyio


def keys_per_node(cluster: PrivateRedisCluster) -> dict[int, str]:
    """A key (with a hash tag of its own) for each master, by the master's index."""
    keys: dict[int, str] = {}
    for number in range(100):
        key = f"sstest:{{t{number}}}:k"
        keys.setdefault(cluster.node_of_key(key), key)
        if len(keys) == 3:
            return keys
    raise AssertionError(f"100 hash tags did not reach 3 masters: {keys}")


def fast_client(url: str) -> RedisCluster:
    """A cluster client that retries once, without backoff (redis-py's default backs off, which
    makes each call during CLUSTERDOWN take 2-3 s)."""
    return RedisCluster.from_url(url, retry=Retry(NoBackoff(), 1), socket_connect_timeout=0.5)


async def failure(client: RedisCluster, key: str) -> Exception:
    """What ``GET key`` raises; it must count as "store unavailable"."""
    with pytest.raises(rx.RedisError) as raised:
        await client.get(key)
    assert redis_unavailable(raised.value), repr(raised.value)
    return raised.value


@pytest.fixture
async def shared_client(request: pytest.FixtureRequest) -> AsyncIterator[RedisCluster]:
    """A client of the shared cluster, looked up the way ``store_factory`` would (an async
    fixture calling ``request.getfixturevalue("redis_cluster")``)."""
    cluster: PrivateRedisCluster = request.getfixturevalue("redis_cluster")
    client = RedisCluster.from_url(cluster.url)
    yield client
    await client.aclose()


async def test_shared_cluster_spreads_keys_over_three_masters(
    redis_cluster: PrivateRedisCluster, shared_client: RedisCluster
) -> None:
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    assert [redis_cluster.role(i) for i in range(3)] == ["master"] * 3
    assert [redis_cluster.node_of_slot(slot) for slot in (0, 5461, 16383)] == [0, 1, 2]
    keys = keys_per_node(redis_cluster)
    assert sorted(keys) == [0, 1, 2]
    try:
        for index, key in keys.items():
            assert await shared_client.set(key, f"on {index}")
        for index, key in keys.items():
            assert await shared_client.get(key) == f"on {index}".encode()
            # Really on that node: a plain client of it has the key, the others do not.
            for other in range(3):
                node = redis_cluster.client(other)
                try:
                    if other == index:
                        assert node.get(key) == f"on {index}"
                    else:
                        with pytest.raises(rx.MovedError):
                            node.get(key)
                finally:
                    node.close()
    finally:
        for key in keys.values():
            await shared_client.delete(key)


async def test_killed_master_fails_its_slots_then_the_cluster_and_comes_back_from_its_aof(
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    keys = keys_per_node(cluster)
    client = fast_client(cluster.url)
    try:
        for index, key in keys.items():
            await client.set(key, f"on {index}")
        pid = cluster.pids[1]
        cluster.kill(1)
        assert not cluster.running(1)

        # At once: the dead master's slots fail with a connection error; the others still work.
        exc = await failure(client, keys[1])
        assert type(exc) is rx.ConnectionError, repr(exc)
        assert await client.get(keys[0]) == b"on 0"

        # Once the other masters mark it FAIL: CLUSTERDOWN for every slot. (After a
        # ClusterDownError redis-py drops and rebuilds its slot map, and its next command, even
        # for a live master's slot, may go to the dead node: a ConnectionError then.)
        cluster.wait_state("fail", seconds=20)
        errors = [await failure(client, keys[index]) for index in (0, 2, 1, 0)]
        kinds = [type(exc) for exc in errors]
        assert set(kinds) <= {rx.ConnectionError, rx.ClusterDownError}, errors
        assert kinds[0] is rx.ClusterDownError, errors

        # Restarted on its port and directory: it rejoins with its slots and its data.
        cluster.restart(1)
        assert cluster.pids[1] != pid
        for index, key in keys.items():
            assert await client.get(key) == f"on {index}".encode()
    finally:
        await client.aclose()


@pytest.mark.parametrize("private_redis_cluster", [{"replicas": True}], indirect=True)
async def test_replica_takes_over_a_killed_master(
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    assert [cluster.role(i) for i in range(6)] == ["master"] * 3 + ["slave"] * 3
    assert [cluster.node_of_slot(slot) for slot in (0, 5461, 16383)] == [0, 1, 2]
    keys = keys_per_node(cluster)
    client = fast_client(cluster.url)
    try:
        for index, key in keys.items():
            await client.set(key, f"on {index}")
        for index in range(3):  # every write on the replicas too before the kill
            node = cluster.client(index)
            try:
                assert node.execute_command("WAIT", 1, 5000) == 1
            finally:
                node.close()

        cluster.kill(1)
        exc = await failure(client, keys[1])
        assert type(exc) is rx.ConnectionError, repr(exc)

        # Node 4, node 1's replica, is promoted; until then: connection errors (and,
        # between FAIL and the promotion, CLUSTERDOWN).
        errors: list[Exception] = []
        waiting = time.monotonic() + 30
        while time.monotonic() < waiting:
            try:
                if await client.get(keys[1]) == b"on 1":
                    break
            except rx.RedisError as exc:
                errors.append(exc)
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"no failover: {cluster.describe()}")
        assert all(redis_unavailable(exc) for exc in errors), errors
        seen = {type(exc) for exc in errors}
        assert seen <= {rx.ConnectionError, rx.ClusterDownError}, seen
        assert cluster.role(4) == "master"

        # The old master comes back as a replica of the new one.
        cluster.restart(1)
        assert cluster.role(1) == "slave"
        for index, key in keys.items():
            assert await client.get(key) == f"on {index}".encode()
    finally:
        await client.aclose()
