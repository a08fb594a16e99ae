"""``SessionMetrics``: registers on any registry, and what it measures, read back from a scrape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from servletsession import SessionManager
from servletsession.errors import StoreUnavailableError
from servletsession.metrics import SessionMetrics
from servletsession.stores.base import LockLostError
from servletsession.stores.sql import SQLStore

from .conftest import FakeClock

pytestmark = pytest.mark.anyio


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels, parsed as Prometheus would."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def sqlite_manager(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SessionManager]:
    manager = SessionManager(SQLStore(f"sqlite:///{tmp_path}/m.db"), clock=clock)
    yield manager
    await manager.close()


async def test_registers_on_prometheus_default_registry(manager: SessionManager) -> None:
    metrics = SessionMetrics(manager, REGISTRY)  # auto_describe: collect() runs in register()
    try:
        manager.create_session()
        samples = scrape(REGISTRY)
        assert value(samples, "servletsession_created_total") == 1
        assert value(samples, "servletsession_session_lifetime_seconds_count") == 0
    finally:
        metrics.close()
    assert not any(name.startswith("servletsession_") for name, _ in scrape(REGISTRY))


@pytest.mark.parametrize("auto_describe", [True, False])
async def test_registers_on_a_custom_registry(manager: SessionManager, auto_describe: bool) -> None:
    registry = CollectorRegistry(auto_describe=auto_describe)
    metrics = SessionMetrics(manager, registry)
    manager.create_session()
    await metrics.refresh()
    samples = scrape(registry)
    assert value(samples, "servletsession_created_total") == 1
    assert value(samples, "servletsession_active") == 1
    assert metrics.render() == generate_latest(registry)


async def test_registering_twice_fails_and_leaves_nothing_behind(manager: SessionManager) -> None:
    registry = CollectorRegistry(auto_describe=True)
    SessionMetrics(manager, registry)
    listeners = list(manager.listeners.session_destroyed)
    observed = vars(manager.store)["count"]
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        SessionMetrics(manager, registry)
    assert manager.listeners.session_destroyed == listeners
    assert vars(manager.store)["count"] is observed


async def test_session_lifetimes_are_observed_when_sessions_are_destroyed(
    manager: SessionManager, clock: FakeClock
) -> None:
    metrics = SessionMetrics(manager)
    for lived in (5, 400):
        session = manager.create_session()
        clock.advance(lived)
        await manager.invalidate(session)
        await manager.release(session)
    samples = scrape(metrics.registry)
    assert value(samples, "servletsession_session_lifetime_seconds_count") == 2
    assert value(samples, "servletsession_session_lifetime_seconds_sum") == 405
    bucket = "servletsession_session_lifetime_seconds_bucket"
    assert value(samples, bucket, le="10.0") == 1
    assert value(samples, bucket, le="300.0") == 1
    assert value(samples, bucket, le="900.0") == 2


async def test_expiry_by_the_reaper_is_observed_too(
    sqlite_manager: SessionManager, clock: FakeClock
) -> None:
    metrics = SessionMetrics(sqlite_manager)
    session = sqlite_manager.create_session()
    await sqlite_manager.release(session)
    clock.advance(1800 + 60)
    assert await sqlite_manager.reap() == 1
    samples = scrape(metrics.registry)
    assert value(samples, "servletsession_session_lifetime_seconds_count") == 1
    assert value(samples, "servletsession_session_lifetime_seconds_sum") >= 1800


async def test_store_latency_is_a_histogram_per_operation(sqlite_manager: SessionManager) -> None:
    metrics = SessionMetrics(sqlite_manager)
    session = sqlite_manager.create_session()
    session["n"] = 1
    await sqlite_manager.release(session)
    found = await sqlite_manager.find(session.id)
    assert found is not None
    await sqlite_manager.release(found)
    samples = scrape(metrics.registry)
    count = "servletsession_store_operation_seconds_count"
    assert value(samples, count, operation="create") == 1
    assert value(samples, count, operation="load") == 1
    assert value(samples, "servletsession_store_operation_seconds_sum", operation="load") > 0
    assert value(samples, "servletsession_store_operation_seconds_bucket", operation="load",
                 le="+Inf") == 1  # fmt: skip


class FailingStore(SQLStore):
    """``count`` fails with the errors queued; ``sessions_of`` calls ``count`` (a store calling
    itself)."""

    failures: ClassVar[list[Exception]] = []

    async def count(self) -> int:
        if self.failures:
            raise self.failures.pop(0)
        return await super().count()

    async def sessions_of(self, principal: str, now: float) -> list[str]:
        await self.count()
        return []


async def test_store_errors_are_counted_by_kind(tmp_path: Path) -> None:
    store = FailingStore(f"sqlite:///{tmp_path}/f.db")
    store.failures = [  # type: ignore[misc]
        StoreUnavailableError("down"),
        LockLostError("taken over"),
        StoreUnavailableError("down again"),
        RuntimeError("a bug"),
    ]
    manager = SessionManager(store)
    metrics = SessionMetrics(manager)
    for _ in range(4):
        with pytest.raises(Exception):  # noqa: B017, PT011 - each of the queued kinds
            await manager.store.count()
    samples = scrape(metrics.registry)
    errors = "servletsession_store_errors_total"
    assert value(samples, errors, operation="count", kind="unavailable") == 2
    assert value(samples, errors, operation="count", kind="lock_lost") == 1
    assert value(samples, errors, operation="count", kind="other") == 1
    assert value(samples, "servletsession_store_operation_seconds_count", operation="count") == 4
    await manager.close()


async def test_a_store_calling_itself_is_timed_once(tmp_path: Path) -> None:
    manager = SessionManager(FailingStore(f"sqlite:///{tmp_path}/f.db"))
    metrics = SessionMetrics(manager)
    assert await manager.sessions_of("ada") == []
    samples = scrape(metrics.registry)
    count = "servletsession_store_operation_seconds_count"
    assert value(samples, count, operation="sessions_of") == 1
    assert (count, (("operation", "count"),)) not in samples
    await manager.close()


async def test_two_collectors_both_observe_and_close_restores_the_store(
    sqlite_manager: SessionManager,
) -> None:
    store = sqlite_manager.store
    first, second = SessionMetrics(sqlite_manager), SessionMetrics(sqlite_manager)
    await store.count()
    count = "servletsession_store_operation_seconds_count"
    for metrics in (first, second):
        assert value(scrape(metrics.registry), count, operation="count") == 1
    first.close()
    await store.count()
    assert value(scrape(second.registry), count, operation="count") == 2
    (family,) = first.store_latency.collect()
    assert [s.value for s in family.samples if s.name == count] == [1]
    second.close()
    assert not set(vars(store)) & {"count", "load", "save"}
    assert sqlite_manager.listeners.session_destroyed == []
