"""The admin app mounted in a real app, over ASGI: list, detail, actions, CSRF, auth."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from servletsession import SessionManager, get_session
from servletsession.admin import AdminApp, basic_auth, session_role
from servletsession.cookies import session_ref
from servletsession.stores.sql import SQLStore

from .conftest import FakeClock, client, login, make_app
from .stores.helpers import Browser

pytestmark = pytest.mark.anyio
ODD = "team/ops ?#&=%2F+\"<é>'\n\\"  # a principal no path segment could carry


def allow(request: Request) -> bool:
    return True


async def become_admin(request: Request) -> Response:
    session = get_session(request)
    assert session is not None
    session["roles"] = request.query_params.getlist("role")
    return Response("ok")


def admin_app(manager: SessionManager, *, mount: str = "/admin", **options: Any) -> Starlette:
    options.setdefault("auth", allow)
    return make_app(
        manager,
        [
            Route("/login", login, methods=["POST"]),
            Route("/become", become_admin, methods=["POST"]),
            Mount(mount, AdminApp(manager, **options)),
        ],
    )


async def sign_in(app: Starlette, *users: str) -> list[Browser]:
    browsers = []
    for user in users:
        browser = Browser()
        await browser.post(app, "/login", params={"user": user})
        browsers.append(browser)
    return browsers


def token_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


def forms_of(page: str, action: str) -> list[dict[str, str]]:
    """The hidden fields of every form posting to ``action`` on ``page``."""
    found = []
    for form in re.findall(
        r'<form class="inline" method="post" action="([^"]+)">(.*?)</form>', page
    ):
        if form[0].endswith(action):
            found.append(dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', form[1])))
    return found


async def api_token(http: httpx2.AsyncClient, base: str = "/admin/") -> dict[str, str]:
    token = (await http.get(f"{base}api/csrf")).json()["token"]
    return {"x-csrf-token": token}


# --- auth -------------------------------------------------------------------------------------


async def test_an_auth_hook_answering_false_refuses_every_route_with_403(clock: FakeClock) -> None:
    app = admin_app(SessionManager(clock=clock), auth=lambda request: False)
    async with client(app) as http:
        for path in ("/admin/", "/admin/api/stats", "/admin/api/sessions", "/admin/metrics"):
            assert (await http.get(path)).status_code == 403
        assert (await http.post("/admin/api/principals/invalidate")).status_code == 403


async def test_basic_auth_challenges_a_browser_with_401_and_admits_the_right_password(
    clock: FakeClock,
) -> None:
    app = admin_app(SessionManager(clock=clock), auth=basic_auth({"ops": "s3cret:pw"}))
    async with client(app) as http:
        challenge = await http.get("/admin/")
        assert challenge.status_code == 401
        assert challenge.headers["www-authenticate"].startswith('Basic realm="')
        assert (await http.get("/admin/", auth=("ops", "wrong"))).status_code == 401
        assert (await http.get("/admin/", auth=("nobody", "s3cret:pw"))).status_code == 401
        garbage = {"authorization": "Basic !!!"}
        assert (await http.get("/admin/", headers=garbage)).status_code == 401
        assert (await http.get("/admin/", auth=("ops", "s3cret:pw"))).status_code == 200


async def test_session_role_admits_the_apps_own_admin_session_and_sends_others_to_login(
    clock: FakeClock,
) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager, auth=session_role("admin", login_url="/login-page"))
    anonymous, user, admin = Browser(), Browser(), Browser()
    to_login = await anonymous.get(app, "/admin/?sort=idle", follow_redirects=False)
    assert to_login.status_code == 303
    assert to_login.headers["location"] == "/login-page?next=/admin/%3Fsort%3Didle"
    await user.post(app, "/become", params={"role": "viewer"})
    assert (await user.get(app, "/admin/")).status_code == 403
    await admin.post(app, "/become", params=[("role", "viewer"), ("role", "admin")])
    assert (await admin.get(app, "/admin/")).status_code == 200
    assert (await admin.get(app, "/admin/api/stats")).json()["active"] == 2


# --- the list ---------------------------------------------------------------------------------


async def test_the_list_shows_times_idle_and_attribute_names_and_sizes_but_no_values(
    clock: FakeClock,
) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    (ada,) = await sign_in(app, "ada")
    await ada.post(app, "/set/cart", params={"value": "TOP-SECRET-CART"})
    clock.advance(3 * 3600 + 12 * 60)
    async with client(app) as http:
        page = (await http.get("/admin/")).text
        listed = (await http.get("/admin/api/sessions")).json()
    assert '<time datetime="2023-11-14T22:13:20+00:00">2023-11-14 22:13:20 UTC</time>' in page
    assert "3&nbsp;h 12&nbsp;min" in page
    assert "cart <span class='muted'>(" in page  # a long name wraps (a phone's width)
    assert "user <span class='muted'>(" in page
    assert "TOP-SECRET-CART" not in page + str(listed)
    (row,) = listed["sessions"]
    assert row["created"] == "2023-11-14T22:13:20+00:00"
    assert row["idle_seconds"] == 3 * 3600 + 12 * 60
    assert row["principal"] == "ada"
    assert {a["name"] for a in row["attributes"]} == {"user", "cart"}
    assert all(a["size"] > 0 and "value" not in a for a in row["attributes"])
    assert row["log_ref"] == session_ref(ada.session_id)


async def test_values_are_shown_only_for_the_attributes_the_app_opts_in(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager, show_values={"cart"})
    (ada,) = await sign_in(app, "ada")
    await ada.post(app, "/set/cart", params={"value": "three <apples>"})
    await ada.post(app, "/set/token", params={"value": "HIDDEN-TOKEN"})
    async with client(app) as http:
        ref = (await http.get("/admin/api/sessions")).json()["sessions"][0]["ref"]
        detail = (await http.get(f"/admin/api/sessions/{ref}")).json()
        page = (await http.get(f"/admin/sessions/{ref}")).text
    values = {a["name"]: a.get("value", "(hidden)") for a in detail["attributes"]}
    assert values == {"user": "(hidden)", "cart": "three <apples>", "token": "(hidden)"}
    assert "&quot;three &lt;apples&gt;&quot;" in page
    assert "HIDDEN-TOKEN" not in page
    assert "ada" in page


async def test_no_raw_session_id_appears_in_any_page_api_answer_or_redirect(
    clock: FakeClock,
) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    browsers = await sign_in(app, "ada", "bob")
    seen: list[str] = []
    async with client(app) as http:
        for path in ("/admin/", "/admin/api/sessions", "/admin/api/stats"):
            answer = await http.get(path)
            seen += [answer.text, str(answer.headers)]
        for row in (await http.get("/admin/api/sessions")).json()["sessions"]:
            for path in (f"/admin/sessions/{row['ref']}", f"/admin/api/sessions/{row['ref']}"):
                answer = await http.get(path)
                seen += [answer.text, str(answer.headers)]
        page = (await http.get("/admin/")).text
        form = forms_of(page, "actions/invalidate-session")[0]
        done = await http.post("/admin/actions/invalidate-session", data=form)
        seen += [done.text, str(done.headers)]
    for browser in browsers:
        assert not any(browser.session_id in text for text in seen)
    assert repr(AdminApp(manager, auth=allow)).count("AdminApp") == 1


async def test_every_column_sorts_both_ways(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    browsers = []
    for user in ("carol", "ada", "bob"):
        browsers += await sign_in(app, user)
        clock.advance(1)
    _, ada, bob = browsers
    clock.advance(60)
    await ada.post(app, "/set/big", params={"value": "x" * 500})
    clock.advance(60)
    await bob.get(app, "/info")
    clock.advance(1)
    anonymous = Browser()
    await anonymous.post(app, "/set/a", params={"value": "1"})

    async def order(sort: str, direction: str) -> list[str | None]:
        query = {"sort": sort, "order": direction}
        answer = (await http.get("/admin/api/sessions", params=query)).json()
        return [row["principal"] for row in answer["sessions"]]

    async with client(app) as http:
        assert await order("principal", "asc") == ["ada", "bob", "carol", None]
        assert await order("principal", "desc") == [None, "carol", "bob", "ada"]
        assert await order("created", "asc") == ["carol", "ada", "bob", None]
        assert await order("last_access", "desc") == [None, "bob", "ada", "carol"]
        assert (await order("idle", "desc"))[0] == "carol"
        assert await order("size", "desc") == ["ada", "carol", "bob", None]
        assert (await order("attributes", "desc"))[0] == "ada"
        assert (await order("expires", "asc"))[0] == "carol"
        page = (await http.get("/admin/?sort=idle&order=desc")).text
    assert '<a href="?sort=idle&amp;order=asc" class="sorted">Idle ▼</a>' in page
    assert '<a href="?sort=principal&amp;order=asc">Principal</a>' in page


async def test_filters_by_principal_and_by_idle_time(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    await sign_in(app, "ada", "ada", ODD)
    clock.advance(20 * 60)
    (fresh,) = await sign_in(app, "bob")
    async with client(app) as http:
        by_ada = (await http.get("/admin/api/sessions", params={"principal": "ada"})).json()
        by_odd = (await http.get("/admin/api/sessions", params={"principal": ODD})).json()
        idle = (await http.get("/admin/api/sessions", params={"min_idle": 15})).json()
        page = (await http.get("/admin/", params={"principal": ODD})).text
    assert [r["principal"] for r in by_ada["sessions"]] == ["ada", "ada"]
    assert [r["principal"] for r in by_odd["sessions"]] == [ODD]
    assert sorted(r["principal"] for r in idle["sessions"]) == sorted(["ada", "ada", ODD])
    assert "Showing 1&ndash;1 of 1" in page
    assert fresh.session_id not in str(idle)


async def test_pages_come_with_first_previous_next_and_last_links(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    await sign_in(app, *[f"user{n:02}" for n in range(7)])
    async with client(app) as http:
        middle = (await http.get("/admin/?sort=principal&limit=3&offset=3")).text
        api = (await http.get("/admin/api/sessions?sort=principal&limit=3&offset=6")).json()
    assert "Showing 4&ndash;6 of 7" in middle
    assert "Page 2 of 3" in middle
    links = re.findall(r'href="([^"]+)" rel="(\w+)"', middle)
    assert {rel: href for href, rel in links} == {
        "first": "?sort=principal&amp;order=asc&amp;limit=3",
        "prev": "?sort=principal&amp;order=asc&amp;limit=3",
        "next": "?sort=principal&amp;order=asc&amp;offset=6&amp;limit=3",
        "last": "?sort=principal&amp;order=asc&amp;offset=6&amp;limit=3",
    }
    assert (api["total"], api["offset"], api["limit"]) == (7, 6, 3)
    assert [row["principal"] for row in api["sessions"]] == ["user06"]


@pytest.mark.parametrize(
    "query",
    ["limit=-1", "limit=0", "limit=501", "limit=ten", "offset=-1", "min_idle=-5",
     "sort=id", "order=sideways", "limit=1e3"],
)  # fmt: skip
async def test_bad_query_parameters_are_refused_with_400(clock: FakeClock, query: str) -> None:
    app = admin_app(SessionManager(clock=clock))
    async with client(app) as http:
        api = await http.get(f"/admin/api/sessions?{query}")
        page = await http.get(f"/admin/?{query}")
    assert api.status_code == page.status_code == 400
    assert api.json()["error"]
    assert 'role="alert"' in page.text


async def test_max_limit_is_the_apps_to_choose(clock: FakeClock) -> None:
    app = admin_app(SessionManager(clock=clock), max_limit=5)
    async with client(app) as http:
        assert (await http.get("/admin/api/sessions?limit=5")).status_code == 200
        assert (await http.get("/admin/api/sessions?limit=6")).status_code == 400


# --- actions through the HTML forms -----------------------------------------------------------


class Ended:
    def __init__(self) -> None:
        self.principals: list[str | None] = []

    def session_destroyed(self, event: Any) -> None:
        self.principals.append(event.session.principal)


@pytest.mark.parametrize(("mount", "root_path"), [("/admin", ""), ("/ops/admin", "/proxy")])
async def test_every_button_acts_then_redirects_back_to_the_list_under_any_mount(
    clock: FakeClock, mount: str, root_path: str
) -> None:
    ended = Ended()
    manager = SessionManager(clock=clock, listeners=[ended], max_inactive_interval=7200)
    app = admin_app(manager, mount=mount)
    await sign_in(app, "ada", ODD, ODD, "bob", "carol")
    clock.advance(45 * 60)
    await sign_in(app, "dave")
    transport = httpx2.ASGITransport(app=app, root_path=root_path)
    base = f"https://testserver{root_path}{mount}/"
    async with httpx2.AsyncClient(transport=transport, base_url="https://testserver") as http:

        async def press(action: str, pick: Callable[[dict[str, str]], bool], **typed: str) -> str:
            page = (await http.get(f"{base}?sort=principal")).text
            form = next(f for f in forms_of(page, action) if pick(f))
            done = await http.post(f"{base}{action}", data=form | typed)
            assert done.status_code == 303
            assert done.headers["location"].startswith("../?sort=principal&order=asc&invalidated=")
            back = urljoin(str(done.request.url), done.headers["location"])
            assert back.startswith(base)
            listed = await http.get(back)
            assert listed.status_code == 200
            return listed.text

        rows = (await http.get(f"{base}api/sessions?sort=principal")).json()["sessions"]
        ada = next(r["ref"] for r in rows if r["principal"] == "ada")
        after = await press("actions/invalidate-session", lambda f: f["ref"] == ada)
        assert "1 session invalidated." in after
        odd = base64.urlsafe_b64encode(ODD.encode()).decode()
        after = await press("actions/invalidate-principal", lambda f: f["principal_b64"] == odd)
        assert "2 sessions invalidated." in after
        after = await press("actions/invalidate-idle", lambda f: True, minutes="30")
        assert "2 sessions invalidated." in after  # bob and carol; dave is fresh
        left = (await http.get(f"{base}api/sessions")).json()["sessions"]
        stats = (await http.get(f"{base}api/stats")).json()
    assert [row["principal"] for row in left] == ["dave"]
    assert sorted(ended.principals, key=str) == sorted(["ada", ODD, ODD, "bob", "carol"], key=str)
    assert (stats["active"], stats["invalidated"]) == (1, 5)


async def test_the_detail_page_buttons_end_the_session_and_return_to_the_list(
    clock: FakeClock,
) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    ada, _, bob = await sign_in(app, "ada", "ada", "bob")
    async with client(app) as http:
        rows = (await http.get("/admin/api/sessions?principal=bob")).json()["sessions"]
        page = (await http.get(f"/admin/sessions/{rows[0]['ref']}")).text
        form = forms_of(page, "../actions/invalidate-session")[0]
        done = await http.post("/admin/actions/invalidate-session", data=form)
        assert done.headers["location"] == "../?invalidated=1"
        assert (await http.get(f"/admin/sessions/{rows[0]['ref']}")).status_code == 404
        refs = (await http.get("/admin/api/sessions?principal=ada")).json()["sessions"]
        page = (await http.get(f"/admin/sessions/{refs[0]['ref']}")).text
        form = forms_of(page, "../actions/invalidate-principal")[0]
        done = await http.post("/admin/actions/invalidate-principal", data=form)
        assert done.headers["location"] == "../?invalidated=2"
    assert (await bob.get(app, "/get/user")).json() == {"session": False}
    assert (await ada.get(app, "/get/user")).json() == {"session": False}


async def test_an_unknown_or_malformed_ref_is_404(clock: FakeClock) -> None:
    app = admin_app(SessionManager(clock=clock))
    await sign_in(app, "ada")
    async with client(app) as http:
        for ref in ("A" * 22, "../../etc", "x", "%00" * 22):
            assert (await http.get(f"/admin/sessions/{ref}")).status_code == 404
            assert (await http.get(f"/admin/api/sessions/{ref}")).status_code == 404
        headers = await api_token(http)
        missing = await http.post(f"/admin/api/sessions/{'A' * 22}/invalidate", headers=headers)
    assert missing.status_code == 404


async def test_refs_are_keyed_per_admin_app_unless_it_is_given_a_secret_key(
    clock: FakeClock,
) -> None:
    manager = SessionManager(clock=clock)
    await sign_in(admin_app(manager), "ada")

    async def ref_of(admin: Starlette) -> str:
        async with client(admin) as http:
            rows = (await http.get("/admin/api/sessions")).json()["sessions"]
            return str(rows[0]["ref"])

    assert await ref_of(admin_app(manager)) != await ref_of(admin_app(manager))
    key = "k" * 32
    assert await ref_of(admin_app(manager, secret_key=key)) == await ref_of(
        admin_app(manager, secret_key=key)
    )
    with pytest.raises(ValueError, match="at least 32"):
        AdminApp(manager, auth=allow, secret_key="short")


# --- CSRF ------------------------------------------------------------------------------------


async def test_forms_without_the_right_csrf_token_are_refused_with_403_and_change_nothing(
    clock: FakeClock,
) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    await sign_in(app, "ada")
    async with client(app) as http, client(app) as attacker:
        page = (await http.get("/admin/")).text
        form = forms_of(page, "actions/invalidate-principal")[0]
        token = token_of(page)
        # The last character of a 32-byte digest in base64 is one of 16: "A" one time in 16.
        other_last = "E" if token.endswith("A") else "A"
        for tampered in (
            {k: v for k, v in form.items() if k != "csrf"},
            form | {"csrf": ""},
            form | {"csrf": token[:-1] + other_last},
        ):
            refused = await http.post("/admin/actions/invalidate-principal", data=tampered)
            assert refused.status_code == 403
        cross = await http.post(
            "/admin/actions/invalidate-principal",
            data=form,
            headers={"sec-fetch-site": "cross-site"},
        )
        assert cross.status_code == 403
        # Another browser (no cookie, or its own cookie) cannot use this browser's token.
        assert (
            await attacker.post("/admin/actions/invalidate-principal", data=form)
        ).status_code == 403
        await attacker.get("/admin/")
        assert (
            await attacker.post("/admin/actions/invalidate-principal", data=form)
        ).status_code == 403
        assert (await http.get("/admin/api/stats")).json()["active"] == 1


async def test_the_csrf_cookie_is_httponly_strict_and_scoped_to_the_mount(clock: FakeClock) -> None:
    app = admin_app(SessionManager(clock=clock))
    async with client(app) as http:
        first = await http.get("/admin/")
        again = await http.get("/admin/")
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("servletsession_admin_csrf=")
    for flag in ("HttpOnly", "Path=/admin/", "SameSite=strict", "Secure"):
        assert flag in cookie
    assert "set-cookie" not in again.headers
    assert token_of(first.text) == token_of(again.text)
    for header in ("content-security-policy", "x-frame-options"):
        assert header in first.headers
    assert "frame-ancestors 'none'" in first.headers["content-security-policy"]
    assert first.headers["cache-control"] == "no-store"


async def test_json_posts_need_the_csrf_header_and_do_the_three_actions(clock: FakeClock) -> None:
    ended = Ended()
    manager = SessionManager(clock=clock, listeners=[ended], max_inactive_interval=7200)
    app = admin_app(manager)
    await sign_in(app, "ada", ODD, ODD, "bob")
    clock.advance(3600)
    await sign_in(app, "carol")
    async with client(app) as http:
        body = {"principal": ODD}
        assert (await http.post("/admin/api/principals/invalidate", json=body)).status_code == 403
        headers = await api_token(http)
        wrong = {"x-csrf-token": headers["x-csrf-token"][::-1]}
        refused = await http.post("/admin/api/principals/invalidate", json=body, headers=wrong)
        assert refused.status_code == 403
        done = await http.post("/admin/api/principals/invalidate", json=body, headers=headers)
        assert done.json() == {"invalidated": 2}
        ada = (await http.get("/admin/api/sessions?principal=ada")).json()["sessions"][0]["ref"]
        done = await http.post(f"/admin/api/sessions/{ada}/invalidate", headers=headers)
        assert done.json() == {"invalidated": 1}
        for bad in ({"minutes": -1}, {"minutes": 0}, {"minutes": "x"}, {"minutes": True}, {}):
            answer = await http.post(
                "/admin/api/sessions/invalidate-idle", json=bad, headers=headers
            )
            assert answer.status_code == 400
        not_json = await http.post(
            "/admin/api/principals/invalidate", content=b"[1]", headers=headers
        )
        assert not_json.status_code == 400
        done = await http.post(
            "/admin/api/sessions/invalidate-idle", json={"minutes": 59}, headers=headers
        )
        assert done.json() == {"invalidated": 1}  # bob; carol is fresh
        stats = (await http.get("/admin/api/stats")).json()
    assert sorted(ended.principals, key=str) == sorted([ODD, ODD, "ada", "bob"], key=str)
    assert (stats["active"], stats["invalidated"]) == (1, 4)


async def test_a_session_in_use_is_not_idle(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock, max_inactive_interval=7200)
    app = admin_app(manager)
    (ada,) = await sign_in(app, "ada")
    clock.advance(3600)
    session = await manager.find(ada.session_id)  # held as a request would hold it
    assert session is not None
    async with client(app) as http:
        rows = (await http.get("/admin/api/sessions")).json()["sessions"]
        headers = await api_token(http)
        done = await http.post(
            "/admin/api/sessions/invalidate-idle", json={"minutes": 1}, headers=headers
        )
    assert rows[0]["in_use"] is True
    assert rows[0]["idle_seconds"] == 0
    assert done.json() == {"invalidated": 0}
    await manager.release(session)


# --- other stores, metrics ---------------------------------------------------------------------


async def test_the_admin_app_works_on_a_sql_store(clock: FakeClock, tmp_path: Path) -> None:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}")
    manager = SessionManager(store, clock=clock)
    try:
        app = admin_app(manager, show_values={"user"})
        ada, _ = await sign_in(app, "ada", "bob")
        async with client(app) as http:
            rows = (await http.get("/admin/api/sessions?sort=principal")).json()["sessions"]
            detail = (await http.get(f"/admin/api/sessions/{rows[0]['ref']}")).json()
            headers = await api_token(http)
            body = {"principal": "ada"}
            done = await http.post("/admin/api/principals/invalidate", json=body, headers=headers)
        assert [r["principal"] for r in rows] == ["ada", "bob"]
        assert detail["attributes"] == [{"name": "user", "size": 11, "value": "ada"}]
        assert done.json() == {"invalidated": 1}
        assert (await ada.get(app, "/get/user")).json() == {"session": False}
    finally:
        await manager.close()


async def test_prometheus_metrics_count_the_lifecycle(clock: FakeClock) -> None:
    manager = SessionManager(clock=clock)
    app = admin_app(manager)
    await sign_in(app, "ada")
    await Browser().get(app, "/info", headers={"cookie": "sessionid=" + "A" * 43 + "." + "B" * 43})
    async with client(app) as http:
        metrics = (await http.get("/admin/metrics")).text
    assert "servletsession_created_total 1.0" in metrics
    assert "servletsession_active 1.0" in metrics
    assert "servletsession_bad_signatures_total 1.0" in metrics


def test_configuration_mistakes_fail_at_construction() -> None:
    manager = SessionManager()
    with pytest.raises(TypeError, match="auth must be a callable"):
        AdminApp(manager, auth=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="show_values is a collection"):
        AdminApp(manager, auth=allow, show_values="cart")
    with pytest.raises(ValueError, match="max_limit"):
        AdminApp(manager, auth=allow, max_limit=0)


# --- a store outage, odd values, a session in use elsewhere, basic_auth's settings --------------


async def test_a_store_outage_is_503_with_retry_after_and_metrics_still_answer() -> None:
    from servletsession.stores import store_from_url

    manager = SessionManager(store_from_url("redis://127.0.0.1:1/15", prefix="admin-outage:"))
    app = admin_app(manager)
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="https://testserver") as http:
            metrics = await http.get("/admin/metrics")
            headers = await api_token(http)
            for path in ("/admin/", "/admin/sessions/" + "A" * 22):
                page = await http.get(path)
                assert page.status_code == 503, path
                assert page.headers["retry-after"] == "5"
                assert "session store is unavailable" in page.text
                assert page.headers["content-type"].startswith("text/html")
            for path in (
                "/admin/api/stats",
                "/admin/api/sessions",
                "/admin/api/sessions/" + "A" * 22,
            ):
                answer = await http.get(path)
                assert answer.status_code == 503, path
                assert answer.headers["retry-after"] == "5"
                assert answer.json() == {"error": "session store unavailable"}
            body = {"minutes": 5}
            idle = await http.post(
                "/admin/api/sessions/invalidate-idle", json=body, headers=headers
            )
            assert idle.status_code == 503
    finally:
        await manager.close()
    assert metrics.status_code == 200
    assert 'servletsession_store_errors_total{kind="unavailable",operation="count"}' in metrics.text
    assert "servletsession_created_total 0.0" in metrics.text


ODD_VALUES: dict[str, tuple[str, Any]] = {
    "tuple key": ("cart", {(1, 2): "x"}),
    "huge int": ("cart", 10**5000),
    "nan": ("cart", float("nan")),
    "surrogate value": ("cart", "a\udfffb"),
    "surrogate name": ("draft:\udfff", 1),
    "raising repr": ("cart", type("Odd", (), {"__repr__": lambda self: 1 / 0})()),
}


@pytest.mark.parametrize("kind", [*ODD_VALUES, "circular"])
async def test_one_odd_attribute_never_breaks_the_admin(clock: FakeClock, kind: str) -> None:
    manager = SessionManager(clock=clock)  # the memory store holds any object
    app = admin_app(manager, show_values={"cart"})
    (ada,) = await sign_in(app, "ada")
    session = await manager.find(ada.session_id)
    assert session is not None
    if kind == "circular":
        name, value = "cart", []
        value.append(value)
    else:
        name, value = ODD_VALUES[kind]
    session[name] = value
    await manager.release(session)
    async with client(app) as http:
        page = await http.get("/admin/")
        rows = (await http.get("/admin/api/sessions")).json()["sessions"]
        detail = await http.get(f"/admin/api/sessions/{rows[0]['ref']}")
        detail_page = await http.get(f"/admin/sessions/{rows[0]['ref']}")
    assert page.status_code == detail.status_code == detail_page.status_code == 200
    shown = {a["name"]: a.get("value") for a in detail.json()["attributes"]}
    expected = {
        "tuple key": "{(1, 2): 'x'}",
        "huge int": "<int object>",
        "nan": "nan",
        "surrogate value": "'a\\udfffb'",
        "surrogate name": None,
        "raising repr": "<Odd object>",
        "circular": "[[...]]",
    }[kind]
    assert shown["draft:\\udfff" if kind == "surrogate name" else "cart"] == expected


async def test_idle_invalidation_spares_a_session_kept_alive_by_another_worker(
    clock: FakeClock, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    worker_a = SessionManager(SQLStore(url), clock=clock, max_inactive_interval=7200)
    worker_b = SessionManager(SQLStore(url), clock=clock, max_inactive_interval=7200)
    try:
        app_a, app_b = admin_app(worker_a), admin_app(worker_b)
        ada, bob = await sign_in(app_b, "ada", "bob")
        held = await worker_b.find(ada.session_id)  # a long request on worker B
        assert held is not None
        for _ in range(40):  # 40 minutes, B's keeper ticking (every few seconds in real time)
            clock.advance(60)
            await worker_b.keep_alive()
        async with client(app_a) as http:
            rows = (await http.get("/admin/api/sessions?sort=principal")).json()["sessions"]
            headers = await api_token(http)
            url_idle = "/admin/api/sessions/invalidate-idle"
            done = await http.post(url_idle, json={"minutes": 30}, headers=headers)
            assert [(r["principal"], r["in_use"]) for r in rows] == [("ada", False), ("bob", False)]
            assert rows[0]["idle_seconds"] == 0  # bob's is 40 min less the store's pad (30 s):
            assert rows[1]["idle_seconds"] == 40 * 60 - 30  # measured from its stored deadline
            assert done.json() == {"invalidated": 1}  # bob only
            assert (await bob.get(app_b, "/get/user")).json() == {"session": False}
            await worker_b.release(held)  # the request ends: idle from now on
            clock.advance(31 * 60)
            done = await http.post(url_idle, json={"minutes": 30}, headers=headers)
            assert done.json() == {"invalidated": 1}
    finally:
        await worker_a.close()
        await worker_b.close()


def test_basic_auth_refuses_settings_that_cannot_work_at_construction() -> None:
    from servletsession.errors import ConfigurationError

    for realm in ("Админка", "ops\r\nSet-Cookie: x=1", "a\x00b"):
        with pytest.raises(ConfigurationError, match="realm"):
            basic_auth({"ops": "pw"}, realm=realm)
    with pytest.raises(ConfigurationError, match="':' ends a Basic user name"):
        basic_auth({"ops:prod": "pw"})
    with pytest.raises(ConfigurationError, match="empty password"):
        basic_auth({"ops": ""})
    with pytest.raises(ConfigurationError, match="at least one user"):
        basic_auth({})


async def test_basic_auth_escapes_the_realm_as_a_quoted_string(clock: FakeClock) -> None:
    app = admin_app(
        SessionManager(clock=clock), auth=basic_auth({"ops": "pw"}, realm='a "b" \\c é')
    )
    async with client(app) as http:
        challenge = await http.get("/admin/")
    assert challenge.status_code == 401
    raw = dict(challenge.headers.raw)[b"www-authenticate"]
    assert raw == b'Basic realm="a \\"b\\" \\\\c \xe9", charset="UTF-8"'
