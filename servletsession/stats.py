"""Session counters, as Tomcat's manager keeps them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionStats:
    """A snapshot of the manager's counters (``await manager.stats()``).

    ``rejected`` counts sessions refused by ``max_active_sessions``; ``bad_cookies`` counts
    malformed, tossed (duplicated) or wrongly signed session cookies; ``unknown_ids`` counts
    correctly signed IDs that matched no live session (expired, invalidated, or from another
    deployment). Alive times are over sessions that ended (expired or invalidated).
    """

    active: int
    created: int
    expired: int
    invalidated: int
    discarded_empty: int
    rejected: int
    max_active: int
    bad_cookies: int
    unknown_ids: int
    average_alive_time: float
    max_alive_time: float


class StatsCounter:
    """The mutable counters behind :class:`SessionStats`."""

    __slots__ = (
        "bad_cookies",
        "created",
        "discarded_empty",
        "expired",
        "invalidated",
        "max_active",
        "max_alive_time",
        "rejected",
        "total_alive_time",
        "unknown_ids",
    )

    def __init__(self) -> None:
        self.created = self.expired = self.invalidated = self.discarded_empty = 0
        self.rejected = self.max_active = self.bad_cookies = self.unknown_ids = 0
        self.total_alive_time = self.max_alive_time = 0.0

    def ended(self, reason: str, alive: float) -> None:
        if reason == "discarded":
            self.discarded_empty += 1
            return
        if reason == "expired":
            self.expired += 1
        else:
            self.invalidated += 1
        self.total_alive_time += alive
        self.max_alive_time = max(self.max_alive_time, alive)

    def snapshot(self, active: int) -> SessionStats:
        ended = self.expired + self.invalidated
        return SessionStats(
            active=active,
            created=self.created,
            expired=self.expired,
            invalidated=self.invalidated,
            discarded_empty=self.discarded_empty,
            rejected=self.rejected,
            max_active=self.max_active,
            bad_cookies=self.bad_cookies,
            unknown_ids=self.unknown_ids,
            average_alive_time=self.total_alive_time / ended if ended else 0.0,
            max_alive_time=self.max_alive_time,
        )
