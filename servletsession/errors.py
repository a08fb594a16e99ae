"""The exceptions route code and operators can meet."""

from __future__ import annotations


class IllegalStateError(RuntimeError):
    """A session call made in a state that forbids it.

    The Servlet spec's ``IllegalStateException``: any accessor of an invalidated session, creating a
    session or changing its ID once the response has started (the cookie can no longer be sent).
    """


class ConfigurationError(ValueError):
    """An option, or a combination of options, that cannot work; raised at construction."""


class SessionLimitError(RuntimeError):
    """A session was refused by a limit: ``max_active_sessions`` or ``max_sessions_per_principal``
    reached, with policy ``"reject"``.

    The middleware answers the request with ``503 Service Unavailable`` and ``Retry-After``.
    """

    def __init__(self, limit: int, retry_after: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"max_active_sessions={limit} reached; a new session was refused "
            f"(raise the limit, lower max_inactive_interval, or use policy 'evict_lru')"
        )
        self.limit = limit
        self.retry_after = retry_after


class StoreUnavailableError(RuntimeError):
    """The session store could not be reached (or failed mid-operation).

    The middleware answers ``503 Service Unavailable`` with ``Retry-After`` rather than hand out a
    fresh session that would overwrite the real one once the store is back.
    """
