"""Sessions of any size: thousands of attributes on every store (README, "Size limits")."""

from __future__ import annotations

import pytest

from servletsession import SessionManager

from ..conftest import FakeClock
from .conftest import StoreFactory, stores

pytestmark = pytest.mark.anyio

ATTRIBUTES = 10_000


@stores()
async def test_ten_thousand_attributes_are_created_changed_removed_and_read_back(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    manager = SessionManager(store_factory(), clock=clock)
    session = manager.create_session()
    for i in range(ATTRIBUTES):
        session[f"turn-{i}"] = {"role": "user", "text": f"message {i}"}
    await manager.release(session)
    session_id = session.id

    other = SessionManager(store_factory(), clock=clock)  # another process reads it all
    joined = await other.find(session_id)
    assert joined is not None
    assert len(joined.get_attribute_names()) == ATTRIBUTES
    assert joined["turn-4321"] == {"role": "user", "text": "message 4321"}
    for i in range(ATTRIBUTES):  # every attribute changed in one save...
        joined[f"turn-{i}"] = i
    for i in range(0, ATTRIBUTES, 2):  # ...and half of them removed in the same one
        joined.remove_attribute(f"turn-{i}")
    await other.release(joined)

    third = SessionManager(store_factory(), clock=clock)
    read = await third.find(session_id)
    assert read is not None
    assert sorted(read.get_attribute_names()) == sorted(
        f"turn-{i}" for i in range(1, ATTRIBUTES, 2)
    )
    assert read["turn-9999"] == 9999
    await third.release(read)
    for each in (manager, other, third):
        await each.stop_reaper()
