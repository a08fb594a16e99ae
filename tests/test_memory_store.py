"""MemoryStore keeps live objects; concurrent requests of one session share one HttpSession."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from servletsession import HttpSession, MemoryStore, SessionManager, SessionStore, get_session

from .conftest import FakeClock, client, make_app

pytestmark = pytest.mark.anyio


class History:
    """An arbitrary Python object: nothing about it is serializable on purpose."""

    def __init__(self) -> None:
        self.turns: list[str] = []
        self.lock = asyncio.Lock()


async def test_the_stored_object_is_the_same_object_next_request(manager: SessionManager) -> None:
    seen: list[Any] = []

    async def remember(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        if "history" not in session:
            session["history"] = History()
        seen.append(session["history"])
        return Response("ok")

    async with client(make_app(manager, [Route("/r", remember)])) as http:
        await http.get("/r")
        await http.get("/r")
    assert seen[0] is seen[1]


async def test_a_change_made_while_streaming_is_kept(manager: SessionManager) -> None:
    async def stream(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        history = session.get_attribute("history") or History()
        session["history"] = history

        async def body() -> Any:
            for word in ("hello", "there"):
                history.turns.append(word)  # mutated after the response started
                yield word.encode()

        return StreamingResponse(body())

    async def read(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        return JSONResponse(session["history"].turns)

    async with client(make_app(manager, [Route("/stream", stream), Route("/read", read)])) as http:
        await http.get("/stream")
        await http.get("/stream")
        response = await http.get("/read")
    assert response.json() == ["hello", "there", "hello", "there"]


async def test_attribute_set_during_streaming_of_an_existing_session_is_kept(
    manager: SessionManager,
) -> None:
    async def stream(request: Request) -> Response:
        session = get_session(request)
        assert session is not None

        async def body() -> Any:
            yield b"x"
            session["late"] = "kept"

        return StreamingResponse(body())

    async with client(make_app(manager, [Route("/stream", stream)])) as http:
        await http.post("/set/a", params={"value": "1"})
        await http.get("/stream")
        response = await http.get("/get/late")
    assert response.json() == {"session": True, "value": "kept"}


async def test_concurrent_requests_of_one_session_share_one_object(manager: SessionManager) -> None:
    objects: list[HttpSession] = []
    gate, all_in = asyncio.Event(), asyncio.Event()

    async def hold(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        objects.append(session)
        if len(objects) == 5:
            all_in.set()
        await gate.wait()
        return Response("ok")

    async with client(make_app(manager, [Route("/hold", hold)])) as http:
        await http.post("/set/a", params={"value": "1"})
        tasks = [asyncio.create_task(http.get("/hold")) for _ in range(5)]
        await all_in.wait()
        gate.set()
        await asyncio.gather(*tasks)
    assert all(obj is objects[0] for obj in objects)


async def test_100_concurrent_requests_each_setting_an_attribute_leave_100(
    manager: SessionManager,
) -> None:
    async def put(request: Request) -> Response:
        session = get_session(request, create=False)
        assert session is not None
        await asyncio.sleep(0)  # interleave with the other requests
        session[request.path_params["name"]] = True
        return Response("ok")

    async with client(make_app(manager, [Route("/put/{name}", put)])) as http:
        await http.post("/set/seed", params={"value": "1"})
        await asyncio.gather(*(http.get(f"/put/n{i}") for i in range(100)))
        names = (await http.get("/info")).json()["names"]
    assert len(set(names) - {"seed"}) == 100


async def test_memory_store_meets_the_store_contract() -> None:
    assert isinstance(MemoryStore(), SessionStore)


async def test_memory_store_accepts_any_python_value(manager: SessionManager) -> None:
    session = manager.create_session()
    session["lock"] = asyncio.Lock()
    session["lambda"] = lambda: 1
    assert callable(session["lambda"])


async def test_stats_count_the_lifecycle(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock, max_inactive_interval=100)
    async with (
        client(make_app(manager)) as a,
        client(make_app(manager)) as b,
        client(make_app(manager)) as c,
    ):
        await a.post("/set/x", params={"value": "1"})
        clock.advance(10)
        await b.post("/set/x", params={"value": "1"})
        await c.post("/set/x", params={"value": "1"})
        clock.advance(20)
        await a.post("/invalidate")
        clock.advance(200)
        await manager.reap()
    stats = await manager.stats()
    assert (stats.active, stats.created, stats.invalidated, stats.expired) == (0, 3, 1, 2)
    assert stats.max_active == 3
    assert (
        stats.max_alive_time == 220
    )  # b and c were created at +10, last used then, expired at +230
    assert stats.average_alive_time == pytest.approx((30 + 220 + 220) / 3)
    await manager.close()
