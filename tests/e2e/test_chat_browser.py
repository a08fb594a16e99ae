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

import pytest
import uvicorn

from examples.chat.app import create_app

from ..conftest import SECRET, FakeClock

playwright_api = pytest.importorskip("playwright.sync_api")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
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

    def __init__(self) -> None:
        self.clock = FakeClock()
        app = create_app(secret_key=SECRET, token_delay=0.005, max_inactive_interval=60,
                         reaper_interval=0.05, clock=self.clock)  # fmt: skip
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

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
