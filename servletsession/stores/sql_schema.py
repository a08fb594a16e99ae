"""``SQLStore``'s schema and engine: two tables under a validated prefix, and an engine set up for
sessions (parameters hidden from errors; SQLite's writers queued; asyncpg without a ping per
checkout).

One row per session (metadata, indexed on its deadline and its principal) and one row per
attribute, so that concurrent requests writing different attributes of one session both persist.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import ConfigurationError
from .serializing import MAX_NAME_LENGTH

__all__ = ["engine_for", "session_tables"]

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


#: Table names are built from the prefix: letters, digits and ``_`` only (they are quoted as well),
#: and short enough that the longest derived name fits PostgreSQL's 63-character identifiers.
_PREFIX = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]{0,43})?")


def _async_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{_DRIVERS.get(scheme, scheme)}{sep}{rest}"


def engine_for(url: str | AsyncEngine) -> AsyncEngine:
    """The engine for ``url`` (or the app's own), with statement parameters (session IDs) kept out
    of every error message and log line."""
    if isinstance(url, AsyncEngine):
        engine = url
    else:
        async_url = _async_url(url)
        # asyncpg: a pooled connection is checked locally instead (see postgres.py), not with a
        # ping that would double a request's round trips.
        ping = make_url(async_url).get_driver_name() != "asyncpg"
        engine = create_async_engine(async_url, pool_pre_ping=ping, hide_parameters=True)
    engine.sync_engine.hide_parameters = True
    if engine.dialect.name == "sqlite":
        _serialize_sqlite_writers(engine)
    return engine


def session_tables(metadata: MetaData, table_prefix: str) -> tuple[Table, Table]:
    """The sessions table and the attributes table, named from ``table_prefix``."""
    if not _PREFIX.fullmatch(table_prefix):
        raise ConfigurationError(
            f"table_prefix {table_prefix!r}: use letters, digits and '_' (not starting with a "
            "digit), at most 44 characters, e.g. 'servletsession_'"
        )
    sessions = Table(
        f"{table_prefix}sessions",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("creation_time", Double, nullable=False),
        Column("last_access", Double, nullable=False),
        Column("expires_at", Double, nullable=True),  # NULL: never idles out
        Column("max_inactive_interval", Integer, nullable=False),
        Column("absolute_timeout", Double, nullable=True),
        Column("principal", String(255), nullable=True),
        Column("lock_token", String(64), nullable=True),
        Column("lock_until", Double, nullable=True),
        Index(f"{table_prefix}sessions_expires_at", "expires_at"),
        Index(f"{table_prefix}sessions_principal", "principal"),
    )
    attributes = Table(
        f"{table_prefix}attributes",
        metadata,
        Column(
            "session_id",
            String(64),
            ForeignKey(sessions.c.id, ondelete="CASCADE", onupdate="CASCADE"),
            primary_key=True,
        ),
        Column("name", String(MAX_NAME_LENGTH), primary_key=True),
        Column("value", Text, nullable=True),  # NULL: removed (PostgreSQL's tombstone)
    )
    return sessions, attributes


def _sqlite_read_only(engine: AsyncEngine) -> bool:
    """Whether ``engine`` opens its SQLite file read-only (a ``file:…?mode=ro&uri=true`` URL)."""
    mode = engine.url.query.get("mode")
    return (mode if isinstance(mode, str) else "".join(mode or ())) == "ro"


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """SQLite: foreign keys on, WAL, and ``BEGIN IMMEDIATE`` so that concurrent writers queue
    (busy timeout) instead of failing when two transactions both try to upgrade to writing.

    A read-only connection (``mode=ro``) leaves the file as it is: no switch to WAL, and plain
    ``BEGIN`` (it never writes)."""
    read_only = _sqlite_read_only(engine)

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not read_only:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")  # waits for a lock; writes nothing
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
