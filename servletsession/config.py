"""The validated settings: wrong options fail at construction, with a message saying what to do."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import ConfigurationError

MIN_SECRET_KEY_BYTES = 32
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a valid cookie name
_SAFE_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")  # printable, no ';' (no header injection)

SecretKey = str | bytes


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
    http_only: bool = True
    secure: bool = True
    same_site: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    domain: str | None = None
    max_age: int | None = None

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
        if value is not None and value <= 0:
            raise ValueError(
                "must be a positive number of seconds, or None for a browser-session cookie"
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


class ManagerSettings(BaseModel):
    """Session policy (it belongs to the manager)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
        if value is not None and value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("max_active_sessions", "max_sessions_per_principal", "retry_after")
    @classmethod
    def _positive_count(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive whole number (or None for no limit)")
        return value
