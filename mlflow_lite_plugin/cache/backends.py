"""Where exact-cache entries live: process memory (LRU), a SQLite file, or Redis.

Entries are JSON documents (never pickle): a cache shared with other processes or hosts must not
be able to run code in ours.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from ..errors import ArgumentError
from ..sqlite_util import enable_wal

DEFAULT_SQLITE_PATH = "mlflow_lite_cache.db"


class CacheBackend(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


class MemoryBackend:
    """In-process, bounded: the least recently used entry goes first."""

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float | None, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires_at, blob = item
            if expires_at is not None and expires_at <= time.time():
                del self._data[key]
                return None
            self._data.move_to_end(key)
        return json.loads(blob)

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        blob = json.dumps(value)
        with self._lock:
            self._data[key] = (_expiry(ttl), blob)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        now = time.time()
        with self._lock:
            return sum(1 for expires_at, _ in self._data.values() if expires_at is None or expires_at > now)


class SQLiteBackend:
    """A file shared by the processes of one host; survives restarts. WAL mode lets readers and
    one writer work at once; each thread has its own connection."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_SQLITE_PATH, max_entries: int = 100_000):
        self.path = Path(path)
        self.max_entries = max_entries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            enable_wal(db)
            db.execute(
                "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                "expires_at REAL, used_at REAL NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS cache_used_at ON cache (used_at)")

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def get(self, key: str) -> dict[str, Any] | None:
        db = self._connect()
        now = time.time()
        row = db.execute(
            "SELECT value FROM cache WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)", (key, now)
        ).fetchone()
        if row is None:
            return None
        db.execute("UPDATE cache SET used_at = ? WHERE key = ?", (now, key))
        return json.loads(row[0])

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        db = self._connect()
        now = time.time()
        db.execute(
            "INSERT OR REPLACE INTO cache (key, value, expires_at, used_at) VALUES (?, ?, ?, ?)",
            (key, json.dumps(value), _expiry(ttl), now),
        )
        db.execute("DELETE FROM cache WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        db.execute(
            "DELETE FROM cache WHERE key IN (SELECT key FROM cache ORDER BY used_at DESC LIMIT -1 OFFSET ?)",
            (self.max_entries,),
        )

    def clear(self) -> None:
        self._connect().execute("DELETE FROM cache")

    def __len__(self) -> int:
        row = self._connect().execute(
            "SELECT COUNT(*) FROM cache WHERE expires_at IS NULL OR expires_at > ?", (time.time(),)
        ).fetchone()
        return int(row[0])


class RedisBackend:
    """Shared by every replica that points at the same Redis; Redis expires entries itself."""

    def __init__(self, url: str, prefix: str = "mlflow_lite:cache:"):
        try:
            import redis
        except ImportError as exc:
            raise ArgumentError("backend", "backend='redis' needs the redis package: pip install 'mlflow-lite-plugin[redis]'") from exc
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url)
        self._redis.ping()  # fail at configuration time, not on the first call

    def get(self, key: str) -> dict[str, Any] | None:
        blob = self._redis.get(self.prefix + key)
        return None if blob is None else json.loads(blob)

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))
        self._redis.set(self.prefix + key, json.dumps(value), px=px)

    def clear(self) -> None:
        for batch in _batched(self._redis.scan_iter(match=self.prefix + "*", count=500), 500):
            self._redis.delete(*batch)

    def __len__(self) -> int:
        return sum(1 for _ in self._redis.scan_iter(match=self.prefix + "*", count=500))


def make_backend(
    backend: str, *, url: str | None, path: str | os.PathLike[str] | None, max_entries: int
) -> CacheBackend:
    if backend == "memory":
        return MemoryBackend(max_entries)
    if backend == "sqlite":
        return SQLiteBackend(path or DEFAULT_SQLITE_PATH, max_entries)
    if backend == "redis":
        if not url:
            raise ArgumentError("url", "backend='redis' needs url='redis://host:port/db'")
        return RedisBackend(url)
    raise ArgumentError("backend", f"must be 'memory', 'sqlite' or 'redis', got {backend!r}")


def _expiry(ttl: float | None) -> float | None:
    return None if ttl is None else time.time() + ttl


def _batched(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
