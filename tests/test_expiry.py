"""Idle timeout, absolute timeout, the reaper, and access timestamps — with a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from servletsession import HttpSessionEvent, MemoryStore, SessionManager, get_session

from .conftest import FakeClock, client, make_app

pytestmark = pytest.mark.anyio


class Destroyed:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.seen.append(event.session.get_attribute("a"))


@pytest.fixture
async def watched(clock: FakeClock) -> tuple[SessionManager, Destroyed]:
    listener = Destroyed()
    manager = SessionManager(clock=clock, max_inactive_interval=60, listeners=[listener])
    yield manager, listener
    await manager.close()


async def test_idle_session_is_not_returned_on_lookup(
    watched: tuple[SessionManager, Destroyed], clock: FakeClock
) -> None:
    manager, listener = watched
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(61)
        response = await http.get("/get/a")
    assert response.json() == {"session": False}
    assert listener.seen == ["1"]


async def test_session_used_within_its_interval_stays(
    watched: tuple[SessionManager, Destroyed], clock: FakeClock
) -> None:
    manager, listener = watched
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        for _ in range(5):
            clock.advance(59)
            response = await http.get("/get/a")
            assert response.json() == {"session": True, "value": "1"}
    assert listener.seen == []


async def test_expired_on_lookup_fires_destroyed_exactly_once(
    watched: tuple[SessionManager, Destroyed], clock: FakeClock
) -> None:
    manager, listener = watched
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(120)
        await http.get("/get/a")
        await http.get("/get/a")
    assert await manager.reap() == 0
    assert listener.seen == ["1"]
    assert (await manager.stats()).expired == 1


async def test_reaper_expires_sessions_nobody_touches_again(
    watched: tuple[SessionManager, Destroyed], clock: FakeClock
) -> None:
    manager, listener = watched
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "x"})
    clock.advance(59)
    assert await manager.reap() == 0
    clock.advance(2)
    assert await manager.reap() == 1
    assert listener.seen == ["x"]
    assert (await manager.stats()).active == 0


async def test_reaper_spares_a_session_touched_since_it_was_scheduled(
    watched: tuple[SessionManager, Destroyed], clock: FakeClock
) -> None:
    manager, listener = watched
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(50)
        await http.get("/get/a")
        clock.advance(50)
        assert await manager.reap() == 0
        clock.advance(11)
        assert await manager.reap() == 1
    assert listener.seen == ["1"]


async def test_a_session_is_never_expired_while_a_request_uses_it(clock: FakeClock) -> None:
    listener = Destroyed()
    manager = SessionManager(clock=clock, max_inactive_interval=60, listeners=[listener])
    entered, leave = asyncio.Event(), asyncio.Event()

    async def slow(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        entered.set()
        await leave.wait()
        return Response(str(session.get_attribute("a")))

    async with client(make_app(manager, [Route("/slow", slow)])) as http:
        await http.post("/set/a", params={"value": "1"})
        task = asyncio.create_task(http.get("/slow"))
        await entered.wait()
        clock.advance(600)
        assert await manager.reap() == 0
        assert (await http.get("/get/a")).json() == {"session": True, "value": "1"}
        leave.set()
        assert (await task).text == "1"
        clock.advance(59)
        assert await manager.reap() == 0  # the idle clock restarted when the request ended
        clock.advance(2)
        assert await manager.reap() == 1
    assert listener.seen == ["1"]
    await manager.close()


async def test_non_positive_interval_never_idles_out(
    manager: SessionManager, clock: FakeClock
) -> None:
    session = manager.create_session()
    session["a"] = 1
    session.max_inactive_interval = 0
    await manager.release(session)
    clock.advance(10 * 365 * 86400)
    assert await manager.reap() == 0
    assert await manager.find(session.id) is session


async def test_shortening_the_interval_moves_the_deadline_earlier(
    manager: SessionManager, clock: FakeClock
) -> None:
    session = manager.create_session()
    session["a"] = 1
    await manager.release(session)
    found = await manager.find(session.id)
    assert found is session
    session.max_inactive_interval = 10
    await manager.release(session)
    clock.advance(11)
    assert await manager.reap() == 1


async def test_reading_attributes_does_not_move_last_accessed_time(
    manager: SessionManager, clock: FakeClock
) -> None:
    session = manager.create_session()
    session["a"] = 1
    before = session.last_accessed_time
    clock.advance(30)
    session.get_attribute("a")
    session["b"] = 2
    assert session.last_accessed_time == before


async def test_last_accessed_time_is_the_start_of_the_previous_request(
    manager: SessionManager, clock: FakeClock
) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        created = clock.now
        clock.advance(10)
        second = (await http.get("/info")).json()
        clock.advance(10)
        third = (await http.get("/info")).json()
    assert second["creation_time"] == created
    assert second["last_accessed_time"] == created
    assert third["last_accessed_time"] == created + 10


async def test_last_accessed_equals_creation_on_the_creating_request(
    manager: SessionManager,
) -> None:
    async def fresh(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["a"] = 1
        same = session.last_accessed_time == session.creation_time
        return Response(f"{session.is_new} {same}")

    async with client(make_app(manager, [Route("/fresh", fresh)])) as http:
        response = await http.get("/fresh")
    assert response.text == "True True"


async def test_is_new_until_a_request_carries_the_id(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        assert (await http.get("/info")).json()["is_new"] is False


async def test_absolute_timeout_ends_even_a_busy_session(clock: FakeClock) -> None:
    listener = Destroyed()
    manager = SessionManager(
        clock=clock, max_inactive_interval=60, absolute_timeout=300, listeners=[listener]
    )
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        for _ in range(5):
            clock.advance(50)
            assert (await http.get("/get/a")).json()["session"] is True
        clock.advance(51)
        assert (await http.get("/get/a")).json() == {"session": False}
    assert listener.seen == ["1"]
    await manager.close()


async def test_a_reaper_tick_touches_only_due_entries(clock: FakeClock) -> None:
    """The tick's work is bounded by what is due, not by how many sessions exist."""
    store = MemoryStore()
    manager = SessionManager(store, clock=clock, max_inactive_interval=100)
    for index in range(1000):
        session = manager.create_session()
        session["n"] = index
        await manager.release(session)
        if index == 9:
            clock.advance(50)  # the first ten are older than the rest
    looked_at = 0

    class CountingDict(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            nonlocal looked_at
            looked_at += 1
            return super().get(key, default)

    store._sessions = CountingDict(store._sessions)
    clock.advance(60)
    assert await manager.reap() == 10
    assert looked_at == 10
    await manager.close()


async def test_background_reaper_runs_on_its_interval(clock: FakeClock) -> None:
    listener = Destroyed()
    manager = SessionManager(
        clock=clock, max_inactive_interval=60, reaper_interval=0.01, listeners=[listener]
    )
    session = manager.create_session()
    session["a"] = "bg"
    await manager.release(session)
    clock.advance(61)
    async with manager:
        for _ in range(200):
            if listener.seen:
                break
            await asyncio.sleep(0.005)
    assert listener.seen == ["bg"]
    assert not manager.reaper_running


async def test_a_failing_reaper_tick_is_logged_and_retried(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyStore(MemoryStore):
        calls = 0

        def claim_expired(self, *args: Any) -> list[Any]:
            FlakyStore.calls += 1
            if FlakyStore.calls == 1:
                raise ConnectionError("store down")
            return super().claim_expired(*args)

    manager = SessionManager(FlakyStore(), clock=clock, reaper_interval=0.01)
    async with manager:
        for _ in range(200):
            if FlakyStore.calls >= 2:
                break
            await asyncio.sleep(0.005)
    assert FlakyStore.calls >= 2
    assert "reaper tick failed" in caplog.text


async def test_streaming_response_keeps_the_session_alive_until_it_ends(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock, max_inactive_interval=60)

    async def stream(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None

        async def body() -> Any:
            for _ in range(3):
                clock.advance(100)  # a long stream, longer than the idle timeout
                assert await manager.reap() == 0
                yield b"x"

        return StreamingResponse(body())

    async with client(make_app(manager, [Route("/stream", stream)])) as http:
        await http.post("/set/a", params={"value": "1"})
        assert (await http.get("/stream")).text == "xxx"
        assert (await http.get("/get/a")).json() == {"session": True, "value": "1"}
    await manager.close()
