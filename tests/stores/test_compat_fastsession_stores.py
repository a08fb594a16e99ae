"""The FastSession compat session on every store: what a dict keeps survives a save and a load."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servletsession import HttpSessionBindingEvent, SessionManager
from servletsession.compat.fastsession import FastSessionMiddleware

from ..conftest import SECRET, client
from .conftest import StoreFactory, stores

pytestmark = pytest.mark.anyio


async def write(request: Request) -> Response:
    state = request.state.session
    session = state.get_session()
    session["nothing"] = None
    session |= {"history": ["hi"], "empty": None}
    session.setdefault("default", None)
    state.save_session()
    return Response("saved")


async def mutate(request: Request) -> Response:
    state = request.state.session
    state.get_session()["history"].append("again")  # mutated in place, then saved as FastSession
    state.save_session()
    return Response("saved")


async def read(request: Request) -> Response:
    session = request.state.session.get_session()
    return JSONResponse([session.copy(), "nothing" in session, session["nothing"] is None])


async def read_all(request: Request) -> Response:
    return JSONResponse(request.state.session.get_session().copy())


def app_on(store: object) -> Starlette:
    app = Starlette(routes=[Route("/write", write), Route("/mutate", mutate), Route("/read", read)])
    manager = SessionManager(store)  # type: ignore[arg-type]
    app.add_middleware(FastSessionMiddleware, secret_key=SECRET, manager=manager)
    return app


@stores("memory", "sqlite", "postgresql", "redis")
async def test_none_values_and_saved_mutations_survive_the_store(
    store_factory: StoreFactory,
) -> None:
    async with client(app_on(store_factory())) as one, client(app_on(store_factory())) as two:
        await one.get("/write")
        await one.get("/mutate")
        two.cookies = one.cookies  # another worker, loading from the store
        copy, present, is_none = (await two.get("/read")).json()
    assert copy == {"nothing": None, "history": ["hi", "again"], "empty": None, "default": None}
    assert present is True
    assert is_none is True


@stores("sqlite", "redis")
async def test_save_session_keeps_a_concurrent_change_of_another_attribute(
    store_factory: StoreFactory,
) -> None:
    """Worker 2 reads the session, worker 1 changes ``a`` and saves, then worker 2 changes ``b``
    and calls ``save_session()`` (as ChatStream does after every request): ``a`` stays changed,
    since worker 2 never changed it."""
    b_loaded, a_done = asyncio.Event(), asyncio.Event()

    async def start(request: Request) -> Response:
        session = request.state.session.get_session()
        session["a"], session["b"] = "old", 0
        return Response("ok")

    async def set_a(request: Request) -> Response:
        request.state.session.get_session()["a"] = "new"
        request.state.session.save_session()
        return Response("ok")

    async def bump_b(request: Request) -> Response:
        session = request.state.session.get_session()
        b_loaded.set()
        await a_done.wait()
        session["b"] += 1
        request.state.session.save_session()
        return Response("ok")

    def worker() -> Starlette:
        routes = [Route("/start", start), Route("/a", set_a), Route("/b", bump_b),
                  Route("/read", read_all)]  # fmt: skip
        app = Starlette(routes=routes)
        manager = SessionManager(store_factory())
        app.add_middleware(FastSessionMiddleware, secret_key=SECRET, manager=manager)
        return app

    async with client(worker()) as one, client(worker()) as two:
        await one.get("/start")
        two.cookies = one.cookies

        async def change_a() -> None:
            await b_loaded.wait()
            await one.get("/a")
            a_done.set()

        await asyncio.gather(change_a(), two.get("/b"))
        copy = (await two.get("/read")).json()
    assert copy == {"a": "new", "b": 1}


@stores("sqlite", "redis")
async def test_save_session_sets_again_only_what_was_mutated(store_factory: StoreFactory) -> None:
    replaced: list[str] = []

    class Replaced:
        def attribute_replaced(self, event: HttpSessionBindingEvent) -> None:
            replaced.append(event.name)

    async def chat(request: Request) -> Response:
        state = request.state.session
        session = state.get_session()
        session.setdefault("history", []).append("hi")  # mutated in place
        session.setdefault("user", {"name": "ada"})  # only read
        state.save_session()
        state.save_session()  # nothing changed since the last save
        return Response("ok")

    app = Starlette(routes=[Route("/chat", chat), Route("/read", read_all)])
    manager = SessionManager(store_factory(), listeners=[Replaced()])
    app.add_middleware(FastSessionMiddleware, secret_key=SECRET, manager=manager)
    async with client(app) as http:
        await http.get("/chat")
        await http.get("/chat")
        copy = (await http.get("/read")).json()
    assert copy == {"history": ["hi", "hi"], "user": {"name": "ada"}}
    assert replaced == ["history"]  # the second request's in-place append; the first one set it
