"""FastSession's ``logger=``: an app's session log lines go to the logger the app gave.

servletsession logs through one library logger, ``logging.getLogger("servletsession")``, shared
by every app in the process. While a request, websocket or lifespan of an app whose
``FastSessionMiddleware`` got ``logger=`` runs, a context variable names that logger; a filter on
the library logger sends the lines logged in that context — the middleware's, the stores', the
listeners' and those of tasks started from there, such as the reaper — to it instead. Lines
logged in no such context go to the library logger as usual.

The library logger's level still decides first which lines exist (WARNING by default, Python's
``logging`` default): set ``logging.getLogger("servletsession").setLevel(...)`` to see more.

The given logger may be a ``logging.Logger`` (its level, filters and handlers apply) or, as
FastSession allowed, any object with ``debug``/``info`` methods (warnings and errors fall back to
``info`` when it has no method of that level's name).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

LIBRARY = logging.getLogger("servletsession")

#: The logger of the app whose request (or lifespan) is running in this context.
app_logger: ContextVar[object | None] = ContextVar("servletsession_app_logger", default=None)


def say(target: object, level: int, message: str) -> bool:
    """Log ``message`` at ``level`` to a ``logging.Logger`` (or ``LoggerAdapter``) or a
    FastSession-style logger; ``False`` if ``target`` has no method to take it."""
    if isinstance(target, logging.Logger | logging.LoggerAdapter):
        target.log(level, "%s", message)
        return True
    method = getattr(target, logging.getLevelName(level).lower(), None)
    if not callable(method):
        method = getattr(target, "info", None)
    if not callable(method):
        return False
    method(message)
    return True


#: Set while a record is being handed to an app's logger: a logger that leads back to the library
#: logger (a ``LoggerAdapter`` over it, an object whose methods log there) gets its line logged
#: there as usual instead of being diverted again, endlessly.
_diverting: ContextVar[bool] = ContextVar("servletsession_log_diverting", default=False)


class _ToAppLogger(logging.Filter):
    """Diverts the library's records to the current app's logger, if it gave one."""

    def filter(self, record: logging.LogRecord) -> bool:
        target = app_logger.get()
        if target is None or _unwrapped(target) is LIBRARY or _diverting.get():
            return True
        token = _diverting.set(True)
        try:
            if isinstance(target, logging.Logger):
                if target.isEnabledFor(record.levelno):
                    target.handle(record)
            else:
                text = record.getMessage()
                if record.exc_info:
                    text = f"{text}\n{logging.Formatter().formatException(record.exc_info)}"
                say(target, record.levelno, text)
        finally:
            _diverting.reset(token)
        return False


def _unwrapped(target: object) -> object:
    """The logger under any ``LoggerAdapter`` layers: one over the library logger diverts
    nothing (its lines are the library's already)."""
    while isinstance(target, logging.LoggerAdapter):
        target = target.logger
    return target


_bridge = _ToAppLogger()


def install() -> None:
    """Put the filter on the library logger (once per process)."""
    if _bridge not in LIBRARY.filters:
        LIBRARY.addFilter(_bridge)


__all__ = ["app_logger", "install", "say"]
