"""``SessionMiddleware``: pure ASGI, for ``http``, ``websocket`` and ``lifespan``.

Per request it reads and verifies the session ID (from the cookie, or from a header: see
`servletsession.transport`), loads the session before the app runs, adds ``Set-Cookie`` (or the ID
header), ``Vary`` and ``Cache-Control`` as the response starts (appending to the app's headers,
never replacing them), and releases the session — delivering pending async listener
events and saving what changed — after the response is finished.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
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
        self._shared = manager.shared  # a store written as responses start and end
        self._flushes = manager.flushes  # work to do as a response starts (a save, limits)
        self._reaper_unasked = True
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
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        manager = self.manager
        if self._reaper_unasked:  # after the first request it is running, or stopped on purpose
            self._reaper_unasked = False
            manager.start_reaper_lazily()
        if self._by_header:
            session_id, outcome, by_header = self._transport.read_header(scope["headers"])
        else:
            session_id, outcome = self._cookies.read(scope["headers"])
            by_header = False
        if session_id is None and outcome != "absent":
            manager.cookie_rejected(outcome, scope)
        exchange = _Exchange(self, session_id, by_header, send, kind == "websocket")
        if session_id is not None or self._limited:
            try:
                if self._limited:
                    await manager.before_request()
                if session_id is not None:
                    if not exchange.load_now(session_id):
                        await exchange.load()
                    if not exchange.visits:  # no live session has that ID
                        manager.cookie_rejected("unknown_id", scope)
            except StoreUnavailableError as exc:
                await self._unavailable(scope, send, exc)
                return
        scope["session"] = exchange
        scope[SCOPE_KEY] = exchange
        journal_token = None if exchange.journal is None else change_journal.set(exchange.journal)
        try:
            await self.app(scope, receive, exchange.send)
        except SessionLimitError as exc:
            if not exchange.started:
                logger.warning("%s", exc)
                await exchange.answer_503("session limit reached", exc.retry_after)
            elif exchange.phase != _DROPPING:
                raise
        finally:
            # The scope holds the exchange and the server's send may hold the scope: let go of
            # the send, so that the request's objects are freed as it ends, not by the garbage
            # collector. A send after this (a task the app left behind) is an error, as the
            # server would have said.
            exchange.downstream = _sent_after_the_end
            if journal_token is not None:
                change_journal.reset(journal_token)
            if exchange.socket is not None:
                await exchange.socket.stop()
            visits = exchange.visits
            if visits and not (len(visits) == 1 and manager.release_now(visits[0])):
                try:
                    if self._shared:  # store calls: let a cancelled request still write and unlock
                        with CancelScope(shield=True):
                            await exchange.finish()
                    else:
                        await exchange.finish()
                except StoreUnavailableError as exc:
                    logger.error("session store unavailable while finishing a request: %s", exc)

    @property
    def _retry_after(self) -> int:
        return self.manager.settings.retry_after

    def _log_unavailable(self, exc: StoreUnavailableError) -> None:
        logger.error("%s; answering 503 (Retry-After: %s)", exc, self._retry_after)

    async def _unavailable(self, scope: Scope, send: Send, exc: StoreUnavailableError) -> None:
        self._log_unavailable(exc)
        await _send_unavailable(
            scope["type"] == "websocket", send, self._retry_after, "session store unavailable"
        )

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


# What an exchange's ``send`` does with the app's next message (`_Exchange.phase`).
_BEFORE_START = 0  # look for the response start (or websocket accept): headers to add
_PASSING = 1  # hand it on
_SAVING_AT_END = 2  # hand it on; the body's last part first saves what changed (shared store)
_SOCKET = 3  # an accepted websocket tied to its session: drop it once the session closed it
_DROPPING = 4  # a 503 (or a websocket close) went out instead of the app's response: drop it


class _Exchange(RequestSession):
    """One request as the middleware sees it: its sessions (`RequestSession`, which route code
    reaches through the scope) and the response going out, whose start gets the ID's headers.

    ``send`` is what the app is given as its ASGI ``send``: a bound method, not a closure made
    per request, and a plain function that returns the coroutine to await — the server's own
    ``send(message)`` whenever there is nothing of ours to wait for (always, but for shared
    stores' saves, websocket handshakes and dropped messages), so a message passes through no
    coroutine of ours. What it does is decided once per phase (``phase``), not tested again per
    message. The middleware sets the fields below before the app runs.
    """

    __slots__ = ("downstream", "middleware", "phase", "socket", "websocket")

    middleware: SessionMiddleware
    downstream: Send  # the server's send
    phase: int  # see _BEFORE_START and the others above
    websocket: bool  # a websocket's handshake, not an HTTP request
    socket: SessionWebSocket | None  # an accepted websocket tied to the session

    def __init__(
        self,
        middleware: SessionMiddleware,
        requested_id: str | None,
        by_header: bool,
        downstream: Send,
        websocket: bool,
    ) -> None:
        # `RequestSession.__init__`, spelt out: one call per request, not two.
        self._manager = middleware.manager
        self.requested_id = requested_id
        self.by_header = by_header
        self._session = self.refused = self.socket = None
        self.found = self.consulted = self.started = False
        self.visits = []
        # What this request changes on a shared store, to take back if it is answered 503.
        self.journal = {} if middleware._shared else None
        self.middleware = middleware
        self.downstream = downstream
        self.phase = _BEFORE_START
        self.websocket = websocket

    async def answer_503(self, reason: str, retry_after: int) -> None:
        self.phase = _DROPPING
        self.refuse()
        await _send_unavailable(self.websocket, self.downstream, retry_after, reason)

    def send(self, message: Message) -> Awaitable[None]:
        phase = self.phase
        if phase == _PASSING:
            return self.downstream(message)
        if phase != _BEFORE_START:
            return self._send_later(phase, message)
        # Before the response starts: its start (or the websocket's accept) gets our headers.
        kind = message["type"]
        if kind not in _START:
            return self.downstream(message)
        self.started = True
        self.phase = _PASSING
        if self.refused is not None:  # the app turned the refusal into a response
            logger.warning("%s", self.refused)
            return self.answer_503("session limit reached", self.refused.retry_after)
        middleware = self.middleware
        if not self.visits:
            if not self.consulted and not self.found:
                return self.downstream(message)  # the app never looked at sessions: nothing to do
        elif middleware._flushes:
            if middleware._shared and kind == "http.response.start":
                self.phase = _SAVING_AT_END
            return self._save_and_start(message)
        middleware._transport.add_headers(message, self, middleware.manager.clock)
        if kind == "websocket.accept":
            return self._accept(message)
        return self.downstream(message)

    def _send_later(self, phase: int, message: Message) -> Awaitable[None]:
        """`send` once the response (or websocket) started, but for the messages it passes on."""
        if phase == _SAVING_AT_END:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                return self._save_and_end(message)  # what changed while the body streamed
            return self.downstream(message)
        if phase == _SOCKET and not (self.socket is not None and self.socket.closed):
            return self.downstream(message)
        return _dropped(message)  # a 503, or a close as the session ended, went out instead

    async def _save_and_start(self, message: Message) -> None:
        """A store written as the response starts: save first, then start it — or answer 503,
        having written nothing, when the store cannot take it."""
        middleware = self.middleware
        try:
            await self.flush()
        except StoreUnavailableError as exc:
            middleware._log_unavailable(exc)
            await self.answer_503("session store unavailable", middleware._retry_after)
            return
        except SessionLimitError as exc:
            logger.warning("%s", exc)
            await self.answer_503("session limit reached", exc.retry_after)
            return
        except Exception as exc:  # a store that answers wrongly: not retried
            self.refuse()
            logger.error("session store failed while saving: %s", describe(exc))
            raise
        middleware._transport.add_headers(message, self, middleware.manager.clock)
        if message["type"] == "websocket.accept":
            await self._accept(message)
        else:
            await self.downstream(message)

    async def _accept(self, message: Message) -> None:
        await self.release_locks()  # a websocket takes part in its handshake only
        session = self.get_session(create=False)
        await self.downstream(message)
        if session is not None:
            self.socket = self.middleware.manager.websocket_opened(session, self.downstream)
            self.phase = _SOCKET

    async def _save_and_end(self, message: Message) -> None:
        try:
            await self.flush()
        except StoreUnavailableError:
            # Too late for a 503: cut the response short rather than end it cleanly over
            # changes that were not saved.
            logger.error("session store unavailable at the end of a streamed response; "
                         "closing the connection without its last chunk")  # fmt: skip
            raise
        await self.downstream(message)


async def _sent_after_the_end(message: Message) -> None:
    raise RuntimeError(
        f"ASGI message {message.get('type')!r} sent after the app returned: the response is over"
    )


async def _dropped(message: Message) -> None:
    """What ``send`` does with a message that must not go out: nothing. A coroutine, as every
    awaitable ``send`` returns is (``asyncio.create_task(send(...))`` takes only those)."""


async def _send_unavailable(websocket: bool, send: Send, retry_after: int, reason: str) -> None:
    if websocket:
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
