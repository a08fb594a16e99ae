"""The public surface of DESIGN.md, and the manager ↔ store rules that hold on every store."""

from __future__ import annotations

from typing import Any

import pytest

import servletsession
from servletsession import HttpSessionBindingEvent, MemoryStore, SessionManager

from .conftest import FakeClock, client, make_app

pytestmark = pytest.mark.anyio

PUBLIC_NAMES = [
    "HttpSession",
    "IllegalStateError",
    "SessionManager",
    "SessionMiddleware",
    "MemoryStore",
    "get_session",
    "change_session_id",
    "requested_session_id",
    "is_requested_session_id_valid",
    "HttpSessionListener",
    "HttpSessionAttributeListener",
    "HttpSessionBindingListener",
    "HttpSessionIdListener",
    "HttpSessionActivationListener",
    "HttpSessionEvent",
    "HttpSessionBindingEvent",
]


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_design_name_imports_from_the_package(name: str) -> None:
    assert name in servletsession.__all__
    assert getattr(servletsession, name) is not None


class PickyStore(MemoryStore):
    """A store that, like a serializing one, refuses what it cannot persist."""

    def check_value(self, name: str, value: Any) -> None:
        if not isinstance(value, str | int):
            raise TypeError(
                f"attribute {name!r}: cannot store a value of type {type(value).__name__}"
            )


async def test_a_value_the_store_cannot_persist_is_refused_at_set_attribute(
    clock: FakeClock,
) -> None:
    added: list[str] = []

    class Watch:
        def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            added.append(event.name)

    manager = SessionManager(PickyStore(), clock=clock, listeners=[Watch()])
    session = manager.create_session()
    session["ok"] = "fine"
    with pytest.raises(TypeError, match=r"'blob'.*object"):
        session.set_attribute("blob", object())
    assert session.get_attribute_names() == ["ok"]
    assert added == ["ok"]


async def test_a_read_only_request_does_not_rewrite_the_session(clock: FakeClock) -> None:
    class CountingStore(MemoryStore):
        saves = 0

        def add(self, session: Any) -> None:
            CountingStore.saves += 1
            super().add(session)

    manager = SessionManager(CountingStore(), clock=clock)
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        assert CountingStore.saves == 1
        for _ in range(10):
            clock.advance(5)
            assert (await http.get("/get/a")).json()["value"] == "1"
        await http.post("/set/b", params={"value": "2"})
        assert (await http.get("/get/b")).json()["value"] == "2"
    assert CountingStore.saves == 1  # live objects: a stored session needs no second save
    await manager.close()
