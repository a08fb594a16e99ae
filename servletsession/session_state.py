"""`SessionState`: what a session holds, and the manager's bookkeeping of when it is in use.

`HttpSession` (`servletsession.session`) is the Servlet API over these fields, with the events the
spec orders. This base class holds the fields themselves, and the arithmetic the manager and its
strategies run on every request: a request joins the session and leaves it, and its deadlines
(idle and absolute). None of this fires an event or talks to the owner.
"""

from __future__ import annotations

import asyncio
import math
from asyncio import _get_running_loop
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .changes import Unsaved
    from .owner import SessionOwner


class SessionState:
    """A session's fields (set by `HttpSession`'s constructor) and its access bookkeeping."""

    __slots__ = (
        "__weakref__",
        "_absolute_timeout",
        "_attributes",
        "_changed_names",
        "_creation_time",
        "_detached",
        "_expiring",
        "_expiry_mark",
        "_id",
        "_idle_since",
        "_in_flight",
        "_is_new",
        "_last_accessed_time",
        "_listener_tail",
        "_loop",
        "_max_inactive_interval",
        "_owner",
        "_previous_id",
        "_principal",
        "_principal_changed",
        "_read_names",
        "_save_started",
        "_saving",
        "_snapshot",
        "_stored",
        "_stored_expires",
        "_this_accessed_time",
        "_timeouts_changed",
        "_track_reads",
        "_unsaved",
        "_valid",
    )

    _owner: SessionOwner
    _id: str
    _creation_time: float
    _last_accessed_time: float  # the start of the previous request (getLastAccessedTime)
    _this_accessed_time: float  # the start of the request now using it
    _idle_since: float  # when the idle clock last restarted (a request began or ended)
    _max_inactive_interval: int
    _absolute_timeout: float | None
    _attributes: dict[str, Any]
    _is_new: bool
    _stored: bool  # the store holds it (a new session is stored as its response starts)
    _valid: bool
    _expiring: bool  # being destroyed: its own listeners may still read it
    _timeouts_changed: bool  # max_inactive_interval or absolute_timeout set since the save
    _principal_changed: bool
    _detached: bool  # ended elsewhere: this copy is never written back
    _track_reads: bool  # save_mode "on_get": attributes read are written back too
    _in_flight: int  # requests (and accesses) using it now
    #: Shared stores, in tickets (one order per process): when the state this copy holds was
    #: read or last written, when its last write started, and how many writes are under way.
    _snapshot: int
    _save_started: int
    _saving: int
    _listener_tail: asyncio.Task[None] | None  # the last of its pending async events
    _changed_names: set[str] | None
    _read_names: set[str] | None
    _unsaved: Unsaved | None  # shared stores: who changed what since the save
    _previous_id: str | None
    _principal: str | None
    _expiry_mark: float | None  # private to the store's expiry index
    _stored_expires: float  # the store's deadline as last seen (shared stores)
    _loop: asyncio.AbstractEventLoop | None  # the app's: listeners.chain hands it others' events

    def _begin_access(self, now: float, previous: float | None = None) -> None:
        """A request joins the session (it arrived carrying the session's ID); ``previous`` is
        the start of the previous request when a shared store recorded it."""
        self._last_accessed_time = self._this_accessed_time if previous is None else previous
        self._this_accessed_time = now
        self._idle_since = now
        self._is_new = False
        self._in_flight += 1
        self._loop = _get_running_loop() or self._loop  # joined on the app's (new, maybe) loop

    def _end_access(self, now: float) -> None:
        """A request that joined the session finished: the idle clock restarts now."""
        self._in_flight -= 1
        self._idle_since = now

    def _expires_at(self) -> float:
        """When the session times out if nothing touches it (``math.inf``: never)."""
        idle = self._max_inactive_interval
        deadline = self._idle_since + idle if idle > 0 else math.inf
        absolute = self._absolute_timeout
        if absolute is not None and self._creation_time + absolute < deadline:
            return self._creation_time + absolute
        return deadline

    def _absolute_deadline(self) -> float:
        """When the session ends however busy it is (``math.inf``: no absolute timeout)."""
        if self._absolute_timeout is None:
            return math.inf
        return self._creation_time + self._absolute_timeout
