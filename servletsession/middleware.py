"""``SessionMiddleware``: pure ASGI, for ``http``, ``websocket`` and ``lifespan``.

Per request it reads and verifies the session ID (from the cookie, or from a header: see
`servletsession.transport`), loads the session before the app runs, adds ``Set-Cookie`` (or the ID
header), ``Vary`` and ``Cache-Control`` as the response starts (appending to the app's headers,
never replacing them), and releases the session — delivering pending async listener
events and saving what changed — after the response is finished.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from anyio import CancelScope
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .changes import change_journal
from .config import CookieSettings, TransportSettings, validated
from .context import SCOPE_KEY, RequestSession
from .cookies import CookieCodec
from .errors import ConfigurationError, SessionLimitError, StoreUnavailableError
from .manager import SessionManager
from .startup import surface_configuration_errors
from .stores.base import SessionStore
from .stores.faults import describe
from .transport import SessionIdTransport

if TYPE_CHECKING:
    from .websockets import SessionWebSocket

logger = logging.getLogger("servletsession")

_START = ("http.response.start", "websocket.accept", "websocket.http.response.start")
_STOPPED = ("lifespan.shutdown.complete", "lifespan.shutdown.failed", "lifespan.startup.failed")


class SessionMiddleware:
    """Server-side sessions for an ASGI app.

    Cookie options belong here; session policy belongs to the
    [`SessionManager`][servletsession.SessionManager]. Pass ``manager=`` to share one manager (with
    its listeners and limits), or ``store=`` and ``max_inactive_interval=`` to have one built — not
    both.

    Where the ID travels (Spring Session's ``HttpSessionIdResolver``): ``id_resolver="cookie"``
    (the default), ``"header"`` (the ``header_name`` request header, ``X-Auth-Token`` by default,
    answered in the same response header when a session is created or its ID changes, and sent
    empty when the requested session ended; no cookie), or ``"composite"`` (the header when the
    request has it, else the cookie; each request is answered the way it came). The value is the
    same signed ``<id>.<signature>`` in every mode, with the same checks.

    ``rolling=True`` (needs ``max_age``) re-sends the cookie with a fresh ``Max-Age`` on responses
    that consulted their session, at most once per ``rolling_interval`` seconds per session
    (default: a tenth of ``max_age``, at least 60 s, at most half of it). It extends only the
    cookie: the server-side timeouts still end the session.
    """

    @surface_configuration_errors
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
        id_resolver: Literal["cookie", "header", "composite"] = "cookie",
        header_name: str = "X-Auth-Token",
        rolling: bool = False,
        rolling_interval: float | None = None,
    ) -> None:
        transport: TransportSettings = validated(
            TransportSettings,
            id_resolver=id_resolver,
            header_name=header_name,
            rolling=rolling,
            rolling_interval=rolling_interval,
            max_age=max_age,
        )
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
        resolver = transport.id_resolver
        self._transport = SessionIdTransport(
            self._cookies, resolver, transport.header_name, transport.roll_every()
        )
        self._by_header = resolver != "cookie"  # read the ID header (then maybe the cookie)
        #: The cookie carrying the ID (``None`` in header mode), and the header (``None`` in
        #: cookie mode); composite mode has both.
        self.cookie_name: str | None = settings.cookie_name if resolver != "header" else None
        self.header_name: str | None = transport.header_name if resolver != "cookie" else None

    def signed_id(self, session_id: str) -> str:
        """The signed value (``<id>.<signature>``) a client presents to name ``session_id``: the
        cookie's value, or the header's in header mode (test helpers use it)."""
        return self._cookies.sign(session_id).decode("ascii")

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
        if self._by_header:
            session_id, outcome, by_header = self._transport.read_header(scope["headers"])
        else:
            session_id, outcome = self._cookies.read(scope["headers"])
            by_header = False
        if session_id is None and outcome != "absent":
            manager.cookie_rejected(outcome, scope)
        context = RequestSession(manager, session_id, by_header)
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
                self._transport.add_headers(message, context, manager.clock)
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
                    if saves:  # store calls: let a cancelled request still write and unlock
                        with CancelScope(shield=True):
                            await context.finish()
                    else:
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
        """Start the manager (restoring saved sessions) before the app's startup handlers run;
        stop it (saving them) after its shutdown handlers ran, before the server is told, or
        once its startup failed (the process is about to exit with the sessions it restored)."""
        manager = self.manager

        async def receive_and_start() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await manager.start()
            return message

        async def send_and_stop(message: Message) -> None:
            if message["type"] in _STOPPED:
                await manager.stop()
            await send(message)

        await self.app(scope, receive_and_start, send_and_stop)


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
