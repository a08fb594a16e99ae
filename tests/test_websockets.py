"""Websockets keep their session alive and are closed with 1008 when it ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from servletsession import SessionManager, get_session
from servletsession.stores import SQLStore
from servletsession.testing import login

from .conftest import FakeClock, cookie_header, make_app


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            session = get_session(websocket, create=False)
            await websocket.send_text(f"{text} {session.get_attribute('a') if session else None}")
    except WebSocketDisconnect:
        pass


ROUTES = [WebSocketRoute("/ws", echo)]


def open_session(http: TestClient, principal: str | None = None) -> dict[str, str]:
    """Give the client a session; TestClient's websockets (always ws://) need its Secure cookie
    passed by hand."""
    login(http, attributes={"a": "kept"}, principal=principal)
    return cookie_header(http.cookies["sessionid"])


def test_invalidating_the_session_closes_its_websockets_with_1008(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    with TestClient(make_app(manager, ROUTES), base_url="https://testserver") as http:
        cookie = open_session(http)
        with (
            http.websocket_connect("/ws", headers=cookie) as first,
            http.websocket_connect("/ws", headers=cookie) as second,
        ):
            first.send_text("hi")
            assert first.receive_text() == "hi kept"
            http.post("/invalidate", headers=cookie)
            for socket in (first, second):
                message = socket.receive()
                assert message["type"] == "websocket.close"
                assert message["code"] == 1008


def test_invalidate_all_closes_the_principals_websockets(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    with TestClient(make_app(manager, ROUTES), base_url="https://testserver") as http:
        cookie = open_session(http, principal="ada")
        with http.websocket_connect("/ws", headers=cookie) as socket:
            socket.send_text("x")
            assert socket.receive_text() == "x kept"
            assert http.portal.call(manager.invalidate_all, "ada") == 1
            assert socket.receive()["code"] == 1008


def test_an_open_websocket_keeps_its_session_alive_on_a_shared_store(
    clock: FakeClock, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/ws.db"
    here = SessionManager(SQLStore(url, save_period=0), clock=clock, max_inactive_interval=60,
                          websocket_touch_interval=0.01)  # fmt: skip
    there = SessionManager(SQLStore(url, save_period=0), clock=clock, max_inactive_interval=60)
    with (
        TestClient(make_app(here, ROUTES), base_url="https://testserver") as http,
        TestClient(make_app(there), base_url="https://testserver") as other,
    ):
        cookie = open_session(http)
        session_id = cookie["cookie"].split("=", 1)[1].split(".")[0]

        def touched_since(moment: float) -> bool:
            """The other worker sees a deadline a touch made after ``moment``."""
            seen = other.portal.call(there.peek, session_id)
            return seen is not None and seen._expires_at() > moment + 60

        with http.websocket_connect("/ws", headers=cookie) as socket:
            for _ in range(5):
                clock.advance(50)  # past the idle timeout in total, but the socket is open
                give_up = time.monotonic() + 10
                while not touched_since(clock.now - 1) and time.monotonic() < give_up:
                    time.sleep(0.01)  # the connection's touch runs on the server's own loop
                assert other.portal.call(there.reap) == 0
            socket.send_text("still")
            assert socket.receive_text() == "still kept"
        clock.advance(61)
        assert other.portal.call(there.reap) == 1


def test_a_session_invalidated_on_another_worker_closes_the_websocket(
    clock: FakeClock, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/ws.db"
    here = SessionManager(SQLStore(url, save_period=0), clock=clock, websocket_touch_interval=0.01)
    there = SessionManager(SQLStore(url, save_period=0), clock=clock)
    with (
        TestClient(make_app(here, ROUTES), base_url="https://testserver") as http,
        TestClient(make_app(there), base_url="https://testserver") as other,
    ):
        cookie = open_session(http)
        with http.websocket_connect("/ws", headers=cookie) as socket:
            other.post("/invalidate", headers=cookie)
            message: Any = socket.receive()
            assert (message["type"], message["code"]) == ("websocket.close", 1008)


def test_an_open_websocket_is_closed_with_1008_at_the_absolute_timeout(
    clock: FakeClock, tmp_path: Path
) -> None:
    """The absolute timeout holds however busy: the open websocket (which keeps its session
    alive) is closed at it, the session fires session_destroyed once, and no request joins it."""
    ended: list[str] = []

    class Destroyed:
        def session_destroyed(self, event: Any) -> None:
            ended.append(event.session.get_attribute("a"))

    for store in (None, SQLStore(f"sqlite:///{tmp_path}/abs.db")):
        ended.clear()
        manager = SessionManager(store, clock=clock, absolute_timeout=100, listeners=[Destroyed()],
                                 websocket_touch_interval=0.01)  # fmt: skip
        with TestClient(make_app(manager, ROUTES), base_url="https://testserver") as http:
            cookie = open_session(http)
            with http.websocket_connect("/ws", headers=cookie) as socket:
                socket.send_text("hi")
                assert socket.receive_text() == "hi kept"
                clock.advance(99)
                socket.send_text("still")
                assert socket.receive_text() == "still kept"  # not yet
                clock.advance(1)
                message = socket.receive()
                assert message["type"] == "websocket.close"
                assert message["code"] == 1008
            assert http.get("/get/a", headers=cookie).json() == {"session": False}
        assert ended == ["kept"]
