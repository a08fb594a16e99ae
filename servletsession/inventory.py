"""Operator views of the sessions a store holds, for the admin app and the CLI.

Sessions are shown by ``ref`` (a short keyed hash of the ID, see ``cookies.session_ref``), never
by ID. Listing pages through the store and finding a session by ref scans: these are operator
tools, never part of handling a request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .cookies import session_ref
from .stores.serializing import SerializingStore

if TYPE_CHECKING:
    from .manager import SessionManager
    from .session import HttpSession

PAGE = 200


@dataclass(frozen=True, slots=True)
class SessionSummary:
    ref: str
    principal: str | None
    creation_time: float
    last_accessed_time: float
    max_inactive_interval: int
    attributes: int
    size: int | None  # stored bytes of the attributes (stores that serialize), else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(manager: SessionManager, session: HttpSession) -> SessionSummary:
    store = manager.store
    size = None
    if isinstance(store, SerializingStore):
        size = sum(len(store.serializer.dumps(n, v)) for n, v in session._attributes.items())
    return SessionSummary(
        ref=session_ref(session._id),
        principal=session._principal,
        creation_time=session._creation_time,
        last_accessed_time=session._this_accessed_time,
        max_inactive_interval=session._max_inactive_interval,
        attributes=len(session._attributes),
        size=size,
    )


async def _sessions(manager: SessionManager, offset: int, limit: int) -> list[HttpSession]:
    found = []
    for session_id in await manager.store.session_ids(offset, limit):
        session = await manager.peek(session_id)
        if session is not None:
            found.append(session)
    return found


async def list_sessions(
    manager: SessionManager, offset: int = 0, limit: int = 50
) -> list[SessionSummary]:
    """A page of summaries of the sessions the store holds."""
    return [summarize(manager, session) for session in await _sessions(manager, offset, limit)]


async def find_by_ref(manager: SessionManager, ref: str) -> HttpSession | None:
    """The session whose ref is ``ref`` (scanning the store page by page)."""
    offset = 0
    while True:
        page = await manager.store.session_ids(offset, PAGE)
        for session_id in page:
            if session_ref(session_id) == ref:
                return await manager.peek(session_id)
        if len(page) < PAGE:
            return None
        offset += PAGE


async def invalidate_ref(manager: SessionManager, ref: str) -> bool:
    """Invalidate the session with this ref; ``False`` if there is none. Fires its listeners."""
    session = await find_by_ref(manager, ref)
    if session is None:
        return False
    await manager.end(session, "invalidated")
    return True


# --- the admin app's read-only look at one session ------------------------------------------


@dataclass(frozen=True, slots=True)
class Activity:
    """When a session was last used and when it will time out, as the manager sees it."""

    last_access: float  # the start of the latest request that joined it
    idle_since: float  # when its last request ended (the idle clock's start)
    expires_at: float | None  # idle or absolute deadline, whichever comes first; None: never
    absolute_deadline: float | None
    in_use: bool  # a request of this process holds it now (never idle then)


def activity(session: HttpSession) -> Activity:
    """The session's access times, without counting as an access."""
    expires = session._expires_at()
    absolute = session._absolute_deadline()
    return Activity(
        last_access=session._this_accessed_time,
        idle_since=session._idle_since,
        expires_at=None if expires == float("inf") else expires,
        absolute_deadline=None if absolute == float("inf") else absolute,
        in_use=session._in_flight > 0,
    )


def attribute_items(session: HttpSession) -> list[tuple[str, Any]]:
    """The session's attributes (a copy), read without marking them read (``save_mode``)."""
    return list(session._attributes.items())


async def scan_sessions(manager: SessionManager, cap: int) -> tuple[list[HttpSession], bool]:
    """Up to ``cap`` live sessions of the store, and whether there were more."""
    found: list[HttpSession] = []
    offset = 0
    while True:
        page = await manager.store.session_ids(offset, PAGE)
        for session_id in page:
            session = await manager.peek(session_id)
            if session is not None:
                found.append(session)
        if len(page) < PAGE or len(found) > cap:
            return found[:cap], len(found) > cap
        offset += PAGE
