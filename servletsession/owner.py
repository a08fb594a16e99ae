"""What a session needs from its manager: the one interface `HttpSession` talks through.

The session tells its owner that a value is about to be stored, that it is going away, that its
timeout moved or that its principal is being rebound; everything else is the manager's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .accessor import Accessors
    from .listeners import ListenerRegistry
    from .session import HttpSession


class SessionOwner(Protocol):
    """What a session needs from its manager."""

    @property
    def listeners(self) -> ListenerRegistry: ...

    #: A shared store: a session's changes are recorded, for its saves (a live one has none).
    shared: bool

    @property
    def value_check(self) -> Callable[[str, Any], None] | None:
        """Raises ``TypeError`` if the store cannot persist a value (Servlet spec: refuse it at
        ``setAttribute``, not later at save time where the change would be lost silently);
        ``None`` when every value is accepted (live objects)."""

    def session_expiring(self, session: HttpSession, reason: str) -> bool:
        """The session is being invalidated or expired: its ID is dead in this process from now
        on. ``True``: deliver ``session_destroyed`` now. ``False``: the owner delivers it once
        the store confirms this process ended the session (``_destroy``), or never if another
        process did (a shared store fires each session's events on exactly one process)."""

    def expiry_changed(self, session: HttpSession) -> None: ...  # its idle or absolute timeout

    def principal_changing(self, session: HttpSession, new: str | None) -> None: ...  # rebinding

    accessors: Accessors  # for `HttpSession.accessor`
