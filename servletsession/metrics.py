"""Prometheus metrics for a manager, through prometheus-client (extra ``metrics``).

``SessionMetrics(manager)`` registers a collector of the manager's counters and gauges;
``servletsession.admin.AdminApp`` serves them at ``/metrics``, or call ``render()`` yourself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .manager import SessionManager

_COUNTERS = {
    "created": "Sessions created",
    "expired": "Sessions ended by the idle or absolute timeout",
    "invalidated": "Sessions ended by invalidate()",
    "evicted": "Sessions ended to make room (evict_lru, evict_oldest)",
    "discarded_empty": "New sessions that ended empty and were never stored",
    "rejected": "Sessions refused by a limit",
    "malformed_cookies": "Session cookies of the wrong shape or sent twice",
    "bad_signatures": "Session cookies whose signature no key verifies",
    "unknown_ids": "Signed session IDs that named no live session",
}


class SessionMetrics(Collector):
    """The manager's stats as Prometheus metrics (``servletsession_*``)."""

    def __init__(self, manager: SessionManager, registry: CollectorRegistry | None = None) -> None:
        self._manager = manager
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)
        self._active = 0

    async def refresh(self) -> None:
        """Read the store's session count (async), for the next collection."""
        self._active = await self._manager.store.count()

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        counter = self._manager._counter
        for name, text in _COUNTERS.items():
            yield CounterMetricFamily(f"servletsession_{name}", text, value=getattr(counter, name))
        yield GaugeMetricFamily(
            "servletsession_active", "Sessions held by the store", value=self._active
        )
        yield GaugeMetricFamily(
            "servletsession_max_active", "Most sessions held at once", value=counter.max_active
        )
        ended = counter.expired + counter.invalidated + counter.evicted
        average = counter.total_alive_time / ended if ended else 0.0
        yield GaugeMetricFamily(
            "servletsession_alive_seconds_average", "Average life of ended sessions", value=average
        )
        yield GaugeMetricFamily(
            "servletsession_alive_seconds_max",
            "Longest life of an ended session",
            value=counter.max_alive_time,
        )
