"""How stores that leave the process write attribute values: JSON, never pickle.

A value is stored as a small JSON envelope naming its kind, so it reads back as the same type:

* plain JSON (``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list``, ``dict`` with
  ``str`` keys, nested freely) — ``["j", value]``;
* a ``datetime`` or ``date`` — ``["dt", iso]`` / ``["d", iso]``;
* an instance of a pydantic model on the allow-list — ``["m", name, model_json]``. Anything a
  model can validate (datetimes, UUIDs, nested models) is therefore storable: wrap it in one.

Everything else is refused with ``TypeError`` naming the attribute and the type, at
``set_attribute`` time. Tuples and sets are refused too rather than silently coming back as lists.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

import pydantic_core
from pydantic import BaseModel, ValidationError

_MAX_DEPTH = 64
_MAX_INT_BITS = 13_000  # ~3,900 digits: below Python's int/str conversion limit (4,300)


class UnreadableValueError(ValueError):
    """Stored bytes that cannot be turned back into a value (corrupt, or a model not allowed)."""


class JSONSerializer:
    """Encodes attribute values as JSON; pydantic models only from an explicit allow-list."""

    def __init__(self, models: Iterable[type[BaseModel]] = ()) -> None:
        self._models: dict[str, type[BaseModel]] = {}
        self._names: dict[type[BaseModel], str] = {}
        self.allow(models)

    def allow(self, models: Iterable[type[BaseModel]]) -> None:
        """Add pydantic model classes to the allow-list."""
        for model in models:
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"models: {model!r} is not a pydantic BaseModel class")
            name = f"{model.__module__}.{model.__qualname__}"
            self._models[name] = model
            self._names[model] = name

    def dumps(self, name: str, value: Any) -> bytes:
        """The stored form of ``value``; ``TypeError`` naming ``name`` if it cannot be stored."""
        kind = type(value)
        model_name = self._names.get(kind)
        try:
            if model_name is not None:
                model_json = value.model_dump_json()
                return pydantic_core.to_json(["m", model_name, model_json])
            if kind is dt.datetime:
                return pydantic_core.to_json(["dt", value.isoformat()])
            if kind is dt.date:
                return pydantic_core.to_json(["d", value.isoformat()])
            problem = _plain_json_problem(value, 0)
            if problem is not None:
                raise TypeError(f"attribute {name!r}: {problem}")
            return pydantic_core.to_json(["j", value])
        except (pydantic_core.PydanticSerializationError, UnicodeError, ValueError) as exc:
            # A lone surrogate in a string (not valid UTF-8) or a model that cannot dump itself.
            raise TypeError(
                f"attribute {name!r}: a value of type {kind.__qualname__} cannot be written "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None

    def loads(self, data: bytes | str) -> Any:
        """The value stored as ``data``; ``UnreadableValueError`` if it cannot be read back."""
        try:
            envelope = pydantic_core.from_json(data)
            kind = envelope[0]
            if kind == "j":
                return envelope[1]
            if kind == "m":
                model = self._models.get(envelope[1])
                if model is None:
                    raise UnreadableValueError(f"model {envelope[1]!r} is not on the allow-list")
                return model.model_validate_json(envelope[2])
            if kind == "dt":
                return dt.datetime.fromisoformat(envelope[1])
            if kind == "d":
                return dt.date.fromisoformat(envelope[1])
        except UnreadableValueError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, ValidationError) as exc:
            raise UnreadableValueError(f"corrupt stored value ({type(exc).__name__})") from None
        raise UnreadableValueError(f"unknown stored kind {kind!r}")


def _plain_json_problem(value: Any, depth: int) -> str | None:
    """Why ``value`` is not plain JSON that reads back as itself, or ``None`` if it is."""
    if depth > _MAX_DEPTH:
        return f"nested deeper than {_MAX_DEPTH} levels (or contains a cycle)"
    kind = type(value)
    if kind is int:
        if value.bit_length() > _MAX_INT_BITS:
            return "an int this large cannot be read back (more than 4000 digits)"
        return None
    if value is None or kind is bool or kind is str:
        return None
    if kind is float:
        return None if math.isfinite(value) else f"{value!r} is not a finite number"
    if kind is list:
        for item in value:
            problem = _plain_json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"dict keys must be str, got {type(key).__name__}"
            problem = _plain_json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return (
        f"a value of type {kind.__module__}.{kind.__qualname__} cannot be stored as JSON; "
        "use JSON types, datetime, or a pydantic model on the store's allow-list (models=[...])"
    )
