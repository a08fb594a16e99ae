"""Where ``RedisStore`` keeps what: key names, and the shards that keep each operation in one slot.

Redis Cluster runs a command or script only when all its keys hash to one slot. A session's
operations need its hash, its lock, the deadline index the reaper reads and the principal sets
``sessions_of`` reads; so the cross-session indexes are split into *shards*, and every key of a
session carries its shard's hash tag::

    {prefix}{<tag>}:s:<id>        the session's hash (a field per attribute, ``#…`` metadata)
    {prefix}{<tag>}:l:<id>        its lock (``locking="session"``)
    {prefix}{<tag>}:expiries      the shard's deadlines, for the reaper
    {prefix}{<tag>}:p:<principal> the shard's sessions of one principal
    {prefix}{<tag>}:c:<id>        a move into this ID committed (see ``redis_moves``)

A session's shard follows from its ID, so any process finds it from the cookie alone. The tags
are chosen so that the shards' slots are spread evenly over the slot range: a cluster created
with evenly split slots gives each master an even share of the shards. Every process that shares
the store must use the same ``prefix`` and ``shards``.
"""

from __future__ import annotations

import zlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ..errors import ConfigurationError

__all__ = ["RedisLayout", "text"]


class RedisLayout:
    """Key names for one ``prefix`` split into ``shards`` (1 on a single server)."""

    __slots__ = ("_heads", "prefix", "shards")

    def __init__(self, prefix: str, shards: int) -> None:
        if "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"RedisStore prefix {prefix!r} has a brace: the store adds the hash tags itself"
            )
        if not isinstance(shards, int) or not 1 <= shards <= 1024:
            raise ConfigurationError(f"RedisStore shards={shards!r}: an int from 1 to 1024")
        self.prefix, self.shards = prefix, shards
        self._heads = [f"{prefix}{{{tag}}}:" for tag in _spread_tags(shards)]

    def shard_of(self, session_id: str) -> int:
        """A session's shard: IDs are random, so a checksum spreads them evenly."""
        if self.shards == 1:
            return 0
        return zlib.crc32(session_id.encode()) % self.shards

    def key(self, session_id: str) -> str:
        return f"{self._heads[self.shard_of(session_id)]}s:{session_id}"

    def lock_key(self, session_id: str) -> str:
        return f"{self._heads[self.shard_of(session_id)]}l:{session_id}"

    def moved_key(self, session_id: str) -> str:
        """The record of a move into ``session_id`` (its old ID), while the old hash may remain."""
        return f"{self._heads[self.shard_of(session_id)]}c:{session_id}"

    def key_head(self, shard: int) -> str:
        """What a session key of ``shard`` starts with (the ID follows)."""
        return f"{self._heads[shard]}s:"

    def index(self, shard: int) -> str:
        return f"{self._heads[shard]}expiries"

    def index_of(self, session_id: str) -> str:
        return self.index(self.shard_of(session_id))

    def principals(self, shard: int) -> str:
        """The head of the shard's principal set names (the scripts append the principal)."""
        return f"{self._heads[shard]}p:"

    def principals_of(self, session_id: str) -> str:
        return self.principals(self.shard_of(session_id))


def _spread_tags(shards: int) -> list[str]:
    """One tag per shard, the n-th hashing into the n-th of ``shards`` equal slot ranges."""
    tags: list[str | None] = [None] * shards
    missing, candidate = shards, 0
    while missing:
        tag = f"s{candidate}"
        candidate += 1
        band = key_slot(tag.encode()) * shards // REDIS_CLUSTER_HASH_SLOTS
        if tags[band] is None:
            tags[band] = tag
            missing -= 1
    return [tag for tag in tags if tag is not None]


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
