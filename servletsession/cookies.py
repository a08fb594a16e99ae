"""Session IDs and the session cookie: generation, signing, strict parsing, ``Set-Cookie``.

The cookie value (and the ID header's, see `servletsession.transport`) is ``<id>.<signature>``:
a 256-bit ID from `secrets` (43 URL-safe characters) and its HMAC-SHA256 (itsdangerous, 43
characters). A value is checked for length and alphabet before any signature check or store
lookup, so malformed input costs almost nothing and never reaches a store key (OWASP ASVS v5 7.2).

Both ends of a new session's hot path are here, made cheap without changing a byte on the wire:
IDs come from `secrets` in batches (`new_session_id`), and the HMAC's keyed pads are hashed once
per key rather than once per cookie (`_KeyedSha256`).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Sequence

from itsdangerous import Signer
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


_ID_BATCH = 256  # IDs drawn from `secrets` at a time
_URLSAFE = bytes.maketrans(b"+/", b"-_")  # standard base64 to its URL-safe alphabet
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))  # RFC 2104's ipad, as a translation
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))  # ...and opad


def _draw_ids() -> list[str]:
    """``_ID_BATCH`` fresh IDs from one ``secrets.token_bytes`` call, each 32 bytes of it spelt
    as ``secrets.token_urlsafe(32)`` spells its bytes (URL-safe base64, no padding)."""
    raw = secrets.token_bytes(ID_BYTES * _ID_BATCH)
    encode = binascii.b2a_base64
    return [
        encode(raw[at : at + ID_BYTES], newline=False)[:-1].translate(_URLSAFE).decode("ascii")
        for at in range(0, len(raw), ID_BYTES)
    ]


_unused_ids: list[str] = []


def _forget_unused_ids() -> None:
    """A forked child starts with no IDs of its own: the parent's batch is the parent's."""
    _unused_ids.clear()


os.register_at_fork(after_in_child=_forget_unused_ids)


def new_session_id() -> str:
    """A fresh 256-bit, URL-safe session ID (what ``secrets.token_urlsafe(32)`` gives).

    Drawn from a batch: one ``secrets.token_bytes`` call of 8 KiB costs about as much as two of
    32 bytes, and a batch serves 256 sessions. Each ID is handed out once (``list.pop`` is
    atomic, so threads never share one; a thread that finds the batch empty draws its own), and
    a forked worker drops the batch it inherited, so two processes never hand out the same IDs.
    """
    try:
        return _unused_ids.pop()
    except IndexError:
        _unused_ids[:] = _draw_ids()
    try:
        return _unused_ids.pop()
    except IndexError:  # another thread emptied the new batch first: one of our own
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


class _KeyedSha256:
    """HMAC-SHA256 under one fixed key, with the key's two padded blocks hashed once.

    HMAC (RFC 2104) is ``H((K ^ opad) || H((K ^ ipad) || m))``. Both padded keys fill exactly one
    SHA-256 block, so the hash states after them depend on the key alone: kept here, each MAC
    costs copying two states and hashing ``m`` and one digest, not the pads again (half the time
    of ``hmac.digest``, which starts from the key on every call). The MAC is the same bytes
    ``hmac.digest(key, m, "sha256")`` gives (a test holds it to them).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def signature(self, message: bytes) -> bytes:
        """The MAC of ``message`` as itsdangerous spells a signature: URL-safe base64 without
        padding."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return binascii.b2a_base64(outer.digest(), newline=False).translate(_URLSAFE, b"=")


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
        #: The derived keys' MACs, newest first: the order in which a value is verified.
        self._macs = [_KeyedSha256(self._derived[key]) for key in reversed(self.secret_keys)]
        self.signing_mac = self._macs[0]  # the newest key's: it signs

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
        for mac in self._macs:
            if hmac.compare_digest(mac.signature(session_id), signature):
                return session_id.decode("ascii")
        return None

    def sign_id(self, session_id: str) -> bytes:
        """``sign()`` for an ASCII session ID, in itsdangerous' format (``value.signature``)."""
        value = session_id.encode("ascii")
        return value + b"." + self.signing_mac.signature(value)


class CookieCodec:
    """Everything about the session cookie that does not depend on the request, computed once."""

    __slots__ = (
        "_deletion",
        "_name",
        "_set_suffix",
        "_signer",
        "_signing_mac",
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
        self._signing_mac = self._signer.signing_mac
        self._verified = _VerifiedCache()  # signed values (`<id>.<signature>`)
        self._verified_headers = _VerifiedCache()  # whole Cookie headers that held one
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
            # (HTTP/2 may split the cookies.) ``find``, not ``in``: ``bytes in bytes`` first tries
            # the operand as an int and raises and clears a TypeError, every request.
            if key == b"cookie" and header.find(name) != -1:
                joined = header if joined is None else joined + b"; " + header
        if joined is None:
            return None, "absent"
        cached = self._verified_headers
        known = cached.young.get(joined) or cached.old.get(joined)  # `get`, spelt out
        if known is not None:  # the very header a browser sent before, verified then
            return known, "valid"
        session_id, outcome = self._parse(joined)
        if session_id is not None and len(joined) <= _CACHED_HEADER_LENGTH:
            cached.put(joined, session_id)
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
        self._verified.put(value, session_id)

    def sign(self, session_id: str) -> bytes:
        """The signed value ``<id>.<signature>`` that names ``session_id`` (the cookie's value,
        and the ID header's)."""
        value = self._signer.sign_id(session_id)
        self._verified.put(value, session_id)  # `_remember`
        return value

    def set_cookie(self, session_id: str) -> bytes:
        """The ``Set-Cookie`` value that hands ``session_id`` to the browser (a new session's,
        or its new ID's): `sign` (and the signer's `sign_id`), spelt out: once per new session."""
        value = session_id.encode("ascii")
        value += b"." + self._signing_mac.signature(value)
        verified = self._verified  # `_VerifiedCache.put`
        young = verified.young
        young[value] = session_id
        if len(young) >= _VERIFIED_CACHE_SIZE // 2:
            verified.old = young
            verified.young = {}
        return self._name + b"=" + value + self._set_suffix

    def deletion(self) -> bytes:
        """The ``Set-Cookie`` value that makes the browser drop the session cookie."""
        return self._deletion


class _VerifiedCache:
    """Values verified (or signed) lately, each mapped to its session ID: at most
    ``_VERIFIED_CACHE_SIZE`` of them, in two generations of plain dicts.

    New entries go into the young generation; when it holds half the bound it becomes the old
    one, and the previous old one is dropped whole. So the newest half of the bound is always
    kept, the bound always holds, and a put costs one dict insert: no per-entry eviction, which
    for an ``OrderedDict`` meant touching its oldest node, wherever it lay in memory, on every new
    session. A value dropped is verified again by HMAC.
    """

    __slots__ = ("old", "young")

    def __init__(self) -> None:
        self.young: dict[bytes, str] = {}
        self.old: dict[bytes, str] = {}

    def get(self, key: bytes) -> str | None:
        found = self.young.get(key)
        return found if found is not None else self.old.get(key)

    def put(self, key: bytes, value: str) -> None:
        young = self.young
        young[key] = value
        if len(young) >= _VERIFIED_CACHE_SIZE // 2:
            self.old = young
            self.young = {}

    def __len__(self) -> int:
        return len(self.young) + len(self.old.keys() - self.young.keys())

    def values(self) -> list[str]:
        """The cached IDs, oldest first (a value cached again counts as its newest)."""
        return [v for k, v in self.old.items() if k not in self.young] + list(self.young.values())
