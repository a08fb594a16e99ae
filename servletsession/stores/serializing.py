"""What the stores that leave the process (SQL, Redis) share: serialization, deadlines, rebuild."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..cookies import session_ref
from ..serializers import JSONSerializer, UnreadableValueError
from ..session import HttpSession
from .base import SessionStore

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..session import SessionOwner

logger = logging.getLogger("servletsession")


class SerializingStore(SessionStore):
    """A store holding JSON-encoded attributes, one record per attribute.

    ``save_period`` throttles last-access writes (as Jetty's ``savePeriod``): a request that only
    reads a session rewrites its deadline only when ``save_period`` seconds have passed since the
    last write. So that throttling never lets a live session idle out early, the stored deadline is
    ``last write + max_inactive_interval + save_period``: a session may outlive its idle timeout by
    up to ``save_period``, never the other way round.
    """

    def __init__(
        self, *, models: Iterable[type[BaseModel]] = (), save_period: float = 30.0
    ) -> None:
        if save_period < 0:
            raise ValueError("save_period: must be >= 0 seconds (0 writes on every request)")
        self.serializer = JSONSerializer(models)
        self.save_period = save_period

    def check_value(self, name: str, value: Any) -> None:
        self.serializer.dumps(name, value)

    def allow_models(self, models: Iterable[type[BaseModel]]) -> None:
        self.serializer.allow(models)

    def deadline(
        self, interval: int, absolute_timeout: float | None, creation: float, now: float
    ) -> float:
        """The deadline to store for a session last written at ``now`` (``inf``: never)."""
        deadline = now + interval + self.save_period if interval > 0 else math.inf
        if absolute_timeout is not None:
            deadline = min(deadline, creation + absolute_timeout)
        return deadline

    def session_deadline(self, session: HttpSession, now: float) -> float:
        return self.deadline(
            session._max_inactive_interval, session._absolute_timeout, session._creation_time, now
        )

    def encode_changes(
        self, session: HttpSession, changed_names: Iterable[str]
    ) -> tuple[dict[str, bytes], list[str]]:
        """The changed attributes to write (name → bytes) and the ones to delete."""
        attributes = session._attributes
        dumps = self.serializer.dumps
        written: dict[str, bytes] = {}
        removed: list[str] = []
        for name in changed_names:
            if name in attributes:
                written[name] = dumps(name, attributes[name])
            else:
                removed.append(name)
        return written, removed

    def rebuild(
        self,
        owner: SessionOwner,
        session_id: str,
        *,
        creation_time: float,
        last_access: float,
        expires_at: float,
        max_inactive_interval: int,
        absolute_timeout: float | None,
        attributes: Mapping[str, bytes | str],
        principal: str | None = None,
        strict: bool = True,
    ) -> HttpSession | None:
        """An ``HttpSession`` from stored fields; ``None`` (logged) if an attribute is unreadable
        and ``strict``, else the unreadable attributes are left out."""
        decoded: dict[str, Any] = {}
        loads = self.serializer.loads
        for name, data in attributes.items():
            try:
                decoded[name] = loads(data)
            except UnreadableValueError as exc:
                logger.warning(
                    "stored session %s has an unreadable attribute %r (%s); %s",
                    session_ref(session_id), name, exc,
                    "treating the session as gone" if strict else "leaving it out",
                )  # fmt: skip
                if strict:
                    return None
        session = HttpSession(
            owner,
            session_id,
            creation_time=creation_time,
            max_inactive_interval=max_inactive_interval,
            absolute_timeout=absolute_timeout,
            attributes=decoded,
            last_accessed_time=last_access,
            is_new=False,
        )
        session._principal = principal
        if max_inactive_interval > 0 and math.isfinite(expires_at):
            # The stored deadline (over-provisioned by save_period) is the one that counts.
            session._idle_since = expires_at - max_inactive_interval
        return session
