"""FastSession (``fastsession`` on PyPI, as ChatStream uses it) on servletsession.

Change the import line and keep the rest of the app::

    from servletsession.compat.fastsession import FastSessionMiddleware, MemoryStore

    app.add_middleware(FastSessionMiddleware, secret_key="...", store=MemoryStore(),
                       http_only=True, secure=True, session_cookie="sid")

    session = request.state.session.get_session()   # a mutable mapping, as before
    session["chat"] = history

What the app gains: the session's cookie is appended to the app's own ``Set-Cookie`` headers instead
of replacing them, a cookieless request that never touches its session stores nothing, sessions
idle out (``max_inactive_interval``) with listeners, IDs are 256-bit and never adopted from a
client, and the pure-ASGI middleware costs a fraction of FastSession's. ``secret_key`` must be at
least 32 bytes (a shorter one fails at start-up with a message saying so).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ..context import get_session
from ..middleware import SessionMiddleware
from ..session import HttpSession
from ..stores.base import SessionStore
from ..stores.memory import MemoryStore as _MemoryStore

SkipHeader = Mapping[str, str] | Sequence[Mapping[str, str]]


class MemoryStore(_MemoryStore):
    """FastSession's ``MemoryStore``: servletsession's, with live objects and expiry."""


class FastSession:
    """What FastSession put at ``request.state.session``, over the request's ``HttpSession``."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def get_session(self) -> HttpSession:
        """The session's attributes as a mutable mapping (created on first call)."""
        session = get_session(self._scope, create=True)
        assert session is not None
        return session

    def get_session_id(self) -> str:
        return self.get_session().id

    def clear_session(self) -> None:
        """Remove every attribute (the session itself lives on, as in FastSession)."""
        session = get_session(self._scope, create=False)
        if session is not None:
            session.clear()

    def save_session(self) -> None:
        """Mark every attribute changed, so that a store that serializes writes objects the app
        mutated in place. (With ``MemoryStore`` there is nothing to do: objects are live.)"""
        session = get_session(self._scope, create=False)
        if session is not None:
            for name in session.get_attribute_names():
                session._mark_changed(name)


class _InstallFastSession:
    """Puts a `FastSession` at ``request.state.<name>`` unless a skip header matches."""

    def __init__(self, app: ASGIApp, name: str, skip: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.name = name
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._skipped(scope):
            state: MutableMapping[str, Any] = scope.setdefault("state", {})
            state[self.name] = FastSession(scope)
        await self.app(scope, receive, send)

    def _skipped(self, scope: Scope) -> bool:
        if not self.skip:
            return False
        headers = dict(scope["headers"])
        return any(
            (value == b"*" and name in headers) or headers.get(name) == value
            for name, value in self.skip
        )


class FastSessionMiddleware:
    """``fastsession.FastSessionMiddleware``'s parameters, servletsession's behaviour.

    Further keyword options go to [`SessionMiddleware`][servletsession.SessionMiddleware]
    (``manager=``, ``max_inactive_interval=``, ``cookie_name`` aside).
    """

    def __init__(
        self,
        app: ASGIApp,
        secret_key: str | bytes | list[str | bytes],
        store: SessionStore | None = None,
        http_only: bool = True,
        secure: bool = True,
        same_site: str | None = None,
        max_age: int = 0,
        session_cookie: str = "sid",
        session_object: str = "session",
        skip_session_header: SkipHeader | None = None,
        logger: object = None,
        **options: Any,
    ) -> None:
        skip = (
            [skip_session_header]
            if isinstance(skip_session_header, Mapping)
            else list(skip_session_header or ())
        )
        self.app = SessionMiddleware(
            _InstallFastSession(
                app,
                session_object,
                [(h["header_name"].lower().encode(), h["header_value"].encode()) for h in skip],
            ),
            secret_key=secret_key,
            store=store if store is not None or "manager" in options else MemoryStore(),
            http_only=http_only,
            secure=secure,
            same_site=(same_site or "lax").lower(),
            max_age=max_age if max_age > 0 else None,
            cookie_name=session_cookie,
            **options,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


FasterSessionMiddleware = FastSessionMiddleware
"""ChatStream's name for the same middleware."""

__all__ = ["FastSession", "FastSessionMiddleware", "FasterSessionMiddleware", "MemoryStore"]
