"""Which driver errors mean "the session store cannot answer right now".

Why this module exists: the library answers a request whose store is down with HTTP 503 and
``Retry-After`` — a state the client can wait out — and keeps 500 for bugs. That only works if
every connection-level failure of every driver is recognised as such, and the drivers report them
in many shapes that a plain ``except OperationalError`` misses:

* SQLAlchemy's asyncpg dialect translates asyncpg's errors into an emulated DB-API hierarchy in
  which most server errors become the base ``Error``, so "sorry, too many clients already"
  (SQLSTATE 53300) and "the database system is shutting down" (57P03) arrive as a plain
  ``sqlalchemy.exc.DBAPIError``; only the SQLSTATE on the driver error (``.orig.sqlstate``, or the
  asyncpg exception behind it) tells them apart from a programming error.
* A pool that runs out of connections raises ``sqlalchemy.exc.TimeoutError``, which is not the
  builtin ``TimeoutError``; a refused TCP connect escapes SQLAlchemy as a bare ``OSError``.
* SQLite reports both "database is locked" and "no such table" as ``OperationalError``; its
  result code says which is which.
* redis-py reports a failover as ``ReadOnlyError`` (a ``ResponseError``), a restart as
  ``BusyLoadingError``, and errors raised inside a Lua script as a ``ResponseError`` whose message
  carries the original error code.

`sql_unavailable` and `redis_unavailable` answer the question for each driver family,
and `describe` gives a one-line reason for the log that never contains SQL text or bound
parameters (session IDs are parameters). Neither SQLAlchemy, asyncpg nor redis is imported at
import time: each classifier imports its driver lazily and works without the others installed.
"""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import Iterable, Iterator
from types import ModuleType

__all__ = ["describe", "redis_failure", "redis_unavailable", "sql_failure", "sql_unavailable"]

# --- SQL ---------------------------------------------------------------------------------------

#: SQLSTATE classes (first two characters) that mean "not now": 08 connection exception,
#: 53 insufficient resources (53300 too many connections, 53100 disk full, 53200 out of memory),
#: 58 system error (I/O error and the like).
_SQLSTATE_CLASSES = frozenset({"08", "53", "58"})

#: Single SQLSTATEs that mean "not now, try again later".
_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: terminating connection due to administrator command
        "57P02",  # crash_shutdown: terminating connection because of crash of another process
        "57P03",  # cannot_connect_now: the database system is starting up / shutting down
        "57P05",  # idle_session_timeout: the server closed an idle session
        "57014",  # query_canceled: statement_timeout, or cancelled by an operator
        "40000",  # transaction_rollback
        "40001",  # serialization_failure
        "40003",  # statement_completion_unknown
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available: lock_timeout
        "25006",  # read_only_sql_transaction: a standby (e.g. the old primary after failover)
    }
)

# SQLite primary result codes that mean "not now": BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN,
# PROTOCOL. (SQLITE_ERROR covers "no such table" and syntax errors: a bug, not an outage.)
_SQLITE_CODES = frozenset({5, 6, 7, 10, 13, 14, 15})
_SQLITE_MESSAGES = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "unable to open database",
    "disk i/o error",
    "database or disk is full",
    "out of memory",
    "locking protocol",
    "no active connection",  # aiosqlite, translated by SQLAlchemy's aiosqlite dialect
    "connection closed",
)

# asyncpg raises InterfaceError both for a lost connection and for client-side misuse
# ("another operation is in progress", wrong argument count...); only the former is an outage.
_ASYNCPG_CLOSED = re.compile(
    r"connection (?:is|was|has been) closed|underlying connection is closed|connection_lost",
    re.IGNORECASE,
)


def sql_unavailable(exc: BaseException) -> bool:
    """``True`` if ``exc``, raised by SQLAlchemy or a driver under it, means the database cannot
    answer right now (connection refused or lost, server starting up or shutting down, too many
    connections, pool exhausted, locked, a transaction to retry...); ``False`` for errors that
    retrying will not fix (a missing table, bad SQL, a constraint violation, bad credentials).

    The whole chain is examined: ``.orig`` (SQLAlchemy's wrapped driver error), ``__cause__``
    and ``__context__``. The most specific evidence wins: a driver error with a SQLSTATE or an
    SQLite result code decides over the SQLAlchemy class wrapped around it.
    """
    chain = list(_chain(exc))
    # 1. SQLAlchemy's own verdict that the connection is gone.
    if any(getattr(link, "connection_invalidated", False) is True for link in chain):
        return True
    # 2. The driver's own account: a SQLSTATE, an SQLite result code, an asyncpg client error.
    for link in chain:
        verdict = _driver_verdict(link)
        if verdict is not None:
            return verdict
    # 3. What is left: SQLAlchemy's classes and plain socket errors.
    sa_unavailable = _sqlalchemy_unavailable_classes()
    return any(isinstance(link, (*sa_unavailable, *_SOCKET_ERRORS)) for link in chain)


def _driver_verdict(link: BaseException) -> bool | None:
    """A verdict from a driver-level error, or ``None`` if ``link`` has nothing to say."""
    if _module(link).startswith("sqlalchemy"):
        return None  # SQLAlchemy's wrappers copy the driver's attributes: let the driver decide
    sqlstate = _sqlstate(link)
    if sqlstate is not None:
        return sqlstate[:2] in _SQLSTATE_CLASSES or sqlstate in _SQLSTATES
    if _module(link).startswith("sqlite3"):
        return _sqlite_unavailable(link)
    if _module(link).startswith("asyncpg"):
        return _asyncpg_unavailable(link)
    return None


def _sqlstate(link: BaseException) -> str | None:
    # asyncpg: .sqlstate; psycopg 3: .sqlstate; psycopg2: .pgcode.
    for name in ("sqlstate", "pgcode"):
        value = getattr(link, name, None)
        if isinstance(value, str) and len(value) == 5:
            return value.upper()
    return None


def _sqlite_unavailable(link: BaseException) -> bool:
    code = getattr(link, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_CODES
    message = str(link).lower()
    return any(fragment in message for fragment in _SQLITE_MESSAGES)


def _asyncpg_unavailable(link: BaseException) -> bool | None:
    # By class name along the MRO (asyncpg ships no type information, and need not be imported).
    names = {cls.__name__ for cls in type(link).__mro__ if _module_of(cls).startswith("asyncpg")}
    if names & {
        "ClientConfigurationError",
        "UnsupportedClientFeatureError",
        "UnsupportedServerFeatureError",
        "OutdatedSchemaCacheError",
    }:
        return False
    if names & {"ProtocolError", "TargetServerAttributeNotMatched"}:
        return True  # a garbled stream; no server in the list is (yet) the primary
    if "InterfaceError" in names:
        return bool(_ASYNCPG_CLOSED.search(str(link)))
    if "InternalClientError" in names:
        return False
    return None


def _sqlalchemy_unavailable_classes() -> tuple[type[BaseException], ...]:
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover - only a driver error can reach us then
        return ()
    return (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, sa.DisconnectionError)


# --- Redis -------------------------------------------------------------------------------------

#: Error codes a Redis server answers with when it cannot serve the command right now.
_REDIS_CODES = (
    "READONLY",  # a replica (the old master after a failover)
    "LOADING",  # loading its dataset after a restart
    "MASTERDOWN",  # a replica that lost its master and does not serve stale data
    "CLUSTERDOWN",  # a slot is not served
    "TRYAGAIN",  # a slot is being resharded
    "NOREPLICAS",  # min-replicas-to-write not met
    "BUSY",  # a script or function is running past busy-reply-threshold
    "MISCONF",  # the last RDB save failed and stop-writes-on-bgsave-error is on
    "OOM",  # maxmemory reached under noeviction
    "MOVED",  # a cluster redirect that reached us
    "ASK",
)
# The code opens the message, or follows "-" inside a script error ("...: -READONLY You can't...").
_REDIS_CODE = re.compile(r"(?:^|[:\s]-)(" + "|".join(_REDIS_CODES) + r")\b")


def redis_unavailable(exc: BaseException) -> bool:
    """``True`` if ``exc``, raised by redis-py, means the server cannot answer right now
    (connection refused, lost or timed out, loading, a read-only replica after a failover, a
    cluster that is down or resharding, out of memory...); ``False`` for errors that retrying will
    not fix (``WRONGTYPE``, a script bug, bad credentials, bad input).

    Authentication errors (``AuthenticationError``, ``AuthorizationError``) are
    ``ConnectionError`` subclasses in redis-py but count as configuration errors here, as a wrong
    password does for PostgreSQL.
    """
    for link in _chain(exc):
        verdict = _redis_verdict(link)
        if verdict is not None:
            return verdict
    return False


def _redis_verdict(link: BaseException) -> bool | None:
    try:
        from redis import exceptions as rx
    except ImportError:  # pragma: no cover - only the socket errors can reach us then
        return True if isinstance(link, _SOCKET_ERRORS) else None
    if isinstance(link, _redis_auth_errors(rx)):
        return False
    if isinstance(
        link,
        (
            rx.ConnectionError,  # includes BusyLoadingError, MaxConnectionsError
            rx.TimeoutError,
            rx.ReadOnlyError,
            rx.ClusterError,  # includes ClusterDownError, MasterDownError
            rx.TryAgainError,
            rx.AskError,  # includes MovedError
            rx.OutOfMemoryError,
            rx.SlotNotCoveredError,
            rx.InvalidResponse,  # the reply stream is garbled: the connection is dropped
        ),
    ):
        return True
    if isinstance(link, rx.ResponseError):
        status = getattr(link, "status_code", None)
        if isinstance(status, str) and status in _REDIS_CODES:
            return True
        return bool(_REDIS_CODE.search(str(link)))
    if isinstance(link, (rx.RedisError, rx.RedisClusterException)):
        return False
    if isinstance(link, _SOCKET_ERRORS):
        return True
    return None


def _redis_auth_errors(rx: ModuleType) -> tuple[type[BaseException], ...]:
    names = ("AuthenticationError", "AuthorizationError")  # the latter is newer than redis 5.0
    return tuple(getattr(rx, name) for name in names if hasattr(rx, name))


# --- Both ----------------------------------------------------------------------------------------

_SOCKET_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, asyncio.TimeoutError)

_MAX_DESCRIPTION = 300
_SA_NOISE = re.compile(r"\s*\((?:Background on this error at|SQL parameters hidden)[^)]*\)")
_SQL_BLOCK = re.compile(r"\[(?:SQL|parameters)\b.*", re.DOTALL)
_ASYNCPG_ARGUMENT = re.compile(r"(invalid input for query argument \$\d+:).*")
# Anything shaped like a session ID (43 URL-safe characters) or a token of that kind, whichever
# error echoes it: Redis's "unknown command ... with args beginning with: '<key>'", for one.
_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])")
# redis-py prefixes an error inside a pipeline with the command and its arguments (keys hold
# session IDs): 'Command # 1 (SET key value) of pipeline caused error: ("<message>",)'.
_REDIS_PIPELINE = re.compile(r"Command # (\d+) \(.*?\) of pipeline caused error: (.*)", re.DOTALL)


def describe(exc: BaseException) -> str:
    """One line for the log: the class of the innermost driver error, its SQLSTATE if it has
    one, and the first line of its message — never the SQL statement nor a bound parameter
    (SQLAlchemy's ``str()`` of a ``DBAPIError`` has both), e.g.
    ``TooManyConnectionsError: sorry, too many clients already (SQLSTATE 53300)``.

    Bound parameter values that the driver's message repeats (asyncpg's "invalid input for
    query argument $1: '...'", PostgreSQL's 'invalid input syntax for type integer: "..."') become
    ``<parameter>``; the command and arguments redis-py puts in a pipeline's error are dropped;
    and any token of 32 or more URL-safe characters (a session ID, a key holding one, a script's
    SHA) becomes ``<redacted>``."""
    driver = _driver_error(exc)
    message = _without_pipeline_command(str(driver))
    message = _SQL_BLOCK.sub("", message)
    message = _SA_NOISE.sub("", message)
    message = next((line.strip() for line in message.splitlines() if line.strip()), "")
    message = _ASYNCPG_ARGUMENT.sub(r"\1 <parameter>", message)
    for secret in sorted(_parameters(exc), key=len, reverse=True):
        message = message.replace(secret, "<parameter>")
    message = _TOKEN.sub("<redacted>", message)
    if len(message) > _MAX_DESCRIPTION:
        message = message[: _MAX_DESCRIPTION - 1] + "…"
    sqlstate = _sqlstate(driver)
    name = type(driver).__name__
    text = f"{name}: {message}" if message else name
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text


def _without_pipeline_command(message: str) -> str:
    match = _REDIS_PIPELINE.match(message)
    if match is None:
        return message
    number, rest = match.groups()
    try:
        args = ast.literal_eval(rest)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        args = None
    inner = args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else rest
    return f"{inner} (pipeline command #{number})".strip()


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's exception under SQLAlchemy's wrappers: ``StatementError.orig``, then the
    driver exception behind an emulated DB-API error (``.orig`` in SQLAlchemy 2.1, the
    ``__cause__`` in 2.0). Anything not from SQLAlchemy is returned as it is."""
    current = exc
    for _ in range(10):
        if not _module(current).startswith("sqlalchemy"):
            break
        inner = getattr(current, "orig", None)
        if not isinstance(inner, BaseException):
            inner = current.__cause__
        if inner is None:
            break
        current = inner
    return current


def _parameters(exc: BaseException) -> set[str]:
    """Every bound parameter value (as text) found on SQLAlchemy errors in the chain, that is
    long enough to be worth hiding (and to replace without mangling the message)."""
    found: set[str] = set()

    def collect(value: object, depth: int = 0) -> None:
        if depth > 4:
            return
        if isinstance(value, str):
            if len(value) >= 4:
                found.add(value)
                found.add(repr(value))
        elif isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if len(raw) >= 4:
                found.add(repr(raw))
                found.add(raw.decode("utf-8", "replace"))
        elif isinstance(value, dict):
            for item in value.values():
                collect(item, depth + 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                collect(item, depth + 1)

    for link in _chain(exc):
        collect(getattr(link, "params", None))
    return found


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it: ``.orig``, ``__cause__``, ``__context__``,
    depth first, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        behind: Iterable[object] = (
            current.__context__,
            current.__cause__,
            getattr(current, "orig", None),
        )
        stack.extend(link for link in behind if isinstance(link, BaseException))


def _module(exc: BaseException) -> str:
    return _module_of(type(exc))


def _module_of(cls: type) -> str:
    return getattr(cls, "__module__", None) or ""


def sql_failure(exc: Exception) -> Exception:
    """What a SQL store raises for ``exc``: ``StoreUnavailableError`` (HTTP 503) when the store
    cannot answer now, else ``exc`` itself."""
    from ..errors import StoreUnavailableError  # (this module also loads on its own: see above)

    if isinstance(exc, StoreUnavailableError) or not sql_unavailable(exc):
        return exc
    return StoreUnavailableError(f"SQL session store unavailable: {describe(exc)}")


def redis_failure(exc: Exception, timeout: float | None) -> Exception:
    """What ``RedisStore`` raises for ``exc``: ``StoreUnavailableError`` when Redis cannot answer
    now or did not within ``timeout`` (an ``asyncio.timeout``), else ``exc`` itself."""
    from ..errors import StoreUnavailableError

    if isinstance(exc, StoreUnavailableError):
        return exc
    if isinstance(exc, TimeoutError):
        return StoreUnavailableError(f"Redis session store did not answer within {timeout} s")
    if redis_unavailable(exc):
        return StoreUnavailableError(f"Redis session store unavailable: {describe(exc)}")
    return exc
