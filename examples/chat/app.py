"""The chat web app: one page, a streaming reply endpoint, the conversation in the session.

Run it with ``python -m examples.chat`` (see the README). Environment variables:

``CHAT_SECRET_KEY``
    The key that signs session cookies. Every worker and every machine must share it, or a
    session vanishes whenever a request reaches another process. Without it the app **refuses to
    start** (exit status 3, which both uvicorn and gunicorn read as "do not restart this worker"),
    except in single-process mode: ``python -m examples.chat`` sets ``CHAT_SINGLE_PROCESS=1``,
    runs exactly one worker (``WEB_CONCURRENCY``, ``UVICORN_WORKERS`` and ``GUNICORN_CMD_ARGS``
    are ignored), and makes a random key per start.
    A random key is never made otherwise, because no process can see whether it has siblings:
    ``uvicorn --workers``, gunicorn, or two containers behind one load balancer look alike from
    inside. On top of that rule, a best-effort worker count (``--workers N`` / ``-w N`` in the
    command line, which uvicorn's spawned workers inherit, then ``UVICORN_WORKERS``, ``--workers``
    / ``-w`` in ``GUNICORN_CMD_ARGS``, then ``WEB_CONCURRENCY``) names the count in the message,
    and refuses ``CHAT_SINGLE_PROCESS=1`` or the ``memory://`` store with several workers.
``CHAT_STORE_URL``
    Default ``memory://`` (one process only); e.g. ``redis://127.0.0.1:6379/0`` or
    ``sqlite:///chat.db`` to share conversations between workers.
``CHAT_SESSIONS_FILE``
    With the ``memory://`` store: a file where conversations wait while the app restarts
    (``MemoryStore(persist_to=...)``: written at shutdown, read back and deleted at startup, so
    the same cookie finds the same conversation). ``python -m examples.chat`` uses
    ``.chat-sessions.json`` in the working directory unless this is set (set it empty for none);
    otherwise unset means none. The file holds session IDs: it is created ``0600``. A restart
    keeps conversations only if cookies stay valid, so the signing key must survive it too:
    ``CHAT_SECRET_KEY``, or in single-process mode a random key kept beside the file
    (``<file>.key``, ``0600``).
``CHAT_IDLE_TIMEOUT``
    Seconds, default 1800.
``CHAT_REAPER_INTERVAL``
    Seconds, default 60.
``CHAT_TOKEN_DELAY``
    Seconds between streamed words, default 0.02.

``POST /api/chat`` takes ``{"message": "..."}`` (1 to 2000 characters of text, a body of at most
64 KiB; a lone surrogate such as ``"\\ud800"``, valid JSON but not text, is refused);
anything else is answered ``400`` (``413`` for a larger body) with ``{"error": "..."}``, before a
session is created. A store that is down makes the middleware answer ``503`` with
``Retry-After``; the page shows it as an error with a retry button, never as a reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
from servletsession.stores import MemoryStore, SessionStore, store_from_url

from .bot import reply, stream_words
from .models import ChatPrompt

logger = logging.getLogger("chat")
HERE = Path(__file__).parent
PAGE = (HERE / "page.html").read_text()
FAVICON = (HERE / "favicon.svg").read_bytes()
HISTORY = "history"
MAX_MESSAGE = 2000  # characters, as the page's maxlength
MAX_BODY = 64 * 1024  # bytes: room for 2000 characters written as JSON escapes
SINGLE_PROCESS = "CHAT_SINGLE_PROCESS"
STARTUP_FAILURE = 3  # uvicorn's STARTUP_FAILURE and gunicorn's WORKER_BOOT_ERROR: no restart
NEW_KEY_HINT = (
    "export CHAT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
)


class ChatConfigError(RuntimeError):
    """The environment would run the demo in a way that loses sessions; the app does not start."""


def _flag_workers(args: Sequence[str]) -> int | None:
    """The count of ``--workers N``, ``--workers=N``, ``-w N`` or ``-wN`` in ``args``, if any."""
    for index, arg in enumerate(args):
        value: str | None = None
        if arg in ("--workers", "-w") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        elif arg.startswith("-w") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.strip().isdigit():
            return max(1, int(value))
    return None


def worker_count(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Best effort: the worker count of the server running us, from ``--workers N``,
    ``--workers=N`` or ``-w N`` on the command line (uvicorn's spawned workers and gunicorn's
    forked ones keep the parent's), else uvicorn's ``UVICORN_WORKERS``, else ``--workers``/``-w``
    in gunicorn's ``GUNICORN_CMD_ARGS``, else ``WEB_CONCURRENCY`` (both servers' default).
    ``CHAT_SINGLE_PROCESS=1`` hides none of them: ``python -m examples.chat`` removes the
    variables from its own environment, as it runs one worker whatever they say."""
    counted = _flag_workers(argv[1:])
    if counted is not None:
        return counted
    uvicorn_workers = environ.get("UVICORN_WORKERS", "").strip()
    if uvicorn_workers.isdigit():
        return max(1, int(uvicorn_workers))
    try:
        gunicorn_args = shlex.split(environ.get("GUNICORN_CMD_ARGS", ""))
    except ValueError:  # unbalanced quotes: gunicorn refuses it too
        gunicorn_args = []
    counted = _flag_workers(gunicorn_args)
    if counted is not None:
        return counted
    concurrency = environ.get("WEB_CONCURRENCY", "").strip()
    return max(1, int(concurrency)) if concurrency.isdigit() else 1


#: What sets the worker count besides the command line (see ``worker_count``).
WORKER_VARIABLES = ("UVICORN_WORKERS", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY")


def environment_problems(
    url: str, key_given: bool, argv: Sequence[str], environ: Mapping[str, str]
) -> list[str]:
    """Why this environment would lose sessions (see the module docstring); empty if none."""
    problems = []
    workers = worker_count(argv, environ)
    if not key_given and not environ.get("CHAT_SECRET_KEY"):
        if workers > 1:
            problems.append(
                f"{workers} workers and no CHAT_SECRET_KEY: each worker would sign cookies with "
                "its own random key, and a session would vanish whenever a request reaches "
                f"another worker. Give them all the same key: {NEW_KEY_HINT}"
            )
        elif environ.get(SINGLE_PROCESS) != "1":
            problems.append(
                "CHAT_SECRET_KEY is not set, and every worker and machine must sign cookies with "
                f"the same key: {NEW_KEY_HINT}. To try the demo in one process with a random "
                "key, run `python -m examples.chat` instead."
            )
    if workers > 1 and url.partition("://")[0].lower() == "memory":
        problems.append(
            f"{workers} workers on the memory:// store: each worker would keep its own "
            "sessions, and a conversation would vanish whenever a request reaches another "
            "worker. Share a store: CHAT_STORE_URL=redis://127.0.0.1:6379/0 (or sqlite:///chat.db)"
        )
    return problems


def bad_request(message: str, status_code: int = 400) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


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


async def read_message(request: Request) -> str | Response:
    """The message of a ``{"message": "..."}`` body, or the 400/413 response that refuses it."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return bad_request(f"The request body is larger than {MAX_BODY} bytes.", 413)
    try:
        payload = json.loads(body)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        return bad_request('The body is not valid JSON; send {"message": "..."}.')
    if not isinstance(payload, dict):
        return bad_request('The body must be a JSON object: {"message": "..."}.')
    message = payload.get("message")
    if not isinstance(message, str):
        return bad_request('"message" must be a string.')
    message = message.strip()
    if not message:
        return bad_request('"message" is empty.')
    if len(message) > MAX_MESSAGE:
        return bad_request(f'"message" is longer than {MAX_MESSAGE} characters.')
    try:
        message.encode()  # JSON allows "\ud800": a lone surrogate no store or page can hold
    except UnicodeEncodeError:
        return bad_request(
            '"message" is not valid text: it holds a lone surrogate (\\ud800 to \\udfff).'
        )
    return message


async def chat(request: Request) -> Response:
    message = await read_message(request)
    if isinstance(message, Response):
        return message  # refused before a session is created
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


async def favicon(request: Request) -> Response:
    return Response(
        FAVICON, media_type="image/svg+xml", headers={"cache-control": "public, max-age=86400"}
    )


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
    sessions_file: str | Path | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the demo app; arguments default to the environment variables above."""
    url = store_url or os.environ.get("CHAT_STORE_URL", "memory://")
    saved = sessions_file or os.environ.get("CHAT_SESSIONS_FILE") or None
    problems = environment_problems(url, secret_key is not None, sys.argv, os.environ)
    if problems:
        raise ChatConfigError("\n".join(problems))
    key = secret_key or os.environ.get("CHAT_SECRET_KEY") or secrets.token_urlsafe(32)
    store: SessionStore
    if url != "memory://":
        store = store_from_url(url)
        if saved is not None:
            logger.warning(
                "CHAT_SESSIONS_FILE is ignored: it is for the memory:// store, and the store of "
                "CHAT_STORE_URL keeps sessions across restarts by itself"
            )
    else:
        store = MemoryStore(persist_to=saved)  # the conversations survive a restart
    manager = SessionManager(
        store,
        models=[ChatPrompt],  # the history is JSON in the file, or in a shared store
        listeners=[SessionLog()],
        max_inactive_interval=max_inactive_interval
        or int(os.environ.get("CHAT_IDLE_TIMEOUT", "1800")),
        reaper_interval=reaper_interval or float(os.environ.get("CHAT_REAPER_INTERVAL", "60")),
        clock=clock,
    )
    app = Starlette(
        routes=[
            Route("/", page),
            Route("/favicon.svg", favicon),
            Route("/favicon.ico", favicon),  # what browsers ask for without a <link rel="icon">
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/history", history),
            Route("/api/session", session_info),
            Route("/api/new", new_chat, methods=["POST"]),
        ]
    )
    app.add_middleware(SessionMiddleware, secret_key=key, manager=manager, secure=secure)
    app.state.session_manager = manager
    app.state.token_delay = (
        float(os.environ.get("CHAT_TOKEN_DELAY", "0.02")) if token_delay is None else token_delay
    )
    return app


def __getattr__(name: str) -> Starlette:
    """``examples.chat.app:app``, built on first use rather than at import, so that importing
    ``create_app`` needs no environment; a refused environment stops the process with the reason
    on stderr and exit status 3 (uvicorn and gunicorn then stop instead of restarting workers)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        built = create_app()
    except ChatConfigError as exc:
        reasons = str(exc).replace("\n", "\n- ")
        print(f"examples.chat refuses to start:\n- {reasons}", file=sys.stderr, flush=True)
        raise SystemExit(STARTUP_FAILURE) from None
    globals()["app"] = built
    return built
