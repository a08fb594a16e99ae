"""A store that goes down: 503 with Retry-After and a log line, never a 500, never a fresh session
that would overwrite the real one; when the store comes back, the same cookie finds the same
session."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from servletsession import SessionManager, StoreUnavailableError, get_session
from servletsession.stores.redis import RedisStore
from servletsession.stores.sql import SQLStore

from ..conftest import FakeClock, make_app
from .conftest import IN_CI
from .helpers import Browser, free_port, signed, stop_process

pytestmark = pytest.mark.anyio


async def increment(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    count = session.get_attribute("count", 0) + 1
    session.set_attribute("count", count)
    return PlainTextResponse(str(count))


ROUTES = [Route("/incr", increment, methods=["POST"])]


@pytest.mark.parametrize(
    "make_store",
    [
        lambda port: RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout=1),
        lambda port: SQLStore(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test"),
    ],
    ids=["redis", "postgresql"],
)
async def test_an_unreachable_store_answers_503_with_retry_after(
    make_store: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    manager = SessionManager(make_store(free_port()), clock=clock, retry_after=7)
    app = make_app(manager, ROUTES)
    browser = Browser()
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        creating = await browser.post(app, "/incr")
        browser.cookie = signed("A" * 43)
        returning = await browser.post(app, "/incr")
    untouched = await Browser().get(app, "/untouched")
    for response in (creating, returning):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert "set-cookie" not in response.headers
    assert untouched.status_code == 200
    assert "session store unavailable" in caplog.text
    assert "answering 503" in caplog.text
    await browser.close()
    await manager.close()


class RedisServer:
    """A redis-server of this test's own, on a private port, that the test may kill."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(200):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError("the test's redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        stop_process(self.process, kill=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("CI=true refuses to skip: redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_redis_killed_mid_load_gives_503_never_500_then_recovers(
    own_redis: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{own_redis.port}/0", socket_timeout=1)
    manager = SessionManager(store, clock=clock)
    app = make_app(manager, ROUTES)
    browsers = [Browser() for _ in range(4)]
    statuses: list[int] = []
    successes = [0] * len(browsers)

    kill_after: int | None = None

    async def load(index: int, requests: int) -> None:
        nonlocal kill_after
        for _ in range(requests):
            response = await browsers[index].post(app, "/incr")
            statuses.append(response.status_code)
            if response.status_code == 200:
                successes[index] += 1
                assert int(response.text) == successes[index]
            if kill_after is not None and len(statuses) >= kill_after:
                kill_after = None
                own_redis.kill()

    await asyncio.gather(*(load(i, 10) for i in range(4)))
    assert set(statuses) == {200}
    statuses.clear()
    with caplog.at_level(logging.ERROR, logger="servletsession"):
        kill_after = 8
        await asyncio.gather(*(load(i, 20) for i in range(4)))
    assert set(statuses) <= {200, 503}, f"unexpected statuses: {sorted(set(statuses))}"
    assert 503 in statuses
    assert "session store unavailable" in caplog.text
    cookies_before = [b.cookie for b in browsers]

    own_redis.start()  # same port, same append-only file: the data comes back
    for index, browser in enumerate(browsers):
        response = await browser.post(app, "/incr")
        assert response.status_code == 200
        # Every increment the client saw acknowledged is there; at most the one in flight when
        # the server died was written without its answer reaching the client.
        assert successes[index] + 1 <= int(response.text) <= successes[index] + 2
        assert browser.cookie == cookies_before[index]
    for browser in browsers:
        await browser.close()
    await manager.close()


async def test_a_store_failing_at_the_end_of_a_stream_cuts_the_response_short(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class FailsLate(SQLStore):
        saves = 0

        async def save(self, session_id: str, write: Any, now: float) -> float | None:
            # The new session was created as the response started; the first save is the one
            # at the end of the stream.
            FailsLate.saves += 1
            raise StoreUnavailableError("the store went away")

    async def stream(request: Request) -> Response:
        session = get_session(request)
        assert session is not None
        session["first"] = 1

        async def body() -> Any:
            yield b"partial"
            session["late"] = 2

        return StreamingResponse(body())

    manager = SessionManager(FailsLate(f"sqlite:///{tmp_path}/s.db"), clock=clock)
    app = make_app(manager, [Route("/stream", stream)])
    with (
        caplog.at_level(logging.ERROR, logger="servletsession"),
        pytest.raises(StoreUnavailableError),
    ):
        await Browser().get(app, "/stream")
    assert "closing the connection without its last chunk" in caplog.text
    await manager.close()
