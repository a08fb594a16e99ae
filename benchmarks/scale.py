"""MemoryStore at scale: memory per session, reaper ticks and lookups as the session count grows."""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
import tracemalloc
from dataclasses import dataclass

from servletsession import MemoryStore, SessionManager


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ScaleResult:
    sessions: int
    bytes_per_session: float
    idle_tick_ms: float
    expiring_tick_ms: float
    expired: int
    lookup_us: float


async def measure(count: int, interval: int = 1800) -> ScaleResult:
    """Store ``count`` empty sessions, a tenth of them older, then time ticks and lookups."""
    clock = _Clock()
    store = MemoryStore()
    manager = SessionManager(store, clock=clock, max_inactive_interval=interval)
    start_time = clock.now
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    ids = []
    for index in range(count):
        clock.now = start_time if index < count // 10 else start_time + 1000
        session = manager.create_session()
        await manager.release(session)  # stored as a finished request leaves it, empty
        ids.append(session._id)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_session = (after - before - _list_bytes(ids)) / count

    clock.now = start_time + interval - 1  # nothing is due yet
    idle = []
    for _ in range(5):
        began = time.perf_counter()
        expired = await manager.reap()
        idle.append((time.perf_counter() - began) * 1000)
        assert expired == 0

    sample = random.sample(ids[count // 10 :], min(10_000, count - count // 10))
    began = time.perf_counter()
    for session_id in sample:
        session = await manager.find(session_id)
        assert session is not None
        await manager.release(session)
    lookup = (time.perf_counter() - began) / len(sample) * 1e6

    clock.now = start_time + interval + 1  # the older tenth is due
    began = time.perf_counter()
    expired = await manager.reap()
    expiring = (time.perf_counter() - began) * 1000
    return ScaleResult(count, per_session, statistics.median(idle), expiring, expired, lookup)


def _list_bytes(ids: list[str]) -> int:
    """What the benchmark's own list of IDs holds (not part of the store's cost)."""
    return 8 * len(ids) + 56


def run(sizes: list[int]) -> list[ScaleResult]:
    return [asyncio.run(measure(size)) for size in sizes]
