"""Two uvicorn worker processes sharing one store (Redis, PostgreSQL), used by real HTTP clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from ..conftest import SECRET
from .conftest import POSTGRES_URL, REDIS_URL, _clean, require
from .helpers import UvicornWorkers

pytestmark = pytest.mark.anyio


class Workers(UvicornWorkers):
    """Two worker processes of ``tests/apps/multiprocess.py`` on one store."""

    def __init__(self, store_url: str, prefix: str, events: Path) -> None:
        env = {"SS_STORE_URL": store_url, "SS_PREFIX": prefix, "SS_EVENTS": str(events),
               "SS_SECRET": SECRET}  # fmt: skip
        super().__init__("tests.apps.multiprocess:app", env)
        self.events = events
        self.start()

    def destroyed_events(self) -> list[str]:
        return self.events.read_text().splitlines() if self.events.exists() else []


@pytest.fixture(params=["redis", "postgresql"])
async def workers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Workers]:
    kind: str = request.param
    await require(kind)
    tag = uuid.uuid4().hex[:10]
    if kind == "redis":
        url, prefix = REDIS_URL, f"sstest:{tag}:"
    else:
        url, prefix = POSTGRES_URL, f"t{tag}_"
        from servletsession.stores.sql import SQLStore

        store = SQLStore(url, table_prefix=prefix)
        await store.create_tables()
        await store.close()
    running = await asyncio.to_thread(Workers, url, prefix, tmp_path / "events.log")
    yield running
    await asyncio.to_thread(running.stop)
    await _clean(kind, tag)


class Client:
    """One browser: its own cookie, sent to whichever worker it talks to."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http
        self.cookie: str | None = None

    async def call(self, method: str, url: str, **options: object) -> httpx2.Response:
        headers = {"cookie": f"sessionid={self.cookie}"} if self.cookie else {}
        response = await self.http.request(method, url, headers=headers, **options)  # type: ignore[arg-type]
        set_cookie = response.headers.get("set-cookie", "")
        if set_cookie.startswith("sessionid="):
            self.cookie = set_cookie.split(";")[0].split("=", 1)[1] or None
        return response


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    limits = httpx2.Limits(max_connections=40)
    async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
        yield client


async def test_a_session_created_on_one_worker_is_used_on_the_other(
    workers: Workers, http: httpx2.AsyncClient
) -> None:
    browser = Client(http)
    first, second = workers.urls
    assert (await browser.call("POST", first + "/incr/count")).text == "1"
    assert (await browser.call("POST", second + "/incr/count")).text == "2"
    assert (await browser.call("GET", first + "/read")).json() == {"count": 2}


async def test_20_clients_times_100_alternating_requests_lose_no_increment(
    workers: Workers, http: httpx2.AsyncClient
) -> None:
    async def one_client() -> list[int]:
        browser = Client(http)
        seen = []
        for index in range(100):
            response = await browser.call("POST", workers.urls[index % 2] + "/incr/count")
            assert response.status_code == 200
            seen.append(int(response.text))
        return seen

    results = await asyncio.gather(*(one_client() for _ in range(20)))
    for seen in results:
        assert seen == list(range(1, 101))


async def test_concurrent_writes_of_different_attributes_on_two_workers_both_persist(
    workers: Workers, http: httpx2.AsyncClient
) -> None:
    browser = Client(http)
    first, second = workers.urls
    await browser.call("POST", first + "/incr/count")
    await asyncio.gather(
        browser.call("POST", first + "/slow-set/left", params={"value": "L", "wait": "0.2"}),
        browser.call("POST", second + "/slow-set/right", params={"value": "R", "wait": "0.2"}),
    )
    assert (await browser.call("GET", second + "/read")).json() == {
        "count": 1,
        "left": "L",
        "right": "R",
    }


async def test_one_expiry_fires_session_destroyed_once_in_total(
    workers: Workers, http: httpx2.AsyncClient
) -> None:
    browser = Client(http)
    await browser.call("POST", workers.urls[0] + "/incr/count")
    await browser.call("POST", workers.urls[1] + "/incr/count")
    pids = {
        (await http.post(url + "/_clock", params={"seconds": "120"})).text for url in workers.urls
    }
    assert len(pids) == 2
    give_up = time.monotonic() + 10
    # Another process writes the file: polling it is the only way to wait.
    while not workers.destroyed_events() and time.monotonic() < give_up:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # six more reaper ticks on each worker: no second event may come
    events = workers.destroyed_events()
    assert len(events) == 1, events
    assert events[0].split()[2] == "2"  # the attributes were readable in the listener
    assert (await browser.call("GET", workers.urls[0] + "/read")).json() is None
