"""Rolling cookies: ``rolling=True`` re-sends the cookie with a fresh ``Max-Age`` on responses that
consulted their session, throttled, and never keeps a session alive the server has ended."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from servletsession import ConfigurationError, SessionManager, SessionMiddleware, get_session
from servletsession import transport as transport_module
from servletsession.config import TransportSettings
from servletsession.transport import RollingThrottle

from .conftest import SECRET, FakeClock, client, cookie_header, make_app

pytestmark = pytest.mark.anyio

MAX_AGE = 600  # default interval: max(60, 600 / 10) = 60 s


def rolling_app(manager: SessionManager, **options: Any) -> Starlette:
    return make_app(manager, max_age=MAX_AGE, rolling=True, **options)


async def test_a_consulted_session_gets_its_cookie_again_once_the_interval_passed(
    manager: SessionManager, clock: FakeClock
) -> None:
    async with client(rolling_app(manager)) as http:
        value = (await http.post("/set/a", params={"value": "1"})).cookies["sessionid"]
        clock.advance(59)
        early = await http.get("/get/a")
        clock.advance(2)
        rolled = await http.get("/get/a")
        again = await http.get("/get/a")
    assert "set-cookie" not in early.headers  # the creating response's cookie counts as sent
    cookie = rolled.headers["set-cookie"]
    assert cookie.startswith(f"sessionid={value};")  # the same ID, a fresh Max-Age
    assert f"Max-Age={MAX_AGE}" in cookie
    assert rolled.headers["cache-control"] == "private"
    assert rolled.headers["vary"] == "Cookie"
    assert "set-cookie" not in again.headers  # throttled: once per interval


async def test_without_rolling_a_returning_request_gets_no_cookie(
    manager: SessionManager, clock: FakeClock
) -> None:
    async with client(make_app(manager, max_age=MAX_AGE)) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(500)
        response = await http.get("/get/a")
    assert "set-cookie" not in response.headers


async def test_a_response_that_did_not_consult_the_session_never_rolls(
    manager: SessionManager, clock: FakeClock
) -> None:
    async with client(rolling_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(120)
        untouched = await http.get("/untouched")
        consulted = await http.get("/get/a")
    assert "set-cookie" not in untouched.headers
    assert "vary" not in untouched.headers
    assert "set-cookie" in consulted.headers  # the session was due all along


async def test_an_unknown_id_is_not_rolled_into_a_cookie(
    manager: SessionManager, clock: FakeClock
) -> None:
    app = rolling_app(manager)
    async with client(app) as http:
        value = (await http.post("/set/a", params={"value": "1"})).cookies["sessionid"]
        await http.post("/invalidate")
        clock.advance(120)
        http.cookies.clear()
        response = await http.get("/get/a", headers=cookie_header(value))
    assert response.json() == {"session": False}
    assert "set-cookie" not in response.headers


async def test_a_rolled_cookie_never_revives_an_idle_expired_session(
    clock: FakeClock,
) -> None:
    """The server-side timeouts stay the authority: a cookie still alive in the browser names a
    session the server ended; it gets no session and its cookie is deleted."""
    manager = SessionManager(clock=clock, max_inactive_interval=300)
    async with client(rolling_app(manager)) as http:
        value = (await http.post("/set/a", params={"value": "1"})).cookies["sessionid"]
        clock.advance(301)  # within the cookie's Max-Age (600), past the idle timeout
        response = await http.get("/get/a", headers=cookie_header(value))
    assert response.json() == {"session": False}
    assert "Max-Age=0" in response.headers["set-cookie"]
    await manager.close()


async def test_rolling_never_outlasts_the_absolute_timeout(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock, absolute_timeout=200)
    async with client(rolling_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        rolled = []
        for _ in range(3):
            clock.advance(61)
            rolled.append("set-cookie" in (await http.get("/get/a")).headers)
        clock.advance(20)  # 203 s after creation, busy all along
        response = await http.get("/get/a")
    assert rolled == [True, True, True]
    assert response.json() == {"session": False}
    assert "Max-Age=0" in response.headers["set-cookie"]
    await manager.close()


async def test_an_id_change_sends_the_new_cookie_and_restarts_the_interval(
    manager: SessionManager, clock: FakeClock
) -> None:
    async with client(rolling_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(61)
        changed = await http.post("/change-id")
        clock.advance(30)
        soon_after = await http.get("/get/a")
    assert changed.headers.get_list("set-cookie")[0].startswith("sessionid=")
    assert len(changed.headers.get_list("set-cookie")) == 1  # the new cookie, not also a roll
    assert "set-cookie" not in soon_after.headers


async def test_overlapping_requests_of_one_session_roll_it_once(
    manager: SessionManager, clock: FakeClock
) -> None:
    both_in = asyncio.Event()
    arrived = 0

    async def slow(request: Request) -> Response:
        nonlocal arrived
        get_session(request, create=False)
        arrived += 1
        if arrived == 2:
            both_in.set()
        await both_in.wait()
        return Response("ok")

    app = rolling_app(manager, routes=[Route("/slow", slow)])
    async with client(app) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(61)
        first, second = await asyncio.gather(http.get("/slow"), http.get("/slow"))
    assert ["set-cookie" in r.headers for r in (first, second)].count(True) == 1


async def test_each_worker_throttles_on_its_own(manager: SessionManager, clock: FakeClock) -> None:
    """Two middlewares (two workers of one store) each refresh a session once per interval."""
    one, two = rolling_app(manager), rolling_app(manager)
    async with client(one) as first, client(two) as second:
        value = (await first.post("/set/a", params={"value": "1"})).cookies["sessionid"]
        clock.advance(61)
        headers = cookie_header(value)
        rolled = [
            "set-cookie" in (await http.get("/get/a", headers=headers)).headers
            for http in (first, second, first, second)
        ]
    assert rolled == [True, True, False, False]


async def test_rolling_interval_is_configurable(manager: SessionManager, clock: FakeClock) -> None:
    async with client(rolling_app(manager, rolling_interval=10)) as http:
        await http.post("/set/a", params={"value": "1"})
        clock.advance(9)
        early = await http.get("/get/a")
        clock.advance(2)
        rolled = await http.get("/get/a")
    assert "set-cookie" not in early.headers
    assert "set-cookie" in rolled.headers


async def test_composite_rolls_only_the_cookie(manager: SessionManager, clock: FakeClock) -> None:
    app = rolling_app(manager, id_resolver="composite")
    async with client(app) as http:
        token = (
            await http.post("/set/a", params={"value": "1"}, headers={"x-auth-token": ""})
        ).headers["x-auth-token"]
        await http.post("/set/b", params={"value": "2"})  # a cookie session
        clock.advance(61)
        by_header = await http.get("/get/a", headers={"x-auth-token": token})
        by_cookie = await http.get("/get/b")
    assert "set-cookie" not in by_header.headers
    assert "x-auth-token" not in by_header.headers
    assert "set-cookie" in by_cookie.headers


@pytest.mark.parametrize(
    ("max_age", "every"), [(600, 60.0), (86_400, 8_640.0), (30, 15.0), (100, 50.0)]
)
def test_default_interval_is_a_tenth_of_max_age_within_bounds(max_age: int, every: float) -> None:
    settings = TransportSettings(rolling=True, max_age=max_age)
    assert settings.roll_every() == every


def test_the_throttle_forgets_stale_entries_and_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    throttle = RollingThrottle(60)
    throttle.sent("a", 0)
    throttle.sent("b", 30)
    assert len(throttle) == 2
    throttle.sent("c", 70)  # "a" is stale now: it goes
    assert len(throttle) == 2
    assert throttle.due("a", 71)  # forgotten means due, not lost
    throttle.forget("b")
    assert len(throttle) == 2  # "c" and "a"
    monkeypatch.setattr(transport_module, "_ROLLED_LIMIT", 3)
    for index, name in enumerate("defgh"):
        throttle.sent(name, 72 + index)
    assert len(throttle) == 3


async def test_an_id_change_or_invalidation_forgets_the_old_ids_throttle_entry(
    manager: SessionManager, clock: FakeClock
) -> None:
    app = rolling_app(manager)
    sizes = []
    async with client(app) as http:
        await http.post("/set/a", params={"value": "1"})
        stack: Any = app.middleware_stack  # the one serving the requests
        while not isinstance(stack, SessionMiddleware):
            stack = stack.app
        throttle = stack._transport.rolling
        sizes.append(len(throttle))
        await http.post("/change-id")
        sizes.append(len(throttle))  # the new ID's entry only
        await http.post("/invalidate")
        sizes.append(len(throttle))
    assert sizes == [1, 1, 0]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"rolling": True}, "set max_age="),
        ({"rolling_interval": 30, "max_age": 600}, "without rolling=True"),
        ({"rolling": True, "max_age": 600, "rolling_interval": 0}, "positive"),
        ({"rolling": True, "max_age": 600, "rolling_interval": 600}, "shorter than max_age"),
        # NaN passes every comparison and would switch the throttle off: refused, as are
        # infinities, booleans and strings (pydantic would otherwise read "nan" or True).
        ({"rolling": True, "max_age": 600, "rolling_interval": float("nan")}, "finite number"),
        ({"rolling": True, "max_age": 600, "rolling_interval": float("inf")}, "finite number"),
        ({"rolling": True, "max_age": 600, "rolling_interval": float("-inf")}, "finite number"),
        ({"rolling": True, "max_age": 600, "rolling_interval": "nan"}, "valid number"),
        ({"rolling": True, "max_age": 600, "rolling_interval": "30"}, "valid number"),
        ({"rolling": True, "max_age": 600, "rolling_interval": True}, "valid number"),
        ({"rolling": True, "max_age": 600, "id_resolver": "header"}, "sends no cookie"),
    ],
)
def test_wrong_rolling_options_fail_at_construction(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        SessionMiddleware(Starlette(), secret_key=SECRET, **options)
