"""servletsession: the Java Servlet ``HttpSession`` model for ASGI apps (Starlette, FastAPI)."""

from .accessor import SessionAccessor
from .context import (
    change_session_id,
    get_session,
    is_requested_session_id_valid,
    requested_session_id,
)
from .errors import (
    ConfigurationError,
    IllegalStateError,
    SessionLimitError,
    StoreUnavailableError,
)
from .listeners import (
    HttpSessionActivationListener,
    HttpSessionAttributeListener,
    HttpSessionBindingEvent,
    HttpSessionBindingListener,
    HttpSessionEvent,
    HttpSessionIdListener,
    HttpSessionListener,
)
from .manager import SessionManager
from .middleware import SessionMiddleware
from .session import HttpSession
from .stats import SessionStats
from .stores import MemoryStore, SessionStore

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "HttpSession",
    "HttpSessionActivationListener",
    "HttpSessionAttributeListener",
    "HttpSessionBindingEvent",
    "HttpSessionBindingListener",
    "HttpSessionEvent",
    "HttpSessionIdListener",
    "HttpSessionListener",
    "IllegalStateError",
    "MemoryStore",
    "SessionAccessor",
    "SessionLimitError",
    "SessionManager",
    "SessionMiddleware",
    "SessionStats",
    "SessionStore",
    "StoreUnavailableError",
    "__version__",
    "change_session_id",
    "get_session",
    "is_requested_session_id_valid",
    "requested_session_id",
]
