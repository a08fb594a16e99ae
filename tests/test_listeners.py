"""The Servlet spec's event order, one rule per test."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servletsession import (
    HttpSessionBindingEvent,
    HttpSessionEvent,
    SessionManager,
    get_session,
)
from servletsession.listeners import settle

from .conftest import FakeClock, client, cookie_header, make_app

pytestmark = pytest.mark.anyio


class Recorder:
    """A listener of every manager event, writing what it saw into a shared log."""

    def __init__(self, log: list[Any], tag: str = "") -> None:
        self.log = log
        self.tag = tag

    def session_created(self, event: HttpSessionEvent) -> None:
        self.log.append((self.tag + "created",))

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.log.append((self.tag + "destroyed", sorted(event.session.get_attribute_names())))

    def attribute_added(self, event: HttpSessionBindingEvent) -> None:
        self.log.append(("added", event.name, event.value))

    def attribute_removed(self, event: HttpSessionBindingEvent) -> None:
        self.log.append(("removed", event.name, event.value))

    def attribute_replaced(self, event: HttpSessionBindingEvent) -> None:
        self.log.append(("replaced", event.name, event.value))

    def session_id_changed(self, event: HttpSessionEvent, old_session_id: str) -> None:
        self.log.append(("id_changed", old_session_id, event.session.id))


class Bound:
    """A value that listens for being bound and unbound (HttpSessionBindingListener)."""

    def __init__(self, name: str, log: list[Any]) -> None:
        self.name = name
        self.log = log

    def value_bound(self, event: HttpSessionBindingEvent) -> None:
        visible = event.session.get_attribute(event.name) is self
        self.log.append(("bound", self.name, visible))

    def value_unbound(self, event: HttpSessionBindingEvent) -> None:
        self.log.append(("unbound", self.name))


@pytest.fixture
def log() -> list[Any]:
    return []


@pytest.fixture
async def recorded(clock: FakeClock, log: list[Any]) -> SessionManager:
    manager = SessionManager(clock=clock, listeners=[Recorder(log)])
    yield manager
    await manager.close()


async def test_session_created_fires_when_a_session_is_made(
    recorded: SessionManager, log: list[Any]
) -> None:
    async with client(make_app(recorded)) as http:
        await http.post("/set/a", params={"value": "1"})
    assert log[0] == ("created",)


async def test_value_bound_runs_before_the_value_is_visible(
    recorded: SessionManager, log: list[Any]
) -> None:
    session = recorded.create_session()
    session.set_attribute("x", Bound("v", log))
    assert log[1:] == [("bound", "v", False), ("added", "x", session.get_attribute("x"))]


async def test_attribute_added_carries_the_new_value(
    recorded: SessionManager, log: list[Any]
) -> None:
    session = recorded.create_session()
    session.set_attribute("x", 1)
    assert log[-1] == ("added", "x", 1)


async def test_replace_unbinds_the_old_value_then_fires_replaced(
    recorded: SessionManager, log: list[Any]
) -> None:
    session = recorded.create_session()
    old, new = Bound("old", log), Bound("new", log)
    session.set_attribute("x", old)
    log.clear()
    session.set_attribute("x", new)
    assert log == [("bound", "new", False), ("unbound", "old"), ("replaced", "x", old)]


async def test_attribute_replaced_carries_the_old_value(
    recorded: SessionManager, log: list[Any]
) -> None:
    session = recorded.create_session()
    session.set_attribute("x", "first")
    session.set_attribute("x", "second")
    assert log[-1] == ("replaced", "x", "first")
    assert session.get_attribute("x") == "second"


async def test_setting_the_same_object_again_fires_only_replaced(
    recorded: SessionManager, log: list[Any]
) -> None:
    session = recorded.create_session()
    value = Bound("same", log)
    session.set_attribute("x", value)
    log.clear()
    session.set_attribute("x", value)
    assert log == [("replaced", "x", value)]


async def test_remove_unbinds_then_fires_removed(recorded: SessionManager, log: list[Any]) -> None:
    session = recorded.create_session()
    value = Bound("v", log)
    session.set_attribute("x", value)
    log.clear()
    session.remove_attribute("x")
    assert log == [("unbound", "v"), ("removed", "x", value)]


async def test_removing_an_absent_attribute_fires_nothing(
    recorded: SessionManager, log: list[Any]
) -> None:
    session = recorded.create_session()
    log.clear()
    session.remove_attribute("nothing")
    assert log == []


async def test_invalidate_fires_destroyed_while_readable_then_unbinds(clock: FakeClock) -> None:
    log: list[Any] = []
    manager = SessionManager(clock=clock, listeners=[Recorder(log)])
    session = manager.create_session()
    session.set_attribute("a", Bound("a", log))
    session.set_attribute("b", 2)
    log.clear()
    session.invalidate()
    assert log[0] == ("destroyed", ["a", "b"])
    assert set(log[1:]) == {("unbound", "a"), ("removed", "a", log[2][2]), ("removed", "b", 2)}
    assert log.index(("unbound", "a")) < next(
        i for i, e in enumerate(log) if e[:2] == ("removed", "a")
    )


async def test_session_destroyed_listeners_run_in_reverse_registration_order(
    clock: FakeClock,
) -> None:
    log: list[Any] = []
    manager = SessionManager(clock=clock, listeners=[Recorder(log, "1:"), Recorder(log, "2:")])
    manager.add_listener(Recorder(log, "3:"))
    session = manager.create_session()
    log.clear()
    session.invalidate()
    assert [entry[0] for entry in log] == ["3:destroyed", "2:destroyed", "1:destroyed"]


async def test_session_created_listeners_run_in_registration_order(clock: FakeClock) -> None:
    log: list[Any] = []
    manager = SessionManager(clock=clock, listeners=[Recorder(log, "1:"), Recorder(log, "2:")])
    manager.create_session()
    assert log == [("1:created",), ("2:created",)]


async def test_invalidated_session_is_gone_for_later_requests(recorded: SessionManager) -> None:
    async with client(make_app(recorded)) as http:
        await http.post("/set/a", params={"value": "1"})
        cookie = http.cookies["sessionid"]
        assert (await http.get("/get/a", headers=cookie_header(cookie))).json()["session"] is True
        await http.post("/invalidate")
        response = await http.get("/get/a", headers=cookie_header(cookie))
    assert response.json() == {"session": False}


async def test_a_listener_that_raises_is_logged_and_skipped(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[Any] = []

    class Broken:
        def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            raise ValueError("boom")

    manager = SessionManager(clock=clock, listeners=[Broken(), Recorder(log)])
    async with client(make_app(manager)) as http:
        response = await http.post("/set/a", params={"value": "1"})
        again = await http.get("/get/a")
    assert response.status_code == 200
    assert again.json() == {"session": True, "value": "1"}
    assert ("added", "a", "1") in log
    assert "Broken.attribute_added raised" in caplog.text
    await manager.close()


async def test_an_async_listener_that_raises_is_logged_and_skipped(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            raise ValueError("boom")

    manager = SessionManager(clock=clock, listeners=[Broken()])
    async with client(make_app(manager)) as http:
        response = await http.post("/set/a", params={"value": "1"})
        again = await http.get("/get/a")
    assert response.status_code == 200
    assert again.json()["value"] == "1"
    assert "Broken.attribute_added raised" in caplog.text
    await manager.close()


async def test_sync_listener_runs_inline_inside_set_attribute(
    recorded: SessionManager, log: list[Any]
) -> None:
    session = recorded.create_session()
    session.set_attribute("x", 1)
    assert ("added", "x", 1) in log  # already there when set_attribute returned


async def test_async_listeners_are_awaited_before_the_request_finishes(clock: FakeClock) -> None:
    done: list[str] = []

    class Slow:
        async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            await asyncio.sleep(0.01)
            done.append(event.name)

    manager = SessionManager(clock=clock, listeners=[Slow()])
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        assert done == ["a"]
    await manager.close()


async def test_async_events_of_one_session_arrive_in_order(clock: FakeClock) -> None:
    seen: list[str] = []

    class Jittery:
        async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            await asyncio.sleep(0.02 if event.name == "first" else 0)
            seen.append("added " + event.name)

        async def attribute_removed(self, event: HttpSessionBindingEvent) -> None:
            seen.append("removed " + event.name)

    async def burst(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["first"] = 1
        session["second"] = 2
        del session["first"]
        return Response("ok")

    manager = SessionManager(clock=clock, listeners=[Jittery()])
    async with client(make_app(manager, [Route("/burst", burst)])) as http:
        await http.get("/burst")
    assert seen == ["added first", "added second", "removed first"]
    await manager.close()


async def test_async_session_destroyed_can_read_attributes_before_unbinding(
    clock: FakeClock,
) -> None:
    seen: list[Any] = []

    class Auditor:
        async def session_destroyed(self, event: HttpSessionEvent) -> None:
            await asyncio.sleep(0)
            seen.append(event.session.get_attribute("history"))

        def attribute_removed(self, event: HttpSessionBindingEvent) -> None:
            seen.append(("removed", event.name))

    manager = SessionManager(clock=clock, listeners=[Auditor()])
    async with client(make_app(manager)) as http:
        await http.post("/set/history", params={"value": "h"})
        await http.post("/invalidate")
    assert seen == ["h", ("removed", "history")]
    await manager.close()


async def test_route_code_cannot_read_a_session_it_invalidated(clock: FakeClock) -> None:
    class AsyncDestroyed:
        async def session_destroyed(self, event: HttpSessionEvent) -> None:
            await asyncio.sleep(0)

    async def invalidate_then_read(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["a"] = 1
        session.invalidate()
        try:
            session.get_attribute("a")
        except RuntimeError as exc:
            return JSONResponse({"error": type(exc).__name__})
        return JSONResponse({"error": None})

    manager = SessionManager(clock=clock, listeners=[AsyncDestroyed()])
    async with client(make_app(manager, [Route("/x", invalidate_then_read)])) as http:
        response = await http.get("/x")
    assert response.json() == {"error": "IllegalStateError"}
    await manager.close()


async def test_an_async_value_listener_is_delivered(
    recorded: SessionManager, log: list[Any]
) -> None:
    class AsyncBound:
        async def value_bound(self, event: HttpSessionBindingEvent) -> None:
            log.append(("async bound", event.name))

    async def bind(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["v"] = AsyncBound()
        return Response("ok")

    async with client(make_app(recorded, [Route("/bind", bind)])) as http:
        await http.get("/bind")
    assert ("async bound", "v") in log


async def test_session_id_changed_gets_the_old_id(recorded: SessionManager, log: list[Any]) -> None:
    session = recorded.create_session()
    old = session.id
    new = recorded.change_session_id_now(session)
    assert log[-1] == ("id_changed", old, new)


async def test_a_listener_with_no_listener_method_is_refused(manager: SessionManager) -> None:
    with pytest.raises(TypeError, match="implements no listener method"):
        manager.add_listener(object())


async def test_remove_listener_stops_its_events(manager: SessionManager, log: list[Any]) -> None:
    recorder = Recorder(log)
    manager.add_listener(recorder)
    manager.remove_listener(recorder)
    manager.create_session()
    assert log == []


async def test_listener_may_invalidate_again_during_destruction(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Reentrant:
        def session_destroyed(self, event: HttpSessionEvent) -> None:
            event.session.invalidate()

    manager = SessionManager(clock=clock, listeners=[Reentrant()])
    session = manager.create_session()
    session.invalidate()
    assert "raised" not in caplog.text


def test_listeners_fired_outside_an_event_loop_still_run(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    class AsyncOnly:
        async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            seen.append(event.name)

    with caplog.at_level(logging.ERROR):
        manager = SessionManager(listeners=[AsyncOnly()])
        session = manager.create_session()
        session["a"] = 1
    assert seen == ["a"]


async def test_a_cancelled_wait_for_the_listeners_leaves_the_chain_running(
    clock: FakeClock,
) -> None:
    """``settle`` is shielded: the waiter (a request whose client left, an access under a
    timeout) is cancelled, but the chain still delivers ``session_destroyed`` and unbinds."""
    gate = asyncio.Event()
    seen: list[Any] = []

    class Slow:
        async def attribute_added(self, event: HttpSessionBindingEvent) -> None:
            await gate.wait()
            seen.append(("added", event.name))

        async def session_destroyed(self, event: HttpSessionEvent) -> None:
            seen.append(("destroyed", event.session.get_attribute("a")))

        def attribute_removed(self, event: HttpSessionBindingEvent) -> None:
            seen.append(("removed", event.name))

    manager = SessionManager(clock=clock, listeners=[Slow()])
    session = manager.create_session()
    session["a"] = 1
    session.invalidate()
    waiter = asyncio.get_running_loop().create_task(settle(session))
    await asyncio.sleep(0)  # the waiter is waiting for the chain
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    await settle(session)
    assert seen == [("added", "a"), ("destroyed", 1), ("removed", "a")]
    await manager.close()
