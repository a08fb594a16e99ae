"""How the session ID travels between client and server, and what a response carries for it.

The Servlet spec (section 7.1, session tracking mechanisms) tracks sessions by cookie, SSL session
or URL rewriting; API and mobile clients without a cookie jar need a header instead, which Spring
Session added. Three resolvers, named after Spring Session's ``HttpSessionIdResolver``s:

- ``"cookie"`` (``CookieHttpSessionIdResolver``, the default and the Servlet way): the ID comes in
  the session cookie and goes back in ``Set-Cookie``.
- ``"header"`` (``HeaderHttpSessionIdResolver``): the ID comes in a request header (``X-Auth-Token``
  by default) and goes back in the same response header when a session is created or its ID
  changes; the header is sent empty when the requested session ended. No cookie is read or set.
- ``"composite"``: the header first, then the cookie. A request that has the header (even empty)
  uses it alone — its cookie is ignored, a bad header is not made good by a good cookie — and is
  answered in the header; any other request uses the cookie and is answered with a cookie.

The value is the same ``<id>.<signature>`` in every mode, verified by the same `CookieCodec` (one
verified-value cache), so the strictness is the same: malformed, duplicated, badly signed or
unknown IDs get no session, and a fresh ID is issued only when the app creates a session.

Rolling cookies (``rolling=True`` with ``max_age``) re-send the cookie with a fresh ``Max-Age`` on
responses that consulted their session, at most once per ``rolling_interval`` per session in this
process (`RollingThrottle`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import Message

from .cookies import CookieCodec

if TYPE_CHECKING:
    from .context import RequestSession

_ROLLED_LIMIT = 100_000  # sessions whose last cookie this process remembers (bounds the dict)


class RollingThrottle:
    """When this process last sent each session's cookie, for the sessions that got one within the
    last ``interval`` seconds.

    Entries are kept in the order they were written, so the stale ones (older than ``interval``:
    they no longer hold anything back) are at the front and go as new ones come, in amortised
    O(1); a session's entry also goes at once when its ID changes or it ends here. The dict never
    holds more than ``_ROLLED_LIMIT`` entries: losing one costs one early refresh, nothing more.
    With a shared store each worker keeps its own: a session served by several workers may be
    refreshed by each of them once per interval.
    """

    __slots__ = ("_interval", "_sent")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._sent: dict[str, float] = {}

    def due(self, session_id: str, now: float) -> bool:
        """Whether ``session_id``'s cookie should be sent again now; if so, it counts as sent."""
        last = self._sent.get(session_id)
        if last is not None and 0 <= now - last < self._interval:
            return False
        self.sent(session_id, now)
        return True

    def sent(self, session_id: str, now: float) -> None:
        """The cookie naming ``session_id`` goes out now (a new session, a new ID, a refresh)."""
        sent = self._sent
        sent.pop(session_id, None)  # re-inserted at the end: the dict stays in time order
        sent[session_id] = now
        interval = self._interval
        while sent:
            oldest = next(iter(sent))
            if len(sent) <= _ROLLED_LIMIT and now - sent[oldest] < interval:
                break
            del sent[oldest]

    def forget(self, session_id: str) -> None:
        """``session_id`` no longer names a live session here (it ended or was renamed)."""
        self._sent.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sent)


class SessionIdTransport:
    """Everything about carrying the ID that does not depend on the request, computed once."""

    __slots__ = (
        "_codec",
        "_composite",
        "_header_key",
        "_rolling",
        "_vary",
        "_vary_entry",
        "_vary_value",
        "by_header",
    )

    def __init__(
        self,
        codec: CookieCodec,
        resolver: str,
        header_name: str,
        roll_every: float | None,
    ) -> None:
        self._codec = codec
        #: The ID header's name as ASGI spells it (lower case); ``None`` in cookie mode.
        self._header_key = header_name.lower().encode("ascii") if resolver != "cookie" else None
        self._composite = resolver == "composite"
        #: True when every request is answered in the header (header mode).
        self.by_header = resolver == "header"
        vary: list[tuple[bytes, bytes]] = []
        if resolver != "cookie":
            vary.append((header_name.lower().encode("ascii"), header_name.encode("ascii")))
        if resolver != "header":
            vary.append((b"cookie", b"Cookie"))
        self._vary = tuple(vary)
        self._vary_value = b", ".join(display for _, display in vary)
        self._vary_entry = (b"vary", self._vary_value)
        self._rolling = RollingThrottle(roll_every) if roll_every is not None else None

    @property
    def rolling(self) -> RollingThrottle | None:
        return self._rolling

    def read_header(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[str | None, str, bool]:
        """Header and composite modes: ``(session_id, outcome, by_header)``.

        ``outcome`` is the cookie's (`CookieCodec.read`) for the header: ``"absent"`` (no header,
        or an empty one — "no session yet, answer me in the header"), ``"duplicate"`` (sent twice:
        never guess which one is meant), ``"malformed"``, ``"bad_signature"`` or ``"valid"``. In
        composite mode a request without the header falls back to the cookie (``by_header``
        False).
        """
        key = self._header_key
        found: bytes | None = None
        for name, value in headers:
            if name == key:
                if found is not None:
                    return None, "duplicate", True
                found = value
        if found is None:
            if self._composite:
                session_id, outcome = self._codec.read(headers)
                return session_id, outcome, False
            return None, "absent", True
        found = found.strip(b" \t")
        if not found:
            return None, "absent", True
        session_id, outcome = self._codec.verify(found)
        return session_id, outcome, True

    def add_headers(
        self, message: Message, context: RequestSession, clock: Callable[[], float]
    ) -> None:
        """Add the ID's header (``Set-Cookie`` or the ID header), ``Vary`` and ``Cache-Control``
        to the response start (or websocket accept) of a request that used sessions."""
        # The ID this response hands the client: the session's when it was created or its ID
        # changed; "" (delete the cookie, empty the header) when the requested session ended
        # here; None for nothing. A copy another process ended or renamed (detached) sends
        # nothing: that process sent the client its ID, which a deletion arriving later would
        # destroy.
        session = context._session
        if session is None or not session._valid:
            outgoing = "" if context.found and (session is None or not session._detached) else None
        elif session._detached:
            outgoing = None
        else:
            outgoing = session._id if session._id != context.requested_id else None
        if outgoing is None and not context.consulted:
            return
        by_header = context.by_header
        if self._rolling is not None and not by_header:
            outgoing = self._roll(context, outgoing, clock)
        app_headers = message.get("headers", ())
        if type(app_headers) is not list:  # any iterable (ASGI): read it once, keep it whole
            app_headers = list(app_headers)
        if not by_header and message["type"] == "http.response.start":
            for name, _ in app_headers:
                # Only these lengths can spell them: lower() nothing else.
                if len(name) in _CACHING_LENGTHS and name.lower() in _CACHING:
                    break
            else:  # The common response: the app said nothing of caching. Add the precomputed
                # headers in one new list (the app's own may be a Response's raw_headers).
                if outgoing is None:
                    message["headers"] = [*app_headers, self._vary_entry]
                else:
                    codec = self._codec
                    cookie = codec.set_cookie(outgoing) if outgoing else codec.deletion()
                    message["headers"] = [*app_headers, self._vary_entry,
                                          (b"set-cookie", cookie), _PRIVATE]  # fmt: skip
                return
        socket = message["type"] == "websocket.accept"  # no caches, no Vary on a handshake
        headers = list(app_headers)
        if not socket:
            self._add_vary(headers)
        if outgoing is not None:
            codec = self._codec
            if not by_header:
                cookie = codec.set_cookie(outgoing) if outgoing else codec.deletion()
                headers.append((b"set-cookie", cookie))
            else:
                key = self._header_key
                assert key is not None
                if not any(name.lower() == key for name, _ in headers):  # the app's own wins
                    headers.append((key, codec.sign(outgoing) if outgoing else b""))
            if not socket:
                (_make_unstorable if by_header else _make_private)(headers)
        message["headers"] = headers

    def _roll(
        self, context: RequestSession, outgoing: str | None, clock: Callable[[], float]
    ) -> str | None:
        """Rolling cookies: the ID to send (``outgoing``, or the requested one when its cookie
        is due for a fresh ``Max-Age``), noting what goes out."""
        rolling = self._rolling
        assert rolling is not None
        requested = context.requested_id
        if outgoing is None:
            if (
                requested is not None
                and context.kept_requested_session()
                and rolling.due(requested, clock())
            ):
                return requested  # refresh the cookie's Max-Age
            return None
        if requested is not None:
            rolling.forget(requested)
        if outgoing:
            rolling.sent(outgoing, clock())
        return outgoing

    def _add_vary(self, headers: list[Any]) -> None:
        for index, (name, value) in enumerate(headers):
            if name.lower() == b"vary":
                tokens = {token.strip().lower() for token in value.split(b",")}
                if b"*" in tokens:
                    return
                missing = [display for token, display in self._vary if token not in tokens]
                if missing:
                    headers[index] = (name, b", ".join([value, *missing]))
                return
        headers.append((b"vary", self._vary_value))


_PRIVATE = (b"cache-control", b"private")
_CACHING = (b"vary", b"cache-control")  # the response headers the app may have set itself
_CACHING_LENGTHS = frozenset(len(name) for name in _CACHING)


# Directives that let a cache keep a response, or say for how long: a response carrying the ID
# header drops them for ``no-store``.
_STORABLE = frozenset(
    {
        b"public", b"private", b"max-age", b"s-maxage", b"immutable", b"stale-while-revalidate",
        b"stale-if-error", b"must-understand",
    }
)  # fmt: skip


def _make_unstorable(headers: list[Any]) -> None:
    """A response that hands out (or empties) the ID header must not be stored by any cache.

    ``private`` (what a ``Set-Cookie`` gets) is not enough here: a browser's own HTTP cache may
    keep a ``private`` response with the app's ``max-age``, and serve it, ID header included, to
    a later request of the same URL — a ``fetch`` made after logout, or by another user of the
    same browser profile — handing out a live token. A ``Set-Cookie`` in a cached response is
    not applied again; a header is read by whatever script gets the response. So: ``no-store``
    (RFC 9111, 5.2.2.5), and none of the app's directives that would let it be kept.
    """
    kept: list[bytes] = []
    others: list[Any] = []
    for name, value in headers:
        if name.lower() != b"cache-control":
            others.append((name, value))
            continue
        for part in value.split(b","):
            directive = part.strip()
            token = directive.split(b"=", 1)[0].strip().lower()
            if directive and token not in _STORABLE and token != b"no-store":
                kept.append(directive)
    headers[:] = [*others, (b"cache-control", b", ".join([b"no-store", *kept]))]


def _make_private(headers: list[Any]) -> None:
    """A response that hands out a session ID must not be stored by shared caches."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"cache-control":
            directives = [d.strip() for d in value.split(b",") if d.strip()]
            lowered = {d.lower() for d in directives}
            if lowered & {b"private", b"no-store"}:
                return
            kept = [d for d in directives if d.lower() != b"public"]
            headers[index] = (name, b", ".join([b"private", *kept]))
            return
    headers.append((b"cache-control", b"private"))
