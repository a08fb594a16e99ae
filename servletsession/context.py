"""The request's view of its session, and the request functions route code calls.

One `RequestSession` per HTTP request or websocket, put in the ASGI scope by the
middleware. It is also what ``scope["session"]`` (Starlette's ``request.session``) holds: a lazy
mapping over the request's session, where reading creates nothing and the first write creates
the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from .errors import IllegalStateError, SessionLimitError
from .persistence import Visit
from .session import HttpSession

if TYPE_CHECKING:
    from .manager import SessionManager

SCOPE_KEY = "servletsession"


class RequestSession(MutableMapping[str, Any]):
    """The sessions one request uses, whether they changed, and which ID the response must carry."""

    __slots__ = (
        "_manager",
        "_session",
        "by_header",
        "consulted",
        "found",
        "journal",
        "refused",
        "requested_id",
        "started",
        "visits",
    )

    def __init__(
        self, manager: SessionManager, requested_id: str | None, by_header: bool = False
    ) -> None:
        self._manager = manager
        self.requested_id = requested_id  # the signature-verified ID the request carried
        self.by_header = by_header  # the ID travels in the ID header, not the cookie
        self._session: HttpSession | None = None
        self.found = False  # the requested ID named a live session when the request arrived
        self.visits: list[Visit] = []  # the sessions this request joined or created
        self.consulted = False  # the app looked at the session: responses vary by Cookie
        self.started = False  # the response (or websocket accept) has been sent
        self.refused: SessionLimitError | None = None  # a limit refused the request
        self.journal: dict[int, dict[str, Any]] | None = None  # shared stores: see Visit

    async def load(self) -> None:
        if self.requested_id is not None:
            visit = Visit()
            visit.journal = self.journal
            session = await self._manager.join(self.requested_id, visit)
            if session is not None:
                self._session = session
                self.found = True
                self.visits.append(visit)
            elif visit.ended_found:
                self.found = True  # it expired as we looked: the cookie is deleted

    def load_now(self, requested_id: str) -> bool:
        """`load` (of ``requested_id``, the request's) without awaiting, when the manager can
        join the session at once (a live object found in good time); ``False``, having done
        nothing, when `load` must run."""
        visit = Visit()
        session = self._manager.join_now(requested_id, visit)
        if session is False:
            return False
        if session is not None:
            self._session = session
            self.found = True
            self.visits.append(visit)
        return True

    @property
    def session(self) -> HttpSession | None:
        """The request's session, valid or not, without counting as a look."""
        return self._session

    def get_session(self, create: bool = True) -> HttpSession | None:
        self.consulted = True
        session = self._session
        if session is not None and session._valid:
            return session
        if not create:
            return None
        if self.started:
            raise IllegalStateError(
                "cannot create a session after the response has started: the Set-Cookie header "
                "can no longer be sent; call get_session() before the response starts "
                "(before returning a StreamingResponse, or before websocket.accept())"
            )
        visit = Visit()
        if self.journal is not None:
            visit.journal = self.journal
        try:
            session = self._manager.create_session(visit)
        except SessionLimitError as exc:
            self.refused = exc  # the middleware answers 503 whatever the app does with it
            raise
        self._session = session
        self.visits.append(visit)
        return session

    def change_session_id(self) -> str:
        session = self.get_session(create=False)
        if session is None:
            raise IllegalStateError("change_session_id(): the request has no session")
        if self.started:
            raise IllegalStateError(
                "change_session_id() after the response has started: the new cookie can no "
                "longer be sent; change the ID before the response starts"
            )
        return self._manager.change_session_id_now(session)

    def is_requested_id_valid(self) -> bool:
        session = self._session
        return (
            self.requested_id is not None
            and session is not None
            and session._valid
            and session._id == self.requested_id
        )

    def kept_requested_session(self) -> bool:
        """The request's session is the live one its ID named (a rolling cookie may be
        refreshed)."""
        session = self._session
        return (
            session is not None
            and session._valid
            and not session._detached
            and session._id == self.requested_id
        )

    async def flush(self) -> None:
        """Write the request's changes now (as the response starts, and as it ends)."""
        for visit in self.visits:
            await self._manager.flush(visit)

    def refuse(self) -> None:
        """The request is answered 503: none of its changes are written."""
        for visit in self.visits:
            self._manager.refuse(visit)

    async def release_locks(self) -> None:
        for visit in self.visits:
            await self._manager.release_lock(visit)

    async def finish(self) -> None:
        first_error: BaseException | None = None
        for visit in self.visits:
            try:
                await self._manager.release(visit)
            except (Exception, asyncio.CancelledError) as exc:  # release the others all the same
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    # --- the lazy mapping (Starlette's request.session) --------------------------------------

    def _current(self) -> HttpSession | None:
        return self.get_session(create=False)

    def __getitem__(self, key: str) -> Any:
        session = self._current()
        if session is None:
            raise KeyError(key)
        return session[key]

    def __setitem__(self, key: str, value: Any) -> None:
        session = self.get_session(create=True)
        assert session is not None
        session[key] = value

    def __delitem__(self, key: str) -> None:
        session = self._current()
        if session is None:
            raise KeyError(key)
        del session[key]

    def __contains__(self, key: object) -> bool:
        session = self._current()
        return session is not None and key in session

    def __iter__(self) -> Iterator[str]:
        session = self._current()
        return iter(session) if session is not None else iter(())

    def __len__(self) -> int:
        session = self._current()
        return len(session) if session is not None else 0

    def __repr__(self) -> str:
        return f"<RequestSession {self._session!r}>"


def _request_session(connection: HTTPConnection | MutableMapping[str, Any]) -> RequestSession:
    scope = getattr(connection, "scope", connection)  # a Request/WebSocket, or a raw scope
    context = scope.get(SCOPE_KEY)
    if context is None:
        raise RuntimeError(
            "no session support on this request: add servletsession.SessionMiddleware to the app "
            "(app.add_middleware(SessionMiddleware, secret_key=...))"
        )
    assert isinstance(context, RequestSession)
    return context


def get_session(
    connection: HTTPConnection | MutableMapping[str, Any], create: bool = True
) -> HttpSession | None:
    """The request's session (``HttpServletRequest.getSession(create)``).

    With ``create=True`` a new session is made when the request has none; it raises
    [`IllegalStateError`][servletsession.IllegalStateError] if the response has already started.
    """
    scope = getattr(connection, "scope", connection)  # `_request_session`, spelt out: the one
    context = scope.get(SCOPE_KEY)  # request function every route calls
    if not isinstance(context, RequestSession):
        context = _request_session(connection)  # raises the error that explains
    session = context._session
    if session is not None and session._valid:  # `RequestSession.get_session`'s first answer
        context.consulted = True
        return session
    return context.get_session(create)


def change_session_id(connection: HTTPConnection | MutableMapping[str, Any]) -> str:
    """Give the request's session a new ID (``changeSessionId()``); call it at login.

    The old ID is dead in this process when this returns, everywhere once the request finishes;
    attributes and creation time are kept and the new cookie goes out with the response.
    """
    return _request_session(connection).change_session_id()


def requested_session_id(connection: HTTPConnection | MutableMapping[str, Any]) -> str | None:
    """The session ID the request's cookie carried, if its signature was valid
    (``getRequestedSessionId()``); it may name a session that no longer exists."""
    return _request_session(connection).requested_id


def is_requested_session_id_valid(connection: HTTPConnection | MutableMapping[str, Any]) -> bool:
    """True if the requested ID names the request's live session.

    ``isRequestedSessionIdValid()``: false once that session is invalidated or its ID changed.
    """
    return _request_session(connection).is_requested_id_valid()
