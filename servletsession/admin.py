"""A mountable admin app: stats, sessions by ref, invalidation, Prometheus metrics.

```python
async def only_admins(request: Request) -> bool:
    return request.headers.get("authorization") == f"Bearer {ADMIN_TOKEN}"

app.mount("/admin", AdminApp(manager, auth=only_admins))
```

Every request goes through ``auth`` (sync or async, given the request): ``False`` answers 403.
Sessions are listed by ref (a short keyed hash), never by ID. Routes: ``/`` (HTML), ``/api/stats``,
``/api/sessions?offset=&limit=``, ``POST /api/sessions/{ref}/invalidate``,
``POST /api/principals/{principal}/invalidate``, and ``/metrics`` when prometheus-client is
installed.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .inventory import SessionSummary, invalidate_ref, list_sessions
from .manager import SessionManager

Auth = Callable[[Request], bool | Awaitable[bool]]


class AdminApp:
    """An ASGI app for operators, protected by the ``auth`` callable the app supplies."""

    def __init__(self, manager: SessionManager, *, auth: Auth) -> None:
        if not callable(auth):
            raise TypeError("auth must be a callable taking the request and returning a bool")
        self.manager = manager
        self._auth = auth
        try:
            from .metrics import SessionMetrics

            self.metrics: Any = SessionMetrics(manager)
        except ImportError:
            self.metrics = None
        self._app = Starlette(
            routes=[
                Route("/", self._page, name="admin-page"),
                Route("/api/stats", self._stats),
                Route("/api/sessions", self._sessions),
                Route("/api/sessions/{ref}/invalidate", self._invalidate, methods=["POST"]),
                Route(
                    "/api/principals/{principal}/invalidate", self._invalidate_all, methods=["POST"]
                ),
                Route("/metrics", self._metrics),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            allowed = self._auth(Request(scope, receive))
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                await PlainTextResponse("forbidden\n", status_code=403)(scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(dataclasses.asdict(await self.manager.stats()))

    async def _sessions(self, request: Request) -> Response:
        offset = int(request.query_params.get("offset", 0))
        limit = min(int(request.query_params.get("limit", 50)), 500)
        summaries = await list_sessions(self.manager, offset, limit)
        return JSONResponse([summary.as_dict() for summary in summaries])

    async def _invalidate(self, request: Request) -> Response:
        if not await invalidate_ref(self.manager, request.path_params["ref"]):
            return JSONResponse({"invalidated": 0}, status_code=404)
        return self._done(request, 1)

    async def _invalidate_all(self, request: Request) -> Response:
        return self._done(
            request, await self.manager.invalidate_all(request.path_params["principal"])
        )

    def _done(self, request: Request, count: int) -> Response:
        if "text/html" in request.headers.get("accept", ""):  # a form on the page
            return RedirectResponse(str(request.url_for("admin-page")), status_code=303)
        return JSONResponse({"invalidated": count})

    async def _metrics(self, request: Request) -> Response:
        if self.metrics is None:
            return PlainTextResponse(
                "install prometheus-client (servletsession[metrics])\n", status_code=404
            )
        await self.metrics.refresh()
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def _page(self, request: Request) -> Response:
        stats = dataclasses.asdict(await self.manager.stats())
        offset = int(request.query_params.get("offset", 0))
        sessions = await list_sessions(self.manager, offset, 100)
        stat_rows = "".join(
            f"<tr><th>{name}</th><td>{value:g}</td></tr>" for name, value in stats.items()
        )
        return HTMLResponse(
            _PAGE.format(stats=stat_rows, sessions="".join(_session_row(s) for s in sessions))
        )


_PAGE = """<!doctype html>
<meta charset="utf-8"><title>servletsession admin</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
  table {{ border-collapse: collapse; margin-bottom: 2rem; }}
  td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
  form {{ display: inline; }}
</style>
<h1>Sessions</h1>
<h2>Stats</h2>
<table>{stats}</table>
<h2>Sessions (by ref)</h2>
<table>
<tr><th>ref</th><th>principal</th><th>created</th><th>last access</th><th>attributes</th>
<th>bytes</th><th></th></tr>
{sessions}
</table>
"""


def _session_row(summary: SessionSummary) -> str:
    principal = summary.principal or ""
    cells = [
        f"<code>{summary.ref}</code>",
        html.escape(principal),
        f"{summary.creation_time:.0f}",
        f"{summary.last_accessed_time:.0f}",
        str(summary.attributes),
        "" if summary.size is None else str(summary.size),
        _button(f"api/sessions/{summary.ref}/invalidate", "invalidate")
        + (
            _button(
                f"api/principals/{quote(principal, safe='')}/invalidate", "all of this principal"
            )
            if principal
            else ""
        ),
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _button(action: str, label: str) -> str:
    target = html.escape(action, quote=True)
    return f"<form method='post' action='{target}'><button>{label}</button></form>"
