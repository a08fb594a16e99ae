"""``SessionMiddleware``: pure ASGI, for ``http``, ``websocket`` and ``lifespan``.

Per request it reads and verifies the session cookie, loads the session before the app runs,
adds ``Set-Cookie``/``Vary``/``Cache-Control`` as the response starts (appending to the app's
headers, never replacing them), and releases the session — delivering pending async listener
events and saving what changed — after the response is finished.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .changes import change_journal
from .config import CookieSettings, validated
from .context import SCOPE_KEY, RequestSession
from .cookies import CookieCodec
from .errors import ConfigurationError, SessionLimitError, StoreUnavailableError
from .manager import SessionManager
from .stores.base import SessionStore
from .stores.faults import describe

if TYPE_CHECKING:
    from .websockets import SessionWebSocket

logger = logging.getLogger("servletsession")

_START = ("http.response.start", "websocket.accept", "websocket.http.response.start")


class SessionMiddleware:
    """Server-side sessions for an ASGI app.

    Cookie options belong here; session policy belongs to the
    [`SessionManager`][servletsession.SessionManager]. Pass ``manager=`` to share one manager (with
    its listeners and limits), or ``store=`` and ``max_inactive_interval=`` to have one built — not
    both.
    """

    def __init__(
        self,
        app: ASGIApp,
        secret_key: str | bytes | list[str | bytes],
        store: SessionStore | None = None,
        *,
        manager: SessionManager | None = None,
        max_inactive_interval: int | None = None,
        cookie_name: str = "sessionid",
        http_only: bool = True,
        secure: bool = True,
        same_site: str = "lax",
        path: str = "/",
        domain: str | None = None,
        max_age: int | None = None,
    ) -> None:
        settings: CookieSettings = validated(
            CookieSettings,
            secret_key=secret_key,
            cookie_name=cookie_name,
            http_only=http_only,
            secure=secure,
            same_site=same_site,
            path=path,
            domain=domain,
            max_age=max_age,
        )
        if manager is not None:
            clashing = [
                name
                for name, value in (
                    ("store", store),
                    ("max_inactive_interval", max_inactive_interval),
                )
                if value is not None
            ]
            if clashing:
                raise ConfigurationError(
                    f"{' and '.join(clashing)} given together with manager=: set them on the "
                    "SessionManager instead (SessionManager(store=..., max_inactive_interval=...))"
                )
        else:
            options: dict[str, Any] = {"store": store}
            if max_inactive_interval is not None:
                options["max_inactive_interval"] = max_inactive_interval
            manager = SessionManager(**options)
        self.app = app
        self.manager = manager
        self._limited = manager.settings.max_active_sessions is not None
        self.settings = settings
        self._cookies = CookieCodec(
            secret_keys=settings.secret_keys(),
            name=settings.cookie_name,
            path=settings.path,
            domain=settings.domain,
            max_age=settings.max_age,
            secure=settings.secure,
            http_only=settings.http_only,
            same_site=settings.same_site,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return

        manager = self.manager
        manager.start_reaper_lazily()
        session_id, outcome = self._cookies.read(scope["headers"])
        if session_id is None and outcome != "absent":
            manager.cookie_rejected(outcome, scope)
        context = RequestSession(manager, self._cookies, session_id)
        if manager.shared:  # what this request changes, to take back if it is answered 503
            context.journal = {}
        try:
            if self._limited:
                await manager.before_request()
            if session_id is not None:
                await context.load()
                if context.session is None:
                    manager.cookie_rejected("unknown_id", scope)
        except StoreUnavailableError as exc:
            await self._unavailable(scope, send, exc)
            return
        scope["session"] = context
        scope[SCOPE_KEY] = context
        saves = manager.shared
        refused = False
        socket: SessionWebSocket | None = None

        async def refuse(reason: str, retry_after: int) -> None:
            nonlocal refused
            refused = True
            context.refuse()
            await _send_unavailable(scope, send, retry_after, reason)

        async def send_with_session(message: Message) -> None:
            nonlocal socket
            kind = message["type"]
            if refused or (socket is not None and socket.closed):
                return  # a 503, or a close because the session ended, went out instead
            if kind in _START and not context.started:
                context.started = True
                if context.refused is not None:  # the app turned the refusal into a response
                    logger.warning("%s", context.refused)
                    await refuse("session limit reached", context.refused.retry_after)
                    return
                if not context.visits and not context.consulted and not context.found:
                    await send(message)  # the app never looked at sessions: nothing to add
                    return
                if context.visits and manager.flushes:
                    try:
                        await context.flush()
                    except StoreUnavailableError as exc:
                        self._log_unavailable(exc)
                        await refuse("session store unavailable", self._retry_after)
                        return
                    except SessionLimitError as exc:
                        logger.warning("%s", exc)
                        await refuse("session limit reached", exc.retry_after)
                        return
                    except Exception as exc:  # a store that answers wrongly: not retried
                        context.refuse()
                        logger.error("session store failed while saving: %s", describe(exc))
                        raise
                _add_session_headers(message, context)
                if kind == "websocket.accept":
                    await context.release_locks()  # a websocket takes part in its handshake only
                    session = context.get_session(create=False)
                    if session is not None:
                        await send(message)
                        socket = manager.websocket_opened(session, send)
                        return
            elif (
                saves
                and kind == "http.response.body"
                and not message.get("more_body")
                and context.visits
            ):
                try:
                    await context.flush()  # what changed while the body streamed
                except StoreUnavailableError:
                    # Too late for a 503: cut the response short rather than end it cleanly
                    # over changes that were not saved.
                    logger.error("session store unavailable at the end of a streamed response; "
                                 "closing the connection without its last chunk")  # fmt: skip
                    raise
            await send(message)

        journal = context.journal
        journal_token = change_journal.set(journal) if journal is not None else None
        try:
            await self.app(scope, receive, send_with_session)
        except SessionLimitError as exc:
            if not context.started:
                logger.warning("%s", exc)
                await refuse("session limit reached", exc.retry_after)
            elif not refused:
                raise
        finally:
            if journal_token is not None:
                change_journal.reset(journal_token)
            if socket is not None:
                await socket.stop()
            if context.visits:
                try:
                    await context.finish()
                except StoreUnavailableError as exc:
                    logger.error("session store unavailable while finishing a request: %s", exc)

    @property
    def _retry_after(self) -> int:
        return self.manager.settings.retry_after

    def _log_unavailable(self, exc: StoreUnavailableError) -> None:
        logger.error("%s; answering 503 (Retry-After: %s)", exc, self._retry_after)

    async def _unavailable(self, scope: Scope, send: Send, exc: StoreUnavailableError) -> None:
        self._log_unavailable(exc)
        await _send_unavailable(scope, send, self._retry_after, "session store unavailable")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the reaper at startup, stop it after the app's own shutdown handlers ran."""
        manager = self.manager

        async def receive_and_start() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                manager.start_reaper()
            return message

        async def send_and_stop(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await manager.stop_reaper()
            await send(message)

        await self.app(scope, receive_and_start, send_and_stop)


def _add_session_headers(message: Message, context: RequestSession) -> None:
    cookie = context.set_cookie_header()
    if cookie is None and not context.consulted:
        return
    headers = list(message.get("headers", ()))
    if message["type"] != "websocket.accept":
        _add_vary_cookie(headers)
    if cookie is not None:
        headers.append((b"set-cookie", cookie))
        if message["type"] != "websocket.accept":
            _make_private(headers)
    message["headers"] = headers


def _add_vary_cookie(headers: list[Any]) -> None:
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"cookie" not in tokens and b"*" not in tokens:
                headers[index] = (name, value + b", Cookie")
            return
    headers.append((b"vary", b"Cookie"))


def _make_private(headers: list[Any]) -> None:
    """A response that sets the session cookie must not be stored by shared caches."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"cache-control":
            directives = [d.strip() for d in value.split(b",") if d.strip()]
            lowered = {d.lower() for d in directives}
            if lowered & {b"private", b"no-store"}:
                return
            kept = [d for d in directives if d.lower() != b"public"]
            headers[index] = (name, b", ".join([b"private", *kept]))
            return
    headers.append((b"cache-control", b"private"))


async def _send_unavailable(scope: Scope, send: Send, retry_after: int, reason: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1013, "reason": reason})
        return
    body = f"Service unavailable: {reason}; retry later.\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
