"""CSRF protection for the admin app: a signed double-submit token.

The first page (or ``GET api/csrf``) sets a random nonce in an ``HttpOnly``, ``SameSite=Strict``
cookie scoped to the admin app's path; every form carries, and every JSON ``POST`` sends in the
``X-CSRF-Token`` header, the nonce's HMAC under the ``AdminApp``'s key. A ``POST`` is accepted
only if the token is that of the nonce in its cookie (OWASP: signed double-submit cookie): another
site can make the browser send the cookie (not with ``SameSite=Strict``, and not the token, which
it can neither read nor compute), and a cookie planted by a sibling subdomain has no token that
matches it. A ``Sec-Fetch-Site: cross-site`` request is refused before any check.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "servletsession_admin_csrf"
HEADER = "x-csrf-token"
FIELD = "csrf"
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")


class CsrfGuard:
    """Issues and checks the admin app's CSRF tokens under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _token(self, nonce: str) -> str:
        digest = hmac.digest(self._key, nonce.encode("ascii"), "sha256")
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    @staticmethod
    def _nonce(request: Request) -> str | None:
        nonce = request.cookies.get(COOKIE, "")
        return nonce if _NONCE_RE.fullmatch(nonce) else None

    def token(self, request: Request) -> tuple[str, str | None]:
        """The token for this browser, and a new nonce to set as its cookie if it has none."""
        nonce = self._nonce(request)
        fresh = None
        if nonce is None:
            nonce = fresh = secrets.token_urlsafe(32)
        return self._token(nonce), fresh

    def set_cookie(self, request: Request, response: Response, nonce: str) -> None:
        """Hand ``nonce`` to the browser: only this app's path, never to scripts or other sites."""
        response.set_cookie(
            COOKIE,
            nonce,
            path=mount_path(request),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    def check(self, request: Request, submitted: str | None) -> bool:
        """Whether a state-changing request carries the token of the nonce in its cookie."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            return False
        nonce = self._nonce(request)
        if nonce is None or not submitted:
            return False
        return hmac.compare_digest(self._token(nonce), submitted)


def mount_path(request: Request) -> str:
    """The path the admin app is mounted at, ending in ``/`` (proxy ``root_path`` included)."""
    root = str(request.scope.get("root_path", ""))
    return root.rstrip("/") + "/"
