"""Opening an app's store from the command line: nothing created, every failure one line.

The CLI drives the app's own store classes through a
[`SessionManager`][servletsession.SessionManager], so it reads and ends sessions exactly as the app
does. What an operator's command needs on top is here: it must never create what a typo names (no
SQLite file, no tables, no Redis keys), and a store it cannot use — unreachable, refusing the
credentials, without the app's tables — must be said in one line (`CommandError`), never a
traceback. (A Redis prefix that holds nothing cannot be told from an empty store: it gets a warning
when other prefixes hold sessions.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import ConfigurationError, StoreUnavailableError
from .manager import SessionManager
from .stores import store_from_url
from .stores.faults import describe, sql_unavailable

if TYPE_CHECKING:
    from .stores.redis import RedisStore
    from .stores.sql import SQLStore

__all__ = ["CommandError", "open_manager", "safe_url", "store_kind"]

_KINDS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
}
_HINT_SECONDS = 2.0  # at most this long looking for the prefixes a Redis database holds


class CommandError(Exception):
    """A failure the CLI reports as one line on stderr, exiting with ``code``: 2 when the command
    line is wrong, 1 when the store cannot be used or has no such session."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def store_kind(url: str) -> str:
    """``"sqlite"``, ``"postgresql"`` or ``"redis"`` for a store URL the CLI can open."""
    head, sep, _ = url.partition("://")
    scheme = head.lower().split("+")[0]
    if scheme == "memory":
        raise CommandError(
            "the memory store lives inside the app's process; "
            "give a redis://, postgresql:// or sqlite:/// URL",
            code=2,
        )
    if not sep or scheme not in _KINDS:
        raise CommandError(
            f"--store {safe_url(url)!r} is not one of redis://…, redis+cluster://…, "
            "postgresql://… or sqlite:///…",
            code=2,
        )
    return _KINDS[scheme]


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url.split("@")[-1]


async def open_manager(
    url: str, prefix: str | None, warn: Callable[[str], None], *, read_only: bool = False
) -> SessionManager:
    """A manager on the store at ``url``, checked usable: connected, credentials accepted, the
    app's tables there. Creates nothing. ``warn`` hears of a Redis prefix holding no session
    while others hold some (Redis keeps no trace of an empty store: it may be right).
    ``read_only``: a SQLite file is opened read-only, and left byte for byte as it was (not
    switched to WAL)."""
    kind = store_kind(url)
    options: dict[str, Any] = {}
    if kind == "redis":
        if prefix is not None:
            options["prefix"] = prefix
    else:
        options["create_tables"] = False
        if prefix is not None:
            options["table_prefix"] = prefix
    opened = url
    if kind == "sqlite":
        path = _check_sqlite_file(url)
        if read_only:
            opened = _read_only_sqlite_url(url, path)
    try:
        store = store_from_url(opened, **options)
    except ImportError as exc:
        raise CommandError(f"{exc} (pip install 'servletsession[cli]')", code=2) from exc
    except (ConfigurationError, ValueError) as exc:
        raise CommandError(str(exc), code=2) from exc
    manager = SessionManager(store)
    try:
        if kind == "redis":
            await _check_redis(store, url, warn)  # type: ignore[arg-type]
        else:
            await _check_tables(store, safe_url(url))  # type: ignore[arg-type]
    except BaseException:
        await manager.close()
        raise
    return manager


def _check_sqlite_file(url: str) -> str:
    """The path of the existing SQLite file ``url`` names."""
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception as exc:
        raise CommandError(f"--store {url!r} is not a valid SQLite URL ({exc})", code=2) from exc
    if not database or database == ":memory:" or "mode=memory" in url:
        raise CommandError(
            "an in-memory SQLite database lives inside its process; give the path of the app's "
            "database file, e.g. sqlite:///sessions.db",
            code=2,
        )
    path = database.removeprefix("file:").split("?")[0]
    if not os.path.isfile(path):
        raise CommandError(
            f"no SQLite database at {os.path.abspath(path)}: check the path "
            "(sqlite:///relative.db, sqlite:////absolute.db); nothing was created"
        )
    return path


def _read_only_sqlite_url(url: str, path: str) -> str:
    """``url`` opening its file read-only: a SQLite URI ``file:…?mode=ro`` (``uri=true``)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if not (database.startswith("file:") and parsed.query.get("uri") in ("true", "1")):
        # the path, %-escaped as a SQLite URI wants it (``?``, ``#``, ``%`` in a file name)
        database = "file:" + quote(os.path.abspath(path))
    read_only = parsed.set(database=database).update_query_dict({"uri": "true", "mode": "ro"})
    return read_only.render_as_string(hide_password=False)


async def _check_tables(store: SQLStore, where: str) -> None:
    from sqlalchemy import inspect

    try:
        async with store.engine.connect() as conn:
            names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    except Exception as exc:
        if sql_unavailable(exc):
            raise CommandError(f"cannot reach the database at {where}: {describe(exc)}") from exc
        raise CommandError(f"the database at {where} refused: {describe(exc)}") from exc
    wanted = [store.sessions.name, store.attributes.name]
    missing = [name for name in wanted if name not in names]
    if not missing:
        return
    prefixes = sorted(
        name.removesuffix("sessions")
        for name in names
        if name.endswith("sessions") and name.removesuffix("sessions") + "attributes" in names
    )
    hint = (
        "; it has the tables of --prefix " + ", ".join(repr(p) for p in prefixes)
        if prefixes
        else "; check --prefix (the app creates its tables on its first use of the store)"
    )
    raise CommandError(f"no table {missing[0]!r} in the database at {where}{hint}")


async def _check_redis(store: RedisStore, url: str, warn: Callable[[str], None]) -> None:
    where = safe_url(url)
    try:
        async with store.answering():
            await store.client.ping()
        count = await store.count()
    except StoreUnavailableError as exc:
        raise CommandError(f"cannot reach Redis at {where}: {exc}") from exc
    except Exception as exc:
        raise CommandError(f"Redis at {where} refused: {describe(exc)}") from exc
    if count:
        return
    # No session under this prefix: an empty store, or a prefix no app uses. Redis keeps no
    # trace of a prefix whose sessions all ended, so this cannot be an error; sessions under
    # other prefixes make it worth a warning (a short, bounded look).
    others = sorted(await _prefixes_in_use(store) - {store.prefix})
    if others:
        shown = ", ".join(repr(p) for p in others[:5]) + (", …" if len(others) > 5 else "")
        warn(
            f"no session under prefix {store.prefix!r} in Redis at {where}, which holds "
            f"sessions under {shown}: is --prefix the app's?"
        )


async def _prefixes_in_use(store: RedisStore) -> set[str]:
    """The prefixes of the servletsession deadline indexes (``<prefix>{<tag>}:expiries``) the
    database holds, as many as a short scan finds."""
    found: set[str] = set()
    with contextlib.suppress(Exception):  # a hint only: never fail the command for it
        async with asyncio.timeout(_HINT_SECONDS):
            async for raw in store.client.scan_iter(match="*}:expiries", count=1000):
                key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                found.add(key[: key.rfind("{")])
                if len(found) >= 10:
                    break
    return found
