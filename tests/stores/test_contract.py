"""The store contract, on every store against real servers (see conftest for the URLs)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from servletsession import HttpSessionEvent, SessionManager, get_session

from ..conftest import FakeClock, make_app
from .conftest import SHARED_KINDS, StoreFactory, stores
from .helpers import Browser, signed

pytestmark = pytest.mark.anyio


class Profile(BaseModel):
    name: str
    since: dt.datetime
    tags: list[str] = []


class DestroyedRecorder:
    """Records the attribute ``a`` of every session destroyed, as its listener saw it."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def session_destroyed(self, event: HttpSessionEvent) -> None:
        self.seen.append(event.session.get_attribute("a"))


class Appender:
    """Appends to a list attribute: the read-modify-write that needs a lock across processes."""

    @staticmethod
    async def route(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        turns = list(session.get_attribute("turns") or [])
        await asyncio.sleep(0.005)  # let another request interleave
        turns.append(request.query_params["turn"])
        session.set_attribute("turns", turns)
        return Response("ok")


async def read_turns(request: Request) -> Response:
    session = get_session(request, create=False)
    return JSONResponse(session.get_attribute("turns") if session else None)


async def mutate(request: Request) -> Response:
    session = get_session(request, create=False)
    assert session is not None
    session.get_attribute("bag").append("x")  # mutated in place, never set again
    return Response("ok")


ROUTES = [
    Route("/append", Appender.route, methods=["POST"]),
    Route("/turns", read_turns),
    Route("/mutate", mutate, methods=["POST"]),
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    b = Browser()
    yield b
    await b.close()


def process(make: StoreFactory, clock: FakeClock, *, store_options: dict[str, Any] | None = None,
            **manager_options: Any) -> tuple[SessionManager, Any]:  # fmt: skip
    """One 'process': its own store object and manager over the shared backend, and its app."""
    manager = SessionManager(make(**(store_options or {})), clock=clock, **manager_options)
    return manager, make_app(manager, ROUTES)


@stores()
async def test_a_session_created_in_one_process_is_used_in_another(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    _, first = process(store_factory, clock)
    _, second = process(store_factory, clock)
    await browser.post(first, "/set/colour", params={"value": "blue"})
    response = await browser.get(second, "/get/colour")
    assert response.json() == {"session": True, "value": "blue"}


@stores(*SHARED_KINDS)
async def test_different_attributes_written_concurrently_both_persist(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    a, first = process(store_factory, clock)
    b, _second = process(store_factory, clock)
    await browser.post(first, "/set/seed", params={"value": "1"})
    sid = browser.session_id
    one, two = await a.find(sid), await b.find(sid)
    assert one is not None
    assert two is not None
    assert one is not two
    one["left"] = "L"
    two["right"] = "R"
    await a.release(one)
    await b.release(two)
    names = (await browser.get(first, "/info")).json()["names"]
    assert sorted(names) == ["left", "right", "seed"]


@stores(*SHARED_KINDS)
async def test_session_locking_loses_no_turn_across_processes(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    _, first = process(store_factory, clock, locking="session")
    _, second = process(store_factory, clock, locking="session")
    await browser.post(first, "/set/seed", params={"value": "1"})
    apps = [first, second]
    await asyncio.gather(
        *(browser.post(apps[i % 2], "/append", params={"turn": str(i)}) for i in range(20))
    )
    turns = (await browser.get(first, "/turns")).json()
    assert sorted(turns, key=int) == [str(i) for i in range(20)]


@stores(*SHARED_KINDS)
async def test_a_value_the_store_cannot_persist_is_refused_with_its_name(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    manager, _ = process(store_factory, clock)
    session = manager.create_session()
    with pytest.raises(TypeError, match=r"attribute 'when': .*tuple"):
        session.set_attribute("when", (1, 2))
    with pytest.raises(TypeError, match=r"attribute 'profile': .*Profile"):
        session.set_attribute("profile", Profile(name="a", since=dt.datetime(2026, 1, 1)))
    assert session.get_attribute_names() == []


@stores(*SHARED_KINDS)
async def test_json_datetimes_and_allowed_models_round_trip(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    a, _first = process(store_factory, clock, models=[Profile])
    b, _ = process(store_factory, clock, models=[Profile])
    profile = Profile(
        name="ada", since=dt.datetime(2026, 11, 24, 12, 30, tzinfo=dt.UTC), tags=["x"]
    )
    values = {
        "n": 3,
        "f": 1.5,
        "s": "é",
        "list": [1, None, {"k": True}],
        "when": dt.datetime(2026, 1, 2, 3, 4, 5),
        "day": dt.date(2026, 5, 6),
        "profile": profile,
    }
    session = a.create_session()
    for name, value in values.items():
        session[name] = value
    await a.release(session)
    loaded = await b.find(session.id)
    assert loaded is not None
    assert dict(loaded) == values
    assert type(loaded["profile"]) is Profile


@stores(*SHARED_KINDS)
async def test_a_stored_session_that_cannot_be_read_back_gives_a_fresh_session(
    store_factory: StoreFactory,
    clock: FakeClock,
    browser: Browser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old_code = SessionManager(store_factory(models=[Profile]), clock=clock)
    stored = old_code.create_session()
    stored["profile"] = Profile(name="x", since=dt.datetime(2026, 1, 1))
    await old_code.release(stored)
    manager, new_code = process(store_factory, clock)  # a redeploy that dropped the model
    browser.cookie = signed(stored.id)
    with caplog.at_level(logging.WARNING, logger="servletsession"):
        response = await browser.get(new_code, "/info")
        again = await browser.get(new_code, "/info")
    assert response.status_code == 200
    assert response.json() is None
    assert again.json() is None
    assert caplog.text.count("unreadable attribute 'profile'") == 1
    assert await manager.store.count() == 0


@stores(*SHARED_KINDS)
async def test_save_mode_on_set_ignores_in_place_mutation_and_always_writes_it(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    _, on_set = process(store_factory, clock)
    _, always = process(store_factory, clock, save_mode="always")
    setup = SessionManager(store_factory(), clock=clock)
    stored = setup.create_session()
    stored["bag"] = []
    await setup.release(stored)
    browser.cookie = signed(stored.id)
    await browser.post(on_set, "/mutate")
    assert (await stored_attribute(store_factory, clock, stored.id, "bag")) == []
    await browser.post(always, "/mutate")
    assert (await stored_attribute(store_factory, clock, stored.id, "bag")) == ["x"]


@stores(*SHARED_KINDS)
async def test_save_mode_on_get_writes_back_attributes_that_were_read(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    setup = SessionManager(store_factory(), clock=clock)
    s = setup.create_session()
    s["bag"] = []
    await setup.release(s)
    manager = SessionManager(store_factory(), clock=clock, save_mode="on_get")
    loaded = await manager.find(s.id)
    assert loaded is not None
    loaded.get_attribute("bag").append("y")
    await manager.release(loaded)
    assert (await stored_attribute(store_factory, clock, s.id, "bag")) == ["y"]


@stores()
async def test_expired_session_fires_destroyed_exactly_once_across_reapers(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    watch = DestroyedRecorder()
    seen = watch.seen
    managers = [SessionManager(store_factory(save_period=0), clock=clock, max_inactive_interval=60,
                               listeners=[watch]) for _ in range(3)]  # fmt: skip
    app = make_app(managers[0], ROUTES)
    await browser.post(app, "/set/a", params={"value": "kept"})
    clock.advance(61)
    counts = await asyncio.gather(*(m.reap() for m in managers))
    assert sum(counts) == 1
    assert seen == ["kept"]
    assert await managers[0].store.count() == 0


@stores()
async def test_expired_on_lookup_is_destroyed_once_and_not_returned(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    watch = DestroyedRecorder()
    seen = watch.seen
    a = SessionManager(
        store_factory(save_period=0), clock=clock, max_inactive_interval=60, listeners=[watch]
    )
    b = SessionManager(
        store_factory(save_period=0), clock=clock, max_inactive_interval=60, listeners=[watch]
    )
    await browser.post(make_app(a, ROUTES), "/set/a", params={"value": "v"})
    clock.advance(61)
    results = await asyncio.gather(a.find(browser.session_id), b.find(browser.session_id))
    assert results == [None, None]
    assert seen == ["v"]
    assert await a.reap() + await b.reap() == 0


@stores(*SHARED_KINDS)
async def test_throttled_touch_never_lets_a_live_session_idle_out_early(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    _manager, app = process(
        store_factory, clock, store_options={"save_period": 30}, max_inactive_interval=60
    )
    other, _ = process(
        store_factory, clock, store_options={"save_period": 30}, max_inactive_interval=60
    )
    await browser.post(app, "/set/a", params={"value": "1"})
    for _ in range(6):
        clock.advance(25)  # inside save_period: no write; still the idle clock restarts
        assert (await browser.get(app, "/get/a")).json()["session"] is True
        assert await other.reap() == 0
    clock.advance(100)
    assert (await browser.get(app, "/get/a")).json()["session"] is False


@stores(*SHARED_KINDS)
async def test_change_session_id_moves_the_stored_session(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    _, first = process(store_factory, clock)
    _, second = process(store_factory, clock)
    await browser.post(first, "/set/a", params={"value": "1"})
    old_cookie = browser.cookie
    await browser.post(first, "/change-id")
    assert browser.cookie != old_cookie
    assert (await browser.get(second, "/get/a")).json() == {"session": True, "value": "1"}
    replay = Browser()
    replay.cookie = old_cookie
    assert (await replay.get(second, "/get/a")).json() == {"session": False}
    await replay.close()


@stores()
async def test_invalidated_session_is_gone_for_every_process(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    _, first = process(store_factory, clock)
    _, second = process(store_factory, clock)
    await browser.post(first, "/set/a", params={"value": "1"})
    cookie = browser.cookie
    await browser.post(first, "/invalidate")
    replay = Browser()
    replay.cookie = cookie
    assert (await replay.get(second, "/get/a")).json() == {"session": False}
    await replay.close()


@stores()
async def test_a_session_made_by_get_session_is_stored_even_without_attributes(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    """Servlet creation: ``request.getSession()`` makes a session; the next request carries
    its ID, joins it (``is_new`` False) and keeps the ID; created and destroyed pair up."""
    events: list[str] = []

    class Pairs:
        def session_created(self, event: HttpSessionEvent) -> None:
            events.append("created")

        def session_destroyed(self, event: HttpSessionEvent) -> None:
            events.append("destroyed")

    async def touch(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        return JSONResponse({"id": session.id, "new": session.is_new})

    manager = SessionManager(store_factory(), clock=clock, listeners=[Pairs()])
    app = make_app(manager, [Route("/touch", touch)])
    browser = Browser()
    first = (await browser.get(app, "/touch")).json()
    second = await browser.get(app, "/touch")
    assert first["new"] is True
    assert second.json() == {"id": first["id"], "new": False}
    assert "set-cookie" not in second.headers
    assert await manager.store.count() == 1
    assert (await browser.post(app, "/invalidate")).status_code == 200
    assert events == ["created", "destroyed"]
    await browser.close()


async def test_reading_request_session_creates_nothing(clock: FakeClock) -> None:
    async def read(request: Request) -> Response:
        return JSONResponse({"value": request.session.get("k"), "size": len(request.session)})

    manager = SessionManager(clock=clock)
    app = make_app(manager, [Route("/read", read)])
    browser = Browser()
    response = await browser.get(app, "/read")
    assert response.json() == {"value": None, "size": 0}
    assert "set-cookie" not in response.headers
    assert await manager.store.count() == 0
    await browser.close()


@stores(*SHARED_KINDS)
async def test_activation_listeners_fire_around_loads_and_saves(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    events: list[str] = []

    class Tracked(BaseModel):
        n: int = 0

        def session_will_passivate(self, event: HttpSessionEvent) -> None:
            events.append(f"passivate {self.n}")

        def session_did_activate(self, event: HttpSessionEvent) -> None:
            events.append(f"activate {self.n}")

    a = SessionManager(store_factory(), clock=clock, models=[Tracked])
    session = a.create_session()
    session["t"] = Tracked(n=1)
    await a.release(session)
    b = SessionManager(store_factory(), clock=clock, models=[Tracked])
    loaded = await b.find(session.id)
    assert loaded is not None
    assert events == ["passivate 1", "activate 1"]  # left process a, came back in b
    await b.release(loaded)
    assert events == ["passivate 1", "activate 1", "passivate 1"]  # left b: one pair each


async def stored_attribute(make: StoreFactory, clock: FakeClock, session_id: str, name: str) -> Any:
    """Read an attribute as a fresh process would see it."""
    manager = SessionManager(make(), clock=clock)
    session = await manager.find(session_id)
    assert session is not None
    value = session.get_attribute(name)
    await manager.release(session)
    return value


@stores()
async def test_changes_made_while_streaming_are_saved_before_the_final_chunk(
    store_factory: StoreFactory, clock: FakeClock, browser: Browser
) -> None:
    async def stream(request: Request) -> Response:
        session = get_session(request)
        assert session is not None

        async def body() -> AsyncIterator[bytes]:
            yield b"first "
            session.set_attribute("late", "kept")
            yield b"last"

        return StreamingResponse(body())

    manager = SessionManager(store_factory(), clock=clock)
    app = make_app(manager, [*ROUTES, Route("/stream", stream)])
    await browser.post(app, "/set/seed", params={"value": "1"})
    seen_at_final_chunk: list[Any] = []

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:  # the request body once; then, like a server, wait for a disconnect
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            value = await stored_attribute(store_factory, clock, browser.session_id, "late")
            seen_at_final_chunk.append(value)

    cookie = f"sessionid={browser.cookie}".encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "https", "path": "/stream", "raw_path": b"/stream", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"testserver"), (b"cookie", cookie)],
        "client": ("127.0.0.1", 1), "server": ("testserver", 443),
    }  # fmt: skip
    await app(scope, receive, send)
    assert seen_at_final_chunk == ["kept"]


@stores(*SHARED_KINDS)
async def test_concurrent_inserts_of_the_same_new_attribute_do_not_fail(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    setup = SessionManager(store_factory(), clock=clock)
    stored = setup.create_session()
    stored["seed"] = 1
    await setup.release(stored)
    managers = [SessionManager(store_factory(), clock=clock) for _ in range(4)]
    loaded = [await m.find(stored.id) for m in managers]
    for index, session in enumerate(loaded):
        assert session is not None
        session["same"] = index
    await asyncio.gather(*(m.release(s) for m, s in zip(managers, loaded, strict=True) if s))
    assert await stored_attribute(store_factory, clock, stored.id, "same") in range(4)


@stores("redis")
async def test_redis_layout_hash_tag_ttl_and_deadline_index(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    from servletsession.stores.redis import RedisStore

    store = store_factory(save_period=10, ttl_grace=100)
    assert isinstance(store, RedisStore)
    manager = SessionManager(store, clock=clock, max_inactive_interval=60)
    session = manager.create_session()
    session["a"] = "x"
    await manager.release(session)
    key = store.key(session.id)
    index = store.layout.index_of(session.id)
    # One hash tag for the session's hash, its lock and its shard's indexes: one Cluster slot.
    assert key.startswith(store.prefix)
    assert key.endswith(f":s:{session.id}")
    tag = key[len(store.prefix) :].split(":")[0]
    assert tag.startswith("{")
    assert tag.endswith("}")
    assert index == f"{store.prefix}{tag}:expiries"
    assert store.layout.lock_key(session.id) == f"{store.prefix}{tag}:l:{session.id}"
    assert store.layout.principals_of(session.id).startswith(f"{store.prefix}{tag}:")
    fields = await store.client.hgetall(key)
    assert fields[b"a:a"] == b'["j","x"]'
    assert {b"#c", b"#l", b"#e", b"#i", b"#a"} <= set(fields)
    ttl = await store.client.pttl(key)
    # deadline (interval + pad, pad = min(save_period, 10 % of the interval)) + grace
    assert (60 + 6 + 100) * 1000 - 2000 < ttl <= (60 + 6 + 100) * 1000
    score = await store.client.zscore(index, session.id)
    assert score == pytest.approx(clock.now + 60 + 6)
