"""What the stores that leave the process (SQL, Redis) share: serialization and the name rules.

Every shared store accepts the same attribute names and values, so that an app moving from one to
another meets no new refusal: a name is a non-empty ``str`` of at most `MAX_NAME_LENGTH`
characters without NUL or lone surrogates; a value is what `JSONSerializer` can write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..cookies import session_ref
from ..serializers import JSONSerializer, UnreadableValueError
from .base import SharedStore

if TYPE_CHECKING:
    from pydantic import BaseModel

logger = logging.getLogger("servletsession")

MAX_NAME_LENGTH = 200


def name_problem(name: str) -> str | None:
    """Why no shared store can write ``name`` back, or ``None`` if every one can."""
    if not name:
        return "attribute names must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"attribute name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
    if "\x00" in name:
        return f"attribute name {name!r} contains NUL, which no store can write"
    try:
        name.encode()
    except UnicodeEncodeError:
        return f"attribute name {name!r} contains a lone surrogate, which is not valid UTF-8"
    return None


class SerializingStore(SharedStore):
    """A shared store holding JSON-encoded attributes, one record per attribute.

    ``save_period`` bounds how often a read-only request rewrites a session's deadline (as Jetty's
    ``savePeriod``); the overshoot it allows is ``min(save_period, 10 % of the idle interval)``.
    """

    def __init__(
        self, *, models: Iterable[type[BaseModel]] = (), save_period: float = 30.0
    ) -> None:
        if save_period < 0:
            raise ValueError("save_period: must be >= 0 seconds (0 writes on every request)")
        self.serializer = JSONSerializer(models)
        self.save_period = save_period

    def check_value(self, name: str, value: Any) -> None:
        problem = name_problem(name)
        if problem is not None:
            raise TypeError(problem)
        self.serializer.dumps(name, value)

    def allow_models(self, models: Iterable[type[BaseModel]]) -> None:
        self.serializer.allow(models)

    def encode(self, name: str, value: Any) -> bytes:
        return self.serializer.dumps(name, value)

    def decode_all(
        self,
        session_id: str,
        attributes: Mapping[str, bytes | str],
        *,
        strict: bool,
        log: bool = True,
    ) -> dict[str, Any] | None:
        """Decoded attributes; ``None`` (logged) if one is unreadable and ``strict``, else the
        unreadable ones are left out (a session being destroyed still shows the rest)."""
        decoded: dict[str, Any] = {}
        loads = self.serializer.loads
        for name, data in attributes.items():
            try:
                decoded[name] = loads(data)
            except UnreadableValueError as exc:
                if not log:
                    continue
                logger.warning(
                    "stored session %s has an unreadable attribute %r (%s); %s",
                    session_ref(session_id), name, exc,
                    "treating the session as gone" if strict else "leaving it out",
                )  # fmt: skip
                if strict:
                    return None
        return decoded
