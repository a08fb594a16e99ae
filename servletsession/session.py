"""``HttpSession``: one browser's server-side state, with the Servlet spec's event ordering.

The session talks to its manager only through the small `SessionOwner` interface (can a
value be stored; it is going away; its timeout moved; who listens). The rest is the manager's.
"""

from __future__ import annotations

import math
from asyncio import _get_running_loop
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from .changes import ABSENT as _ABSENT
from .changes import PRINCIPAL, change_journal, track_change
from .config import MAX_SECONDS
from .cookies import session_ref
from .errors import IllegalStateError
from .listeners import (
    HttpSessionBindingEvent,
    HttpSessionEvent,
    after_pending,
    deliver,
    deliver_to_value,
    delivering_for,
)
from .owner import SessionOwner
from .session_state import SessionState

if TYPE_CHECKING:
    from .accessor import SessionAccessor


#: Types whose instances cannot have a ``value_bound`` or ``value_unbound`` (built-ins, which take
#: no attributes): a value of one of these exact types is not asked (a failed ``hasattr`` is slow).
_UNBINDABLE = frozenset(
    {int, float, str, bytes, bool, list, dict, tuple, set, frozenset, type(None)}
)


def _is_storable_principal(principal: object) -> bool:
    if not isinstance(principal, str) or not 0 < len(principal) <= 255 or "\x00" in principal:
        return False
    return principal.encode("utf-8", "replace").decode() == principal  # no lone surrogate


class HttpSession(SessionState, MutableMapping[str, Any]):
    """The Servlet ``HttpSession``: attributes, timestamps, idle timeout, ``invalidate()``.

    It is also a ``MutableMapping[str, Any]``: every write goes through
    [`set_attribute`][servletsession.HttpSession.set_attribute] or
    [`remove_attribute`][servletsession.HttpSession.remove_attribute], so listeners fire either way.
    Equal only if identical; the [`SessionManager`][servletsession.SessionManager] creates them.
    """

    __slots__ = ()  # the fields are `SessionState`'s

    def __init__(
        self,
        owner: SessionOwner,
        session_id: str,
        creation_time: float,
        max_inactive_interval: int,
        absolute_timeout: float | None = None,
        *,
        attributes: dict[str, Any] | None = None,
        last_accessed_time: float | None = None,
        is_new: bool = True,
    ) -> None:
        self._owner = owner
        self._id = session_id
        self._creation_time = creation_time
        if last_accessed_time is None:
            last_accessed_time = creation_time
        self._last_accessed_time = self._this_accessed_time = self._idle_since = last_accessed_time
        self._max_inactive_interval = max_inactive_interval
        self._absolute_timeout = absolute_timeout
        self._attributes = {} if attributes is None else attributes
        self._is_new = is_new
        self._stored = not is_new
        self._valid = True
        # The rest start alike (see the class's annotations): one chained assignment each, as a
        # session is built on every request that creates one.
        self._expiring = self._timeouts_changed = self._principal_changed = self._detached = (
            self._track_reads
        ) = False
        self._in_flight = self._snapshot = self._save_started = self._saving = 0
        self._listener_tail = self._changed_names = self._read_names = self._unsaved = (
            self._previous_id
        ) = self._principal = self._expiry_mark = None
        self._stored_expires = math.inf
        self._loop = _get_running_loop()

    # --- identity and timestamps -------------------------------------------------------------

    @property
    def id(self) -> str:
        """The session ID (``getId()``). Never log it: ``repr(session)`` shows a salted hash."""
        self._check_valid()
        return self._id

    @property
    def creation_time(self) -> float:
        """When the session was created, in seconds since the epoch."""
        self._check_valid()
        return self._creation_time

    @property
    def last_accessed_time(self) -> float:
        """The start of the previous request that joined this session (``getLastAccessedTime()``);
        [`creation_time`][servletsession.HttpSession.creation_time] in the one creating it."""
        self._check_valid()
        return self._last_accessed_time

    @property
    def max_inactive_interval(self) -> int:
        """Seconds of inactivity after which the session expires; ``<= 0`` means never."""
        self._check_valid()
        return self._max_inactive_interval

    @max_inactive_interval.setter
    def max_inactive_interval(self, seconds: int) -> None:
        self._check_valid()
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise TypeError(
                f"max_inactive_interval takes whole seconds (int), got {type(seconds).__name__}"
            )
        if not -MAX_SECONDS <= seconds <= MAX_SECONDS:  # what every store can hold
            raise ValueError(f"max_inactive_interval takes at most {MAX_SECONDS} seconds")
        self._max_inactive_interval = seconds
        self._timeouts_changed = True
        self._owner.expiry_changed(self)

    @property
    def absolute_timeout(self) -> float | None:
        """Seconds after creation at which the session ends however busy (``None``: no limit);
        the manager's ``absolute_timeout`` unless set for this session."""
        self._check_valid()
        return self._absolute_timeout

    @absolute_timeout.setter
    def absolute_timeout(self, seconds: float | None) -> None:
        self._check_valid()
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds <= MAX_SECONDS  # NaN fails this too
        ):
            raise ValueError(
                f"absolute_timeout takes positive seconds up to {MAX_SECONDS} or None, "
                f"got {seconds!r}"
            )
        self._absolute_timeout = seconds
        self._timeouts_changed = True
        self._owner.expiry_changed(self)

    @property
    def principal(self) -> str | None:
        """Who the session belongs to (a user ID), for ``manager.sessions_of(principal)`` and
        ``manager.invalidate_all(principal)``; ``None`` until the app binds one at login."""
        self._check_valid()
        return self._principal

    @principal.setter
    def principal(self, principal: str | None) -> None:
        self._check_valid()
        if principal is not None and not _is_storable_principal(principal):
            raise ValueError(
                "principal takes a non-empty str of at most 255 characters without NUL or lone "
                "surrogates, or None"
            )
        old = self._principal
        if principal == old:  # repeating another request's unwritten change makes it ours too
            if self._unsaved and PRINCIPAL in self._unsaved:
                track_change(self, change_journal.get(), PRINCIPAL, old, principal)
            return
        self._owner.principal_changing(self, principal)
        if (journal := change_journal.get()) is not None or self._unsaved is not None:
            track_change(self, journal, PRINCIPAL, old, principal)
        self._principal = principal
        self._principal_changed = True

    @property
    def is_new(self) -> bool:
        """True until a request arrives carrying this session's ID (``isNew()``)."""
        self._check_valid()
        return self._is_new

    # --- attributes --------------------------------------------------------------------------

    def get_attribute(self, name: str, default: Any = None) -> Any:
        """The attribute's value, or ``default`` when it is not set."""
        if not self._valid:
            self._check_valid()
        if self._track_reads:
            self._mark_read(name)
        return self._attributes.get(name, default)

    def get_attribute_names(self) -> list[str]:
        """The names of all attributes (a copy: safe to iterate while changing the session)."""
        self._check_valid()
        return list(self._attributes)

    def set_attribute(self, name: str, value: Any) -> None:
        """Bind ``value`` under ``name``; ``None`` removes the attribute.

        Order (Servlet spec, ``setAttribute``): the new value's ``value_bound`` runs before the
        value is visible; then ``attribute_added`` — or, on replace, the old value's
        ``value_unbound`` and then ``attribute_replaced`` with ``event.value`` the *old* value.
        Setting the same object again fires ``attribute_replaced`` only, and marks it changed (the
        way to save an object mutated in place to a store that serializes).

        Raises ``TypeError`` at once if the store cannot persist ``value``.
        """
        if not self._valid:
            self._check_valid()
        if value is None:
            self.remove_attribute(name)
            return
        self._set(name, value)

    def _set(self, name: str, value: Any) -> None:
        """``set_attribute`` for a value that is not ``None``; also ``session[name] = value``
        (dict semantics: ``None`` is stored, only ``set_attribute`` removes)."""
        if not self._valid or type(name) is not str:
            self._check_valid()
            if type(name) is not str:
                raise TypeError(f"attribute names are str, got {type(name).__name__}")
        owner = self._owner
        check = owner.value_check
        if check is not None:
            check(name, value)
        attributes = self._attributes
        old = attributes.get(name, _ABSENT)
        if old is not value and type(value) not in _UNBINDABLE and hasattr(value, "value_bound"):
            deliver_to_value(self, value, "value_bound", HttpSessionBindingEvent(self, name, value))
        if owner.shared:
            self._record_change(name, old, value)
        attributes[name] = value
        if old is _ABSENT:
            added = owner.listeners.attribute_added
            if added:
                deliver(self, added, HttpSessionBindingEvent(self, name, value))
            return
        if old is not value and type(old) not in _UNBINDABLE and hasattr(old, "value_unbound"):
            deliver_to_value(self, old, "value_unbound", HttpSessionBindingEvent(self, name, old))
        replaced = owner.listeners.attribute_replaced
        if replaced:
            deliver(self, replaced, HttpSessionBindingEvent(self, name, old))

    def remove_attribute(self, name: str) -> None:
        """Unbind ``name``: ``value_unbound``, then ``attribute_removed``; if absent, nothing."""
        self._check_valid()
        self._remove(name)

    def _remove(self, name: str) -> None:
        value = self._attributes.pop(name, _ABSENT)
        if value is _ABSENT:
            if self._unsaved and name in self._unsaved:  # as for the principal
                track_change(self, change_journal.get(), name, value, value)
            return
        if self._owner.shared:
            self._record_change(name, value, _ABSENT)
        if hasattr(value, "value_unbound"):
            deliver_to_value(
                self, value, "value_unbound", HttpSessionBindingEvent(self, name, value)
            )
        removed = self._owner.listeners.attribute_removed
        if removed:
            deliver(self, removed, HttpSessionBindingEvent(self, name, value))

    def _record_change(self, name: str, old: Any, new: Any) -> None:
        """A shared store's copy: journal the change for the request (and the share's history),
        and mark the name to be written. A live session needs neither: the store holds it."""
        if (journal := change_journal.get()) is not None or self._unsaved is not None:
            track_change(self, journal, name, old, new)
        self._mark_changed(name)

    def _mark_read(self, name: str) -> None:
        if self._read_names is None:
            self._read_names = {name}
        else:
            self._read_names.add(name)

    def _mark_changed(self, name: str) -> None:
        if self._changed_names is None:
            self._changed_names = {name}
        else:
            self._changed_names.add(name)

    def accessor(self) -> SessionAccessor:
        """A handle for using this session later, outside any request (Servlet 6.1
        ``getAccessor()``): see [`SessionAccessor`][servletsession.SessionAccessor]."""
        self._check_valid()
        return self._owner.accessors.accessor(self)

    # --- lifecycle ---------------------------------------------------------------------------

    def invalidate(self) -> None:
        """End the session now (``invalidate()``); see `_expire` for the order of events.

        Raises [`IllegalStateError`][servletsession.IllegalStateError] if already invalid; called
        again by one of its own listeners while it is being destroyed, it does nothing.
        """
        if not self._valid:
            if self._expiring:
                return
            raise IllegalStateError("invalidate(): the session is already invalidated")
        self._expire("invalidated")

    def _expire(self, reason: str) -> None:
        """Destroy the session, step by step as the Servlet spec orders it (cf. Tomcat's
        ``StandardSession.expire()``). ``reason`` is ``"invalidated"``, ``"expired"``,
        ``"evicted"`` or ``"discarded"`` (a new session refused by a limit, never stored)."""
        if not self._valid:
            return
        # 1. Mark it expiring: route code now sees an invalid session, while the session's own
        #    listeners can still read it (they run with ``delivering_for`` set to it).
        self._valid = False
        self._expiring = True
        # 2. The manager forgets the ID: from this moment no lookup in this process returns it.
        #    A shared store must first confirm that this process is the one ending it.
        if self._owner.session_expiring(self, reason):
            self._destroy()

    def _destroy(self) -> None:
        # 3. ``session_destroyed``, listeners in reverse registration order, session still
        #    readable (Servlet spec: "notified before the session is invalidated").
        destroyed = self._owner.listeners.session_destroyed
        if destroyed:
            deliver(self, reversed(destroyed), HttpSessionEvent(self))
        # 4. Unbind every attribute (value_unbound, attribute_removed), once the destroyed
        #    listeners — async ones included — have finished reading them.
        after_pending(self, self._unbind_all)

    def _drop(self) -> None:
        """Another process ended it first: invalid here too, no events (they fired there)."""
        self._valid = False
        self._expiring = False

    def _unbind_all(self) -> None:
        for name in list(self._attributes):
            self._remove(name)
        self._expiring = False

    def _check_valid(self) -> None:
        if not self._valid and not (self._expiring and delivering_for.get() is self):
            raise IllegalStateError("the session has been invalidated")

    # --- the mapping protocol ----------------------------------------------------------------

    get = get_attribute  # the mapping's ``get``, without a round trip through ``__getitem__``

    def __getitem__(self, name: str) -> Any:
        if not self._valid:
            self._check_valid()
        if self._track_reads:
            self._mark_read(name)
        return self._attributes[name]

    __setitem__ = _set

    def __delitem__(self, name: str) -> None:
        self._check_valid()
        if name not in self._attributes:
            raise KeyError(name)
        self._remove(name)

    def __contains__(self, name: object) -> bool:
        self._check_valid()
        return name in self._attributes

    def __iter__(self) -> Iterator[str]:
        return iter(self.get_attribute_names())

    def __len__(self) -> int:
        self._check_valid()
        return len(self._attributes)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        state = "valid" if self._valid else "invalid"
        return (
            f"<HttpSession ref={session_ref(self._id)} {state} attributes={len(self._attributes)}>"
        )
