"""FastSession (``fastsession`` on PyPI, as ChatStream uses it) on servletsession.

Change the import line and keep the rest of the app::

    from servletsession.compat.fastsession import FastSessionMiddleware, MemoryStore

    app.add_middleware(FastSessionMiddleware, secret_key="...", store=MemoryStore(),
                       http_only=True, secure=True, session_cookie="sid")

    session = request.state.session.get_session()   # dict-like, as before
    session["chat"] = history

Every option keeps what FastSession 0.3.0 did with it:

* ``secret_key`` of any length. One shorter than the 32 bytes servletsession requires is accepted
  with one WARNING at construction; the cookie is signed with a 32-byte key derived from it
  (HMAC-SHA256 keyed with it, over a label of this module), so the core's check is not weakened
  for anyone else — and derivation adds no strength: replace the key.
* ``max_age`` > 0: the cookie's ``Max-Age``, and the session ends ``max_age`` seconds after it was
  created however busy it is, as FastSession's signed timestamp (checked on every request, the
  cookie never re-signed) ended it: the manager's ``absolute_timeout``.
* ``logger``: this app's session log lines go to it (see `servletsession.compat.logbridge`).
* ``get_session()`` gives a `FastSessionDict`: ``None`` values, ``copy()``, ``|``, ``==``.

What the app gains: its own ``Set-Cookie`` headers are kept, a request that never asks for its
session stores nothing, sessions idle out (``max_inactive_interval``) with listeners, IDs are
256-bit, and the pure-ASGI middleware costs a fraction of FastSession's.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import MIN_SECRET_KEY_BYTES
from ..context import get_session
from ..errors import ConfigurationError
from ..manager import SessionManager
from ..middleware import SessionMiddleware
from ..session import HttpSession
from ..startup import surface_configuration_errors
from ..stores.base import SessionStore
from ..stores.memory import MemoryStore as _MemoryStore
from ..stores.serializing import SerializingStore
from . import logbridge
from .fastsession_dict import FastSessionDict

SkipHeader = Mapping[str, str] | Sequence[Mapping[str, str]]
SecretKey = str | bytes

_KEY_LABEL = b"servletsession.compat.fastsession: cookie key derived from a short secret_key"


class MemoryStore(_MemoryStore):
    """FastSession's ``MemoryStore``: servletsession's, with live objects and expiry."""


Encode = Callable[[str, Any], bytes]


class FastSession:
    """What FastSession put at ``request.state.session``, over the request's ``HttpSession``."""

    __slots__ = ("_encode", "_saved", "_scope", "_view")

    def __init__(self, scope: Scope, encode: Encode | None) -> None:
        self._scope = scope
        self._encode = encode  # the store's encoding; None for MemoryStore (live objects)
        self._view: FastSessionDict | None = None
        #: Each attribute's stored form when the app got the session (then at each save).
        self._saved: dict[str, bytes | None] = {}

    def get_session(self) -> FastSessionDict:
        """The session's attributes as a ``dict``-like mapping (the session is created on the
        first call); the same object on every call of one request, as FastSession's dict was."""
        session = get_session(self._scope, create=True)
        assert session is not None
        view = self._view
        if view is None or view.session is not session:  # first call, or invalidated since
            view = self._view = FastSessionDict(session)
            self._saved = self._encodings(session)
        return view

    def get_session_id(self) -> str:
        return self.get_session().session.id

    def clear_session(self) -> None:
        """Remove every attribute (the session itself lives on, as in FastSession)."""
        session = get_session(self._scope, create=False)
        if session is not None:
            FastSessionDict(session).clear()

    def save_session(self) -> None:
        """Write the objects the app mutated in place since it got the session (or last saved)
        to a store that serializes: each attribute whose stored form differs from the one it had
        then, and that is not being written anyway, is set again (``attribute_replaced`` fires
        for it). The others are left alone, so a concurrent request's change to them, in this
        process or another, is not overwritten with the value this request read. With
        ``MemoryStore`` there is nothing to do: its objects are live."""
        view = self._view
        session = get_session(self._scope, create=False)
        if self._encode is None or session is None or view is None or view.session is not session:
            return  # no session, or the app has not got it from here: nothing mutated through it
        saved, pending = self._saved, session._changed_names or ()
        now = self._encodings(session)
        for name, encoded in now.items():
            # A name set since the last save is written with its value as it is then anyway.
            if name not in pending and (encoded is None or saved.get(name) != encoded):
                session[name] = session[name]
        self._saved = now

    def _encodings(self, session: HttpSession) -> dict[str, bytes | None]:
        encode = self._encode
        if encode is None:
            return {}
        encodings: dict[str, bytes | None] = {}
        for name, value in list(session._attributes.items()):  # not reads (save_mode "on_get")
            try:
                encodings[name] = encode(name, value)
            except TypeError:  # mutated into something unstorable: setting it again says so
                encodings[name] = None
        return encodings


class _InstallFastSession:
    """Puts a `FastSession` at ``request.state.<name>`` unless a skip header matches."""

    def __init__(
        self,
        app: ASGIApp,
        name: str,
        skip: list[tuple[bytes, bytes | None]],
        encode: Encode | None,
    ) -> None:
        self.app = app
        self.name = name
        self.skip = skip
        self.encode = encode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._skipped(scope):
            state: MutableMapping[str, Any] = scope.setdefault("state", {})
            state[self.name] = FastSession(scope, self.encode)
        await self.app(scope, receive, send)

    def _skipped(self, scope: Scope) -> bool:
        if not self.skip:
            return False
        headers = dict(reversed(scope["headers"]))  # the first of repeated headers, as Starlette
        return any(
            (value == b"*" and name in headers) or headers.get(name) == value
            for name, value in self.skip
        )


class FastSessionMiddleware:
    """``fastsession.FastSessionMiddleware``'s parameters, servletsession's behaviour.

    Further keyword options go to [`SessionMiddleware`][servletsession.SessionMiddleware]
    (``manager=``, ``max_inactive_interval=``, ``path``, ``domain``). With ``manager=`` and
    ``max_age``, the manager must have an ``absolute_timeout`` (the session's end is its policy).
    """

    @surface_configuration_errors
    def __init__(
        self,
        app: ASGIApp,
        secret_key: SecretKey | Sequence[SecretKey],
        store: SessionStore | None = None,
        http_only: bool = True,
        secure: bool = True,
        same_site: str | None = None,
        max_age: int = 0,
        session_cookie: str = "sid",
        session_object: str = "session",
        skip_session_header: SkipHeader | None = None,
        logger: object = None,
        **options: Any,
    ) -> None:
        self.logger = logger
        if logger is not None:
            logbridge.install()
        manager: SessionManager | None = options.pop("manager", None)
        if manager is None:
            policy: dict[str, Any] = {"absolute_timeout": max_age if max_age > 0 else None}
            if "max_inactive_interval" in options:
                policy["max_inactive_interval"] = options.pop("max_inactive_interval")
            manager = SessionManager(store if store is not None else MemoryStore(), **policy)
            store = None
        elif max_age > 0 and manager.settings.absolute_timeout is None:
            raise ConfigurationError(
                f"max_age={max_age} ends each session {max_age} s after it began, as FastSession "
                f"did; with manager= that is the manager's policy: "
                f"SessionManager(..., absolute_timeout={max_age})"
            )
        self.app = SessionMiddleware(
            _InstallFastSession(
                app,
                session_object,
                _skip_rules(skip_session_header, logger),
                manager.store.encode if isinstance(manager.store, SerializingStore) else None,
            ),
            secret_key=_cookie_keys(secret_key, logger),
            store=store,
            manager=manager,
            http_only=http_only,
            secure=secure,
            same_site=(same_site or "lax").lower(),
            max_age=max_age if max_age > 0 else None,
            cookie_name=session_cookie,
            **options,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.logger is None:
            await self.app(scope, receive, send)
            return
        token = logbridge.app_logger.set(self.logger)
        try:
            await self.app(scope, receive, send)
        finally:
            logbridge.app_logger.reset(token)


def _skip_rules(skip: object, logger: object) -> list[tuple[bytes, bytes | None]]:
    """``skip_session_header`` as (lower-case name, value) pairs, read as FastSession read them.

    A value of ``None`` (an entry without ``header_value``) matches a request *without* the
    header: FastSession compared the request's header, ``None`` when absent, with the entry's
    ``header_value``, ``None`` when missing. That is kept, with a warning. What FastSession would
    have failed on at every request (an entry that is no mapping, a name that is no string) is a
    `ConfigurationError` here, at startup."""
    if skip is None:
        return []
    entries = [skip] if isinstance(skip, Mapping) else skip
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
        raise ConfigurationError(
            "skip_session_header must be a dict {'header_name': ..., 'header_value': ...} or a "
            f"list of them, not {type(skip).__name__}"
        )
    rules: list[tuple[bytes, bytes | None]] = []
    for entry in entries:
        name = entry.get("header_name") if isinstance(entry, Mapping) else None
        value = entry.get("header_value") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name or not isinstance(value, str | None):
            raise ConfigurationError(
                "each skip_session_header entry needs 'header_name' (a header's name) and "
                f"'header_value' (a string, '*' for any value); got {entry!r}"
            )
        try:
            rule = (
                name.lower().encode("latin-1"),
                None if value is None else value.encode("latin-1"),
            )
        except UnicodeEncodeError as exc:
            raise ConfigurationError(
                f"skip_session_header entry {entry!r}: HTTP headers are latin-1 ({exc.reason})"
            ) from None
        if value is None:
            logbridge.say(
                logger if logger is not None else logbridge.LIBRARY,
                logging.WARNING,
                f"FastSessionMiddleware: skip_session_header {{'header_name': {name!r}}} has no "
                f"'header_value': as in FastSession, it matches requests that do NOT send "
                f"{name}, which get no session. To skip requests that send it, give "
                "'header_value': '*' (any value) or the value.",
            )
        rules.append(rule)
    return rules


def _cookie_keys(
    secret_key: SecretKey | Sequence[SecretKey], logger: object
) -> SecretKey | list[SecretKey]:
    """FastSession's keys, a short one replaced by a key derived from it, with one warning.

    A list or any other sequence of keys (itsdangerous, under FastSession, took any) is a list
    of keys, the last one signing. The derivation is deterministic (every worker with the same
    key derives the same one) and separated by a label from any other use of the key."""
    if isinstance(secret_key, str | bytes) or not isinstance(secret_key, Sequence):
        keys: list[SecretKey] = [secret_key]  # (not a key at all: the core's check says so)
    else:
        secret_key = keys = list(cast(Sequence[SecretKey], secret_key))  # a tuple, say
    short = [_size(key) for key in keys if 0 <= _size(key) < MIN_SECRET_KEY_BYTES]
    if not short:
        return secret_key
    sizes = ", ".join(f"{size} bytes" for size in short)
    logbridge.say(
        logger if logger is not None else logbridge.LIBRARY,
        logging.WARNING,
        f"FastSessionMiddleware: secret_key is weak ({sizes}; servletsession wants at least "
        f"{MIN_SECRET_KEY_BYTES}). It is accepted, as FastSession accepted it, through a key "
        "derived from it, which adds no strength: anyone who guesses it can sign cookies. "
        "Replace it with a random one, e.g. secrets.token_urlsafe(32), kept out of the source "
        "(browsers then get a new session once).",
    )
    derived = [_derive(key) for key in keys]
    return derived if isinstance(secret_key, list) else derived[0]


def _size(key: object) -> int:
    """A key's length in bytes; -1 for what is no key (the core's check then says so)."""
    if isinstance(key, str):
        return len(key.encode())
    return len(key) if isinstance(key, bytes) else -1


def _derive(key: SecretKey) -> SecretKey:
    if not 0 <= _size(key) < MIN_SECRET_KEY_BYTES:
        return key
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, _KEY_LABEL, hashlib.sha256).digest()


FasterSessionMiddleware = FastSessionMiddleware
"""ChatStream's name for the same middleware."""

__all__ = [
    "FastSession",
    "FastSessionDict",
    "FastSessionMiddleware",
    "FasterSessionMiddleware",
    "MemoryStore",
]
