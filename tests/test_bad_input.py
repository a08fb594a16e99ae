"""Bad cookies get no session and never a 500; wrong configuration fails at construction."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette

from servletsession import ConfigurationError, SessionManager, SessionMiddleware
from servletsession.cookies import new_session_id

from .conftest import SECRET, client, cookie_header, make_app
from .stores.helpers import signed

pytestmark = pytest.mark.anyio

OTHER_SECRET = "another-secret-key-that-is-also-long-enough-42"


def signed_with(secret: str, session_id: str) -> str:
    return signed(session_id, secret)


BAD_COOKIES = {
    "garbage": "sessionid=not-a-session",
    "empty": "sessionid=",
    "huge": "sessionid=" + "A" * 100_000,
    "non_ascii": "sessionid=ééééé.ååååå",
    "quoted": 'sessionid="' + "A" * 43 + "." + "B" * 43 + '"',
    "unsigned_id": "sessionid=" + "A" * 43,
    "bad_signature": "sessionid=" + "A" * 43 + "." + "B" * 43,
    "header_injection": "sessionid=abc\r\nSet-Cookie: evil=1",
    "no_equals": "sessionid",
}


@pytest.mark.parametrize("header", BAD_COOKIES.values(), ids=BAD_COOKIES.keys())
async def test_a_bad_cookie_gets_no_session_and_no_error(
    manager: SessionManager, header: str
) -> None:
    async with client(make_app(manager)) as http:
        response = await http.get("/info", headers={"cookie": header.encode()})
    assert response.status_code == 200
    assert response.json() is None
    assert "set-cookie" not in response.headers


async def test_refused_cookies_are_counted_by_reason(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.get("/info", headers={"cookie": BAD_COOKIES["bad_signature"]})
        await http.get("/info", headers={"cookie": BAD_COOKIES["garbage"]})
        await http.get("/info", headers=cookie_header(signed_with(SECRET, new_session_id())))
    stats = await manager.stats()
    assert (stats.bad_signatures, stats.malformed_cookies, stats.unknown_ids) == (1, 1, 1)


async def test_a_cookie_signed_with_another_key_is_never_adopted(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "secret"})
        real_id = http.cookies["sessionid"].split(".")[0]
        forged = signed_with(OTHER_SECRET, real_id)
        response = await http.get("/get/a", headers=cookie_header(forged))
    assert response.json() == {"session": False}


async def test_a_signed_but_unknown_id_is_not_adopted_when_creating(
    manager: SessionManager,
) -> None:
    chosen = new_session_id()
    async with client(make_app(manager)) as http:
        response = await http.post(
            "/set/a", params={"value": "1"}, headers=cookie_header(signed_with(SECRET, chosen))
        )
    issued = response.headers["set-cookie"].split(";")[0].split("=", 1)[1].split(".")[0]
    assert issued != chosen
    assert (await manager.stats()).unknown_ids == 1
    assert await manager.find(chosen) is None


async def test_a_repeated_session_cookie_gets_no_session(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        value = http.cookies["sessionid"]
        header = {"cookie": f"sessionid={value}; sessionid={value}"}
        response = await http.get("/get/a", headers=header)
    assert response.json() == {"session": False}


async def test_other_cookies_around_the_session_cookie_are_ignored(manager: SessionManager) -> None:
    async with client(make_app(manager)) as http:
        await http.post("/set/a", params={"value": "1"})
        value = http.cookies["sessionid"]
        header = {"cookie": f"theme=dark; sessionid={value}; xsessionid=zzz; lang=en"}
        response = await http.get("/get/a", headers=header)
    assert response.json() == {"session": True, "value": "1"}


async def test_old_keys_verify_and_the_last_key_signs(manager: SessionManager) -> None:
    old_app = make_app(manager)
    async with client(old_app) as http:
        await http.post("/set/a", params={"value": "1"})
        old_cookie = http.cookies["sessionid"]
    rotated = Starlette(routes=old_app.routes)
    rotated.add_middleware(SessionMiddleware, secret_key=[SECRET, OTHER_SECRET], manager=manager)
    async with client(rotated) as http:
        response = await http.get("/get/a", headers=cookie_header(old_cookie))
        fresh = await http.post("/set/b", params={"value": "2"})
    assert response.json() == {"session": True, "value": "1"}
    new_id = fresh.headers["set-cookie"].split(";")[0].split("=", 1)[1].split(".")[0]
    assert fresh.headers["set-cookie"].split(";")[0].split("=", 1)[1] == signed_with(
        OTHER_SECRET, new_id
    )


CONFIG_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "empty_key": ({"secret_key": ""}, "secret_key: a key is 0 bytes; use at least 32"),
    "short_key": (
        {"secret_key": "x" * 12},
        "a key is 12 bytes; use at least 32, e.g. secrets.token_urlsafe(32)",
    ),
    "empty_key_list": ({"secret_key": []}, "secret_key: the key list is empty"),
    "short_key_in_list": ({"secret_key": [SECRET, "short"]}, "a key is 5 bytes"),
    "host_prefix_domain": (
        {"cookie_name": "__Host-sid", "domain": "example.com"},
        "a __Host- cookie needs secure=True, path='/' and no domain",
    ),
    "host_prefix_insecure": (
        {"cookie_name": "__Host-sid", "secure": False},
        "a __Host- cookie needs secure=True",
    ),
    "host_prefix_path": ({"cookie_name": "__Host-sid", "path": "/app"}, "path='/'"),
    "secure_prefix_insecure": (
        {"cookie_name": "__Secure-sid", "secure": False},
        "a __Secure- cookie needs secure=True",
    ),
    "same_site_none_insecure": (
        {"same_site": "none", "secure": False},
        "same_site='none' requires secure=True",
    ),
    "same_site_unknown": (
        {"same_site": "sometimes"},
        "same_site: Input should be 'lax', 'strict' or 'none'",
    ),
    "bad_cookie_name": (
        {"cookie_name": "my session"},
        "cookie_name: 'my session' is not a valid cookie name",
    ),
    "path_injection": ({"path": "/; Domain=evil.com"}, "path: "),
    "relative_path": ({"path": "app"}, "path: 'app' must start with '/'"),
    "max_age_zero": ({"max_age": 0}, "max_age: must be a positive number of seconds"),
    "unknown_store": ({"store": "redis://localhost"}, "store must be a SessionStore"),
    "manager_and_store": (
        {"manager": SessionManager(), "store": None, "max_inactive_interval": 60},
        "max_inactive_interval given together with manager=",
    ),
}


@pytest.mark.parametrize(("options", "message"), CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_wrong_middleware_configuration_fails_at_construction(
    options: dict[str, Any], message: str
) -> None:
    options = {"secret_key": SECRET, **options}
    with pytest.raises((ConfigurationError, TypeError)) as caught:
        SessionMiddleware(Starlette(), **options)
    assert message in str(caught.value)


MANAGER_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "reaper_interval_zero": (
        {"reaper_interval": 0},
        "reaper_interval: must be a positive number of seconds",
    ),
    "reaper_interval_negative": ({"reaper_interval": -5}, "reaper_interval: must be a positive"),
    "absolute_timeout_zero": ({"absolute_timeout": 0}, "absolute_timeout: must be a positive"),
    "max_active_zero": (
        {"max_active_sessions": 0},
        "max_active_sessions: must be a positive whole number",
    ),
    "interval_not_int": (
        {"max_inactive_interval": "soon"},
        "max_inactive_interval: Input should be a valid integer",
    ),
}


@pytest.mark.parametrize(("options", "message"), MANAGER_ERRORS.values(), ids=MANAGER_ERRORS.keys())
def test_wrong_manager_configuration_fails_at_construction(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SessionManager(**options)
    assert message in str(caught.value)


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


async def test_manager_limit_answers_503_with_retry_after(clock: Any) -> None:
    manager = SessionManager(clock=clock, max_active_sessions=1)
    async with client(make_app(manager)) as first, client(make_app(manager)) as second:
        assert (await first.post("/set/a", params={"value": "1"})).status_code == 200
        refused = await second.post("/set/a", params={"value": "1"})
        assert (await first.get("/get/a")).json()["value"] == "1"
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert (await manager.stats()).rejected == 1
    await manager.close()


def test_cookie_signatures_are_itsdangerous_signatures() -> None:
    """The fast signing path makes exactly the signature stock itsdangerous makes and verifies."""
    import hashlib

    from itsdangerous import Signer

    from servletsession.cookies import _SessionIdSigner

    keys = [SECRET.encode(), OTHER_SECRET.encode()]
    stock = Signer(
        keys, salt=b"servletsession.cookie", key_derivation="hmac", digest_method=hashlib.sha256
    )
    ours = _SessionIdSigner(keys)
    for _ in range(20):
        session_id = new_session_id()
        assert ours.sign_id(session_id) == stock.sign(session_id)
        assert stock.unsign(ours.sign_id(session_id)) == session_id.encode()
        assert ours.unsign(stock.sign(session_id)) == session_id.encode()


def test_the_verified_cookie_caches_stay_bounded_keep_the_newest_and_drop_the_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every new session's cookie is remembered; the caches never hold more than the bound,
    always hold the newest half of it, and drop the oldest first: a whole generation at a time,
    so a new session pays no eviction."""
    from servletsession import cookies

    monkeypatch.setattr(cookies, "_VERIFIED_CACHE_SIZE", 100)
    codec = cookies.CookieCodec(
        secret_keys=[b"k" * 32], name="sessionid", path="/", domain=None, max_age=None,
        secure=True, http_only=True, same_site="lax",
    )  # fmt: skip
    ids = [cookies.new_session_id() for _ in range(250)]
    values = [codec.set_cookie(session_id).split(b";")[0] for session_id in ids]
    for value in values:
        codec.read([(b"cookie", value)])
        assert len(codec._verified) <= 100
        assert len(codec._verified_headers) <= 100
    kept = codec._verified.values()
    assert kept[-50:] == ids[-50:], "not the newest half, oldest first"
    assert set(kept) <= set(ids[-100:]), "something older than the bound was kept"
    assert len(codec._verified_headers) >= 50
    assert codec.read([(b"cookie", values[0])]) == (ids[0], "valid")  # verified again by HMAC
