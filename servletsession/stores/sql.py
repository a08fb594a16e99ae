"""``SQLStore``: sessions in SQLite (embedded) or PostgreSQL, through SQLAlchemy 2 async Core.

Two tables (``sql_schema.py``): a request writes only the attributes it changed, so concurrent
requests that change different attributes of one session both persist. Attribute writes are upserts
(``INSERT … ON CONFLICT DO UPDATE``), safe against concurrent inserts of the same attribute.

Expired sessions are claimed with ``DELETE … RETURNING``: of several reapers (processes), exactly
one gets each session back, and fires its ``session_destroyed``.

On PostgreSQL through asyncpg, what every request does — load, save, touch, create — goes around
SQLAlchemy's execution layer as one statement each (``postgres.py``): that is where the round trips
and the time of a request were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Collection, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    MetaData,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from .base import LockLostError, SessionWrite, StoredSession
from .faults import sql_failure
from .postgres import PostgresPath, check_liveness_on_checkout
from .serializing import SerializingStore
from .sql_schema import engine_for, session_tables

if TYPE_CHECKING:
    from pydantic import BaseModel


logger = logging.getLogger("servletsession")


class SQLStore(SerializingStore):
    """Sessions in a SQL database: ``SQLStore("sqlite+aiosqlite:///sessions.db")`` or
    ``SQLStore("postgresql+asyncpg://user@host/db")`` (plain ``sqlite://`` and ``postgresql://``
    URLs get those drivers). Tables are created on first use, or by ``await create_tables()``.
    """

    def __init__(
        self,
        url: str | AsyncEngine,
        *,
        models: Iterable[type[BaseModel]] = (),
        save_period: float = 30.0,
        table_prefix: str = "servletsession_",
        create_tables: bool = True,
    ) -> None:
        super().__init__(models=models, save_period=save_period)
        self.engine = engine_for(url)
        self._is_sqlite = self.engine.dialect.name == "sqlite"
        postgres = (
            self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "asyncpg"
        )
        if postgres:
            check_liveness_on_checkout(self.engine)
        self._create = create_tables
        self._ready = not create_tables
        self._ready_lock = asyncio.Lock()
        self.metadata = MetaData()
        self.sessions, self.attributes = session_tables(self.metadata, table_prefix)
        self._pg = PostgresPath(self.engine, self.sessions, self.attributes) if postgres else None
        insert = (sqlite if self._is_sqlite else postgresql).insert
        upsert = insert(self.attributes)
        self._upsert = upsert.on_conflict_do_update(
            index_elements=[self.attributes.c.session_id, self.attributes.c.name],
            set_={"value": upsert.excluded.value},
        )

    async def create_tables(self) -> None:
        """Create the two tables and their indexes if they do not exist.

        Safe when several workers start at once: if another process creates them between our
        check and our ``CREATE``, the check is simply made again.
        """
        for attempt in range(3):
            try:
                async with self._transaction(prepare=False) as conn:
                    await conn.run_sync(self.metadata.create_all)
                break
            except DBAPIError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        self._ready = True

    # --- the contract ------------------------------------------------------------------------

    def _meta(self) -> Select[Any]:
        s = self.sessions.c
        return select(s.creation_time, s.last_access, s.expires_at, s.max_inactive_interval,
                      s.absolute_timeout, s.principal, s.lock_token)  # fmt: skip

    async def _attributes_of(self, conn: AsyncConnection, session_id: str) -> dict[str, bytes]:
        a = self.attributes.c
        rows = await conn.execute(select(a.name, a.value).where(a.session_id == session_id))
        return {row.name: row.value.encode() for row in rows if row.value is not None}

    async def load(
        self, session_id: str, now: float, *, touch: bool = True, attributes: bool = True
    ) -> StoredSession | None:
        if self._pg is not None:
            await self._prepare()
            return await self._pg.load(self, session_id, now, touch=touch, attributes=attributes)
        s, a = self.sessions.c, self.attributes.c
        query = self._meta().where(s.id == session_id)
        if attributes:  # one statement: the session row joined with its attribute rows
            query = query.add_columns(a.name, a.value).select_from(
                self.sessions.outerjoin(self.attributes, a.session_id == s.id)
            )
        async with self._transaction() as conn:
            rows = (await conn.execute(query)).all()
            if not rows:
                return None
            stored = _stored(rows[0])
            if touch and stored.expires_at > now:
                values: dict[str, Any] = {"last_access": now}
                target = self._next(stored, now)
                if target is not None:
                    values["expires_at"] = _column(target)
                    stored.expires_at = target
                await conn.execute(update(self.sessions).where(s.id == session_id).values(**values))
        if attributes:
            stored.attributes = {r.name: r.value.encode() for r in rows if r.value is not None}
        return stored

    async def touch(self, session_id: str, now: float) -> float | None:
        if self._pg is not None:
            await self._prepare()
            return await self._pg.touch(self, session_id, now)
        s = self.sessions.c
        async with self._transaction() as conn:
            row = (await conn.execute(self._meta().where(s.id == session_id))).first()
            if row is None:
                return None
            stored = _stored(row)
            target = self._next(stored, now) if stored.expires_at > now else None
            if target is not None:
                await conn.execute(
                    update(self.sessions)
                    .where(s.id == session_id)
                    .values(expires_at=_column(target))
                )
                return target
        return stored.expires_at

    async def create(self, session_id: str, session: StoredSession, now: float) -> None:
        if self._pg is not None:
            await self._prepare()
            return await self._pg.create(session_id, session)
        async with self._transaction() as conn:
            await conn.execute(
                self.sessions.insert().values(
                    id=session_id,
                    creation_time=session.creation_time,
                    last_access=session.last_access,
                    expires_at=_column(session.expires_at),
                    max_inactive_interval=session.max_inactive_interval,
                    absolute_timeout=session.absolute_timeout,
                    principal=session.principal,
                )
            )
            if session.attributes:
                await self._write(conn, session_id, session.attributes)

    async def save(self, session_id: str, write: SessionWrite, now: float) -> float | None:
        if self._pg is not None:
            await self._prepare()
            return await self._pg.save(self, session_id, write, now)
        s, a = self.sessions.c, self.attributes.c
        async with self._transaction() as conn:
            query = self._meta().where(s.id == session_id)
            row = (
                await conn.execute(query if self._is_sqlite else query.with_for_update())
            ).first()
            if row is None:
                return None  # ended elsewhere: never resurrected
            if write.lock_token is not None and row.lock_token != write.lock_token:
                raise LockLostError(
                    "the session's lock was taken over while this request held it (its lease "
                    "ran out); nothing was saved"
                )
            stored = _stored(row)
            values: dict[str, Any] = {}
            if write.principal_changed:
                values["principal"] = write.principal
            if write.timeouts_changed:
                values["max_inactive_interval"] = write.max_inactive_interval
                values["absolute_timeout"] = write.absolute_timeout
                stored.max_inactive_interval = write.max_inactive_interval
                stored.absolute_timeout = write.absolute_timeout
            target = self._next(stored, now, force=write.timeouts_changed)
            if target is not None:
                values["expires_at"] = _column(target)
                stored.expires_at = target
            if values:
                await conn.execute(update(self.sessions).where(s.id == session_id).values(**values))
            if write.written:
                await self._write(conn, session_id, write.written)
            if write.removed:
                await conn.execute(
                    delete(self.attributes).where(
                        a.session_id == session_id, a.name.in_(write.removed)
                    )
                )
        return stored.expires_at

    async def _write(
        self, conn: AsyncConnection, session_id: str, written: dict[str, bytes]
    ) -> None:
        rows = [
            {"session_id": session_id, "name": n, "value": v.decode()} for n, v in written.items()
        ]
        await conn.execute(self._upsert, rows)

    def _next(self, stored: StoredSession, now: float, *, force: bool = False) -> float | None:
        return self.next_deadline(
            stored.expires_at, stored.max_inactive_interval, stored.absolute_timeout,
            stored.creation_time, now, force=force,
        )  # fmt: skip

    async def delete(self, session_id: str) -> bool:
        async with self._transaction() as conn:
            result = await conn.execute(
                delete(self.sessions).where(self.sessions.c.id == session_id)
            )
        return bool(result.rowcount == 1)

    async def claim(self, session_id: str, now: float) -> StoredSession | None:
        s = self.sessions.c
        async with self._transaction() as conn:
            attributes = await self._attributes_of(conn, session_id)
            row = (
                await conn.execute(
                    delete(self.sessions)
                    .where(s.id == session_id, s.expires_at <= now)
                    .returning(*self._meta().selected_columns)
                )
            ).first()
        if row is None:
            return None
        stored = _stored(row)
        stored.attributes = attributes
        return stored

    async def rename(self, old_id: str, new_id: str) -> bool:
        async with self._transaction() as conn:
            result = await conn.execute(
                update(self.sessions).where(self.sessions.c.id == old_id).values(id=new_id)
            )
        return bool(result.rowcount == 1)

    async def claim_expired(
        self, now: float, limit: int, in_use: Collection[str] = ()
    ) -> list[tuple[str, StoredSession]]:
        s, a = self.sessions.c, self.attributes.c
        due = select(s.id).where(s.expires_at <= now).order_by(s.expires_at).limit(limit)
        if in_use:
            due = due.where(s.id.not_in(list(in_use)))
        async with self._transaction() as conn:
            ids = list((await conn.execute(due.with_for_update(skip_locked=True))).scalars())
            if not ids:
                return []
            attributes: dict[str, dict[str, bytes]] = {}
            attribute_rows = select(a.session_id, a.name, a.value).where(a.session_id.in_(ids))
            for name_row in await conn.execute(attribute_rows):
                if name_row.value is not None:  # (NULL: a removal, see postgres.py)
                    attributes.setdefault(name_row.session_id, {})[name_row.name] = (
                        name_row.value.encode()
                    )
            claimed = (
                await conn.execute(
                    delete(self.sessions)
                    .where(s.id.in_(ids), s.expires_at <= now)
                    .returning(s.id, *self._meta().selected_columns)
                )
            ).all()
        sessions = []
        for row in claimed:
            stored = _stored(row)
            stored.attributes = attributes.get(row.id, {})
            sessions.append((row.id, stored))
        return sessions

    async def count(self) -> int:
        async with self._transaction() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(self.sessions))).scalar_one()
            )

    async def sessions_of(self, principal: str, now: float) -> list[str]:
        s = self.sessions.c
        alive = (s.expires_at.is_(None)) | (s.expires_at > now)
        query = select(s.id).where(s.principal == principal, alive)
        async with self._transaction() as conn:
            return list((await conn.execute(query)).scalars())

    async def session_ids(self, offset: int, limit: int) -> list[str]:
        s = self.sessions.c
        query = select(s.id).order_by(s.id).offset(offset).limit(limit)
        async with self._transaction() as conn:
            return list((await conn.execute(query)).scalars())

    async def least_recent(self, count: int, now: float) -> list[str]:
        s = self.sessions.c
        query = select(s.id).order_by(s.expires_at.is_(None), s.expires_at).limit(count)
        async with self._transaction() as conn:
            return list((await conn.execute(query)).scalars())

    async def acquire_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        s = self.sessions.c
        async with self._transaction() as conn:
            taken = await conn.execute(
                update(self.sessions)
                .where(s.id == session_id, (s.lock_token.is_(None)) | (s.lock_until < now))
                .values(lock_token=token, lock_until=now + lease)
            )
            if taken.rowcount == 1:
                return True
            exists = (await conn.execute(select(s.id).where(s.id == session_id))).first()
        return exists is None  # nothing stored under that ID: nothing to wait for

    async def renew_lock(self, session_id: str, token: str, lease: float, now: float) -> bool:
        s = self.sessions.c
        async with self._transaction() as conn:
            renewed = await conn.execute(
                update(self.sessions)
                .where(s.id == session_id, s.lock_token == token)
                .values(lock_until=now + lease)
            )
        return bool(renewed.rowcount == 1)

    async def release_lock(self, session_id: str, token: str) -> None:
        s = self.sessions.c
        async with self._transaction() as conn:
            await conn.execute(
                update(self.sessions)
                .where(s.id == session_id, s.lock_token == token)
                .values(lock_token=None, lock_until=None)
            )

    async def close(self) -> None:
        await self.engine.dispose()

    # --- plumbing ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self, prepare: bool = True) -> AsyncIterator[AsyncConnection]:
        """A transaction; connection failures become ``StoreUnavailableError``."""
        if prepare:
            await self._prepare()
        try:
            async with self.engine.begin() as conn:
                yield conn
        except Exception as exc:
            failure = sql_failure(exc)
            if failure is exc:
                raise
            raise failure from exc

    async def _prepare(self) -> None:
        """Create the tables on first use (if ``create_tables``)."""
        if not self._ready:
            async with self._ready_lock:
                if not self._ready:
                    await self.create_tables()

    def __repr__(self) -> str:
        return f"<SQLStore {self.engine.url.render_as_string(hide_password=True)}>"


def _column(deadline: float) -> float | None:
    return None if math.isinf(deadline) else deadline


def _stored(row: Any) -> StoredSession:
    return StoredSession(
        creation_time=row.creation_time,
        last_access=row.last_access,
        expires_at=math.inf if row.expires_at is None else row.expires_at,
        max_inactive_interval=row.max_inactive_interval,
        absolute_timeout=row.absolute_timeout,
        principal=row.principal,
    )
