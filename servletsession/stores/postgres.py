"""PostgreSQL's request path: a request's load, save and touch as one statement each, sent by
asyncpg directly — a prepared statement on a connection of the SQLAlchemy engine's pool, in
autocommit.

Why: through SQLAlchemy each of these was a transaction (``BEGIN``, a ``SELECT``, an ``UPDATE``,
for a save a ``SELECT … FOR UPDATE`` and the writes, ``COMMIT``): four to six round trips, each
with SQLAlchemy's execution layer around it, for a read-only request 13 and for a writing one 36
times the cost of one round trip. Here every operation is a single statement whose
data-modifying CTEs read, check and write; PostgreSQL runs one statement atomically, so no
transaction block (and no ``BEGIN``/``COMMIT``) is needed. The deadline rule of
`SharedStore` is written in SQL, so it is applied to the row as
it is when the statement runs, not as an earlier read saw it.

The connection is borrowed from the engine's pool, so the pool's size, timeout and ``dispose()``
and the tables SQLAlchemy creates are the store's one truth; the rarer operations stay on
SQLAlchemy (``sql.py``). Every value is a bound parameter; table names are quoted by SQLAlchemy's
identifier preparer. Errors leave as `StoreUnavailableError` (an outage: HTTP 503) or with
`describe`'s one line, never with a parameter (a session ID).
"""

# S608: the statements below are assembled from constants and from table names that SQLAlchemy's
# identifier preparer quoted (the prefix is validated, too); every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event
from sqlalchemy.exc import DisconnectionError

from .base import LockLostError, SessionWrite, StoredSession
from .faults import describe, sql_failure

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .base import SharedStore

__all__ = ["PostgresPath", "check_liveness_on_checkout"]

_META = ("s.creation_time, s.last_access, s.expires_at, s.max_inactive_interval, "
         "s.absolute_timeout, s.principal")  # fmt: skip
_ALIVE = "(s.expires_at IS NULL OR s.expires_at > $2::float8)"


def _deadline(interval: str, absolute: str, *, force: bool = False) -> str:
    """``SharedStore.next_deadline`` in SQL for the row ``s``, active at ``$2`` with
    ``save_period`` ``$3``; NULL is "never". Where the rule keeps the stored deadline, the
    expression is that deadline. The arithmetic is the Python rule's, in the same order and in
    float8, so both give the very same deadlines."""
    cap = f"(s.creation_time + {absolute})"  # NULL without an absolute timeout; LEAST skips NULL
    fresh = f"LEAST($2::float8 + {interval} + LEAST($3::float8, 0.1::float8 * {interval}), {cap})"
    keep = "" if force else (
        f"WHEN s.expires_at IS NULL OR s.expires_at >= $2::float8 + {interval} THEN s.expires_at "
    )  # fmt: skip
    return f"CASE WHEN {interval} <= 0 THEN {cap} {keep}ELSE {fresh} END"


_KEEP_OR_RENEW = _deadline("s.max_inactive_interval", "s.absolute_timeout")

#: The access a load records: ``$2``. When that is all it writes (the deadline is kept, as on
#: most requests), its commit does not wait for the WAL flush (``synchronous_commit`` off for
#: this statement alone): a flush costs several times the statement, and a server crash can lose
#: only the last such records (three ``wal_writer_delay``, 0.6 s by default) — a
#: ``last_accessed_time`` a little older, never an attribute, never a deadline (a renewal, and
#: every save, commits as the server is configured).
_ACCESS = (
    f"CASE WHEN ({_KEEP_OR_RENEW}) IS DISTINCT FROM s.expires_at THEN $2::float8 "
    "ELSE $2::float8 + 0 * length(set_config('synchronous_commit', 'off', true)) END"
)


def check_liveness_on_checkout(engine: AsyncEngine) -> None:
    """Replace ``pool_pre_ping`` (a round trip per checkout) with a local test: a pooled asyncpg
    connection whose server has closed it (a restart, ``pg_terminate_backend``, an idle timeout)
    knows it, and is swapped for a fresh one before it is handed out (SQLAlchemy's documented
    pessimistic-disconnect hook: ``DisconnectionError`` raised in ``checkout``)."""

    if not event.contains(engine.sync_engine, "checkout", _refuse_closed):  # one per engine
        event.listen(engine.sync_engine, "checkout", _refuse_closed)


def _refuse_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    closed = getattr(getattr(dbapi_connection, "driver_connection", None), "is_closed", None)
    if closed is not None and closed():
        raise DisconnectionError("the server closed this pooled connection")


class PostgresPath:
    """The statements of ``load``, ``save``, ``touch`` and ``create`` for one pair of tables,
    and the one way they are sent."""

    def __init__(self, engine: AsyncEngine, sessions: Table, attributes: Table) -> None:
        self.engine = engine
        quote = engine.dialect.identifier_preparer.format_table
        self._s, self._a = quote(sessions), quote(attributes)
        s, a = self._s, self._a
        touched = (
            f"WITH touched AS (UPDATE {s} AS s SET last_access = {_ACCESS}, "
            f"expires_at = {_KEEP_OR_RENEW} WHERE s.id = $1 AND {_ALIVE} RETURNING s.expires_at) "
        )
        flags = "EXISTS (SELECT FROM touched), (SELECT expires_at FROM touched)"
        join = f" LEFT JOIN {a} AS a ON a.session_id = s.id"
        self._load = {  # (touch, attributes) -> statement
            (True, True): f"{touched}SELECT {_META}, {flags}, a.name, a.value FROM {s} AS s{join}",
            (True, False): f"{touched}SELECT {_META}, {flags} FROM {s} AS s",
            (False, True): f"SELECT {_META}, false, NULL, a.name, a.value FROM {s} AS s{join}",
            (False, False): f"SELECT {_META}, false, NULL FROM {s} AS s",
        }
        for key, statement in self._load.items():
            self._load[key] = f"{statement} WHERE s.id = $1"
        self._touch = (
            f"WITH touched AS (UPDATE {s} AS s SET expires_at = {_KEEP_OR_RENEW} "
            f"WHERE s.id = $1 AND {_ALIVE} AND ({_KEEP_OR_RENEW}) IS DISTINCT FROM s.expires_at "
            f"RETURNING s.expires_at) "
            f"SELECT s.expires_at, {flags} FROM {s} AS s WHERE s.id = $1"
        )
        self._saves: dict[tuple[bool, bool, bool, bool], str] = {}

    # --- the operations ------------------------------------------------------------------------

    async def load(
        self, store: SharedStore, session_id: str, now: float, *, touch: bool, attributes: bool
    ) -> StoredSession | None:
        """One statement: the session as it was (its previous last access), its attributes,
        and, if ``touch`` and it is alive, this access recorded and its deadline renewed by the
        rule; an expired session is returned untouched (the manager claims it)."""
        args = (session_id, now, store.save_period) if touch else (session_id,)
        rows = await self._fetch(self._load[touch, attributes], *args)
        if not rows:
            return None
        first = rows[0]
        stored = StoredSession(
            creation_time=first[0],
            last_access=first[1],
            expires_at=_deadline_of(first[7] if first[6] else first[2]),
            max_inactive_interval=first[3],
            absolute_timeout=first[4],
            principal=first[5],
        )
        if attributes:
            stored.attributes = {row[8]: row[9].encode() for row in rows if row[9] is not None}
        return stored

    async def touch(self, store: SharedStore, session_id: str, now: float) -> float | None:
        """One statement: the deadline renewed by the rule if the session is alive and the rule
        asks for it; the stored deadline, or ``None`` if the session is gone."""
        rows = await self._fetch(self._touch, session_id, now, store.save_period)
        if not rows:
            return None
        expires_at, rewritten, target = rows[0]
        return _deadline_of(target if rewritten else expires_at)

    async def create(self, session_id: str, session: StoredSession) -> None:
        """One statement: the session row and its attribute rows."""
        s, a = self._s, self._a
        statement = (
            f"INSERT INTO {s} (id, creation_time, last_access, expires_at, max_inactive_interval, "
            "absolute_timeout, principal) VALUES ($1, $2::float8, $3::float8, $4::float8, "
            "$5::int, $6::float8, $7)"
        )
        args: list[Any] = [
            session_id, session.creation_time, session.last_access,
            None if math.isinf(session.expires_at) else session.expires_at,
            session.max_inactive_interval, session.absolute_timeout, session.principal,
        ]  # fmt: skip
        if session.attributes:
            statement = (
                f"WITH s AS ({statement} RETURNING id) INSERT INTO {a} (session_id, name, value) "
                "SELECT s.id, w.name, w.value FROM s "
                "CROSS JOIN unnest($8::text[], $9::text[]) AS w(name, value)"
            )
            args += [list(session.attributes), [v.decode() for v in session.attributes.values()]]
        await self._fetch(statement, *args)

    async def save(
        self, store: SharedStore, session_id: str, write: SessionWrite, now: float
    ) -> float | None:
        """One statement: the session row locked (it must still exist, and under
        ``locking="session"`` still be locked by ``write.lock_token``); then, all or nothing,
        the metadata this request changed, the deadline by the rule (recomputed from the new
        timeouts if they changed), the attributes written and removed. Returns the stored
        deadline, ``None`` if the session is gone; raises `LockLostError` if the lock
        was taken over (nothing written)."""
        removed = list(dict.fromkeys(write.removed))
        written = {n: v for n, v in write.written.items() if n not in set(removed)}
        key = (write.principal_changed, write.timeouts_changed, bool(written), bool(removed))
        statement = self._saves.get(key)
        if statement is None:
            statement = self._saves[key] = self._save_statement(*key)
        args: list[Any] = [session_id, now, store.save_period, write.lock_token]
        if write.principal_changed:
            args.append(write.principal)
        if write.timeouts_changed:
            args += [write.max_inactive_interval, write.absolute_timeout]
        if written:
            args += [list(written), [v.decode() for v in written.values()]]
        if removed:
            args.append(removed)
        rows = await self._fetch(statement, *args)
        if not rows:
            return None  # ended elsewhere: never resurrected
        held, expires_at, rewritten, target = rows[0]
        if not held:
            raise LockLostError(
                "the session's lock was taken over while this request held it (its lease ran "
                "out); nothing was saved"
            )
        return _deadline_of(target if rewritten else expires_at)

    def _save_statement(self, principal: bool, timeouts: bool, written: bool, removed: bool) -> str:
        s, a = self._s, self._a
        numbers = iter(range(5, 12))
        sets = []
        if principal:
            sets.append(f"principal = ${next(numbers)}")
        if timeouts:
            interval, absolute = f"${next(numbers)}::int", f"${next(numbers)}::float8"
            sets += [f"max_inactive_interval = {interval}", f"absolute_timeout = {absolute}",
                     f"expires_at = {_deadline(interval, absolute, force=True)}"]  # fmt: skip
        else:
            sets.append(f"expires_at = {_KEEP_OR_RENEW}")
        # Metadata is written only where this request changed it, the deadline only when due.
        changed = (
            ""
            if principal or timeouts
            else f" AND ({_KEEP_OR_RENEW}) IS DISTINCT FROM s.expires_at"
        )
        parts = [
            f"old AS (SELECT s.id, s.expires_at, ($4::text IS NULL OR s.lock_token = $4::text) "
            f"AS held FROM {s} AS s WHERE s.id = $1 FOR UPDATE)",
            "ok AS (SELECT id FROM old WHERE held)",
            f"meta AS (UPDATE {s} AS s SET {', '.join(sets)} FROM ok "
            f"WHERE s.id = ok.id{changed} RETURNING s.expires_at)",
        ]
        if written:
            names, values = next(numbers), next(numbers)
            parts.append(
                f"written AS (INSERT INTO {a} (session_id, name, value) "
                f"SELECT ok.id, w.name, w.value FROM ok "
                f"CROSS JOIN unnest(${names}::text[], ${values}::text[]) AS w(name, value) "
                "ON CONFLICT (session_id, name) DO UPDATE SET value = excluded.value)"
            )
        if removed:
            # A removal is written as a NULL value (a tombstone), not a DELETE: the statement's
            # snapshot is taken before it waits for the row lock, and a DELETE would miss a row
            # that a concurrent save inserted and committed meanwhile (the removal, ordered after
            # it, would be lost); ON CONFLICT reaches that row. Older tombstones are swept.
            gone = f"${next(numbers)}::text[]"
            keep = f" AND a.name <> ALL(${names}::text[])" if written else ""
            parts += [
                f"removed AS (INSERT INTO {a} (session_id, name, value) "
                f"SELECT ok.id, r.name, NULL FROM ok CROSS JOIN unnest({gone}) AS r(name) "
                "ON CONFLICT (session_id, name) DO UPDATE SET value = NULL)",
                f"swept AS (DELETE FROM {a} AS a USING ok WHERE a.session_id = ok.id "
                f"AND a.value IS NULL AND a.name <> ALL({gone}){keep})",
            ]
        return (
            f"WITH {', '.join(parts)} SELECT old.held, old.expires_at, "
            "EXISTS (SELECT FROM meta), (SELECT expires_at FROM meta) FROM old"
        )

    # --- plumbing --------------------------------------------------------------------------------

    async def _fetch(self, statement: str, *args: Any) -> list[Any]:
        """Run one statement on a pooled connection (asyncpg prepares it once per connection).
        A connection that failed other than by a server's error (lost, cancelled mid-statement)
        is invalidated, never handed to the next request."""
        try:
            fairy = await self.engine.raw_connection()
            connection: Any = fairy.driver_connection
            try:
                rows: list[Any] = await connection.fetch(statement, *args)
            except BaseException as exc:
                if connection.is_closed() or not isinstance(getattr(exc, "sqlstate", None), str):
                    fairy.invalidate(exc)
                raise
            finally:
                fairy.close()
        except Exception as exc:
            failure = sql_failure(exc)
            if failure is not exc:
                raise failure from exc
            if type(exc).__module__.startswith("asyncpg"):
                # Its message may carry a parameter (DETAIL: Key (id)=(…)): one safe line only.
                raise RuntimeError(f"SQL session store failed: {describe(exc)}") from None
            raise
        return rows


def _deadline_of(column: float | None) -> float:
    return math.inf if column is None else column
