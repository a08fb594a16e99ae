"""End to end: the chat demo behind a real uvicorn server on a loopback socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx2
import pytest
import uvicorn

from examples.chat.app import create_app

from .conftest import SECRET


@pytest.fixture
def server_url() -> Iterator[str]:
    app = create_app(secret_key=SECRET, token_delay=0.001)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_conversation_through_a_real_server(server_url: str) -> None:
    with httpx2.Client(base_url=server_url) as http:
        first = http.post("/api/chat", json={"message": "my name is grace"})
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "Secure" in cookie
        assert "SameSite=Lax" in cookie
        session = {"cookie": cookie.split(";")[0]}  # a browser sends Secure cookies to localhost
        with http.stream(
            "POST", "/api/chat", json={"message": "who am i"}, headers=session
        ) as streamed:
            chunks = list(streamed.iter_text())
        info = http.get("/api/session", headers=session).json()
        fresh = http.get("/api/session").json()
    assert len(chunks) > 1, "the reply is streamed in several chunks"
    assert "".join(chunks) == "You are Grace: you told me earlier in this session."
    assert info["turns"] == 4
    assert info["is_new"] is False
    assert fresh == {"exists": False}
