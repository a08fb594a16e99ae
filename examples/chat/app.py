"""The chat web app: one page, a streaming reply endpoint, the conversation in the session.

Run it with ``python -m examples.chat`` (see the README). Environment variables:
``CHAT_SECRET_KEY`` (default: a random key per start; set it when running several workers),
``CHAT_STORE_URL`` (default ``memory://``; e.g. ``redis://127.0.0.1:6379/0`` or
``sqlite:///chat.db`` to share conversations between workers), ``CHAT_IDLE_TIMEOUT`` (seconds,
default 1800), ``CHAT_REAPER_INTERVAL`` (seconds, default 60), ``CHAT_TOKEN_DELAY`` (seconds
between streamed words, default 0.02).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from servletsession import (
    HttpSession,
    HttpSessionEvent,
    SessionManager,
    SessionMiddleware,
    get_session,
)
from servletsession.stores import store_from_url

from .bot import reply, stream_words
from .models import ChatPrompt

logger = logging.getLogger("chat")
PAGE = (Path(__file__).parent / "page.html").read_text()
HISTORY = "history"
MAX_MESSAGE = 2000


class SessionLog:
    """A listener: logs sessions coming and going (the Servlet HttpSessionListener)."""

    def session_created(self, event: HttpSessionEvent) -> None:
        logger.info("conversation started %r", event.session)

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        history = event.session.get_attribute(HISTORY)
        turns = len(history.turns) if history else 0
        logger.info("conversation ended %r after %d turns", event.session, turns)


def conversation(session: HttpSession) -> ChatPrompt:
    prompt = session.get_attribute(HISTORY)
    if prompt is None:
        prompt = ChatPrompt()
        session.set_attribute(HISTORY, prompt)
    assert isinstance(prompt, ChatPrompt)
    return prompt


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def chat(request: Request) -> Response:
    payload = await request.json()
    message = str(payload.get("message", "")).strip()[:MAX_MESSAGE]
    session = get_session(request)  # before the response starts: the cookie can still be sent
    assert session is not None
    prompt = conversation(session)
    prompt.add("user", message)
    answer = prompt.add("assistant")
    delay: float = request.app.state.token_delay

    async def tokens() -> AsyncIterator[str]:
        for word in stream_words(reply(prompt)):
            answer.content += word  # the live object in the session grows as we stream
            yield word
            await asyncio.sleep(delay)
        # Set it again once complete: a store that serializes (SQL, Redis) writes what was set.
        session.set_attribute(HISTORY, prompt)

    return StreamingResponse(tokens(), media_type="text/plain; charset=utf-8")


async def history(request: Request) -> Response:
    session = get_session(request, create=False)
    prompt = session.get_attribute(HISTORY) if session is not None else None
    return JSONResponse(prompt.model_dump() if prompt else ChatPrompt().model_dump())


async def session_info(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is None:
        return JSONResponse({"exists": False})
    prompt = session.get_attribute(HISTORY)
    return JSONResponse(
        {
            "exists": True,
            "is_new": session.is_new,
            "creation_time": session.creation_time,
            "last_accessed_time": session.last_accessed_time,
            "max_inactive_interval": session.max_inactive_interval,
            "turns": len(prompt.turns) if prompt else 0,
        }
    )


async def new_chat(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is not None:
        session.invalidate()
    return JSONResponse({"ok": True})


def create_app(
    *,
    secret_key: str | None = None,
    max_inactive_interval: int | None = None,
    reaper_interval: float | None = None,
    secure: bool = True,
    token_delay: float | None = None,
    store_url: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the demo app; arguments default to the environment variables above."""
    url = store_url or os.environ.get("CHAT_STORE_URL", "memory://")
    manager = SessionManager(
        store_from_url(url, models=[ChatPrompt]) if url != "memory://" else None,
        listeners=[SessionLog()],
        max_inactive_interval=max_inactive_interval
        or int(os.environ.get("CHAT_IDLE_TIMEOUT", "1800")),
        reaper_interval=reaper_interval or float(os.environ.get("CHAT_REAPER_INTERVAL", "60")),
        clock=clock,
    )
    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/history", history),
            Route("/api/session", session_info),
            Route("/api/new", new_chat, methods=["POST"]),
        ]
    )
    key = secret_key or os.environ.get("CHAT_SECRET_KEY") or secrets.token_urlsafe(32)
    app.add_middleware(SessionMiddleware, secret_key=key, manager=manager, secure=secure)
    app.state.session_manager = manager
    app.state.token_delay = (
        float(os.environ.get("CHAT_TOKEN_DELAY", "0.02")) if token_delay is None else token_delay
    )
    return app


app = create_app()
