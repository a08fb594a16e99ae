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
