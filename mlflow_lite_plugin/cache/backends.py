"""Where exact-cache entries live: process memory (LRU), a SQLite file, or Redis.

The backends are the storage layer's (``storage/``) key-value stores with the cache's defaults:
entries are JSON documents (never pickle: a cache shared with other processes or hosts must not
be able to run code in ours); the SQLite and Redis backends sit behind a circuit breaker, so a
cache that keeps failing (a hung Redis) is skipped for a while instead of costing every call a
timeout, and their Redis commands time out fast.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.storage.breaker import BreakerSettings, CircuitBreaker
from mlflow_lite_plugin.storage.errors import BackendSkipped
from mlflow_lite_plugin.storage.memory import MemoryStorage
from mlflow_lite_plugin.storage.redis import RedisStorage
from mlflow_lite_plugin.storage.sqlite import SQLiteStorage

DEFAULT_SQLITE_PATH = "mlflow_lite_cache.db"
#: Seconds a Redis cache operation (and connect) may take. redis-py's default is no limit; a cache
#: must fail fast, since the call can always go on without it. ``?socket_timeout=`` in the URL wins.
REDIS_SOCKET_TIMEOUT = 0.5


class CacheBackend(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None: ...

    async def aget(self, key: str) -> dict[str, Any] | None: ...

    async def aset(self, key: str, value: dict[str, Any], ttl: float | None) -> None: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


class _Entries:
    """``len(backend)``: the live entries (the storage's ``count``; a storage comes first in
    the bases)."""

    def count(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.count()


class MemoryBackend(MemoryStorage, _Entries):
    """In-process, bounded: the least recently used entry goes first."""

    def __init__(self, max_entries: int = 10_000):
        super().__init__(max_entries)


class SQLiteBackend(SQLiteStorage, _Entries):
    """A file shared by the processes of one host; survives restarts."""

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_SQLITE_PATH,
        max_entries: int = 100_000,
        breaker: BreakerSettings = BreakerSettings(),
    ):
        super().__init__(path, max_entries=max_entries, breaker=breaker)
        self.prepare("kv")  # an unusable file fails at configuration time, not on the first call


class RedisBackend(RedisStorage, _Entries):
    """Shared by every replica that points at the same Redis; Redis expires entries itself."""

    def __init__(
        self,
        url: str,
        prefix: str = "mlflow_lite:cache:",
        socket_timeout: float = REDIS_SOCKET_TIMEOUT,
        breaker: BreakerSettings = BreakerSettings(),
    ):
        super().__init__(url, prefix=prefix, socket_timeout=socket_timeout, breaker=breaker)


def make_backend(
    backend: str,
    *,
    url: str | None,
    path: str | os.PathLike[str] | None,
    max_entries: int,
    breaker: BreakerSettings = BreakerSettings(),
) -> CacheBackend:
    if backend == "memory":
        return MemoryBackend(max_entries)
    if backend == "sqlite":
        return SQLiteBackend(path or DEFAULT_SQLITE_PATH, max_entries, breaker)
    if backend == "redis":
        if not url:
            raise ArgumentError("url", "backend='redis' needs url='redis://host:port/db'")
        return RedisBackend(url, breaker=breaker)
    raise ArgumentError("backend", f"must be 'memory', 'sqlite' or 'redis', got {backend!r}")


__all__ = [
    "BackendSkipped",
    "BreakerSettings",
    "CacheBackend",
    "CircuitBreaker",
    "MemoryBackend",
    "RedisBackend",
    "SQLiteBackend",
    "make_backend",
]
