"""Session IDs and the session cookie: generation, signing, strict parsing, ``Set-Cookie``.

The cookie value is ``<id>.<signature>``: a 256-bit ID from :mod:`secrets` (43 URL-safe characters)
and its HMAC-SHA256 (itsdangerous, 43 characters). A value is checked for length and alphabet
before any signature check or store lookup, so malformed input costs almost nothing and never
reaches a store key (OWASP ASVS v5 7.2).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence

from itsdangerous import BadSignature, Signer

ID_BYTES = 32  # 256 bits, OWASP ASVS v5 7.2.3 asks for at least 128 bits of entropy
ID_LENGTH = 43  # len(secrets.token_urlsafe(32))
_SIGNATURE_LENGTH = 43  # an HMAC-SHA256 digest in unpadded URL-safe base64
COOKIE_VALUE_LENGTH = ID_LENGTH + 1 + _SIGNATURE_LENGTH
_ID_RE = re.compile(rb"[A-Za-z0-9_-]{%d}" % ID_LENGTH)
_VALUE_RE = re.compile(rb"[A-Za-z0-9_-]{%d}\.[A-Za-z0-9_-]{%d}" % (ID_LENGTH, _SIGNATURE_LENGTH))
_REF_SALT = secrets.token_bytes(16)


def new_session_id() -> str:
    """A fresh 256-bit, URL-safe session ID."""
    return secrets.token_urlsafe(ID_BYTES)


def is_well_formed_id(session_id: str) -> bool:
    """True for a string shaped like an ID this library issues (length and alphabet)."""
    return len(session_id) == ID_LENGTH and _ID_RE.fullmatch(session_id.encode()) is not None


def session_ref(session_id: str) -> str:
    """A short, process-salted hash of an ID: safe for logs and ``repr``, useless to an attacker."""
    digest = hashlib.blake2s(session_id.encode(), key=_REF_SALT, digest_size=6).hexdigest()
    return digest


class _SessionIdSigner(Signer):
    """itsdangerous' Signer with each key's derivation done once instead of on every request."""

    def __init__(self, secret_keys: Sequence[bytes]) -> None:
        super().__init__(
            list(secret_keys),
            salt=b"servletsession.cookie",
            key_derivation="hmac",
            digest_method=hashlib.sha256,
        )
        self._derived = {key: Signer.derive_key(self, key) for key in self.secret_keys}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        if secret_key is None:
            secret_key = self.secret_keys[-1]
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        derived = self._derived.get(key)
        return derived if derived is not None else super().derive_key(key)


class CookieCodec:
    """Everything about the session cookie that does not depend on the request, computed once."""

    __slots__ = ("_deletion", "_name", "_set_suffix", "_signer", "name")

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
        found: bytes | None = None
        name = self._name
        for key, header in headers:
            if key != b"cookie" or name not in header:
                continue
            for part in header.split(b";"):
                cookie_name, sep, value = part.partition(b"=")
                if sep and cookie_name.strip() == name:
                    if found is not None:
                        return None, "duplicate"
                    found = value.strip()
        if found is None:
            return None, "absent"
        if len(found) != COOKIE_VALUE_LENGTH or _VALUE_RE.fullmatch(found) is None:
            return None, "malformed"
        try:
            session_id = self._signer.unsign(found)
        except BadSignature:
            return None, "bad_signature"
        return session_id.decode("ascii"), "valid"

    def set_cookie(self, session_id: str) -> bytes:
        """The ``Set-Cookie`` value that hands ``session_id`` to the browser."""
        return self._name + b"=" + self._signer.sign(session_id) + self._set_suffix

    def deletion(self) -> bytes:
        """The ``Set-Cookie`` value that makes the browser drop the session cookie."""
        return self._deletion
