"""The attack suite runs on every store: the store fixtures come from the store suite."""

from ..stores.conftest import store_factory

__all__ = ["store_factory"]
