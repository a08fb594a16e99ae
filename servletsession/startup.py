"""Configuration errors that surface at startup, not as a 500 on every request.

Starlette (and so FastAPI) builds its middleware stack lazily, on the first ASGI call. Under a
server that is the ``lifespan`` scope, and uvicorn's default ``--lifespan auto`` takes an
exception raised there for "ASGI 'lifespan' protocol appears unsupported" (logged at INFO) and
starts serving; every request then builds the stack again, raises the same
[`ConfigurationError`][servletsession.ConfigurationError], and answers 500 with a traceback.

`surface_configuration_errors` wraps a middleware's ``__init__`` (and each subclass's, so that a
subclass doing more after ``super().__init__()`` fails as a whole, at its outermost constructor).
Called directly (``SessionMiddleware(app, secret_key="short")``) it raises as before. Only when the
error happens while a framework builds its middleware stack inside a running server (an event loop
is running and the constructor was called from ``build_middleware_stack``) does the instance
become a `MisconfiguredMiddleware`, which

* answers ``lifespan.startup`` with ``lifespan.startup.failed`` and the message, then raises it:
  the ASGI lifespan spec's way to refuse to start, which uvicorn honours even in "auto" mode (it
  logs the message at ERROR and exits) and Starlette's ``TestClient`` raises;
* where there is no lifespan (``--lifespan off``, servers without it), logs the message once at
  ERROR and answers every request with a plain 500 (a websocket with close code 1011), without a
  traceback per request.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ParamSpec, cast

from starlette.types import Receive, Scope, Send

from .compat.logbridge import say
from .errors import ConfigurationError

logger = logging.getLogger("servletsession")

P = ParamSpec("P")

_BUILDER = "build_middleware_stack"  # Starlette's and FastAPI's lazy stack builder
_SEARCH_DEPTH = 8  # constructors chained by subclasses and wrappers (the compat middleware)


def surface_configuration_errors(init: Callable[P, None]) -> Callable[P, None]:
    """Decorate a middleware's ``__init__(self, app, ...)`` so that a `ConfigurationError` (or a
    ``TypeError``: a misspelt option, a store that is none) raised while a server builds the stack
    makes the server refuse to start (see the module docstring).

    The ``__init__`` of every subclass is decorated too (the subclass's code after
    ``super().__init__()`` must not run on a replaced instance), and only the outermost decorated
    constructor acts: an inner one re-raises, so a subclass that catches the error still gets it.
    """
    return cast(Callable[P, None], _SurfacingInit(_surfacing(init)))


#: How many decorated constructors are running in this context (the outermost one acts).
_constructing: ContextVar[int] = ContextVar("servletsession_constructing", default=0)


def _surfacing(init: Callable[P, None]) -> Callable[P, None]:
    @functools.wraps(init)
    def surfacing_init(*args: P.args, **kwargs: P.kwargs) -> None:
        outer = _constructing.get()
        token = _constructing.set(outer + 1)
        try:
            init(*args, **kwargs)
        except (ConfigurationError, TypeError) as exc:  # TypeError: an option's name or type
            if (
                outer
                or not _constructs_it_whole(args[0])
                or not _built_lazily_while_serving(sys._getframe(1))
            ):
                raise
            app = args[1] if len(args) > 1 else kwargs.get("app")
            if not _become_misconfigured(args[0], app, exc):
                raise
        finally:
            _constructing.reset(token)

    surfacing_init._surfacing = True  # type: ignore[attr-defined]
    return surfacing_init


class _SurfacingInit:
    """A decorated ``__init__`` that, once in its class, decorates the ``__init__`` of each
    subclass as it is defined (an ``__init_subclass__`` hook installed by ``__set_name__``), so a
    subclass needs nothing of its own."""

    def __init__(self, function: Callable[..., None]) -> None:
        self.function = function
        functools.update_wrapper(self, function)

    def __set_name__(self, owner: type[Any], name: str) -> None:
        hooked = owner.__dict__.get("__init_subclass__")

        def decorate_subclass_init(cls: type[Any], /, **kwargs: Any) -> None:
            if hooked is not None:
                hooked.__get__(None, cls)(**kwargs)
            else:
                super(owner, cls).__init_subclass__(**kwargs)
            init = cls.__dict__.get("__init__")
            if inspect.isfunction(init) and not getattr(init, "_surfacing", False):
                setattr(cls, "__init__", _surfacing(init))  # noqa: B010

        setattr(owner, "__init_subclass__", classmethod(decorate_subclass_init))  # noqa: B010

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., None]:
        if instance is None:
            return self.function
        return cast(Callable[..., None], self.function.__get__(instance, owner))

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.function(*args, **kwargs)


def _constructs_it_whole(instance: object) -> bool:
    """Whether the instance's own ``__init__`` is a surfacing one, so no constructor of its class
    is still to run after this one returns. A subclass whose own ``__init_subclass__`` skips
    ``super()`` leaves the ``__init__`` of the classes below it undecorated; replacing the instance
    would run their code after ``super().__init__()`` on a `MisconfiguredMiddleware`."""
    return getattr(type(instance).__init__, "_surfacing", False) is True


def _built_lazily_while_serving(frame: Any) -> bool:
    """Whether the constructor was called by a framework's ``build_middleware_stack`` (through
    any chain of ``__init__`` calls) while an event loop runs: a server is starting the app."""
    for _ in range(_SEARCH_DEPTH):
        if frame is None:
            return False
        name = frame.f_code.co_name
        if name == _BUILDER:
            return _event_loop_running()
        if name != "__init__":  # an outer decorated constructor (surfacing_init) reports it
            return False
        frame = frame.f_back
    return False


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        trio = sys.modules.get("trio")
        if trio is None:
            return False
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return False
    return True


def _become_misconfigured(instance: object, app: object, error: Exception) -> bool:
    what = type(instance).__name__
    try:
        object.__setattr__(instance, "__class__", MisconfiguredMiddleware)
    except TypeError:  # a subclass with __slots__: keep the plain error
        return False
    assert isinstance(instance, MisconfiguredMiddleware)
    instance.app = app
    instance.message = (
        f"{what} is misconfigured: {error}. The app cannot serve sessions; fix the option "
        "and restart."
    )
    instance.logged = False
    return True


class MisconfiguredMiddleware:
    """What a middleware whose options failed becomes when a server builds it lazily.

    It never calls the app: a session middleware that cannot work must not let requests through
    without sessions (an app would mistake every visitor for a new one).
    """

    app: Any
    message: str
    logged: bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            message = await receive()
            if message["type"] != "lifespan.startup":
                await send({"type": "lifespan.shutdown.complete"})
                return
            await send({"type": "lifespan.startup.failed", "message": self.message})
            # Then raise, as Starlette's own lifespan does after a failed startup: a server
            # that reported the failure stays quiet, a test client raises it.
            raise ConfigurationError(self.message)
        if not self.logged:
            self.logged = True
            line = f"{self.message} Every request is answered 500 until then."
            # The compat middleware's ``logger=`` (FastSession's) was kept when it failed: its
            # lines, this one too, go there.
            app_logger = getattr(self, "logger", None)
            if app_logger is None or not say(app_logger, logging.ERROR, line):
                logger.error("%s", line)
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1011})
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        body = b"Internal Server Error\n"
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


__all__ = ["MisconfiguredMiddleware", "surface_configuration_errors"]
