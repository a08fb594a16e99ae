"""RedisStore's sharded layout and its moves across slots, step by step.

A single server with ``shards=8`` has the same key layout as a cluster (eight hash tags), so the
move of a session to another shard runs here exactly as between two cluster nodes; the same tests
run on a real three-master cluster through the ``redis_cluster`` fixture.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from servletsession import SessionManager, StoreUnavailableError
from servletsession.stores import redis_moves
from servletsession.stores.base import SessionWrite, StoredSession
from servletsession.stores.redis import RedisStore
from servletsession.stores.redis_layout import RedisLayout

from ..conftest import FakeClock
from .conftest import REDIS_URL, require

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["one-server", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RedisStore]:
    """A RedisStore in eight shards: on one server, and on a three-master cluster."""
    prefix = f"sstest:{uuid.uuid4().hex[:10]}:"
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        made = RedisStore(cluster.url, prefix=prefix, shards=8, cluster=True)
    else:
        await require("redis")
        made = RedisStore(REDIS_URL, prefix=prefix, shards=8)
    yield made
    keys = [key async for key in made.client.scan_iter(match=f"{prefix}*")]
    for key in keys:
        await made.client.delete(key)
    await made.close()


def ids_in_two_shards(layout: RedisLayout) -> tuple[str, str]:
    first = secrets.token_urlsafe(32)
    while True:
        second = secrets.token_urlsafe(32)
        if layout.shard_of(second) != layout.shard_of(first):
            return first, second


def record(now: float, principal: str | None = None, **attributes: bytes) -> StoredSession:
    return StoredSession(
        creation_time=now, last_access=now, expires_at=now + 60, max_inactive_interval=60,
        absolute_timeout=None, principal=principal, attributes=attributes,
    )  # fmt: skip


def test_tags_spread_the_shards_evenly_over_the_slot_range() -> None:
    from redis.crc import key_slot

    for shards in (1, 3, 8, 64, 1024):
        layout = RedisLayout("p:", shards)
        slots = [key_slot(layout.index(shard).encode()) for shard in range(shards)]
        assert [slot * shards // 16384 for slot in slots] == list(range(shards))
        assert len({layout.index(shard) for shard in range(shards)}) == shards


def test_a_session_key_its_lock_and_its_shard_indexes_share_one_slot() -> None:
    from redis.crc import key_slot

    layout = RedisLayout("p:", 64)
    for _ in range(50):
        session_id = secrets.token_urlsafe(32)
        shard = layout.shard_of(session_id)
        slots = {key_slot(key.encode()) for key in (layout.key(session_id),
                 layout.lock_key(session_id), layout.index(shard),
                 layout.principals(shard) + "alice")}  # fmt: skip
        assert len(slots) == 1


def test_a_prefix_with_a_brace_or_a_bad_shard_count_is_refused() -> None:
    from servletsession import ConfigurationError

    with pytest.raises(ConfigurationError, match="brace"):
        RedisLayout("app:{x}:", 1)
    for shards in (0, 1025):
        with pytest.raises(ConfigurationError, match="shards"):
            RedisLayout("app:", shards)


async def test_a_move_has_one_session_at_every_step(store: RedisStore) -> None:
    """Old ID until MOVE_IN commits, new ID after; never both, never neither."""
    now = 1_700_000_000.0
    old, new = ids_in_two_shards(store.layout)
    await store.create(old, record(now, "alice", a=b'["j",1]'), now)
    moves = store.moves
    layout = store.layout

    async def present() -> tuple[bool, bool]:
        found_old = await store.load(old, now, touch=False)
        found_new = await store.load(new, now, touch=False)
        return found_old is not None, found_new is not None

    out = await moves._out(keys=[layout.key(old), layout.lock_key(old)], args=[new, 5.0])
    assert out
    assert out[0] != b"#m"
    assert await present() == (True, False)  # moving, not committed: the old ID is it
    with pytest.raises(StoreUnavailableError, match="changing its ID"):
        await store.save(old, SessionWrite(written={"a": b'["j",2]'}), now)
    assert await store.claim(old, now + 3600) is None  # not claimed while it moves
    # Commit and finish, as ``move`` does.
    with pytest.raises(StoreUnavailableError, match="another request"):  # a second mover: 503
        await moves.move(old, secrets.token_urlsafe(32))
    meta = {out[i].decode(): out[i + 1].decode() for i in range(4, len(out), 2)
            if out[i][:1] == b"#"}  # fmt: skip
    commit_by = float(out[3]) - redis_moves.MARGIN
    args = [commit_by, out[3], new, layout.principals_of(new), out[0], out[1], out[2],
            meta["#e"], meta["#p"], old, 0, *out[4:]]  # fmt: skip
    keys = [layout.key(new), layout.index_of(new), layout.lock_key(new), layout.moved_key(new)]
    assert await moves._in(keys=keys, args=args) == 1
    assert await moves._in(keys=keys, args=args) == 1  # a retried call: the same answer
    assert await present() == (False, True)  # committed (the old hash is still there)
    assert await store.client.exists(layout.key(old)) == 0  # the read finished the move
    assert await store.sessions_of("alice", now) == [new]
    assert await store.count() == 1
    moved = await store.load(new, now)
    assert moved is not None
    assert moved.attributes == {"a": b'["j",1]'}


async def test_an_abandoned_move_is_taken_back_after_its_lease(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_moves, "LEASE", 0.3)
    now = 1_700_000_000.0
    old, new = ids_in_two_shards(store.layout)
    await store.create(old, record(now, a=b'["j",1]'), now)
    layout = store.layout
    await store.moves._out(keys=[layout.key(old), layout.lock_key(old)], args=[new, 0.3])
    with pytest.raises(StoreUnavailableError):  # its process died here; writes wait
        await store.save(old, SessionWrite(written={"a": b'["j",2]'}), now)
    await asyncio.sleep(0.35)
    assert await store.save(old, SessionWrite(written={"a": b'["j",2]'}), now) is not None
    assert await store.client.hget(layout.key(old), "#m") is None
    loaded = await store.load(old, now)
    assert loaded is not None
    assert loaded.attributes == {"a": b'["j",2]'}
    assert await store.load(new, now, touch=False) is None


async def test_change_session_id_across_shards_keeps_everything(store: RedisStore) -> None:
    clock = FakeClock()
    manager = SessionManager(store, clock=clock, max_inactive_interval=60, locking="session")
    session = manager.create_session()
    session["cart"] = ["tea"]
    session.principal = "alice"
    await manager.release(session)
    old = session.id
    for _ in range(6):  # a few changes: most cross shards (7 in 8)
        joined = await manager.find(old)
        assert joined is not None
        new = await manager.change_session_id(joined)
        await manager.release(joined)
        assert await store.load(old, clock.now, touch=False) is None
        found = await store.load(new, clock.now, touch=False)
        assert found is not None
        assert found.principal == "alice"
        assert await store.sessions_of("alice", clock.now) == [new]
        assert await store.count() == 1
        old = new
    clock.advance(3600)
    assert await manager.reap() == 1
    assert await store.count() == 0
    assert await store.sessions_of("alice", clock.now) == []
    await manager.close()


async def test_indexes_span_every_shard(store: RedisStore) -> None:
    now = 1_700_000_000.0
    per_shard: dict[int, list[str]] = {shard: [] for shard in range(8)}
    while any(len(found) < 5 for found in per_shard.values()):  # five in every shard
        session_id = secrets.token_urlsafe(32)
        found = per_shard[store.layout.shard_of(session_id)]
        if len(found) < 5:
            found.append(session_id)
    ids = [session_id for found in per_shard.values() for session_id in found]
    secrets.SystemRandom().shuffle(ids)
    for i, session_id in enumerate(ids):
        await store.create(session_id, record(now - i, "bob" if i % 2 else None), now - i)
    assert len({store.layout.shard_of(session_id) for session_id in ids}) == 8
    assert await store.count() == 40
    assert sorted(await store.sessions_of("bob", now)) == sorted(ids[1::2])
    page: list[Any] = []
    for offset in range(0, 40, 7):
        page += await store.session_ids(offset, 7)
    assert sorted(page) == sorted(ids)
    assert await store.least_recent(3, now) == [ids[39], ids[38], ids[37]]
    claimed = await store.claim_expired(now + 3600, 100)
    assert sorted(session_id for session_id, _ in claimed) == sorted(ids)
    assert await store.count() == 0


async def test_store_from_url_builds_a_cluster_store(redis_cluster: Any) -> None:
    from servletsession.stores import store_from_url

    url = redis_cluster.url.replace("redis://", "redis+cluster://")
    made = store_from_url(url, prefix=f"sstest:{uuid.uuid4().hex[:10]}:")
    assert isinstance(made, RedisStore)
    assert made.cluster
    assert made.layout.shards == 64
    try:
        now = 1_700_000_000.0
        ids = [secrets.token_urlsafe(32) for _ in range(30)]
        for session_id in ids:  # over all three masters
            await made.create(session_id, record(now, "carol"), now)
        assert await made.count() == 30
        assert sorted(await made.sessions_of("carol", now)) == sorted(ids)
        assert len(await made.claim_expired(now + 3600, 100)) == 30
    finally:
        await made.close()


async def _moved_without_finishing(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, now: float
) -> tuple[str, str]:
    """A cross-shard ID change that commits, then loses its MOVE_DONE (a timeout, a node blip,
    the process dying): the old hash stays, marked."""
    monkeypatch.setattr(redis_moves, "LEASE", 0.3)
    monkeypatch.setattr(redis_moves, "MARGIN", 0.05)
    old, new = ids_in_two_shards(store.layout)
    await store.create(old, record(now, "alice", a=b'["j",1]'), now)

    async def lost(*_: Any) -> None:
        raise StoreUnavailableError("MOVE_DONE lost")

    monkeypatch.setattr(store.moves, "_finish", lost)
    assert await store.rename(old, new) is True  # committed
    monkeypatch.undo()
    await asyncio.sleep(0.35)  # the lease is over: a "missing new hash" must not mean "abandoned"
    return old, new


async def test_a_lost_move_done_never_brings_the_old_id_back(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_700_000_000.0
    old, new = await _moved_without_finishing(store, monkeypatch, now)
    assert await store.delete(new) is True  # the new session is invalidated
    assert await store.load(old, now) is None
    assert await store.sessions_of("alice", now) == []
    assert await store.count() == 0
    assert await store.client.exists(store.layout.key(old), store.layout.moved_key(new)) == 0


async def test_a_lost_move_done_is_claimed_once(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_700_000_000.0
    old, new = await _moved_without_finishing(store, monkeypatch, now)
    claimed = await store.claim_expired(now + 3600, 100)  # the reaper meets both hashes
    assert [session_id for session_id, _ in claimed] == [new]
    assert await store.load(old, now + 3600, touch=False) is None
    assert await store.count() == 0


async def test_sessions_of_finds_a_session_whose_id_changes_meanwhile(store: RedisStore) -> None:
    """A principal's session is found under one of its IDs while another process keeps
    changing its ID (same shard and across shards): "log out everywhere" cannot miss it."""
    now = 1_700_000_000.0
    current = secrets.token_urlsafe(32)
    await store.create(current, record(now, "dora"), now)
    stop = asyncio.Event()

    async def rotate() -> None:
        nonlocal current
        while not stop.is_set():
            new = secrets.token_urlsafe(32)
            assert await store.rename(current, new)
            current = new
            await asyncio.sleep(0.002)

    rotating = asyncio.create_task(rotate())
    try:
        for _ in range(100):
            found = await store.sessions_of("dora", now)
            assert found, "a live session of the principal was missed"
            await asyncio.sleep(0)
    finally:
        stop.set()
        await rotating


async def test_an_id_change_within_the_shard_of_a_marked_session_waits_for_the_mark(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session marked by a move that never committed (its request answered 503): an ID change
    whose new ID falls in the same shard answers 503 while the mark's lease runs, never "gone"
    (that would drop the session and answer 200 without a cookie); after it, it renames."""
    monkeypatch.setattr(redis_moves, "LEASE", 0.3)
    now = 1_700_000_000.0
    old, elsewhere = ids_in_two_shards(store.layout)
    await store.create(old, record(now, a=b'["j",1]'), now)
    layout = store.layout
    await store.moves._out(keys=[layout.key(old), layout.lock_key(old)], args=[elsewhere, 0.3])
    same = secrets.token_urlsafe(32)
    while layout.shard_of(same) != layout.shard_of(old):
        same = secrets.token_urlsafe(32)
    with pytest.raises(StoreUnavailableError, match="another request"):
        await store.rename(old, same)
    await asyncio.sleep(0.35)
    assert await store.rename(old, same) is True
    moved = await store.load(same, now, touch=False)
    assert moved is not None
    assert moved.attributes == {"a": b'["j",1]'}
    assert await store.load(old, now, touch=False) is None
