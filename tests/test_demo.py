"""The chat demo keeps each browser's conversation in its session."""

from __future__ import annotations

import pytest

from examples.chat.app import create_app
from examples.chat.bot import reply
from examples.chat.models import ChatPrompt

from .conftest import SECRET, client

pytestmark = pytest.mark.anyio


async def test_conversation_survives_across_turns() -> None:
    app = create_app(token_delay=0, secret_key=SECRET)
    async with client(app) as http:
        first = await http.post("/api/chat", json={"message": "my name is ada"})
        second = await http.post("/api/chat", json={"message": "what is my name?"})
        history = (await http.get("/api/history")).json()
    assert "Nice to meet you, Ada" in first.text
    assert second.text.startswith("You are Ada")
    assert [turn["role"] for turn in history["turns"]] == ["user", "assistant"] * 2
    assert history["turns"][3]["content"] == second.text  # written while it streamed


async def test_two_browsers_keep_separate_conversations() -> None:
    app = create_app(token_delay=0, secret_key=SECRET)
    async with client(app) as alice, client(app) as bob:
        await alice.post("/api/chat", json={"message": "my name is alice"})
        await bob.post("/api/chat", json={"message": "hello"})
        assert (await alice.get("/api/session")).json()["turns"] == 2
        answer = await bob.post("/api/chat", json={"message": "who am i"})
    assert answer.text == "You have not told me your name yet."


async def test_new_chat_invalidates_the_session() -> None:
    app = create_app(token_delay=0, secret_key=SECRET)
    async with client(app) as http:
        await http.post("/api/chat", json={"message": "hello"})
        response = await http.post("/api/new")
        info = (await http.get("/api/session")).json()
        history = (await http.get("/api/history")).json()
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert info == {"exists": False}
    assert history["turns"] == []


async def test_session_panel_reports_times_and_timeout() -> None:
    app = create_app(token_delay=0, secret_key=SECRET, max_inactive_interval=300)
    async with client(app) as http:
        assert (await http.get("/api/session")).json() == {"exists": False}
        await http.post("/api/chat", json={"message": "hi"})
        info = (await http.get("/api/session")).json()
    assert info["is_new"] is False
    assert info["max_inactive_interval"] == 300
    assert info["last_accessed_time"] >= info["creation_time"]


async def test_page_is_served() -> None:
    async with client(create_app(token_delay=0, secret_key=SECRET)) as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert 'id="new-chat"' in response.text


def test_bot_recalls_what_was_said() -> None:
    prompt = ChatPrompt()
    prompt.add("user", "the sky is green")
    prompt.add("assistant", "ok")
    prompt.add("user", "what did I say?")
    assert reply(prompt) == 'Earlier you said: "the sky is green".'


async def test_conversation_moves_between_workers_on_a_shared_store(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    one = create_app(token_delay=0, secret_key=SECRET, store_url=url)
    two = create_app(token_delay=0, secret_key=SECRET, store_url=url)
    async with client(one) as first, client(two) as second:
        await first.post("/api/chat", json={"message": "my name is linus"})
        second.cookies = first.cookies
        answer = await second.post("/api/chat", json={"message": "who am i"})
        history = (await first.get("/api/history")).json()
    assert answer.text.startswith("You are Linus")
    assert len(history["turns"]) == 4
    assert history["turns"][3]["content"] == answer.text
    for app in (one, two):
        await app.state.session_manager.close()
