"""The chat demo in a real browser: Playwright driving Debian's headless Chromium against uvicorn
on loopback. Chromium comes from the system (``/usr/bin/chromium``, or ``CHROMIUM`` in the
environment), never from a test tool's own download. Without it the tests skip with the reason —
except under ``CI=true``, where they fail (``.ci/run`` installs it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from examples.chat.app import create_app

from ..conftest import SECRET, FakeClock

playwright_api = pytest.importorskip("playwright.sync_api")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SHOTS = Path(os.environ.get("CHAT_SHOTS", "/tmp/chat_shots"))  # noqa: S108 - screenshots to look at
VIEWPORTS: dict[str, dict[str, Any]] = {
    "phone-360": {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True},
    "phone-390": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}
LONG_WORD = "https://example.org/" + "a-very-long-unbroken-path-segment" * 4
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_path() -> str:
    found = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "CI=true refuses to skip the browser tests: no Chromium (apt-get install chromium)"
            )
        pytest.skip("no Chromium found (apt-get install chromium, or set CHROMIUM)")
    return found


class Demo:
    """The chat demo under uvicorn in a thread, with a clock the test moves."""

    def __init__(self, store_url: str | None = None) -> None:
        self.clock = FakeClock()
        app = create_app(secret_key=SECRET, token_delay=0.005, max_inactive_interval=60,
                         reaper_interval=0.05, clock=self.clock, store_url=store_url)  # fmt: skip
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )

        async def serve() -> None:
            await self.server.serve()
            await app.state.session_manager.close()  # a SQL store's engine included

        self.thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            threading.Event().wait(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def demo() -> Iterator[tuple[Demo, str]]:
    server = Demo()
    with server as url:
        yield server, url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    executable = chromium_path()
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def say(page: object, text: str) -> str:
    """Send a message and wait for the streamed reply to finish; return it."""
    page.fill("#input", text)  # type: ignore[attr-defined]
    page.click("#send")  # type: ignore[attr-defined]
    done = page.wait_for_selector(".assistant[data-done='true']:last-child")  # type: ignore[attr-defined]
    text_content: str = done.text_content()
    page.evaluate("document.querySelectorAll('[data-done]').forEach(e => delete e.dataset.done)")  # type: ignore[attr-defined]
    return text_content


def test_the_conversation_survives_reloads_and_the_cookie_is_httponly(
    demo: tuple[Demo, str], browser: object
) -> None:
    _, url = demo
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(url)
    assert say(page, "my name is ada") == "Nice to meet you, Ada. I will keep that in your session."
    page.reload()
    page.wait_for_selector(".assistant")
    assert page.locator(".turn").count() == 2
    assert say(page, "who am i").startswith("You are Ada")
    assert "sessionid" not in page.evaluate("document.cookie")
    session_cookie = next(c for c in context.cookies() if c["name"] == "sessionid")
    assert session_cookie["httpOnly"] is True
    assert session_cookie["sameSite"] == "Lax"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "e2e-chat.png"), full_page=True)
    assert (ARTIFACTS / "e2e-chat.png").stat().st_size > 0
    context.close()


def test_two_browser_contexts_keep_separate_conversations(
    demo: tuple[Demo, str], browser: object
) -> None:
    _, url = demo
    alice, bob = browser.new_context().new_page(), browser.new_context().new_page()  # type: ignore[attr-defined]
    alice.goto(url)
    bob.goto(url)
    say(alice, "my name is alice")
    assert say(bob, "who am i") == "You have not told me your name yet."
    assert say(alice, "who am i").startswith("You are Alice")


def test_new_chat_invalidates_the_session(demo: tuple[Demo, str], browser: object) -> None:
    _, url = demo
    page = browser.new_context().new_page()  # type: ignore[attr-defined]
    page.goto(url)
    say(page, "hello")
    page.wait_for_function("document.querySelector('#exists').textContent === 'true'")
    page.click("#new-chat")
    page.wait_for_function("document.querySelector('#exists').textContent === 'false'")
    assert page.locator(".turn").count() == 0


def test_after_the_idle_timeout_the_page_comes_back_to_a_fresh_conversation(
    demo: tuple[Demo, str], browser: object
) -> None:
    server, url = demo
    page = browser.new_context().new_page()  # type: ignore[attr-defined]
    page.goto(url)
    say(page, "remember me")
    server.clock.advance(61)  # past the 60 s idle timeout: no sleeping
    page.reload()
    page.wait_for_function("document.querySelector('#exists').textContent === 'false'")
    assert page.locator(".turn").count() == 0


def no_overflow(page: object) -> None:
    """Nothing sticks out sideways: the page cannot be scrolled horizontally."""
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")  # type: ignore[attr-defined]
    assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px viewport"


def inside_viewport(page: object, selector: str, least: tuple[int, int] = (40, 20)) -> None:
    """``selector`` is visible once scrolled to, and neither clipped nor off-screen sideways."""
    element = page.locator(selector)  # type: ignore[attr-defined]
    element.scroll_into_view_if_needed()
    assert element.is_visible(), selector
    box = element.bounding_box()
    width = page.evaluate("window.innerWidth")  # type: ignore[attr-defined]
    height = page.evaluate("window.innerHeight")  # type: ignore[attr-defined]
    assert box is not None, selector
    assert box["x"] >= 0, f"{selector} sticks out on the left: {box}"
    assert box["x"] + box["width"] <= width, f"{selector} is clipped on the right: {box}, {width}"
    assert box["y"] < height, f"{selector} is below the viewport: {box}"
    assert box["y"] + box["height"] > 0, f"{selector} is above the viewport: {box}"
    assert box["width"] >= least[0], f"{selector} is squeezed: {box}"
    assert box["height"] >= least[1], f"{selector} is squeezed: {box}"


def shoot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", VIEWPORTS, ids=VIEWPORTS)
def test_the_page_fits_phones_and_desktops(
    demo: tuple[Demo, str], browser: object, size: str
) -> None:
    _, url = demo
    context = browser.new_context(**VIEWPORTS[size])  # type: ignore[attr-defined]
    page = context.new_page()
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
    page.goto(url)
    page.wait_for_function("document.querySelector('#exists').textContent === 'false'")
    no_overflow(page)
    say(page, "my name is ada")
    say(page, f"remember {LONG_WORD}")
    page.wait_for_function("document.querySelector('#turns').textContent === '4'")
    no_overflow(page)
    shoot(page, f"{size}-chat")
    for selector in ("#input", "#send", "#new-chat", "#messages .assistant >> nth=-1"):
        inside_viewport(page, selector)
    page.locator("#input").click()  # takes focus: not covered by anything
    inside_viewport(page, "#session-panel")
    inside_viewport(page, "#turns", least=(8, 8))
    no_overflow(page)
    page.screenshot(path=str(SHOTS / f"{size}-panel.png"))
    assert missing == []  # the favicon included: nothing the page asked for was a 404
    context.close()


def test_favicon_is_served(demo: tuple[Demo, str], browser: object) -> None:
    _, url = demo
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(url)
    icon = page.evaluate(
        "fetch(document.querySelector('link[rel=icon]').href)"
        ".then(r => Promise.all([r.status, r.headers.get('content-type'), r.text()]))"
    )
    assert icon[0] == 200
    assert icon[1] == "image/svg+xml"
    assert icon[2].startswith("<svg")
    ico = context.request.get(f"{url}/favicon.ico")
    assert ico.status == 200
    assert ico.headers["content-type"] == "image/svg+xml"
    context.close()


@pytest.mark.parametrize("size", ["phone-360", "desktop"])
def test_a_store_outage_is_an_error_with_retry_not_a_reply(
    browser: object, tmp_path: Path, size: str
) -> None:
    store_dir = tmp_path / "store"  # missing: SQLite cannot open the database, the store is down
    with Demo(store_url=f"sqlite:///{store_dir}/chat.db") as url:
        context = browser.new_context(**VIEWPORTS[size])  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("document.querySelector('#exists').textContent === 'false'")
        page.fill("#input", "hello")
        page.click("#send")
        error = page.wait_for_selector(".turn.error")
        text = error.text_content()
        assert "session store is unavailable" in text
        assert "Retry in 5\u00a0s" in text  # the 503's Retry-After
        assert error.get_attribute("role") == "alert"
        assert error.get_attribute("data-kind") == "unavailable"
        assert page.locator(".assistant").count() == 0  # not rendered as something the bot said
        assert page.locator(".user.unsent").count() == 1
        colours = page.evaluate(
            "[...document.querySelectorAll('.turn')].map(e => getComputedStyle(e).backgroundColor)"
        )
        assert len(set(colours)) == 2  # the error looks different from the user's own turn
        no_overflow(page)
        inside_viewport(page, ".turn.error .retry")
        shoot(page, f"{size}-503")
        store_dir.mkdir()  # the store is back
        page.click(".turn.error .retry")
        page.wait_for_selector(".assistant[data-done='true']")
        assert page.locator(".turn.error").count() == 0
        assert page.locator(".user.unsent").count() == 0
        assert [t.text_content() for t in page.locator(".turn").all()] == [
            "hello",
            "Hello, there! This is turn 1 of our conversation.",
        ]
        page.wait_for_function("document.querySelector('#turns').textContent === '2'")
        context.close()


def test_other_failures_are_errors_too(demo: tuple[Demo, str], browser: object) -> None:
    _, url = demo
    context = browser.new_context(**VIEWPORTS["phone-390"])  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("document.querySelector('#exists').textContent === 'false'")
    page.route("**/api/chat", lambda route: route.fulfill(status=500, body="Internal Server Error"))
    page.fill("#input", "hello")
    page.click("#send")
    failed = page.wait_for_selector(".turn.error[data-kind='http-500']")
    assert "The server failed (500)" in failed.text_content()
    page.unroute("**/api/chat")
    page.route("**/api/chat", lambda route: route.abort())
    page.click(".turn.error .retry")
    offline = page.wait_for_selector(".turn.error[data-kind='network']")
    assert "Could not reach the server" in offline.text_content()
    page.unroute("**/api/chat")
    page.route(
        "**/api/chat",
        lambda route: route.fulfill(
            status=400, json={"error": '"message" is longer than 2000 characters.'}
        ),
    )
    page.fill("#input", "too long, say")
    page.click("#send")
    refused = page.wait_for_selector(".turn.error[data-kind='http-400']")
    assert '"message" is longer than 2000 characters.' in refused.text_content()
    assert refused.query_selector(".retry") is None  # the same text would be refused again
    assert page.input_value("#input") == "too long, say"  # given back to edit
    assert page.locator(".assistant").count() == 0
    no_overflow(page)
    shoot(page, "phone-390-errors")
    context.close()
