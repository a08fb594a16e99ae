"""The session as FastSession's users handle it: a ``dict``, over a servletsession ``HttpSession``.

FastSession's ``get_session()`` returned a plain ``dict`` that lived in its ``MemoryStore``. Apps
index it, keep ``None`` in it, copy it, merge it with ``|`` and turn copies into JSON.
`FastSessionDict` does all of that over the request's
[`HttpSession`][servletsession.HttpSession], every write going through the session so that
listeners fire and shared stores save it.

It is not a ``dict`` subclass, on purpose: CPython's ``dict`` methods (``update``, ``copy``,
``dict(d)``, ``json``) read a subclass's own storage and bypass its overrides, and a second
storage would go stale while concurrent requests of one session share the live ``HttpSession``.
So ``isinstance(session, dict)`` is ``False`` and ``json.dumps(session)`` needs
``json.dumps(session.copy())``; everything else a ``dict`` offers is here.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Self

from ..session import HttpSession


class FastSessionDict(MutableMapping[str, Any]):
    """A ``dict``-like view of one ``HttpSession``: ``session["k"] = None`` keeps ``None``,
    ``copy()``, ``|`` and ``dict(...)`` give plain ``dict`` objects, ``==`` compares with dicts."""

    __slots__ = ("session",)

    def __init__(self, session: HttpSession) -> None:
        self.session = session

    def __getitem__(self, name: str) -> Any:
        return self.session[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.session[name] = value  # the mapping's write: None is stored, as in a dict

    def __delitem__(self, name: str) -> None:
        del self.session[name]

    def __contains__(self, name: object) -> bool:
        return name in self.session

    def __iter__(self) -> Iterator[str]:
        return iter(self.session)

    def __len__(self) -> int:
        return len(self.session)

    def get(self, name: str, default: Any = None) -> Any:
        return self.session.get(name, default)

    def clear(self) -> None:
        """Remove every attribute (each one unbound, listeners notified), as ``dict.clear()``."""
        for name in self.session.get_attribute_names():
            del self.session[name]

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last attribute set, as ``dict.popitem()`` (LIFO); ``KeyError``
        when there is none. (``MutableMapping``'s own would take the first.)"""
        names = self.session.get_attribute_names()
        if not names:
            raise KeyError("popitem(): dictionary is empty")
        name = names[-1]
        value = self.session[name]
        del self.session[name]
        return name, value

    def copy(self) -> dict[str, Any]:
        """A plain ``dict`` of the attributes (shallow, as ``dict.copy()``)."""
        return {name: self.session[name] for name in self.session}

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return _copy.deepcopy(self.copy(), memo)

    def __or__(self, other: object) -> dict[str, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: object) -> dict[str, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(self.copy())
        return merged

    def __ior__(  # type: ignore[misc]  # ``|=`` keeps the view, as ``dict |=`` keeps the dict
        self, other: Mapping[str, Any] | Iterable[tuple[str, Any]]
    ) -> Self:
        self.update(other)
        return self

    def __reversed__(self) -> Iterator[str]:
        return reversed(self.session.get_attribute_names())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FastSessionDict) and other.session is self.session:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.copy() == dict(other.items())

    def __repr__(self) -> str:
        return repr(self.copy())


__all__ = ["FastSessionDict"]
