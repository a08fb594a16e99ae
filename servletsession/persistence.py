"""How a manager keeps its sessions: the interface both strategies implement, and a request's visit.

``SessionManager`` holds policy (limits, listeners, timeouts); what it takes to keep sessions is
one of two strategies, each given only what it needs (a `SessionHost`):

* `LiveSessions` — ``MemoryStore``: the store holds the live objects.
* `SharedSessions` — SQL, Redis: the store is the truth, and a
  process's object is only a share among that process's concurrent requests of the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .config import ManagerSettings
    from .owner import SessionOwner
    from .session import HttpSession


class SessionHost(Protocol):
    """What a strategy may ask of its manager."""

    settings: ManagerSettings
    clock: Callable[[], float]
    #: The app is stopping: a reaper tick claims no new batch.
    stopping: bool

    @property
    def owner(self) -> SessionOwner:
        """The owner given to every session built (the manager)."""

    def ended(self, session: HttpSession, reason: str) -> None:
        """This process ended ``session`` (its events fire here): count it, close its sockets."""

    def dropped(self, session: HttpSession) -> None:
        """Another process ended ``session``: close its sockets here, no events."""


class Snapshot(NamedTuple):
    """What a request may change in a session besides values mutated in place."""

    session_id: str
    attributes: dict[str, Any]
    principal: str | None
    max_inactive_interval: int
    absolute_timeout: float | None


class Visit:
    """One request's (or websocket's) use of one session: what it must give back when done.

    Every request that uses a session makes one, so its fields are class-level defaults that an
    instance overrides only where it differs (no ``__slots__``: a visit is short-lived, and
    building it sets nothing).
    """

    session: HttpSession | None = None
    created = False  # the request made the session
    ended_found = False  # it found its session past its deadline and ended it
    #: The request's change journal (``session.change_journal``), on shared stores.
    journal: dict[int, dict[str, Any]] | None = None
    lock_token: str | None = None  # locking="session": this request's own lock
    queued_id: str | None = None  # ...and its place in this process's queue
    refused = False  # answered 503: nothing of this request is written
    #: The session as the request found it, for undoing a refused request.
    snapshot: Snapshot | None = None


class Sessions(Protocol):
    """A strategy for keeping sessions (see the module docstring)."""

    @property
    def in_process(self) -> dict[str, HttpSession]:
        """The sessions requests of this process are using, by ID."""

    async def join(self, session_id: str, visit: Visit) -> HttpSession | None: ...
    def created(self, session: HttpSession, visit: Visit) -> None: ...
    async def flush(self, visit: Visit) -> None: ...
    async def release(self, visit: Visit) -> None: ...
    async def release_lock(self, visit: Visit, session_id: str | None = None) -> None: ...
    def rename_now(self, session: HttpSession, old_id: str) -> None: ...
    async def push(self, session: HttpSession) -> bool: ...
    def session_expiring(self, session: HttpSession, reason: str) -> bool: ...
    async def peek(self, session_id: str) -> HttpSession | None: ...
    async def reap(self, batch: int) -> int: ...
    async def keep_alive(self) -> None: ...
    async def touch(self, session: HttpSession) -> bool: ...
