"""The chat demo keeps each browser's conversation in its session."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from starlette.testclient import TestClient

from examples.chat import app as chat_app
from examples.chat.__main__ import KeyFileError, kept_key
from examples.chat.app import (
    MAX_MESSAGE,
    WORKER_VARIABLES,
    ChatConfigError,
    create_app,
    worker_count,
)
from examples.chat.bot import reply
from examples.chat.models import ChatPrompt

from .conftest import SECRET, client

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


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


# --- bad input: 400 (413 for a body too large), never 500, and no session for it ---------------

BAD_BODIES = {
    "invalid JSON": (b"{bad", "not valid JSON"),
    "empty body": (b"", "not valid JSON"),
    "not UTF-8": (b'{"message": "\xff"}', "not valid JSON"),
    "a list": (b'["hello"]', "must be a JSON object"),
    "a string": (b'"hello"', "must be a JSON object"),
    "no message": (b"{}", '"message" must be a string'),
    "a number": (b'{"message": 5}', '"message" must be a string'),
    "null": (b'{"message": null}', '"message" must be a string'),
    "an object": (b'{"message": {"text": "hi"}}', '"message" must be a string'),
    "empty": (b'{"message": ""}', '"message" is empty'),
    "blank": (b'{"message": " \\n\\t "}', '"message" is empty'),
    "too long": (b'{"message": "' + b"x" * (MAX_MESSAGE + 1) + b'"}', "longer than 2000"),
    # valid JSON, but no text: no store could save it, no page could show it
    "lone surrogate": (b'{"message": "\\ud800 hi"}', "lone surrogate"),
    "low surrogate": (b'{"message": "hi \\udfff"}', "lone surrogate"),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_input_is_a_400_with_a_clear_message(body: tuple[bytes, str]) -> None:
    content, expected = body
    async with client(create_app(token_delay=0, secret_key=SECRET)) as http:
        response = await http.post(
            "/api/chat", content=content, headers={"content-type": "application/json"}
        )
        info = (await http.get("/api/session")).json()
    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert "set-cookie" not in response.headers
    assert info == {"exists": False}  # refused before a session was created


async def test_a_body_over_64_kib_is_a_413_and_2000_characters_pass() -> None:
    async with client(create_app(token_delay=0, secret_key=SECRET)) as http:
        huge = await http.post("/api/chat", content=b'{"message": "' + b"x" * 70_000 + b'"}')
        longest = await http.post("/api/chat", json={"message": "é" * MAX_MESSAGE})
    assert huge.status_code == 413
    assert "larger than 65536 bytes" in huge.json()["error"]
    assert longest.status_code == 200
    assert longest.text.startswith('You said "éé')


async def test_favicon_is_served_without_a_session() -> None:
    async with client(create_app(token_delay=0, secret_key=SECRET)) as http:
        ico, svg, page = [await http.get(path) for path in ("/favicon.ico", "/favicon.svg", "/")]
    for response in (ico, svg):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/svg+xml"
        assert response.content.startswith(b"<svg")
        assert "set-cookie" not in response.headers
    assert '<link rel="icon" href="/favicon.svg"' in page.text


# --- several workers need one shared key (and a shared store) ----------------------------------

CHAT_ENV = (
    "CHAT_SECRET_KEY",
    "CHAT_STORE_URL",
    "CHAT_SINGLE_PROCESS",
    "CHAT_SESSIONS_FILE",
    *WORKER_VARIABLES,
)


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No chat variables, and a command line without --workers."""
    for name in CHAT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["uvicorn", "examples.chat.app:app"])
    return monkeypatch


@pytest.mark.parametrize(
    ("argv", "env", "workers"),
    [
        (["uvicorn", "examples.chat.app:app", "--workers", "2"], {}, 2),
        (["uvicorn", "examples.chat.app:app", "--workers=4"], {}, 4),
        (["gunicorn", "-w", "3", "-k", "uvicorn.workers.UvicornWorker", "x:app"], {}, 3),
        (["gunicorn", "-w5", "x:app"], {}, 5),
        (["uvicorn", "examples.chat.app:app"], {"WEB_CONCURRENCY": "2"}, 2),
        (["uvicorn", "--workers", "1", "examples.chat.app:app"], {"WEB_CONCURRENCY": "8"}, 1),
        (["uvicorn", "examples.chat.app:app"], {}, 1),
        # CHAT_SINGLE_PROCESS=1 hides no count (python -m examples.chat drops the variables)
        (["-m", "--port", "8000"], {"WEB_CONCURRENCY": "4", "CHAT_SINGLE_PROCESS": "1"}, 4),
        (["uvicorn", "examples.chat.app:app"], {"UVICORN_WORKERS": "3"}, 3),
        (["uvicorn", "x:app"], {"UVICORN_WORKERS": "2", "CHAT_SINGLE_PROCESS": "1"}, 2),
        (["uvicorn", "--workers", "1", "x:app"], {"UVICORN_WORKERS": "4"}, 1),
        (["uvicorn", "x:app"], {"UVICORN_WORKERS": "2", "WEB_CONCURRENCY": "8"}, 2),
        (["gunicorn", "x:app"], {"GUNICORN_CMD_ARGS": "--bind :80 --workers 3"}, 3),
        (["gunicorn", "x:app"], {"GUNICORN_CMD_ARGS": "-w 2 -k uvicorn.workers.UvicornWorker"}, 2),
        (["gunicorn", "x:app"], {"GUNICORN_CMD_ARGS": "--workers=5"}, 5),
        (["gunicorn", "x:app"], {"GUNICORN_CMD_ARGS": "-w6"}, 6),
        (["gunicorn", "x:app"], {"GUNICORN_CMD_ARGS": "--bind '0.0.0.0"}, 1),  # not parsable
    ],
)
def test_worker_count_from_the_command_line_and_web_concurrency(
    argv: list[str], env: dict[str, str], workers: int
) -> None:
    assert worker_count(argv, env) == workers


@pytest.mark.parametrize(
    "setting",
    [
        ("argv", ["--workers", "2"]),
        ("argv", ["--workers=2"]),
        ("WEB_CONCURRENCY", "2"),
        ("UVICORN_WORKERS", "2"),
        ("GUNICORN_CMD_ARGS", "--workers 2 --bind 127.0.0.1:0"),
    ],
    ids=["--workers 2", "--workers=2", "WEB_CONCURRENCY", "UVICORN_WORKERS", "GUNICORN_CMD_ARGS"],
)
def test_several_workers_without_a_shared_key_are_refused(
    bare_env: pytest.MonkeyPatch, setting: tuple[str, object], tmp_path: object
) -> None:
    kind, value = setting
    if kind == "argv":
        bare_env.setattr(sys, "argv", ["uvicorn", "examples.chat.app:app", *value])  # type: ignore[misc]
    else:
        bare_env.setenv(kind, str(value))
    bare_env.setenv("CHAT_STORE_URL", f"sqlite:///{tmp_path}/chat.db")
    with pytest.raises(ChatConfigError, match="2 workers and no CHAT_SECRET_KEY") as refused:
        create_app()
    assert "export CHAT_SECRET_KEY=" in str(refused.value)
    # claiming one process hides no count (python -m examples.chat drops the variables itself)
    bare_env.setenv("CHAT_SINGLE_PROCESS", "1")
    with pytest.raises(ChatConfigError, match="2 workers and no CHAT_SECRET_KEY"):
        create_app()
    bare_env.setenv("CHAT_SECRET_KEY", SECRET)
    bare_env.setenv("CHAT_STORE_URL", "memory://")
    with pytest.raises(ChatConfigError, match="2 workers on the memory:// store"):
        create_app()


async def test_several_workers_with_a_shared_key_and_store_start(
    bare_env: pytest.MonkeyPatch, tmp_path: object
) -> None:
    bare_env.setattr(sys, "argv", ["uvicorn", "examples.chat.app:app", "--workers", "4"])
    bare_env.setenv("CHAT_SECRET_KEY", SECRET)
    with pytest.raises(ChatConfigError, match="4 workers on the memory:// store"):
        create_app()
    bare_env.setenv("CHAT_STORE_URL", f"sqlite:///{tmp_path}/chat.db")
    app = create_app(token_delay=0)
    async with client(app) as http:
        assert (await http.post("/api/chat", json={"message": "hi"})).status_code == 200
    await app.state.session_manager.close()


def test_no_random_key_outside_single_process_mode(bare_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ChatConfigError, match=r"CHAT_SECRET_KEY is not set.*python -m examples"):
        create_app()
    bare_env.setenv("CHAT_SINGLE_PROCESS", "1")  # what `python -m examples.chat` sets
    assert create_app() is not None
    bare_env.delenv("CHAT_SINGLE_PROCESS")
    assert create_app(secret_key=SECRET) is not None  # an explicit key is always enough


def test_the_module_app_refuses_with_exit_status_3(bare_env: pytest.MonkeyPatch) -> None:
    bare_env.delitem(vars(chat_app), "app", raising=False)
    with pytest.raises(SystemExit) as exited:
        _ = chat_app.app
    assert exited.value.code == 3  # uvicorn's STARTUP_FAILURE, gunicorn's WORKER_BOOT_ERROR
    assert "app" not in vars(chat_app)


def _run(argv: list[str], env: dict[str, str], seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=seconds, check=False
    )


def _demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CHAT_ENV}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--workers", "2"], {}), ([], {"UVICORN_WORKERS": "2", "CHAT_SINGLE_PROCESS": "1"})],
    ids=["--workers 2", "UVICORN_WORKERS=2 CHAT_SINGLE_PROCESS=1"],
)
def test_uvicorn_with_two_workers_and_no_key_stops_with_the_reason(
    flags: list[str], env: dict[str, str]
) -> None:
    uvicorn_cli = [sys.executable, "-m", "uvicorn", "examples.chat.app:app"]
    result = _run([*uvicorn_cli, *flags, "--port", "0"], _demo_env(**env), 60)
    assert "examples.chat refuses to start" in result.stderr
    assert "2 workers and no CHAT_SECRET_KEY" in result.stderr
    assert "failed to start, stopping the parent process" in result.stderr  # not a restart loop


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_readme_demo_command_runs_one_process_with_a_random_key(tmp_path: Path) -> None:
    port = _free_port()
    # ignored: python -m examples.chat is one process
    env = _demo_env(WEB_CONCURRENCY="2", UVICORN_WORKERS="2", GUNICORN_CMD_ARGS="-w 2",
                    CHAT_SESSIONS_FILE=str(tmp_path / "sessions.json"))  # fmt: skip
    argv = [sys.executable, "-m", "examples.chat", "--port", str(port)]
    with subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as server:
        try:
            answer = None
            for _ in range(200):
                try:
                    answer = httpx2.post(
                        f"http://127.0.0.1:{port}/api/chat", json={"message": "hello"}, timeout=5
                    )
                    break
                except httpx2.TransportError:
                    time.sleep(0.05)
        finally:
            server.terminate()
            output = server.communicate(timeout=10)[0]
    assert answer is not None, output
    assert answer.status_code == 200
    assert answer.text.startswith("Hello, there!")
    assert "random key" in output


# --- a restart keeps the conversations (memory:// with CHAT_SESSIONS_FILE) ---------------------


def test_a_restart_keeps_the_conversation(tmp_path: Path) -> None:
    """Lifespan shutdown saves the conversations; a new app on the same file restores them, and
    the same cookie finds the same conversation."""
    saved = tmp_path / "sessions.json"
    options = {"token_delay": 0, "secret_key": SECRET, "sessions_file": saved}
    with TestClient(create_app(**options), base_url="https://testserver") as http:
        http.post("/api/chat", json={"message": "my name is ada"})
        cookie = http.cookies["sessionid"]
    assert saved.exists()
    with TestClient(create_app(**options), base_url="https://testserver") as http:
        http.cookies["sessionid"] = cookie
        answer = http.post("/api/chat", json={"message": "who am i"})
        history = http.get("/api/history").json()
    assert answer.text == "You are Ada: you told me earlier in this session."
    assert [turn["role"] for turn in history["turns"]] == ["user", "assistant"] * 2


async def test_the_sessions_file_is_for_the_memory_store_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    with caplog.at_level("WARNING", logger="chat"):
        app = create_app(secret_key=SECRET, store_url=url, sessions_file=tmp_path / "s.json")
    assert "CHAT_SESSIONS_FILE is ignored" in caplog.text
    assert url not in caplog.text  # a store URL may hold a password
    await app.state.session_manager.close()


def test_python_m_examples_chat_keeps_conversations_across_a_restart(tmp_path: Path) -> None:
    """The README's command, stopped with SIGTERM and started again: the browser's cookie joins
    its conversation, signed with the random key kept beside the saved sessions."""
    saved = tmp_path / "sessions.json"
    env = _demo_env(CHAT_SESSIONS_FILE=str(saved))

    def serve(message: str, cookie: str | None) -> tuple[httpx2.Response, str]:
        port = _free_port()
        argv = [sys.executable, "-m", "examples.chat", "--port", str(port)]
        with subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as server:
            try:
                answer = None
                headers = {"cookie": f"sessionid={cookie}"} if cookie else {}
                for _ in range(200):
                    try:
                        answer = httpx2.post(
                            f"http://127.0.0.1:{port}/api/chat",
                            json={"message": message},
                            headers=headers,
                            timeout=5,
                        )
                        break
                    except httpx2.TransportError:
                        time.sleep(0.05)
            finally:
                server.terminate()  # SIGTERM: uvicorn runs the lifespan shutdown
                output = server.communicate(timeout=10)[0]
        assert answer is not None, output
        return answer, output

    first, output = serve("my name is grace", None)
    assert "random key kept in" in output
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600, output
    key_file = tmp_path / "sessions.json.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    cookie = first.cookies["sessionid"]
    second, output = serve("who am i", cookie)
    assert second.text == "You are Grace: you told me earlier in this session.", output
    assert "set-cookie" not in second.headers  # the same session, not a new one


# --- the key kept beside the saved conversations (python -m examples.chat) ---------------------


def test_the_kept_key_is_made_once_0600_and_read_back(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions.json"
    key = kept_key(sessions)
    key_file = tmp_path / "sessions.json.key"
    assert len(key) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert kept_key(sessions) == key  # the next start signs with the same key
    assert [p.name for p in tmp_path.iterdir()] == ["sessions.json.key"]  # no temporary left


UNUSABLE_KEYS = {
    "empty": b"",
    "a_newline": b"\n",
    "blanks": b"   \n",
    "short": b"abc\n",
    "31_bytes": b"K" * 31 + b"\n",
    "not_ascii": "é".encode() * 20,
}


@pytest.mark.parametrize("content", UNUSABLE_KEYS.values(), ids=UNUSABLE_KEYS.keys())
def test_an_unusable_key_file_is_replaced_with_a_warning_naming_it(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a new random key at every start without a word (the conversations would be lost at
    every restart): one new key, written down, and said."""
    key_file = tmp_path / "s.json.key"
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="examples.chat"):
        key = kept_key(tmp_path / "s.json")
    assert len(key) >= 32
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in caplog.text
    assert "no usable key" in caplog.text
    caplog.clear()
    assert kept_key(tmp_path / "s.json") == key  # kept from then on
    assert caplog.text == ""


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666], ids=["group", "others", "everyone"])
def test_a_key_file_others_may_write_stops_the_demo_naming_it(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "s.json.key"
    key_file.write_text("K" * 43 + "\n")
    key_file.chmod(mode)
    with pytest.raises(KeyFileError, match=re.escape(str(key_file))) as refused:
        kept_key(tmp_path / "s.json")
    assert "others may write to it" in str(refused.value)
    assert key_file.read_text() == "K" * 43 + "\n"  # left for the user to look at


def test_a_symlinked_key_file_is_not_followed(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.write_text("P" * 43)
    planted.chmod(0o600)
    (tmp_path / "s.json.key").symlink_to(planted)
    with pytest.raises(KeyFileError, match="it is a symbolic link"):
        kept_key(tmp_path / "s.json")
    assert planted.read_text() == "P" * 43


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_key_file_of_another_user_stops_the_demo(tmp_path: Path) -> None:
    key_file = tmp_path / "s.json.key"
    key_file.write_text("K" * 43)
    key_file.chmod(0o600)
    os.chown(key_file, 4242, -1)
    with pytest.raises(KeyFileError, match="belongs to uid 4242"):
        kept_key(tmp_path / "s.json")


def test_a_key_file_write_that_fails_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the key file's, as written by memory_file
    with pytest.raises(KeyFileError, match="No space left on device"):
        kept_key(tmp_path / "s.json")
    assert list(tmp_path.iterdir()) == []  # neither a key file nor a temporary one
