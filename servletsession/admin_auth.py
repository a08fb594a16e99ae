"""Ready-made ``auth`` hooks for the admin app that work for a browser navigating to it.

An ``auth`` hook takes the request and returns ``True`` (go on), ``False`` (403) or a response to
send instead (a 401 challenge, a redirect to the login page). It may be ``async``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from .context import get_session
from .errors import ConfigurationError

AuthResult = bool | Response
Auth = Callable[[Request], AuthResult | Awaitable[AuthResult]]


def basic_auth(users: Mapping[str, str], *, realm: str = "servletsession admin") -> Auth:
    """HTTP Basic: ``users`` maps user names to passwords (from your secrets, not the code).

    A request without valid credentials gets ``401`` with ``WWW-Authenticate``, so a browser asks
    for them and sends them with every later request to the app. Use it over HTTPS only.
    ``ConfigurationError`` at once for a user name with ``:``, an empty password, or a ``realm``
    a header cannot carry (control characters, anything beyond Latin-1).
    """
    if not users:
        raise ConfigurationError("basic_auth needs at least one user name and password")
    for name, password in users.items():
        if ":" in name:
            raise ConfigurationError(f"basic_auth user name {name!r}: ':' ends a Basic user name")
        if not password:
            raise ConfigurationError(f"basic_auth user {name!r} has an empty password")
    expected = {name.encode(): password.encode() for name, password in users.items()}
    challenge = f'Basic realm="{_quoted(realm)}", charset="UTF-8"'

    def check(request: Request) -> AuthResult:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(encoded, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                name = password = b""
            known = expected.get(name)
            # Compare even for an unknown name, so the timing says nothing about names.
            if hmac.compare_digest(known or b"\x00" * 32, password) and known is not None:
                return True
        return PlainTextResponse(
            "authentication required\n", status_code=401, headers={"WWW-Authenticate": challenge}
        )

    return check


def _quoted(realm: str) -> str:
    """``realm`` as the inside of an RFC 9110 quoted-string (``"`` and ``\\`` escaped)."""
    if any(ord(c) > 0xFF or (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in realm):
        raise ConfigurationError(
            f"basic_auth realm {realm!r} holds control characters or characters beyond "
            "Latin-1, which an HTTP header cannot carry"
        )
    return realm.replace("\\", "\\\\").replace('"', '\\"')


def session_role(
    role: str = "admin", *, attribute: str = "roles", login_url: str | None = None
) -> Auth:
    """The app's own login: allowed if the request's session has ``role`` in ``attribute``.

    ``attribute`` holds a role name or a collection of them (set at login, e.g.
    ``session["roles"] = ["admin"]``). Without a session, a request is sent to ``login_url``
    (with ``?next=`` the page it wanted) when given, else refused; with a session but not the
    role, refused (403). Needs ``SessionMiddleware`` around the app the admin is mounted in.
    """

    def check(request: Request) -> AuthResult:
        session = get_session(request, create=False)
        roles: Any = None if session is None else session.get_attribute(attribute)
        if roles == role or (
            isinstance(roles, Collection) and not isinstance(roles, str) and role in roles
        ):
            return True
        if session is None and login_url is not None and request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            joiner = "&" if "?" in login_url else "?"
            return RedirectResponse(f"{login_url}{joiner}next={quote(target)}", status_code=303)
        return False

    return check
