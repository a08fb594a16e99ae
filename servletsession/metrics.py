"""Prometheus metrics for a manager, through prometheus-client (extra ``metrics``).

``SessionMetrics(manager, registry)`` registers one collector on ``registry`` (the default
``prometheus_client.REGISTRY``, or one of your own; without one it makes a private registry):

* the manager's counters and gauges (``servletsession_created_total``, ``servletsession_active``…);
* ``servletsession_session_lifetime_seconds``, a histogram of how long sessions lived, observed
  by a ``session_destroyed`` listener it adds to the manager (each end is delivered on one
  process, so summing over workers counts each session once);
* ``servletsession_store_operation_seconds{operation}``, a histogram of the store's latency per
  operation (``load``, ``save``, ``claim_expired``…), and
  ``servletsession_store_errors_total{operation,kind}``, the store's failures by kind:
  ``unavailable`` (the request got 503), ``lock_lost`` (a save refused under
  ``locking="session"``) or ``other``.

The store is observed without changing it: each of its async operations is wrapped on the store
instance (outermost calls only, so a store calling itself is timed once); `close` puts
them back. ``servletsession.admin.AdminApp`` serves the metrics at ``/metrics``, or call
`render` yourself.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import IllegalStateError, StoreUnavailableError
from .listeners import HttpSessionEvent
from .stores.base import LockLostError

if TYPE_CHECKING:
    from .manager import SessionManager
    from .stores.base import SessionStore

__all__ = ["STORE_OPERATIONS", "SessionMetrics", "observe_store"]

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

#: ``report(operation, seconds, error_or_None)``, after each store operation.
Report = Callable[[str, float, BaseException | None], None]

#: The store operations that are timed (those of the store contract, where the store has them).
STORE_OPERATIONS = (
    "load", "create", "save", "touch", "delete", "claim", "rename", "claim_expired",
    "acquire_lock", "renew_lock", "release_lock", "count", "sessions_of", "session_ids",
    "least_recent",
)  # fmt: skip

#: Session lifetimes run from seconds (a bounce) to days (a "remember me" session).
LIFETIME_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 604800)

#: Store round trips: sub-millisecond on a local Redis, up to the socket timeout when it is ill.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: The stores whose operation is under way in the running task: a store that calls its own
#: operations (a retry, a delete on an unreadable read) is timed once, at the outermost call.
_observing: contextvars.ContextVar[int] = contextvars.ContextVar(
    "servletsession_observing", default=0
)
#: The observers of each observed store (every ``SessionMetrics`` of its manager).
_observers: weakref.WeakKeyDictionary[SessionStore, list[Report]] = weakref.WeakKeyDictionary()


def error_kind(exc: BaseException) -> str:
    """``"lock_lost"``, ``"unavailable"`` or ``"other"``: the label of a store failure."""
    if isinstance(exc, LockLostError):
        return "lock_lost"
    if isinstance(exc, StoreUnavailableError):
        return "unavailable"
    return "other"


def observe_store(store: SessionStore, report: Report) -> Callable[[], None]:
    """Call ``report(operation, seconds, error_or_None)`` after each async store operation of
    ``store``; return the function that stops it. The store's code is not changed: the first
    observer wraps the operations on this one instance, the last one to stop unwraps them."""
    reports = _observers.get(store)
    if reports is None:
        reports = _observers[store] = []
        _wrap_operations(store, reports)
    reports.append(report)

    def stop() -> None:
        if report in reports:
            reports.remove(report)
        if not reports and _observers.get(store) is reports:
            del _observers[store]
            for name in STORE_OPERATIONS:
                if name in vars(store):
                    delattr(store, name)

    return stop


def _wrap_operations(store: SessionStore, reports: list[Report]) -> None:
    key = id(store)

    def _report(name: str, seconds: float, error: Exception | None) -> None:
        for report in list(reports):
            report(name, seconds, error)

    def wrap(name: str, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(original)
        async def observed(*args: Any, **kwargs: Any) -> Any:
            if _observing.get() == key:
                return await original(*args, **kwargs)
            token = _observing.set(key)
            start = time.perf_counter()
            try:
                result = await original(*args, **kwargs)
            except Exception as exc:
                _report(name, time.perf_counter() - start, exc)
                raise
            finally:  # a cancelled operation is not reported: it did not finish
                _observing.reset(token)
            _report(name, time.perf_counter() - start, None)
            return result

        return observed

    for name in STORE_OPERATIONS:
        if inspect.iscoroutinefunction(getattr(type(store), name, None)):
            setattr(store, name, wrap(name, getattr(store, name)))


class _Lifetimes:
    """The listener that observes how long each session lived, when it is destroyed."""

    def __init__(self, clock: Callable[[], float], histogram: Histogram) -> None:
        self._clock = clock
        self._histogram = histogram

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        try:
            created = event.session.creation_time
        except IllegalStateError:  # pragma: no cover - readable while destroyed, per the spec
            return
        self._histogram.observe(max(0.0, self._clock() - created))


class SessionMetrics(Collector):
    """The manager's stats, session lifetimes and store latency as Prometheus metrics
    (``servletsession_*``), registered on ``registry`` (a private one if ``None``)."""

    def __init__(self, manager: SessionManager, registry: CollectorRegistry | None = None) -> None:
        # Every field exists before registering: a registry with auto_describe (the default
        # REGISTRY) calls collect() from register().
        self._manager = manager
        self._active = 0
        self.lifetimes = Histogram(
            "servletsession_session_lifetime_seconds",
            "How long sessions lived, from creation to their end (each end counted once)",
            buckets=LIFETIME_BUCKETS,
            registry=None,
        )
        self.store_latency = Histogram(
            "servletsession_store_operation_seconds",
            "Time taken by the session store, per operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.store_errors = Counter(
            "servletsession_store_errors",
            "Session store failures by operation and kind (unavailable, lock_lost, other)",
            ["operation", "kind"],
            registry=None,
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self._listener = _Lifetimes(manager.clock, self.lifetimes)
        manager.add_listener(self._listener)
        self._stop_observing = observe_store(manager.store, self._store_call)
        try:
            self.registry.register(self)
        except BaseException:
            self._detach()
            raise

    def _store_call(self, operation: str, seconds: float, error: BaseException | None) -> None:
        self.store_latency.labels(operation).observe(seconds)
        if error is not None:
            self.store_errors.labels(operation, error_kind(error)).inc()

    async def refresh(self) -> None:
        """Read the store's session count (async), for the next collection."""
        self._active = await self._manager.store.count()

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Unregister, stop observing the manager and its store."""
        with contextlib.suppress(KeyError):  # closed already
            self.registry.unregister(self)
        self._detach()

    def _detach(self) -> None:
        self._manager.remove_listener(self._listener)
        self._stop_observing()

    def collect(self) -> Iterator[Metric]:
        counter = self._manager.counter
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
        yield from self.lifetimes.collect()
        yield from self.store_latency.collect()
        yield from self.store_errors.collect()
