"""How a test client carries a session ID: the cookie in its jar, or the ID header.

The half of `servletsession.testing` that deals with the client, not the app. It places the signed
ID where the app's `SessionMiddleware` will look for it (the cookie with the app's ``Path``,
``Domain`` and ``Secure``, so the jar sends it exactly when it would send the app's own cookie; or
the ID header, followed afterwards as a browser follows ``Set-Cookie``), and reads back the ID
the client's next request names, as the middleware reads it (header first in composite mode; a
value it did not sign names nothing). ``httpx`` is imported when a function runs.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Literal

from .cookies import is_well_formed_id

if TYPE_CHECKING:
    import httpx2

    from .middleware import SessionMiddleware

Via = Literal["cookie", "header"]


def plan(
    client: httpx2.Client | httpx2.AsyncClient, middleware: SessionMiddleware, via: Via | None
) -> Via:
    """How the client will carry the ID; checked before a session is made for nothing."""
    cookie, header = middleware.cookie_name, middleware.header_name
    if via is None:
        via = "cookie" if cookie is not None else "header"
    if via == "header" and header is None:
        raise ValueError("via='header': the middleware reads no ID header (id_resolver='cookie')")
    if via == "cookie":
        if cookie is None:
            raise ValueError("via='cookie': the middleware reads no cookie (id_resolver='header')")
        import httpx2

        url = _cookie_url(client, middleware)
        probe = httpx2.Cookies()
        _store_cookie(probe, url, _set_cookie_line(middleware, cookie, "probe"))
        if _cookies_sent(probe, url, cookie) != ["probe"]:
            raise ValueError(_unsendable(middleware, url))
    return via


def present(
    client: httpx2.Client | httpx2.AsyncClient, middleware: SessionMiddleware, via: Via, value: str
) -> None:
    """Make the client send ``value``: from now on, as if the app had just handed it out."""
    header = middleware.header_name
    if via == "header":
        assert header is not None
        client.headers[header] = value
        _follow_header(client, header)
        return
    cookie = middleware.cookie_name
    assert cookie is not None
    if header is not None:
        client.headers.pop(header, None)  # composite: a request with the header ignores cookies
    client.cookies.delete(cookie)  # two session cookies would be refused as cookie tossing
    url = _cookie_url(client, middleware)
    _store_cookie(client.cookies, url, _set_cookie_line(middleware, cookie, value))


def presented_id(
    client: httpx2.Client | httpx2.AsyncClient, middleware: SessionMiddleware
) -> str | None:
    """The session ID the client's next request names, read as the middleware reads it: the ID
    header if it has one (header and composite modes), else the one session cookie it sends."""
    header, cookie = middleware.header_name, middleware.cookie_name
    if header is not None and header in client.headers:
        value: str | None = client.headers[header].strip()
    elif cookie is not None:
        values = _cookies_sent(client.cookies, _cookie_url(client, middleware), cookie)
        value = values[0] if len(values) == 1 else None
    else:
        value = None
    if not value:
        return None
    session_id = value.partition(".")[0]
    if not is_well_formed_id(session_id):
        return None
    # A value this middleware signs (its newest key): the ones the app and these helpers hand out.
    if not hmac.compare_digest(middleware.signed_id(session_id), value):
        return None
    return session_id


def _cookie_url(
    client: httpx2.Client | httpx2.AsyncClient, middleware: SessionMiddleware
) -> httpx2.URL:
    if not client.base_url.host:
        raise ValueError("the client has no base_url host: give it one, e.g. https://testserver")
    return client.base_url.copy_with(path=middleware.settings.path, query=None)


def _set_cookie_line(middleware: SessionMiddleware, name: str, value: str) -> str:
    """What the client's jar needs of the app's ``Set-Cookie``: the name, value, and scope."""
    settings = middleware.settings
    parts = [f"{name}={value}", f"Path={settings.path}"]
    if settings.domain:
        parts.append(f"Domain={settings.domain}")
    if settings.secure:
        parts.append("Secure")
    return "; ".join(parts)


def _store_cookie(jar: httpx2.Cookies, url: httpx2.URL, set_cookie: str) -> None:
    import httpx2

    request = httpx2.Request("GET", url)
    jar.extract_cookies(httpx2.Response(200, headers=[("set-cookie", set_cookie)], request=request))


def _cookies_sent(jar: httpx2.Cookies, url: httpx2.URL, name: str) -> list[str]:
    """The values of the cookies called ``name`` the jar sends to ``url``."""
    import httpx2

    request = httpx2.Request("GET", url)
    jar.set_cookie_header(request)
    pairs = (part.strip().partition("=") for part in request.headers.get("cookie", "").split(";"))
    return [value for key, _, value in pairs if key == name]


def _unsendable(middleware: SessionMiddleware, url: httpx2.URL) -> str:
    settings = middleware.settings
    if settings.secure and url.scheme != "https":
        return (
            f"the session cookie is Secure and the client's base_url is {url.scheme}://, so the "
            "client would never send it: use an https base_url (TestClient(app, "
            'base_url="https://testserver")) or SessionMiddleware(secure=False) in tests'
        )
    return (
        f"the client would not send the session cookie (Domain={settings.domain}, "
        f"Path={settings.path}) to {url}: give the client a base_url the cookie's Domain covers"
    )


class _FollowHeader:
    """In header mode a client must carry the ID the app sends back, as a browser carries a
    cookie: a new ID after ``change_session_id``, none once the session ended (empty header)."""

    def __init__(self, client: httpx2.Client | httpx2.AsyncClient, header: str) -> None:
        self.client = client
        self.header = header

    def adopt(self, response: httpx2.Response) -> None:
        value = response.headers.get(self.header)
        if value is None:
            return
        if value.strip():
            self.client.headers[self.header] = value
        else:
            self.client.headers.pop(self.header, None)

    def __call__(self, response: httpx2.Response) -> None:
        self.adopt(response)


class _FollowHeaderAsync(_FollowHeader):
    async def __call__(self, response: httpx2.Response) -> None:  # type: ignore[override]
        self.adopt(response)


def _follow_header(client: httpx2.Client | httpx2.AsyncClient, header: str) -> None:
    import httpx2

    hooks = client.event_hooks["response"]
    if any(isinstance(hook, _FollowHeader) and hook.header == header for hook in hooks):
        return
    kind = _FollowHeaderAsync if isinstance(client, httpx2.AsyncClient) else _FollowHeader
    hooks.append(kind(client, header))
