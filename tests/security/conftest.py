"""The attack suite runs on every store: the store fixtures come from the store suite."""

from ..stores.conftest import redis_cluster, store_factory

__all__ = ["redis_cluster", "store_factory"]
