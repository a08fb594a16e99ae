"""Session counters, as Tomcat's manager keeps them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionStats:
    """A snapshot of the manager's counters (``await manager.stats()``).

    ``rejected`` counts sessions refused by a limit, ``evicted`` those ended to make room.
    ``malformed_cookies`` counts session cookies of the wrong shape or sent twice (cookie
    tossing), ``bad_signatures`` well-formed ones whose signature no key verifies, and
    ``unknown_ids`` correctly signed IDs that matched no live session (expired, invalidated,
    another deployment). Alive times are over sessions that ended (expired, invalidated, evicted).
    """

    active: int
    created: int
    expired: int
    invalidated: int
    discarded_empty: int
    evicted: int
    rejected: int
    max_active: int
    malformed_cookies: int
    bad_signatures: int
    unknown_ids: int
    average_alive_time: float
    max_alive_time: float


class StatsCounter:
    """The mutable counters behind [`SessionStats`][servletsession.SessionStats]."""

    __slots__ = (
        "bad_signatures",
        "created",
        "discarded_empty",
        "evicted",
        "expired",
        "invalidated",
        "malformed_cookies",
        "max_active",
        "max_alive_time",
        "rejected",
        "total_alive_time",
        "unknown_ids",
    )

    def __init__(self) -> None:
        self.created = self.expired = self.invalidated = self.discarded_empty = self.evicted = 0
        self.rejected = self.max_active = self.unknown_ids = 0
        self.malformed_cookies = self.bad_signatures = 0
        self.total_alive_time = self.max_alive_time = 0.0

    def ended(self, reason: str, alive: float) -> None:
        if reason == "discarded":
            self.discarded_empty += 1
            return
        if reason == "expired":
            self.expired += 1
        elif reason == "evicted":
            self.evicted += 1
        else:
            self.invalidated += 1
        self.total_alive_time += alive
        self.max_alive_time = max(self.max_alive_time, alive)

    def cookie_rejected(self, reason: str) -> None:
        if reason == "bad_signature":
            self.bad_signatures += 1
        elif reason == "unknown_id":
            self.unknown_ids += 1
        else:  # malformed, or sent twice
            self.malformed_cookies += 1

    def snapshot(self, active: int) -> SessionStats:
        ended = self.expired + self.invalidated + self.evicted
        return SessionStats(
            active=active,
            created=self.created,
            expired=self.expired,
            invalidated=self.invalidated,
            discarded_empty=self.discarded_empty,
            evicted=self.evicted,
            rejected=self.rejected,
            max_active=self.max_active,
            malformed_cookies=self.malformed_cookies,
            bad_signatures=self.bad_signatures,
            unknown_ids=self.unknown_ids,
            average_alive_time=self.total_alive_time / ended if ended else 0.0,
            max_alive_time=self.max_alive_time,
        )
