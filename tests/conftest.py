"""Shared fixtures: a controllable clock, a manager, and a Starlette app driven over real ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from servletsession import (
    SessionManager,
    SessionMiddleware,
    change_session_id,
    get_session,
)

SECRET = "a-test-secret-key-of-well-over-32-bytes-0123456789"


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def manager(clock: FakeClock) -> AsyncIterator[SessionManager]:
    manager = SessionManager(clock=clock)
    yield manager
    await manager.close()


async def set_value(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    session.set_attribute(request.path_params["name"], request.query_params["value"])
    return JSONResponse({"names": session.get_attribute_names()})


async def get_value(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse({"session": False})
    return JSONResponse(
        {"session": True, "value": session.get_attribute(request.path_params["name"])}
    )


async def info(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse(None)
    return JSONResponse(
        {
            "is_new": session.is_new,
            "creation_time": session.creation_time,
            "last_accessed_time": session.last_accessed_time,
            "max_inactive_interval": session.max_inactive_interval,
            "names": session.get_attribute_names(),
        }
    )


async def invalidate(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is not None:
        session.invalidate()
    return Response("bye")


async def new_id(request: Request) -> Response:
    change_session_id(request)
    return Response("changed")


async def login(request: Request) -> Response:
    """The README's login: remember the user, bind the principal, rotate the ID (ASVS 7.2.4)."""
    session = get_session(request)
    assert session is not None
    session["user"] = request.query_params["user"]
    session.principal = request.query_params["user"]
    change_session_id(request)
    return Response("welcome")


async def untouched(request: Request) -> Response:
    return Response("hello")


BASIC_ROUTES: list[BaseRoute] = [
    Route("/set/{name}", set_value, methods=["POST"]),
    Route("/get/{name}", get_value),
    Route("/info", info),
    Route("/invalidate", invalidate, methods=["POST"]),
    Route("/change-id", new_id, methods=["POST"]),
    Route("/untouched", untouched),
]


def make_app(
    manager: SessionManager, routes: Sequence[BaseRoute] = (), **options: Any
) -> Starlette:
    app = Starlette(routes=[*routes, *BASIC_ROUTES])
    app.add_middleware(SessionMiddleware, secret_key=SECRET, manager=manager, **options)
    return app


def client(app: Any) -> httpx2.AsyncClient:
    """An HTTP client speaking ASGI to ``app`` over https (the cookie is Secure)."""
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="https://testserver"
    )


def cookie_header(value: str, name: str = "sessionid") -> dict[str, str]:
    """Headers that send exactly this session cookie (a client's jar is bypassed)."""
    return {"cookie": f"{name}={value}"}
