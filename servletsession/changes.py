"""What a shared store is given to write, and what a share takes in from what it read.

The manager's side of the `SharedStore` contract: a new
session becomes a `StoredSession`, a save a `SessionWrite` with the attributes the
save mode picks and the metadata this process changed; a read is taken into a share except where
the share has changes of its own.
"""

from __future__ import annotations

import logging
import math
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .listeners import HttpSessionEvent, deliver_to_value
from .stores.base import SessionWrite, StoredSession

if TYPE_CHECKING:
    from .session import HttpSession
    from .stores.serializing import SerializingStore

logger = logging.getLogger("servletsession")

#: An attribute that was not there.
ABSENT: Any = object()
#: The journal's entry for the principal (no attribute name a shared store accepts has a NUL).
PRINCIPAL = "\x00principal"
#: ...and for the session's ID before the request changed it.
SESSION_ID = "\x00id"

#: Set per request by the middleware on a shared store: for each session (by ``id``) the names
#: this request changed (and, under ``SESSION_ID``, the ID before it changed it). The dict itself
#: is the request's mark in the share's `Unsaved` history, so a request answered 503 takes
#: back only its own changes that are not written yet.
change_journal: ContextVar[dict[int, dict[str, Any]] | None] = ContextVar(
    "servletsession_change_journal", default=None
)

#: A share's changes since its last save, per name (``PRINCIPAL`` for the principal): the value
#: before the first of them, then ``(journal, value)`` for each change in order (consecutive
#: changes of one request folded into one; ``None`` for a change outside any request's journal).
Unsaved = dict[str, tuple[Any, list[tuple[object | None, Any]]]]


def track_change(
    session: HttpSession, journal: dict[int, dict[str, Any]] | None, name: str, old: Any, new: Any
) -> None:
    """Note a change of ``name`` (``old`` to ``new``, ``ABSENT`` for none) by the request that
    holds ``journal``, before the share marks it changed."""
    if journal is not None:
        journal.setdefault(id(session), {})[name] = None
    unsaved = session._unsaved
    if unsaved is None:
        unsaved = session._unsaved = {}
    record = unsaved.get(name)
    if record is None:
        if name == PRINCIPAL:
            pending = session._principal_changed
        elif name == SESSION_ID:
            pending = session._previous_id not in (None, old)
        else:
            pending = name in (session._changed_names or ())
        # A change already pending, made outside any journal, must stay written.
        record = unsaved[name] = (old, [(None, old)] if pending else [])
    changes = record[1]
    if changes and changes[-1][0] is journal:
        changes[-1] = (journal, new)
    else:
        changes.append((journal, new))


def take_back(
    session: HttpSession, journal: object, names: dict[str, Any], unsaved: Unsaved | None = None
) -> None:
    """Undo what the request holding ``journal`` changed in ``names`` and is still unwritten.

    A change another request's save has written stays (the store has it); a value another request
    set after this one's stays; a name stays pending while any other change of it is unwritten.
    ``unsaved`` is the history a save under way holds (default: the share's own): if that save
    writes this request's value, the share keeps the value to put back pending, to write next.
    """
    in_flight = unsaved is not None
    unsaved = session._unsaved if unsaved is None else unsaved
    if not unsaved:
        return
    for name in names:
        record = unsaved.get(name)
        if record is None:
            continue  # written since: the store and this share agree
        before, changes = record
        kept = [change for change in changes if change[0] is not journal]
        if len(kept) == len(changes):
            continue
        if changes[-1][0] is journal:  # the share shows this value: show the last other one
            value = kept[-1][1] if kept else before
            later = session._unsaved.get(name) if in_flight and session._unsaved else None
            if later is not None:  # changed since that save began: correct what came before
                session._unsaved[name] = (value, later[1])  # type: ignore[index]
            else:
                _show(session, name, value)
                if in_flight:  # that save may write this request's value: write the right one
                    track_change(session, None, name, changes[-1][1], value)
                    session._mark_changed(name)
        if kept:
            unsaved[name] = (before, kept)
            continue
        del unsaved[name]
        if in_flight:
            continue
        if name == PRINCIPAL:
            session._principal_changed = False
        elif name == SESSION_ID:
            session._previous_id = None  # the store still holds ``before``: nothing to rename
        elif session._changed_names is not None:
            session._changed_names.discard(name)


def _show(session: HttpSession, name: str, value: Any) -> None:
    if name == PRINCIPAL:
        session._principal = value
    elif name == SESSION_ID:
        session._id = value
    elif value is ABSENT:
        session._attributes.pop(name, None)
    else:
        session._attributes[name] = value


def id_written(session: HttpSession, stored_id: str) -> None:
    """The store now holds the session under ``stored_id``: the ID changes up to it are written,
    any later one (made while the rename was under way) is still pending."""
    if session._id == stored_id:
        session._previous_id = None
    else:
        session._previous_id = stored_id
    unsaved = session._unsaved
    record = unsaved.get(SESSION_ID) if unsaved else None
    if unsaved is None or record is None:
        return
    changes = record[1]
    last = max((i for i, change in enumerate(changes) if change[1] == stored_id), default=-1)
    if last + 1 >= len(changes) or session._previous_id is None:
        del unsaved[SESSION_ID]
    else:
        unsaved[SESSION_ID] = (stored_id, changes[last + 1 :])


def record_of(session: HttpSession, store: SerializingStore, now: float) -> StoredSession:
    """A new session as the store is to hold it, all its attributes encoded."""
    written, _ = _encode(session, store, session._attributes)
    interval, absolute = session._max_inactive_interval, session._absolute_timeout
    expires = store.next_deadline(
        math.inf, interval, absolute, session._creation_time, now, force=True
    )
    session._stored_expires = math.inf if expires is None else expires
    return StoredSession(
        creation_time=session._creation_time,
        last_access=session._this_accessed_time,
        expires_at=session._stored_expires,
        max_inactive_interval=interval,
        absolute_timeout=absolute,
        principal=session._principal,
        attributes=written,
    )


def changes_of(
    session: HttpSession, store: SerializingStore, save_mode: str
) -> tuple[SessionWrite, Unsaved]:
    """What a save writes: the attributes the save mode picks, metadata only if it changed;
    and the history of the changes it writes (to put back with them if the save fails)."""
    changed = session._changed_names or set()
    session._changed_names = None
    if save_mode == "always":
        changed.update(session._attributes)
    elif save_mode == "on_get":
        changed.update(session._read_names or ())
        session._read_names = None
    written, removed = _encode(session, store, changed)
    write = SessionWrite(written=written, removed=removed)
    taken: Unsaved = {}
    unsaved = session._unsaved
    if session._principal_changed:
        write.principal_changed, write.principal = True, session._principal
        session._principal_changed = False
        changed.add(PRINCIPAL)
    if unsaved:
        for name in changed:
            record = unsaved.pop(name, None)
            if record is not None:
                taken[name] = record
    if session._timeouts_changed:
        write.timeouts_changed = True
        write.max_inactive_interval = session._max_inactive_interval
        write.absolute_timeout = session._absolute_timeout
        session._timeouts_changed = False
    return write, taken


def put_back(session: HttpSession, write: SessionWrite, taken: Unsaved) -> None:
    """A save failed: what it was to write is pending again, with its history (ahead of any
    change made while it was under way)."""
    for name in (*write.written, *write.removed):
        session._mark_changed(name)
    session._principal_changed |= write.principal_changed
    session._timeouts_changed |= write.timeouts_changed
    if not taken:
        return
    unsaved = session._unsaved
    if unsaved is None:
        unsaved = session._unsaved = {}
    for name, (before, changes) in taken.items():
        later = unsaved.get(name)
        unsaved[name] = (before, changes + later[1] if later is not None else changes)


def _encode(
    session: HttpSession, store: SerializingStore, names: set[str] | dict[str, Any]
) -> tuple[dict[str, bytes], list[str]]:
    attributes, encode = session._attributes, store.encode
    written: dict[str, bytes] = {}
    removed: list[str] = []
    for name in names:
        if name not in attributes:
            removed.append(name)
            continue
        try:
            written[name] = encode(name, attributes[name])
        except TypeError as exc:  # checked at set_attribute, then changed in place
            logger.error("%s; the stored value of %r is kept (%r)", exc, name, session)
    return written, removed


def refresh(share: HttpSession, stored: StoredSession, attributes: dict[str, Any]) -> None:
    """Take the store's state into a share that another request of this process is using,
    except what this process changed and has not written yet: a request sees what other
    processes wrote before it arrived. Values are replaced without events (nothing was set)."""
    changed = share._changed_names or ()
    current = share._attributes
    for name in [name for name in current if name not in attributes and name not in changed]:
        del current[name]
    for name, value in attributes.items():
        if name not in changed:
            current[name] = value
    if not share._principal_changed:
        share._principal = stored.principal
    if not share._timeouts_changed:
        share._max_inactive_interval = stored.max_inactive_interval
        share._absolute_timeout = stored.absolute_timeout


def to_values(session: HttpSession, method_name: str) -> None:
    """Activation events go to the attribute values that listen for them."""
    event = None
    for value in list(session._attributes.values()):
        if hasattr(value, method_name):
            event = event or HttpSessionEvent(session)
            deliver_to_value(session, value, method_name, event)
