"""A mountable admin app for operators: the sessions a store holds, and ending them.

```python
from servletsession.admin import AdminApp, basic_auth

admin = AdminApp(manager, auth=basic_auth({"ops": os.environ["ADMIN_PASSWORD"]}))
app = Starlette(routes=[..., Mount("/admin", admin)])
```

Every request goes through ``auth`` first (see `servletsession.admin_auth`). The HTML pages:
``/`` (the list: sort, filter by principal and idle time, pages) and ``/sessions/<ref>`` (one
session), with forms posting to ``/actions/invalidate-session``, ``-principal`` and ``-idle``.
The JSON API: ``GET api/stats``, ``api/sessions`` (same query parameters), ``api/sessions/<ref>``,
``api/csrf``; ``POST api/sessions/<ref>/invalidate``, ``api/principals/invalidate``
(``{"principal": …}``), ``api/sessions/invalidate-idle`` (``{"minutes": …}``); and ``/metrics``
when prometheus-client is installed. Sessions are addressed by an unguessable admin ref, never by
ID; attribute values are shown only for the names in ``show_values``. Every ``POST`` needs the
CSRF token (`servletsession.admin_csrf`). While the store cannot answer, every route that needs it
answers 503 with ``Retry-After`` (an error page, or ``{"error": …}`` under ``api/``); ``/metrics``
still answers 200 with what this process knows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import inspect
import json
import secrets
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from . import admin_pages as pages
from .admin_auth import Auth, AuthResult, basic_auth, session_role
from .admin_csrf import FIELD, HEADER, CsrfGuard
from .admin_query import Query, QueryError, SessionDirectory, parse_minutes, parse_query
from .errors import StoreUnavailableError
from .manager import SessionManager

__all__ = ["AdminApp", "Auth", "AuthResult", "basic_auth", "session_role"]

_MAX_FORM = 16_384  # bytes of a form or JSON body the admin app reads at most
_HTML_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class AdminApp:
    """An ASGI app for operators, protected by the ``auth`` hook the app supplies.

    ``secret_key`` keys the admin refs and CSRF tokens; give the same one to every worker behind
    a load balancer (a random key per instance otherwise). ``show_values`` names the attributes
    whose values the detail page and API may show. ``max_limit`` caps a page, ``max_scan`` the
    sessions one listing looks at.
    """

    def __init__(
        self,
        manager: SessionManager,
        *,
        auth: Auth,
        secret_key: str | bytes | None = None,
        show_values: Collection[str] = (),
        max_limit: int = 500,
        max_scan: int = 10_000,
    ) -> None:
        if not callable(auth):
            raise TypeError(
                "auth must be a callable taking the request and returning True, False or a "
                "response, e.g. servletsession.admin.basic_auth({'ops': password})"
            )
        if isinstance(show_values, str):
            raise TypeError(f"show_values is a collection of names: use {{{show_values!r}}}")
        if max_limit < 1 or max_scan < 1:
            raise ValueError("max_limit and max_scan must be at least 1")
        if secret_key is None:
            key = secrets.token_bytes(32)
        else:
            key = secret_key.encode() if isinstance(secret_key, str) else secret_key
            if len(key) < 32:
                raise ValueError(
                    f"secret_key is {len(key)} bytes; use at least 32, e.g. "
                    "secrets.token_urlsafe(32)"
                )
        self.manager = manager
        self._auth = auth
        self._max_limit = max_limit
        self._sessions = SessionDirectory(manager, _derive(key, b"ref"), show_values, max_scan)
        self._csrf = CsrfGuard(_derive(key, b"csrf"))
        try:
            from .metrics import SessionMetrics

            self.metrics: Any = SessionMetrics(manager)
        except ImportError:
            self.metrics = None
        self._router = Router(
            routes=[
                Route("/", self._list_page),
                Route("/sessions/{ref}", self._detail_page),
                Route("/actions/invalidate-session", self._form_invalidate, methods=["POST"]),
                Route("/actions/invalidate-principal", self._form_principal, methods=["POST"]),
                Route("/actions/invalidate-idle", self._form_idle, methods=["POST"]),
                Route("/api/stats", self._api_stats),
                Route("/api/csrf", self._api_csrf),
                Route("/api/sessions", self._api_list),
                Route("/api/sessions/invalidate-idle", self._api_idle, methods=["POST"]),
                Route("/api/sessions/{ref}", self._api_detail),
                Route("/api/sessions/{ref}/invalidate", self._api_invalidate, methods=["POST"]),
                Route("/api/principals/invalidate", self._api_principal, methods=["POST"]),
                Route("/metrics", self._metrics),
            ]
        )

    def __repr__(self) -> str:
        return f"AdminApp(manager={self.manager!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._router(scope, receive, send)  # lifespan; no websocket route exists
            return
        request = Request(scope, receive)
        allowed = self._auth(request)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if isinstance(allowed, Response):
            await allowed(scope, receive, send)
        elif allowed is not True:
            await PlainTextResponse("forbidden\n", status_code=403)(scope, receive, send)
        else:
            await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router, with a store outage answered 503 + ``Retry-After`` (never a 500)."""
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._router(scope, receive, sending)
        except StoreUnavailableError as exc:
            if started:  # pragma: no cover - every response is built before it is sent
                raise
            request = Request(scope)
            retry = {"Retry-After": str(self.manager.settings.retry_after)}
            message = f"The session store is unavailable; try again shortly ({exc})."
            if _route_path(scope).startswith("/api/"):
                response: Response = JSONResponse(
                    {"error": "session store unavailable"}, 503, retry | _NO_STORE
                )
            else:
                home = "../" * (_route_path(scope).count("/") - 1) or "./"
                response = self._html_error(request, 503, message, home)
                response.headers.update(retry)
            await response(scope, receive, send)

    # --- HTML -------------------------------------------------------------------------------

    def _html(self, request: Request, render: Callable[[str], str], status: int = 200) -> Response:
        """A page, rendered with this browser's CSRF token (its cookie set if it has none)."""
        token, fresh = self._csrf.token(request)
        response = HTMLResponse(render(token), status, _HTML_HEADERS)
        if fresh is not None:
            self._csrf.set_cookie(request, response, fresh)
        return response

    def _html_error(self, request: Request, status: int, message: str, home: str) -> Response:
        return self._html(request, lambda _: pages.error_page(status, message, home), status)

    async def _list_page(self, request: Request) -> Response:
        try:
            query = parse_query(request.query_params, self._max_limit)
        except QueryError as exc:
            return self._html_error(request, 400, str(exc), "./")
        page = await self._sessions.page(query)
        stats = dataclasses.asdict(await self.manager.stats())
        notice = ""
        done = request.query_params.get("invalidated", "")
        if done.isdigit() and len(done) < 10:
            notice = f"{done} session{'' if done == '1' else 's'} invalidated."
        return self._html(request, lambda token: pages.list_page(page, stats, token, notice))

    async def _detail_page(self, request: Request) -> Response:
        session = await self._sessions.find(request.path_params["ref"])
        if session is None:
            return self._html_error(request, 404, "No such session (it may have ended).", "../")
        row = self._sessions.row(session, self.manager.clock())
        return self._html(request, lambda token: pages.detail_page(row, token))

    async def _form(self, request: Request) -> dict[str, str] | Response:
        """The posted form if its CSRF token holds, else the error response."""
        body = await _body(request)
        if body is None:
            return self._html_error(request, 413, "The form is too large.", "../")
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not self._csrf.check(request, form.get(FIELD)):
            return self._html_error(
                request, 403, "The form's CSRF token is missing or wrong: reload the page.", "../"
            )
        return form

    def _back(self, form: dict[str, str], count: int) -> Response:
        """303 to the list the form came from, relative to this action: any mount, any root."""
        try:
            back = parse_query(dict(parse_qsl(form.get("back", ""))), self._max_limit)
        except QueryError:
            back = Query()
        params = back.params()
        location = f"../?{params + '&' if params else ''}invalidated={count}"
        return RedirectResponse(location, status_code=303)

    async def _form_invalidate(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        return self._back(form, int(await self._sessions.invalidate(form.get("ref", ""))))

    async def _form_principal(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        principal = pages.decode_principal(form.get("principal_b64", "")) or form.get("principal")
        if not principal:
            return self._html_error(request, 400, "Name the principal.", "../")
        return self._back(form, await self._sessions.invalidate_principal(principal))

    async def _form_idle(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        try:
            minutes = parse_minutes(form.get("minutes", ""))
        except QueryError as exc:
            return self._html_error(request, 400, str(exc), "../")
        return self._back(form, await self._sessions.invalidate_idle(minutes))

    # --- JSON -------------------------------------------------------------------------------

    async def _api_stats(self, request: Request) -> Response:
        return JSONResponse(dataclasses.asdict(await self.manager.stats()))

    async def _api_csrf(self, request: Request) -> Response:
        token, fresh = self._csrf.token(request)
        response = JSONResponse({"token": token, "header": HEADER}, headers=_NO_STORE)
        if fresh is not None:
            self._csrf.set_cookie(request, response, fresh)
        return response

    async def _api_list(self, request: Request) -> Response:
        try:
            query = parse_query(request.query_params, self._max_limit)
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        page = await self._sessions.page(query)
        return JSONResponse(
            {
                "total": page.total,
                "offset": query.offset,
                "limit": query.limit,
                "truncated": page.truncated,
                "sessions": [row.as_json() for row in page.rows],
            },
            headers=_NO_STORE,
        )

    async def _api_detail(self, request: Request) -> Response:
        session = await self._sessions.find(request.path_params["ref"])
        if session is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        row = self._sessions.row(session, self.manager.clock())
        return JSONResponse(row.as_json(), headers=_NO_STORE)

    async def _json(self, request: Request) -> dict[str, Any] | Response:
        """The posted JSON object if the CSRF header holds, else the error response."""
        if not self._csrf.check(request, request.headers.get(HEADER)):
            message = f"send the token of GET api/csrf in the {HEADER} header, with its cookie"
            return JSONResponse({"error": message}, status_code=403)
        body = await _body(request)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        return data

    async def _api_invalidate(self, request: Request) -> Response:
        data = await self._json(request)
        if isinstance(data, Response):
            return data
        if not await self._sessions.invalidate(request.path_params["ref"]):
            return JSONResponse({"invalidated": 0}, status_code=404)
        return JSONResponse({"invalidated": 1})

    async def _api_principal(self, request: Request) -> Response:
        data = await self._json(request)
        if isinstance(data, Response):
            return data
        principal = data.get("principal")
        if not isinstance(principal, str) or not principal:
            return JSONResponse({"error": "principal must be a non-empty string"}, 400)
        return JSONResponse({"invalidated": await self._sessions.invalidate_principal(principal)})

    async def _api_idle(self, request: Request) -> Response:
        data = await self._json(request)
        if isinstance(data, Response):
            return data
        try:
            minutes = parse_minutes(data.get("minutes"))
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"invalidated": await self._sessions.invalidate_idle(minutes)})

    async def _metrics(self, request: Request) -> Response:
        if self.metrics is None:
            return PlainTextResponse(
                "install prometheus-client (servletsession[metrics])\n", status_code=404
            )
        # A store outage: the counters and the store's errors (this failed count among them)
        # still tell the story; servletsession_active keeps its last value.
        with contextlib.suppress(StoreUnavailableError):
            await self.metrics.refresh()
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")


_NO_STORE = {"Cache-Control": "no-store"}


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.digest(key, b"servletsession.admin." + purpose, "sha256")


def _route_path(scope: Scope) -> str:
    """The request's path inside the admin app (``/``, ``/api/sessions``…)."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


async def _body(request: Request) -> bytes | None:
    """The request body, or ``None`` past `_MAX_FORM` bytes."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_FORM:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
