"""Attacks on the session layer, each on every store (OWASP ASVS v5 chapter 7, the OWASP Session
Management Cheat Sheet). An attack passes if it yields no session the server did not issue to
that browser, and never a 500."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from servletsession import SessionManager, get_session
from servletsession.cookies import new_session_id

from ..conftest import FakeClock, login, make_app
from ..stores.conftest import SHARED_KINDS, StoreFactory, stores
from ..stores.helpers import Browser, signed

pytestmark = pytest.mark.anyio
WRONG_KEY = "an-attacker-key-that-is-long-enough-0123456789"


async def logout(request: Request) -> Response:
    session = get_session(request, create=False)
    if session is not None:
        session.invalidate()
    return Response("bye")


ROUTES = [Route("/login", login, methods=["POST"]), Route("/logout", logout, methods=["POST"])]


def process(make: StoreFactory, clock: FakeClock) -> tuple[SessionManager, Any]:
    manager = SessionManager(make(), clock=clock)
    return manager, make_app(manager, ROUTES)


def issued_id(response: Any) -> str | None:
    header = response.headers.get("set-cookie", "")
    value = header.split(";")[0].split("=", 1)[1] if header.startswith("sessionid=") else ""
    return value.split(".")[0] or None


@stores()
@pytest.mark.parametrize(
    "planted",
    [
        pytest.param(lambda sid: sid, id="unsigned-well-formed-id"),
        pytest.param(lambda sid: signed(sid, WRONG_KEY), id="signed-with-a-wrong-key"),
        pytest.param(lambda sid: signed(sid), id="signed-but-never-issued"),
    ],
)
async def test_fixation_an_attacker_chosen_id_is_never_adopted(
    store_factory: StoreFactory, clock: FakeClock, planted: Any
) -> None:
    manager, app = process(store_factory, clock)
    chosen = new_session_id()
    victim = Browser()
    victim.cookie = planted(chosen)
    response = await victim.post(app, "/login", params={"user": "victim"})
    assert response.status_code == 200
    assert issued_id(response) not in (None, chosen)
    assert await manager.find(chosen) is None
    await victim.close()


@stores()
async def test_fixation_the_id_changes_at_login(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    _, app = process(store_factory, clock)
    browser = Browser()
    await browser.post(app, "/set/cart", params={"value": "1"})
    before = browser.session_id
    await browser.post(app, "/login", params={"user": "ada"})
    assert browser.session_id != before
    assert (await browser.get(app, "/get/cart")).json() == {"session": True, "value": "1"}
    await browser.close()


@stores()
@pytest.mark.parametrize("position", [0, 20, 42, 44, 60, 86])
async def test_a_tampered_cookie_gets_no_session(
    store_factory: StoreFactory, clock: FakeClock, position: int
) -> None:
    _, app = process(store_factory, clock)
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    assert browser.cookie is not None
    value = list(browser.cookie)
    value[position] = "A" if value[position] != "A" else "B"
    browser.cookie = "".join(value)
    response = await browser.get(app, "/get/a")
    assert response.status_code == 200
    assert response.json() == {"session": False}
    await browser.close()


@stores(*SHARED_KINDS)
@pytest.mark.parametrize("ending", ["/logout", "/login"])
async def test_replay_after_logout_or_id_change_fails_on_every_process(
    store_factory: StoreFactory, clock: FakeClock, ending: str
) -> None:
    _, first = process(store_factory, clock)
    _, second = process(store_factory, clock)
    browser = Browser()
    await browser.post(first, "/set/a", params={"value": "1"})
    stolen = browser.cookie
    await browser.post(first, ending, params={"user": "ada"})
    thief = Browser()
    thief.cookie = stolen
    for app in (first, second):
        response = await thief.get(app, "/get/a")
        assert response.json() == {"session": False}
    await browser.close()
    await thief.close()


@stores("memory")
@pytest.mark.parametrize("ending", ["/logout", "/login"])
async def test_replay_after_logout_or_id_change_fails_in_process(
    store_factory: StoreFactory, clock: FakeClock, ending: str
) -> None:
    _, app = process(store_factory, clock)
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    stolen = browser.cookie
    await browser.post(app, ending, params={"user": "ada"})
    thief = Browser()
    thief.cookie = stolen
    assert (await thief.get(app, "/get/a")).json() == {"session": False}
    await browser.close()
    await thief.close()


@stores()
async def test_cookie_tossing_two_session_cookies_get_no_session(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    _, app = process(store_factory, clock)
    victim, attacker = Browser(), Browser()
    await victim.post(app, "/set/a", params={"value": "victim"})
    await attacker.post(app, "/set/a", params={"value": "attacker"})
    for order in ((attacker.cookie, victim.cookie), (victim.cookie, attacker.cookie)):
        header = f"sessionid={order[0]}; sessionid={order[1]}"
        response = await Browser().get(app, "/get/a", headers={"cookie": header})
        assert response.json() == {"session": False}


@stores()
@pytest.mark.parametrize(
    "header",
    [
        b"sessionid=" + b"A" * 8192,
        b"sessionid=" + b"A" * 43 + b"." + b"B" * 43 + b"C",
        b"sessionid=" + b"A" * 42 + b"." + b"B" * 43,
        b"sessionid=" + b"A" * 43 + b"\r\nset-cookie: evil=1." + b"B" * 20,
        b"sessionid=" + b"A" * 43 + b";evil=1;." + b"B" * 43,
        b"sessionid=%41%41." + b"B" * 43,
        b"sessionid=" + b"\xff" * 87,
        b"sessionid=" + b"A" * 43 + b"\x00" + b"B" * 43,
    ],
    ids=["oversized", "too-long", "too-short", "crlf", "semicolons", "percent", "bytes", "nul"],
)
async def test_malformed_and_injected_cookies_get_no_session_and_inject_nothing(
    store_factory: StoreFactory, clock: FakeClock, header: bytes
) -> None:
    manager, app = process(store_factory, clock)
    response = await Browser().post(
        app, "/set/a", params={"value": "1"}, headers={"cookie": header}
    )
    assert response.status_code == 200
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 1
    assert cookies[0].startswith("sessionid=")
    assert "evil" not in str(response.headers)
    assert (await manager.stats()).malformed_cookies + (await manager.stats()).bad_signatures == 1


@stores()
async def test_session_ids_appear_in_no_log_line(
    store_factory: StoreFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Chatty:
        def session_created(self, event: Any) -> None:
            logging.getLogger("app").info("created %r", event.session)

        def session_destroyed(self, event: Any) -> None:
            raise RuntimeError("a failing listener logs a traceback")

    manager = SessionManager(
        store_factory(), clock=clock, listeners=[Chatty()], max_inactive_interval=60
    )
    app = make_app(manager, ROUTES)
    browser = Browser()
    seen: set[str] = set()
    # This library's and the app's loggers at DEBUG, everything else from INFO (database
    # drivers log their statements' parameters at DEBUG; see SECURITY.md).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="servletsession")
    caplog.set_level(logging.DEBUG, logger="app")
    await browser.post(app, "/set/a", params={"value": "1"})
    seen.add(browser.session_id)
    await browser.post(app, "/login", params={"user": "ada"})
    seen.add(browser.session_id)
    clock.advance(200)  # past the idle timeout and any save_period
    await browser.get(app, "/get/a")
    await manager.reap()
    assert "a failing listener" in caplog.text
    for session_id in seen:
        assert session_id not in caplog.text
        assert session_id[:12] not in caplog.text
    await browser.close()


@stores()
async def test_another_spelling_of_a_valid_signature_is_refused(
    store_factory: StoreFactory, clock: FakeClock
) -> None:
    """Base64 of 32 bytes leaves the last character's two low bits unused: the next three
    characters of the alphabet decode to the same signature. They must not work."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    _, app = process(store_factory, clock)
    browser = Browser()
    await browser.post(app, "/set/a", params={"value": "1"})
    assert browser.cookie is not None
    canonical = browser.cookie
    last = alphabet.index(canonical[-1])
    assert last % 4 == 0  # what the server issues is canonical
    for twin in alphabet[last + 1 : last + 4]:
        thief = Browser()
        thief.cookie = canonical[:-1] + twin
        assert (await thief.get(app, "/get/a")).json() == {"session": False}
        await thief.close()
    assert (await browser.get(app, "/get/a")).json() == {"session": True, "value": "1"}
    await browser.close()
