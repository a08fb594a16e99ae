"""Header session IDs on shared stores: an API client that carries ``X-Auth-Token`` between two
workers (two managers on one backend) keeps, renames and ends its session as a cookie would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest
from starlette.applications import Starlette

from servletsession import SessionManager

from ..conftest import FakeClock, client, make_app
from .conftest import StoreFactory, stores

pytestmark = pytest.mark.anyio
TOKEN = "x-auth-token"
SHARED = ("sqlite", "postgresql", "redis")


class Workers:
    """Two workers sharing one backend, each with a header-mode app and a client speaking to it."""

    def __init__(self, make: StoreFactory, clock: FakeClock) -> None:
        self.managers = [SessionManager(make(save_period=0), clock=clock) for _ in range(2)]
        self.apps: list[Starlette] = [make_app(m, id_resolver="header") for m in self.managers]
        self.clients = [client(app) for app in self.apps]

    async def close(self) -> None:
        for http in self.clients:
            await http.aclose()
        for manager in self.managers:
            await manager.stop_reaper()


@pytest.fixture
async def workers(store_factory: StoreFactory, clock: FakeClock) -> AsyncIterator[Workers]:
    made = Workers(store_factory, clock)
    yield made
    await made.close()


async def created(http: httpx2.AsyncClient) -> str:
    response = await http.post("/set/a", params={"value": "1"})
    assert "set-cookie" not in response.headers
    return response.headers[TOKEN]


@stores(*SHARED)
async def test_a_header_session_created_on_one_worker_is_found_on_the_other(
    workers: Workers,
) -> None:
    one, two = workers.clients
    value = await created(one)
    response = await two.get("/get/a", headers={TOKEN: value})
    assert response.json() == {"session": True, "value": "1"}
    assert TOKEN not in response.headers


@stores(*SHARED)
async def test_a_header_id_changed_on_one_worker_is_dead_on_both(workers: Workers) -> None:
    one, two = workers.clients
    old = await created(one)
    new = (await two.post("/change-id", headers={TOKEN: old})).headers[TOKEN]
    assert new not in ("", old)
    for http in (one, two):
        assert (await http.get("/get/a", headers={TOKEN: old})).json() == {"session": False}
        assert (await http.get("/get/a", headers={TOKEN: new})).json()["value"] == "1"


@stores(*SHARED)
async def test_a_header_session_invalidated_on_one_worker_is_gone_on_both(
    workers: Workers,
) -> None:
    one, two = workers.clients
    value = await created(one)
    ended = await one.post("/invalidate", headers={TOKEN: value})
    assert ended.headers[TOKEN] == ""
    for http in (one, two):
        assert (await http.get("/get/a", headers={TOKEN: value})).json() == {"session": False}
