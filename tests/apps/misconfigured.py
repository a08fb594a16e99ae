"""An app whose ``SessionMiddleware`` cannot work: ``uvicorn tests.apps.misconfigured:app``.

Its key is ``SS_SECRET`` (default: the ChatStream seed's 23-byte example key, too short for the
core middleware). Starlette builds the middleware only when the server first calls the app.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from servletsession import SessionMiddleware


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello)])
app.add_middleware(
    SessionMiddleware, secret_key=os.environ.get("SS_SECRET", "your-session-secret-key")
)
