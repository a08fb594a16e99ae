"""Session stores. ``MemoryStore`` is the default; every store meets ``SessionStore``."""

from .base import SessionStore
from .memory import MemoryStore

__all__ = ["MemoryStore", "SessionStore"]
