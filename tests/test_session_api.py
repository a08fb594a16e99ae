"""HttpSession's attribute API, mapping protocol and IllegalStateError, through real requests."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servletsession import HttpSession, IllegalStateError, SessionManager, get_session

from .conftest import client, make_app

pytestmark = pytest.mark.anyio


async def test_attribute_set_in_one_request_is_read_in_the_next(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/colour", params={"value": "blue"})
        response = await http.get("/get/colour")
    assert response.json() == {"session": True, "value": "blue"}


async def test_setting_none_removes_the_attribute(manager: SessionManager) -> None:
    session = manager.create_session()
    session.set_attribute("a", 1)
    session.set_attribute("a", None)
    assert "a" not in session
    assert session.get_attribute_names() == []


async def test_get_attribute_returns_the_default_when_absent(manager: SessionManager) -> None:
    session = manager.create_session()
    assert session.get_attribute("missing") is None
    assert session.get_attribute("missing", 7) == 7


async def test_remove_attribute_of_an_absent_name_is_silent(manager: SessionManager) -> None:
    session = manager.create_session()
    session.remove_attribute("never-set")
    assert len(session) == 0


async def test_attribute_names_must_be_strings(manager: SessionManager) -> None:
    session = manager.create_session()
    with pytest.raises(TypeError, match="attribute names are str"):
        session.set_attribute(3, "x")  # type: ignore[arg-type]


async def test_session_is_a_mutable_mapping_over_its_attributes(manager: SessionManager) -> None:
    session = manager.create_session()
    session["a"] = 1
    session.update({"b": 2})
    assert dict(session) == {"a": 1, "b": 2}
    assert len(session) == 2
    assert "a" in session
    del session["a"]
    assert list(session) == ["b"]
    with pytest.raises(KeyError):
        del session["a"]
    with pytest.raises(KeyError):
        session["a"]
    assert session.pop("b") == 2


async def test_two_sessions_with_equal_attributes_are_not_equal(manager: SessionManager) -> None:
    one, two = manager.create_session(), manager.create_session()
    one["k"] = two["k"] = 1
    assert one != two
    assert len({one, two}) == 2


async def test_max_inactive_interval_takes_whole_seconds(manager: SessionManager) -> None:
    session = manager.create_session()
    session.max_inactive_interval = 60
    assert session.max_inactive_interval == 60
    with pytest.raises(TypeError, match="whole seconds"):
        session.max_inactive_interval = 1.5  # type: ignore[assignment]


@pytest.mark.parametrize("seconds", [10**400, 2**31, -(2**31)])
async def test_max_inactive_interval_beyond_what_stores_hold_is_refused(
    manager: SessionManager, seconds: int
) -> None:
    """10**400 once overflowed every later deadline computation: a 500 for the request, then
    a reaper that raised on every tick, so no session expired any more."""
    session = manager.create_session()
    with pytest.raises(ValueError, match="at most"):
        session.max_inactive_interval = seconds
    assert session.max_inactive_interval == 1800
    session.max_inactive_interval = 2**31 - 1
    assert await manager.reap() == 0


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 10**400, 2**31, 0, -1, True])
async def test_absolute_timeout_takes_finite_positive_seconds(
    manager: SessionManager, seconds: float
) -> None:
    """NaN once switched the absolute timeout off silently (``min(x, nan)``)."""
    session = manager.create_session()
    with pytest.raises(ValueError, match="positive seconds"):
        session.absolute_timeout = seconds
    assert session.absolute_timeout is None
    session.absolute_timeout = 3600.5
    assert session.absolute_timeout == 3600.5


ACCESSORS = [
    ("id", lambda s: s.id),
    ("creation_time", lambda s: s.creation_time),
    ("last_accessed_time", lambda s: s.last_accessed_time),
    ("max_inactive_interval", lambda s: s.max_inactive_interval),
    ("is_new", lambda s: s.is_new),
    ("get_attribute", lambda s: s.get_attribute("a")),
    ("get_attribute_names", lambda s: s.get_attribute_names()),
    ("set_attribute", lambda s: s.set_attribute("a", 1)),
    ("remove_attribute", lambda s: s.remove_attribute("a")),
    ("invalidate", lambda s: s.invalidate()),
    ("getitem", lambda s: s["a"]),
    ("len", lambda s: len(s)),
]


@pytest.mark.parametrize(("name", "call"), ACCESSORS, ids=[name for name, _ in ACCESSORS])
async def test_every_accessor_of_an_invalidated_session_raises(
    manager: SessionManager, name: str, call: object
) -> None:
    session = manager.create_session()
    session["a"] = 1
    session.invalidate()
    with pytest.raises(IllegalStateError):
        call(session)  # type: ignore[operator]


async def test_illegal_state_error_is_a_runtime_error() -> None:
    assert issubclass(IllegalStateError, RuntimeError)


async def test_repr_never_shows_the_session_id(manager: SessionManager) -> None:
    session = manager.create_session()
    assert session.id not in repr(session)
    assert "ref=" in repr(session)
    assert session.id not in repr(manager)


async def test_request_session_mapping_reads_create_nothing(manager: SessionManager) -> None:
    async def read(request: Request) -> Response:
        return JSONResponse({"user": request.session.get("user"), "n": len(request.session)})

    async with client(make_app(manager, [Route("/read", read)])) as http:
        response = await http.get("/read")
    assert response.json() == {"user": None, "n": 0}
    assert "set-cookie" not in response.headers
    assert (await manager.stats()).created == 0


async def test_request_session_first_write_creates_the_session(manager: SessionManager) -> None:
    async def write(request: Request) -> Response:
        request.session["user"] = "ada"
        return Response("ok")

    async def read(request: Request) -> Response:
        session = get_session(request, create=False)
        assert isinstance(session, HttpSession)
        return JSONResponse({"user": request.session["user"]})

    async with client(make_app(manager, [Route("/write", write), Route("/read", read)])) as http:
        first = await http.get("/write")
        second = await http.get("/read")
    assert "set-cookie" in first.headers
    assert second.json() == {"user": "ada"}


async def test_request_session_clear_removes_every_attribute(manager: SessionManager) -> None:
    async def clear(request: Request) -> Response:
        request.session.clear()
        return Response("ok")

    async with client(make_app(manager, [Route("/clear", clear, methods=["POST"])])) as http:
        await http.post("/set/a", params={"value": "1"})
        await http.post("/set/b", params={"value": "2"})
        await http.post("/clear")
        response = await http.get("/info")
    assert response.json()["names"] == []
