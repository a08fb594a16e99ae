"""The app each worker of the multi-process tests runs: ``uvicorn tests.apps.multiprocess:app``.

Configured by environment: ``SS_STORE_URL`` (a Redis or PostgreSQL URL), ``SS_PREFIX`` (keys or
tables of this test run), ``SS_EVENTS`` (a file each ``session_destroyed`` appends a line to),
``SS_SECRET``. Its clock is real time plus an offset the test moves with ``POST /_clock``, so
expiry is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from servletsession import HttpSessionEvent, SessionManager, SessionMiddleware, get_session
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

_offset = 0.0


def clock() -> float:
    return time.time() + _offset


class EventLog:
    def session_destroyed(self, event: HttpSessionEvent) -> None:
        line = f"destroyed {os.getpid()} {event.session.get_attribute('count')}\n"
        with open(os.environ["SS_EVENTS"], "a") as log:
            log.write(line)


async def increment(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    name = request.path_params["name"]
    count = session.get_attribute(name, 0) + 1
    session.set_attribute(name, count)
    return PlainTextResponse(str(count))


async def slow_set(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    await asyncio.sleep(float(request.query_params.get("wait", "0")))
    session.set_attribute(request.path_params["name"], request.query_params["value"])
    return PlainTextResponse("ok")


async def read(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse(None)
    return JSONResponse(
        {name: session.get_attribute(name) for name in session.get_attribute_names()}
    )


async def move_clock(request: Request) -> Response:
    global _offset
    _offset += float(request.query_params["seconds"])
    return PlainTextResponse(str(os.getpid()))


url = os.environ["SS_STORE_URL"]
prefix = os.environ["SS_PREFIX"]
store = (
    RedisStore(url, prefix=prefix, save_period=0)
    if url.startswith("redis")
    else SQLStore(url, table_prefix=prefix, save_period=0)
)
manager = SessionManager(
    store, listeners=[EventLog()], max_inactive_interval=60, reaper_interval=0.05, clock=clock
)
app = Starlette(
    routes=[
        Route("/incr/{name}", increment, methods=["POST"]),
        Route("/slow-set/{name}", slow_set, methods=["POST"]),
        Route("/read", read),
        Route("/_clock", move_clock, methods=["POST"]),
        Route("/_health", lambda request: PlainTextResponse("ok")),
    ]
)
app.add_middleware(SessionMiddleware, secret_key=os.environ["SS_SECRET"], manager=manager)
