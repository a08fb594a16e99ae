"""The validated settings: wrong options fail at construction, with a message saying what to do."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigurationError

MIN_SECRET_KEY_BYTES = 32
#: The longest duration any option takes, in seconds (about 68 years): what a signed 32-bit
#: integer holds, so that every store can keep it and every deadline stays a finite float.
MAX_SECONDS = 2**31 - 1
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a valid cookie name
_SAFE_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")  # printable, no ';' (no header injection)

SecretKey = str | bytes

# Numbers are taken strictly: ``True`` is not 1, ``"60"`` is not 60, and NaN or infinity is no
# number of seconds (NaN compares false with everything, so it would pass every bound and then
# switch off whatever it bounds). A float option still takes an int.
_STRICT_NUMBERS = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


def validated(model: type[BaseModel], **options: Any) -> Any:
    """Build ``model`` from ``options``; turn pydantic's errors into one ``ConfigurationError``."""
    try:
        return model(**options)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigurationError("; ".join(problems)) from None


class CookieSettings(BaseModel):
    """The session cookie's options (they belong to the middleware)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret_key: SecretKey | list[SecretKey]
    cookie_name: str = "sessionid"
    http_only: Annotated[bool, Field(strict=True)] = True
    secure: Annotated[bool, Field(strict=True)] = True
    same_site: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    domain: str | None = None
    max_age: Annotated[int, Field(strict=True)] | None = None

    @field_validator("same_site", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("secret_key")
    @classmethod
    def _strong_keys(cls, value: SecretKey | list[SecretKey]) -> SecretKey | list[SecretKey]:
        keys = value if isinstance(value, list) else [value]
        if not keys:
            raise ValueError("the key list is empty; give at least one key")
        for key in keys:
            size = len(key.encode() if isinstance(key, str) else key)
            if size < MIN_SECRET_KEY_BYTES:
                raise ValueError(
                    f"a key is {size} bytes; use at least {MIN_SECRET_KEY_BYTES}, "
                    "e.g. secrets.token_urlsafe(32)"
                )
        return value

    @field_validator("cookie_name")
    @classmethod
    def _cookie_name(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid cookie name (letters, digits, !#$%&'*+-.^_`|~)"
            )
        return value

    @field_validator("path", "domain")
    @classmethod
    def _attribute_text(cls, value: str | None) -> str | None:
        if value is not None and not _SAFE_ATTRIBUTE.fullmatch(value):
            raise ValueError(f"{value!r} must be printable ASCII without spaces or ';'")
        return value

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        return value

    @field_validator("max_age")
    @classmethod
    def _positive_max_age(cls, value: int | None) -> int | None:
        if value is not None and not 0 < value <= MAX_SECONDS:
            raise ValueError(
                f"must be a positive number of seconds up to {MAX_SECONDS}, or None for a "
                "browser-session cookie"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CookieSettings:
        if self.same_site == "none" and not self.secure:
            raise ValueError("same_site='none' requires secure=True (browsers drop such cookies)")
        if self.cookie_name.startswith("__Host-"):
            if not self.secure or self.path != "/" or self.domain is not None:
                raise ValueError(
                    f"cookie_name {self.cookie_name!r}: a __Host- cookie needs secure=True, "
                    "path='/' and no domain"
                )
        elif self.cookie_name.startswith("__Secure-") and not self.secure:
            raise ValueError(
                f"cookie_name {self.cookie_name!r}: a __Secure- cookie needs secure=True"
            )
        return self

    def secret_keys(self) -> Sequence[bytes]:
        """The keys as bytes, oldest first: the last one signs, every one verifies."""
        keys = self.secret_key if isinstance(self.secret_key, list) else [self.secret_key]
        return [key.encode() if isinstance(key, str) else key for key in keys]


# Names a session-ID header may not take (compared in lower case; docs/transport.md lists them):
# headers browsers forbid scripts to set (Fetch, "forbidden request-header names"), standard
# request and response headers of HTTP (RFC 9110, 9111), CORS, proxies and browser security
# policies, and headers the middleware itself writes. An ID header named like one of them would
# be read, rewritten, cached on or dropped by something else on the way.
RESERVED_HEADERS = frozenset(
    {
        "accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "age",
        "allow", "alt-svc", "alt-used", "authentication-info", "authorization", "cache-control",
        "clear-site-data", "connection", "cookie", "cookie2", "date", "dnt", "early-data", "etag",
        "expect", "expires", "forwarded", "from", "host", "http2-settings", "keep-alive",
        "last-modified", "link", "location", "max-forwards", "nel", "origin",
        "permissions-policy", "pragma", "priority", "range", "referer", "referrer-policy",
        "refresh", "report-to", "retry-after", "server", "server-timing", "set-cookie",
        "set-cookie2", "strict-transport-security", "te", "timing-allow-origin", "traceparent",
        "tracestate", "trailer", "transfer-encoding", "upgrade", "upgrade-insecure-requests",
        "user-agent", "vary", "via", "warning", "www-authenticate", "x-content-type-options",
        "x-frame-options", "x-http-method-override", "x-real-ip", "x-requested-with",
        "x-xss-protection",
    }
)  # fmt: skip
#: Prefixes of whole families of such headers (``Content-Type``, ``If-None-Match``, ...).
RESERVED_HEADER_PREFIXES = (
    "access-control-", "content-", "cross-origin-", "if-", "proxy-", "sec-", "x-forwarded-",
)  # fmt: skip


class TransportSettings(BaseModel):
    """How the session ID travels (cookie, header, or header then cookie) and rolling cookies."""

    model_config = _STRICT_NUMBERS

    id_resolver: Literal["cookie", "header", "composite"] = "cookie"
    header_name: str = "X-Auth-Token"
    rolling: bool = False
    rolling_interval: float | None = None
    max_age: int | None = None  # the cookie's (CookieSettings), for the checks below

    @field_validator("header_name")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid header name (letters, digits, !#$%&'*+-.^_`|~)"
            )
        lowered = value.lower()
        if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_HEADER_PREFIXES):
            raise ValueError(
                f"{value!r} is a header HTTP, browsers or the middleware already use; "
                "choose a name of your own, e.g. 'X-Auth-Token'"
            )
        return value

    @field_validator("rolling_interval")
    @classmethod
    def _positive_interval(cls, value: float | None) -> float | None:
        return _seconds(value)

    @model_validator(mode="after")
    def _consistent(self) -> TransportSettings:
        if self.id_resolver == "header":
            for name in ("rolling", "max_age"):
                if getattr(self, name):
                    raise ValueError(
                        f"{name}= is a cookie option and id_resolver='header' sends no cookie; "
                        "drop it, or use id_resolver='composite'"
                    )
        if self.rolling_interval is not None and not self.rolling:
            raise ValueError("rolling_interval= has no effect without rolling=True")
        if self.rolling:
            if self.max_age is None:
                raise ValueError(
                    "rolling=True refreshes the cookie's Max-Age, and max_age is None (a "
                    "browser-session cookie has nothing to refresh); set max_age=, e.g. 14 days"
                )
            if self.rolling_interval is not None and self.rolling_interval >= self.max_age:
                raise ValueError(
                    f"rolling_interval ({self.rolling_interval:g} s) must be shorter than "
                    f"max_age ({self.max_age} s), or the cookie expires between refreshes"
                )
        return self

    def roll_every(self) -> float | None:
        """Seconds between two refreshes of one session's cookie (``None``: not rolling).

        By default a tenth of ``max_age``, at least a minute, at most half of ``max_age``.
        """
        if not self.rolling or self.max_age is None:
            return None
        if self.rolling_interval is not None:
            return self.rolling_interval
        return min(max(60.0, self.max_age / 10), self.max_age / 2)


class ManagerSettings(BaseModel):
    """Session policy (it belongs to the manager)."""

    model_config = _STRICT_NUMBERS

    max_inactive_interval: int = 1800
    absolute_timeout: float | None = None
    max_active_sessions: int | None = None
    reaper_interval: float = 60.0
    retry_after: int = 5
    max_active_policy: Literal["reject", "evict_lru"] = "reject"
    max_sessions_per_principal: int | None = None
    per_principal_policy: Literal["reject", "evict_oldest"] = "reject"
    save_mode: Literal["on_set", "on_get", "always"] = "on_set"
    locking: Literal["none", "session"] = "none"
    lock_timeout: float = 10.0
    websocket_touch_interval: float | None = 60.0
    shutdown_timeout: float = 10.0

    @field_validator(
        "absolute_timeout",
        "reaper_interval",
        "lock_timeout",
        "websocket_touch_interval",
        "shutdown_timeout",
    )
    @classmethod
    def _positive_seconds(cls, value: float | None) -> float | None:
        return _seconds(value)

    @field_validator("max_inactive_interval")
    @classmethod
    def _interval(cls, value: int) -> int:
        if not -MAX_SECONDS <= value <= MAX_SECONDS:
            raise ValueError(
                f"must be at most {MAX_SECONDS} seconds (zero or less: never idles out)"
            )
        return value

    @field_validator("max_active_sessions", "max_sessions_per_principal", "retry_after")
    @classmethod
    def _positive_count(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive whole number (or None for no limit)")
        if info.field_name == "retry_after" and value is not None and value > MAX_SECONDS:
            raise ValueError(f"must be at most {MAX_SECONDS} seconds")
        return value


def _seconds(value: float | None) -> float | None:
    """A duration option: positive, finite (strict mode refused NaN and infinity) and bounded."""
    if value is not None and not 0 < value <= MAX_SECONDS:
        raise ValueError(f"must be a positive number of seconds up to {MAX_SECONDS}")
    return value
