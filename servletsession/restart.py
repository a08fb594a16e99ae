"""Live sessions across a restart: ``MemoryStore(persist_to=...)`` writes them to its file at
shutdown and reads them back at startup, as Tomcat's ``StandardManager`` does with ``SESSIONS.ser``.

A saved session keeps its ID (so the browser's cookie joins it again after the restart), its
creation and access times, its idle and absolute timeouts, its principal (the per-principal index
is rebuilt) and every attribute value the JSON serializer can write: JSON types, datetimes, and
pydantic models on the manager's ``models=`` allow-list. Never pickle. A value it cannot write is
left out, with a warning naming the attribute and its type, and the rest of the session is kept
(Tomcat leaves out attributes that are not ``Serializable``). A saved session that cannot be read
back (damaged, or holding a model no longer allowed) is logged and left out: its browser gets a
fresh session, as with a shared store.

Events, as the Servlet spec has them (``HttpSessionActivationListener``: "a container that
migrates session between VMs or persists sessions is required to notify all attributes bound to
sessions implementing" it):

* at shutdown, ``session_will_passivate(event)`` on each attribute value that has it, before the
  session is written;
* at startup, ``session_did_activate(event)`` on each value that has it, once the session is back;
* no ``session_created`` and no ``session_destroyed``: a restart neither starts nor ends a session
  (Tomcat fires neither). A session whose deadline passed while the app was down is the exception:
  it is restored, activated, and then expired as the reaper would have expired it
  (``session_destroyed``, then every attribute unbound), as Tomcat's ``StandardManager`` does.

``async`` listener methods are awaited before startup or shutdown goes on, for up to the manager's
``shutdown_timeout``: a listener that hangs is logged, and startup or the save goes on with what
the sessions hold then.

The file is trusted no further than it can be checked (whoever can write it can plant sessions,
which is why `servletsession.stores.memory_file` refuses a file others may write): every field of
a record is bounded as the live session's would be, and a record that fails anything is left out
on its own, logged by its `session_ref`, the others restored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .changes import to_values
from .config import MAX_SECONDS
from .cookies import is_well_formed_id, session_ref
from .listeners import settle
from .serializers import JSONSerializer, UnreadableValueError
from .session import HttpSession, _is_storable_principal

if TYPE_CHECKING:
    from .persistence import SessionHost
    from .stores.memory import MemoryStore
    from .stores.memory_file import SessionFile

logger = logging.getLogger("servletsession")


#: How far in the future a saved time may be (the clock may have been stepped back a little
#: between the save and the restore), and how far before the creation time a later reading may
#: be (stepped back while the session lived); anything further is a damaged or planted record.
CLOCK_SKEW = 300.0

_Time = Annotated[float, Field(ge=0)]


class SavedSession(BaseModel):
    """One session as the file holds it, checked on the way back in: a damaged or hand-edited
    record is refused, never guessed at. Each field is bounded as a live session's is: an ID of
    the shape this library issues, finite times between the epoch and now (``context={"now":
    ...}``) plus `CLOCK_SKEW`, none more than `CLOCK_SKEW` before the creation time, timeouts in
    the range the manager accepts, and a principal ``session.principal`` would accept."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, frozen=True, extra="forbid")

    id: str
    creation_time: _Time
    #: ``getLastAccessedTime()`` as a request of it would see it now.
    last_accessed_time: _Time
    #: When the last request that joined it started, and when it last stopped being used (its
    #: idle clock).
    this_accessed_time: _Time
    idle_since: _Time
    max_inactive_interval: Annotated[int, Field(ge=-MAX_SECONDS, le=MAX_SECONDS)]
    absolute_timeout: Annotated[float, Field(gt=0, le=MAX_SECONDS)] | None
    principal: str | None
    is_new: bool
    #: Each value in the serializer's JSON envelope (see `servletsession.serializers`).
    attributes: dict[str, Any]

    @field_validator("id")
    @classmethod
    def _issued_shape(cls, value: str) -> str:
        if not (value.isascii() and is_well_formed_id(value)):
            raise ValueError("not an ID of the shape this library issues")  # never echo it
        return value

    @field_validator("principal")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and not _is_storable_principal(value):
            raise ValueError("not a principal session.principal accepts")
        return value

    @model_validator(mode="after")
    def _times_in_order(self, info: ValidationInfo) -> SavedSession:
        # A live session's clock readings may step back too (NTP), so a later reading a little
        # before the creation time is one the library wrote itself, not a damaged record.
        for name in ("last_accessed_time", "this_accessed_time", "idle_since"):
            if getattr(self, name) < self.creation_time - CLOCK_SKEW:
                raise ValueError(f"{name} is before creation_time")
        now = info.context.get("now") if isinstance(info.context, dict) else None
        if now is not None:
            for name in ("creation_time", "last_accessed_time", "this_accessed_time", "idle_since"):
                if getattr(self, name) > now + CLOCK_SKEW:
                    raise ValueError(f"{name} is in the future")
        return self


async def save(store: MemoryStore, host: SessionHost, file: SessionFile) -> int:
    """Passivate and write every live session, then let go of them; return how many were written.

    Nothing is written when there is no session (a file already there stays). If the file cannot
    be written, the error is logged, the previous file is left as it was, and the sessions stay in
    the store.
    """
    sessions = [session for session in store.sessions.values() if session._valid]
    if not sessions:
        return 0
    for session in sessions:
        to_values(session, "session_will_passivate")
    await _settle_all(sessions, host, "session_will_passivate")
    sessions = [session for session in sessions if session._valid]  # a listener may end one
    records = [_record_of(session, file.serializer) for session in sessions]
    try:
        await asyncio.to_thread(file.write, records, host.clock())
    except OSError as exc:
        logger.error(
            "cannot save %d sessions to %s (%s); they end with this process",
            len(records), file.path, exc.strerror or exc,
        )  # fmt: skip
        return 0
    # Written: they live in the file now, not here (Tomcat's unload does the same). A request
    # still running keeps its object, but what it changes from now on is not saved.
    for session in sessions:
        store.remove(session)
    logger.info("saved %d sessions to %s", len(records), file.path)
    return len(records)


async def restore(store: MemoryStore, host: SessionHost, file: SessionFile) -> int:
    """Read the file back, activate its sessions, expire those past their deadline; return how
    many live sessions it brought back. The file is deleted once read."""
    records = await asyncio.to_thread(file.read)
    if records is None:
        return 0
    # Deleted before anything else: should the process crash later, sessions that have ended
    # since (a logout) must not come back from it.
    await asyncio.to_thread(file.delete)
    restored: list[HttpSession] = []
    for index, record in enumerate(records):
        try:
            session = _session_of(record, index, host, file)
            if session is None:
                continue
            if session._id in store:  # started twice without a shutdown: the live one is newer
                logger.warning(
                    "saved session %s is live already; keeping the live one",
                    session_ref(session._id),
                )
                continue
            store.add(session)  # all or nothing: it schedules the session before holding it
        except Exception:  # one bad record never costs the others
            logger.exception(
                "saved session %s in %s cannot be restored; left out",
                _name_of(record, index), file.path,
            )  # fmt: skip
            continue
        restored.append(session)
    for session in restored:
        to_values(session, "session_did_activate")
    await _settle_all(restored, host, "session_did_activate")
    now = host.clock()
    expired = [s for s in restored if s._valid and s._expires_at() <= now]
    for session in expired:
        session._expire("expired")  # ended while the app was down: as the reaper would have
    await _settle_all(expired, host, "session_destroyed")
    live = sum(1 for session in restored if session._valid)
    logger.info(
        "restored %d sessions from %s (%d more had expired while the app was down, %d left out)",
        live, file.path, len(expired), len(records) - len(restored),
    )  # fmt: skip
    return live


async def _settle_all(sessions: Iterable[HttpSession], host: SessionHost, event: str) -> None:
    """Wait for the sessions' async listeners, for up to ``shutdown_timeout``: a listener that
    hangs must not hold up startup or shutdown for ever (at shutdown, the save then writes what
    the sessions hold). One that fails is logged by its session, the others are awaited."""
    waiting = {
        asyncio.ensure_future(settle(session)): session
        for session in sessions
        if session._listener_tail is not None
    }
    if not waiting:
        return
    done, pending = await asyncio.wait(waiting, timeout=host.settings.shutdown_timeout)
    for task in done:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error(
                "session %s: delivering %s failed: %r",
                session_ref(waiting[task]._id), event, error,
            )  # fmt: skip
    if pending:
        logger.warning(
            "%d sessions' %s listeners did not finish within shutdown_timeout (%g s); going on "
            "without waiting for them", len(pending), event, host.settings.shutdown_timeout,
        )  # fmt: skip
        for task in pending:
            task.cancel()  # the wait only: the delivery itself is shielded and runs on


def _record_of(session: HttpSession, serializer: JSONSerializer) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name, value in session._attributes.items():
        try:
            name.encode()
            envelope = pydantic_core.from_json(serializer.dumps(name, value))
        except (TypeError, UnicodeEncodeError) as exc:
            reason = (
                str(exc).removeprefix(f"attribute {name!r}: ")
                if isinstance(exc, TypeError)
                else "its name is not valid UTF-8"
            )
            logger.warning(
                "session %s: attribute %r (%s) is not saved: %s",
                session_ref(session._id), name, _type_name(value), reason,
            )  # fmt: skip
            continue
        attributes[name] = envelope
    return {
        "id": session._id,
        "creation_time": session._creation_time,
        "last_accessed_time": session._last_accessed_time,
        "this_accessed_time": session._this_accessed_time,
        "idle_since": session._idle_since,
        "max_inactive_interval": session._max_inactive_interval,
        "absolute_timeout": session._absolute_timeout,
        "principal": session._principal,
        "is_new": session._is_new,
        "attributes": attributes,
    }


def _name_of(record: Any, index: int) -> str:
    """A record's name for logs: its session's ref if it has a well-formed ID, else its place."""
    session_id = record.get("id") if isinstance(record, dict) else None
    if isinstance(session_id, str) and session_id.isascii() and is_well_formed_id(session_id):
        return session_ref(session_id)
    return f"#{index}"


def _session_of(
    record: Any, index: int, host: SessionHost, file: SessionFile
) -> HttpSession | None:
    try:
        saved = SavedSession.model_validate(record, context={"now": host.clock()})
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "record"
        logger.warning(
            "saved session %s in %s is malformed (%s: %s); left out",
            _name_of(record, index), file.path, where, problem["msg"].removeprefix("Value error, "),
        )  # fmt: skip
        return None
    attributes: dict[str, Any] = {}
    for name, envelope in saved.attributes.items():
        try:
            attributes[name] = file.serializer.loads(pydantic_core.to_json(envelope))
        except UnreadableValueError as exc:
            logger.warning(
                "saved session %s has an unreadable attribute %r (%s); the session is left out",
                session_ref(saved.id), name, exc,
            )  # fmt: skip
            return None
    session = HttpSession(
        host.owner,
        saved.id,
        creation_time=saved.creation_time,
        max_inactive_interval=saved.max_inactive_interval,
        absolute_timeout=saved.absolute_timeout,
        attributes=attributes,
        last_accessed_time=saved.last_accessed_time,
        is_new=saved.is_new,
    )
    session._this_accessed_time = saved.this_accessed_time
    session._idle_since = saved.idle_since
    session._principal = saved.principal
    session._track_reads = host.settings.save_mode == "on_get"
    return session


def _type_name(value: object) -> str:
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
