"""State shared between threads, processes and replicas: memory, SQLite and Redis.

One backend per module (``memory``, ``sqlite``, ``redis``) under :class:`~.base.Storage`; each
operation has an async twin; an outage raises :class:`StorageError`. :func:`open_storage` opens
the backend a URL or path names.
"""

from __future__ import annotations

import os
from typing import Any

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.storage.base import Storage
from mlflow_lite_plugin.storage.breaker import BreakerSettings, CircuitBreaker
from mlflow_lite_plugin.storage.errors import BackendSkipped, StorageError
from mlflow_lite_plugin.storage.memory import MemoryStorage
from mlflow_lite_plugin.storage.redis import RedisStorage
from mlflow_lite_plugin.storage.sqlite import SQLiteStorage

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_storage(target: str | os.PathLike[str] | None = None, **options: Any) -> Storage:
    """The storage ``target`` names: None, "memory" or "memory://" (this process),
    "redis://host:port/db" (also rediss://, unix://), "sqlite:///path/to/file.db" or a file
    path (SQLite). ``options``: the backend's keywords (``breaker=``, ``max_entries=``,
    ``prefix=``, ``socket_timeout=``...)."""
    if target is None or target in ("memory", "memory://"):
        return MemoryStorage(**options)
    if isinstance(target, os.PathLike):
        return SQLiteStorage(target, **options)
    if not isinstance(target, str) or not target:
        raise ArgumentError("storage", f"must be a path, 'memory' or a redis:// or sqlite:/// URL, got {target!r}")
    if target.startswith(REDIS_SCHEMES):
        return RedisStorage(target, **options)
    if target.startswith("sqlite://"):
        path = target[len("sqlite://") :]
        if not path.startswith("/") or path == "/":
            raise ArgumentError(
                "storage", f"a SQLite URL is sqlite:///relative.db or sqlite:////absolute.db, got {target!r}"
            )
        return SQLiteStorage(path[1:], **options)
    if "://" in target:
        raise ArgumentError("storage", f"unknown scheme in {target!r}: use a path, 'memory', redis:// or sqlite:///")
    return SQLiteStorage(target, **options)


__all__ = [
    "BackendSkipped",
    "BreakerSettings",
    "CircuitBreaker",
    "MemoryStorage",
    "RedisStorage",
    "SQLiteStorage",
    "Storage",
    "StorageError",
    "open_storage",
]
