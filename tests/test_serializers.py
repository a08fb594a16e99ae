"""The JSON serializer used by the stores that leave the process: what goes in comes back."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import BaseModel

from servletsession.serializers import JSONSerializer, UnreadableValueError
from servletsession.stores import MemoryStore, store_from_url
from servletsession.stores.sql import SQLStore


class Note(BaseModel):
    text: str
    at: dt.datetime


def test_values_round_trip_with_their_types() -> None:
    serializer = JSONSerializer([Note])
    for value in [0, -1.25, "ü", True, None, [1, [2]], {"a": {"b": []}},
                  dt.datetime(2026, 1, 1, 9, 30, tzinfo=dt.UTC), dt.date(2026, 2, 3),
                  Note(text="x", at=dt.datetime(2026, 1, 1))]:  # fmt: skip
        restored = serializer.loads(serializer.dumps("v", value))
        assert restored == value
        assert type(restored) is type(value)


@pytest.mark.parametrize(
    "value", [(1, 2), {1, 2}, b"bytes", float("inf"), {1: "int key"}, object()]
)
def test_values_that_would_not_read_back_as_themselves_are_refused(value: object) -> None:
    with pytest.raises(TypeError, match="attribute 'v'"):
        JSONSerializer().dumps("v", value)


def test_a_cycle_is_refused_not_a_recursion_error() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(TypeError, match="cycle"):
        JSONSerializer().dumps("v", cycle)


def test_a_model_subclass_needs_its_own_allow_list_entry() -> None:
    class Special(Note):
        pass

    with pytest.raises(TypeError):
        JSONSerializer([Note]).dumps("v", Special(text="x", at=dt.datetime(2026, 1, 1)))


UNREADABLE = [
    b"",
    b"not json",
    b"[]",
    b'["zz", 1]',
    b'["m", "gone.Model", "{}"]',
    b'["m", "tests.test_serializers.Note", "{\\"text\\": 1}"]',
    b'["dt", "yesterday"]',
]


@pytest.mark.parametrize("data", UNREADABLE)
def test_unreadable_bytes_raise_unreadable_value_error(data: bytes) -> None:
    with pytest.raises(UnreadableValueError):
        JSONSerializer([Note]).loads(data)


def test_no_pickle_anywhere_in_the_package() -> None:
    import re
    from pathlib import Path

    import servletsession

    imports_pickle = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle)\b", re.M)
    for path in Path(servletsession.__file__).parent.rglob("*.py"):
        assert not imports_pickle.search(path.read_text()), path


def test_store_from_url_picks_the_store() -> None:
    assert isinstance(store_from_url("memory://"), MemoryStore)
    assert isinstance(store_from_url("sqlite:///x.db"), SQLStore)
    assert type(store_from_url("redis://127.0.0.1:1/0")).__name__ == "RedisStore"
    with pytest.raises(ValueError, match="not one of"):
        store_from_url("mongodb://x")
