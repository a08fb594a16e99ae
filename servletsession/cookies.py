"""Session IDs and the session cookie: generation, signing, strict parsing, ``Set-Cookie``.

The cookie value (and the ID header's, see `servletsession.transport`) is ``<id>.<signature>``:
a 256-bit ID from `secrets` (43 URL-safe characters) and its HMAC-SHA256 (itsdangerous, 43
characters). A value is checked for length and alphabet before any signature check or store
lookup, so malformed input costs almost nothing and never reaches a store key (OWASP ASVS v5 7.2).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence

from itsdangerous import Signer
from itsdangerous.encoding import base64_encode
from itsdangerous.signer import SigningAlgorithm

ID_BYTES = 32  # 256 bits, OWASP ASVS v5 7.2.3 asks for at least 128 bits of entropy
ID_LENGTH = 43  # len(secrets.token_urlsafe(32))
_SIGNATURE_LENGTH = 43  # an HMAC-SHA256 digest in unpadded URL-safe base64
COOKIE_VALUE_LENGTH = ID_LENGTH + 1 + _SIGNATURE_LENGTH
_ID_RE = re.compile(rb"[A-Za-z0-9_-]{%d}" % ID_LENGTH)
_VALUE_RE = re.compile(rb"[A-Za-z0-9_-]{%d}\.[A-Za-z0-9_-]{%d}" % (ID_LENGTH, _SIGNATURE_LENGTH))
_REF_KEY = b"servletsession.session-ref"  # domain separation: refs agree across workers
_VERIFIED_CACHE_SIZE = 10_000  # entries in each cache of verified cookies
_CACHED_HEADER_LENGTH = 512  # longer Cookie headers are parsed every time (bounds the cache)


def new_session_id() -> str:
    """A fresh 256-bit, URL-safe session ID."""
    return secrets.token_urlsafe(ID_BYTES)


def is_well_formed_id(session_id: str) -> bool:
    """True for a string shaped like an ID this library issues (length and alphabet)."""
    return len(session_id) == ID_LENGTH and _ID_RE.fullmatch(session_id.encode()) is not None


def session_ref(session_id: str) -> str:
    """A short keyed hash of an ID (48 bits of BLAKE2s) for logs, ``repr``, the admin app and the
    CLI: the same in every worker, so they can be correlated, and nothing of the 256-bit ID it
    came from can be recovered from it (it is no use to forge a cookie either)."""
    return hashlib.blake2s(session_id.encode(), key=_REF_KEY, digest_size=6).hexdigest()


class _HMACSHA256(SigningAlgorithm):
    """HMAC-SHA256 through the C one-shot ``hmac.digest`` (what itsdangerous' ``HMACAlgorithm``
    computes, without building an ``hmac.HMAC`` object per request); verification stays
    itsdangerous' constant-time comparison."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, "sha256")


class _SessionIdSigner(Signer):
    """itsdangerous' Signer with each key's derivation done once instead of on every request."""

    def __init__(self, secret_keys: Sequence[bytes]) -> None:
        super().__init__(
            list(secret_keys),
            salt=b"servletsession.cookie",
            key_derivation="hmac",
            digest_method=hashlib.sha256,
            algorithm=_HMACSHA256(),
        )
        self._derived = {key: Signer.derive_key(self, key) for key in self.secret_keys}

        self._signing_key = self._derived[self.secret_keys[-1]]

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        if secret_key is None:
            secret_key = self.secret_keys[-1]
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        derived = self._derived.get(key)
        return derived if derived is not None else super().derive_key(key)

    def verify_id(self, value: bytes) -> str | None:
        """The ID in ``value`` (``id.signature``) if a key signed it, else ``None``.

        Unlike ``unsign``, only the canonical encoding of the signature is accepted: base64 of 32
        bytes leaves two bits of its last character unused, so ``unsign`` would also take other
        spellings of a valid signature — a tampered cookie that still works. Comparing the whole
        re-encoded signature (constant time, every key newest first) refuses them.
        """
        session_id, _, signature = value.partition(b".")
        for key in reversed(self.secret_keys):
            expected = base64_encode(self.algorithm.get_signature(self._derived[key], session_id))
            if hmac.compare_digest(expected, signature):
                return session_id.decode("ascii")
        return None

    def sign_id(self, session_id: str) -> bytes:
        """``sign()`` for an ASCII session ID, in itsdangerous' format (``value.signature``)."""
        value = session_id.encode("ascii")
        return value + b"." + base64_encode(hmac.digest(self._signing_key, value, "sha256"))


class CookieCodec:
    """Everything about the session cookie that does not depend on the request, computed once."""

    __slots__ = (
        "_deletion",
        "_name",
        "_set_suffix",
        "_signer",
        "_verified",
        "_verified_headers",
        "name",
    )

    def __init__(
        self,
        *,
        secret_keys: Sequence[bytes],
        name: str,
        path: str,
        domain: str | None,
        max_age: int | None,
        secure: bool,
        http_only: bool,
        same_site: str,
    ) -> None:
        self.name = name
        self._name = name.encode("ascii")
        self._signer = _SessionIdSigner(secret_keys)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._verified_headers: OrderedDict[bytes, str] = OrderedDict()
        attributes = [f"Path={path}"]
        if domain:
            attributes.append(f"Domain={domain}")
        if http_only:
            attributes.append("HttpOnly")
        if secure:
            attributes.append("Secure")
        attributes.append(f"SameSite={same_site.capitalize()}")
        flags = "; ".join(attributes)
        lifetime = f"; Max-Age={max_age}" if max_age is not None else ""
        self._set_suffix = f"{lifetime}; {flags}".encode("latin-1")
        self._deletion = (
            f"{name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {flags}".encode("latin-1")
        )

    def read(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[str | None, str]:
        """Find the session cookie in raw ASGI headers and verify it.

        Returns ``(session_id, outcome)``: the ID when the cookie is present, well formed, unique
        and correctly signed; otherwise ``None`` with ``outcome`` one of ``"absent"``,
        ``"malformed"``, ``"duplicate"`` (cookie tossing: never guess which one is ours) and
        ``"bad_signature"``.
        """
        name = self._name
        joined: bytes | None = None
        for key, header in headers:
            if key == b"cookie" and name in header:
                joined = header if joined is None else joined + b"; " + header
        if joined is None:
            return None, "absent"
        known = self._verified_headers.get(joined)
        if known is not None:  # the very header a browser sent before, verified then
            return known, "valid"
        session_id, outcome = self._parse(joined)
        if session_id is not None and len(joined) <= _CACHED_HEADER_LENGTH:
            _bounded_put(self._verified_headers, joined, session_id)
        return session_id, outcome

    def _parse(self, header: bytes) -> tuple[str | None, str]:
        found: bytes | None = None
        name = self._name
        for part in header.split(b";"):
            cookie_name, sep, value = part.partition(b"=")
            if sep and cookie_name.strip() == name:
                if found is not None:
                    return None, "duplicate"
                found = value.strip()
        if found is None:
            return None, "absent"
        return self.verify(found)

    def verify(self, value: bytes) -> tuple[str | None, str]:
        """Verify one signed value (``<id>.<signature>``), from the cookie or the ID header.

        Returns ``(session_id, "valid")``, or ``None`` with ``"malformed"`` (wrong length or
        alphabet: checked before any HMAC) or ``"bad_signature"``.
        """
        verified = self._verified.get(value)
        if verified is not None:
            return verified, "valid"
        if len(value) != COOKIE_VALUE_LENGTH or _VALUE_RE.fullmatch(value) is None:
            return None, "malformed"
        session_id = self._signer.verify_id(value)
        if session_id is None:
            return None, "bad_signature"
        self._remember(value, session_id)
        return session_id, "valid"

    def _remember(self, value: bytes, session_id: str) -> None:
        """Remember a value itsdangerous verified, so that the next request bringing the very
        same bytes skips the HMAC. Only a value the server signed can ever be found here; the
        session lookup that follows still decides whether that session lives."""
        _bounded_put(self._verified, value, session_id)

    def sign(self, session_id: str) -> bytes:
        """The signed value ``<id>.<signature>`` that names ``session_id`` (the cookie's value,
        and the ID header's)."""
        value = self._signer.sign_id(session_id)
        self._remember(value, session_id)
        return value

    def set_cookie(self, session_id: str) -> bytes:
        """The ``Set-Cookie`` value that hands ``session_id`` to the browser."""
        return self._name + b"=" + self.sign(session_id) + self._set_suffix

    def deletion(self) -> bytes:
        """The ``Set-Cookie`` value that makes the browser drop the session cookie."""
        return self._deletion


def _bounded_put(cache: OrderedDict[bytes, str], key: bytes, value: str) -> None:
    """Insert, dropping the oldest entry beyond the bound. An ``OrderedDict``: taking a plain
    dict's first key after many deletions from its front scans the holes they leave (microseconds
    per new session once the cache is full); ``popitem(last=False)`` is O(1)."""
    cache[key] = value
    if len(cache) > _VERIFIED_CACHE_SIZE:
        cache.popitem(last=False)
