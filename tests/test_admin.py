"""The admin app and the Prometheus metrics, mounted in a real app."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount, Route

from servletsession import SessionManager
from servletsession.admin import AdminApp
from servletsession.cookies import session_ref

from .conftest import FakeClock, client, login, make_app
from .stores.helpers import Browser

pytestmark = pytest.mark.anyio
TOKEN = "let-me-in"


def admin_app(manager: SessionManager) -> Starlette:
    async def only_admins(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    app = make_app(
        manager,
        [
            Route("/login", login, methods=["POST"]),
            Mount("/admin", AdminApp(manager, auth=only_admins)),
        ],
    )
    return app


ADMIN = {"authorization": f"Bearer {TOKEN}"}


async def test_the_admin_app_refuses_without_the_apps_auth(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    async with client(admin_app(manager)) as http:
        for path in ("/admin/", "/admin/api/stats", "/admin/api/sessions", "/admin/metrics"):
            assert (await http.get(path)).status_code == 403
        assert (await http.post("/admin/api/principals/ada/invalidate")).status_code == 403


async def test_sessions_are_listed_by_ref_and_can_be_invalidated(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    ada, bob, bob2 = Browser(), Browser(), Browser()
    await ada.post(app, "/login", params={"user": "ada"})
    await bob.post(app, "/login", params={"user": "bob<script>"})
    await bob2.post(app, "/login", params={"user": "bob<script>"})
    async with client(app) as http:
        listed = (await http.get("/admin/api/sessions", headers=ADMIN)).json()
        assert {s["ref"] for s in listed} == {session_ref(b.session_id) for b in (ada, bob, bob2)}
        assert ada.session_id not in str(listed)
        page = (await http.get("/admin/", headers=ADMIN)).text
        assert "bob&lt;script&gt;" in page
        assert "<script>" not in page
        gone = await http.post(
            f"/admin/api/sessions/{session_ref(ada.session_id)}/invalidate", headers=ADMIN
        )
        assert gone.json() == {"invalidated": 1}
        everywhere = await http.post(
            "/admin/api/principals/bob%3Cscript%3E/invalidate", headers=ADMIN
        )
        assert everywhere.json() == {"invalidated": 2}
        missing = await http.post("/admin/api/sessions/000000000000/invalidate", headers=ADMIN)
        assert missing.status_code == 404
        stats = (await http.get("/admin/api/stats", headers=ADMIN)).json()
    assert (stats["active"], stats["invalidated"]) == (0, 3)
    assert (await ada.get(app, "/get/user")).json() == {"session": False}


async def test_prometheus_metrics_count_the_lifecycle(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    browser = Browser()
    await browser.post(app, "/login", params={"user": "ada"})
    await Browser().get(app, "/info", headers={"cookie": "sessionid=" + "A" * 43 + "." + "B" * 43})
    async with client(app) as http:
        metrics = (await http.get("/admin/metrics", headers=ADMIN)).text
    assert "servletsession_created_total 1.0" in metrics
    assert "servletsession_active 1.0" in metrics
    assert "servletsession_bad_signatures_total 1.0" in metrics
