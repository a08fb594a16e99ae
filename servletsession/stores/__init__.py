"""Session stores. ``MemoryStore`` is the default; every store meets ``SessionStore``.

``SQLStore`` and ``RedisStore`` are imported on first use, so that their drivers are needed only
by the apps that use them (``pip install 'servletsession[sql]'`` / ``'servletsession[redis]'``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .base import SessionStore
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore
    from .sql import SQLStore

__all__ = ["MemoryStore", "RedisStore", "SQLStore", "SessionStore", "store_from_url"]

_OPTIONAL = {"SQLStore": (".sql", "sql"), "RedisStore": (".redis", "redis")}


def __getattr__(name: str) -> Any:
    if name not in _OPTIONAL:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, extra = _OPTIONAL[name]
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as exc:
        raise ImportError(
            f"{name} needs the '{extra}' extra: pip install 'servletsession[{extra}]' ({exc})"
        ) from exc
    return getattr(module, name)


def store_from_url(url: str, **options: Any) -> SessionStore:
    """A store for ``url``: ``memory://``, ``sqlite[+aiosqlite]:///path``,
    ``postgresql[+asyncpg]://…``, ``redis://…`` (``rediss://``, ``unix://``), or a Redis
    Cluster: ``redis+cluster://node:port`` (``rediss+cluster://``; any one node); ``options`` go
    to the store's constructor (``models=``, ``save_period=``, ``prefix=``…)."""
    head, sep, rest = url.partition("://")
    if head.lower() in ("redis+cluster", "rediss+cluster"):
        cluster_url = head.lower().split("+")[0] + sep + rest
        store: SessionStore = __getattr__("RedisStore")(cluster_url, cluster=True, **options)
        return store
    scheme = head.split("+")[0].lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("sqlite", "postgresql", "postgres"):
        store = __getattr__("SQLStore")(url, **options)
        return store
    if scheme in ("redis", "rediss", "unix"):
        store = __getattr__("RedisStore")(url, **options)
        return store
    raise ConfigurationError(
        f"store URL scheme {scheme!r} is not one of memory://, sqlite:///…, postgresql://…, "
        "redis://…, redis+cluster://…"
    )
