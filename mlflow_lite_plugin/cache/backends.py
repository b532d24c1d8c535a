"""Where exact-cache entries live: process memory (LRU), a SQLite file, or Redis.

Entries are JSON documents (never pickle): a cache shared with other processes or hosts must not
be able to run code in ours. The SQLite and Redis backends sit behind a :class:`CircuitBreaker`:
a cache that keeps failing (a hung Redis) is skipped for a while instead of costing every call a
timeout.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.storage.sqlite import enable_wal

_logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_SQLITE_PATH = "mlflow_lite_cache.db"
#: What makes a backend "unavailable" for its circuit breaker (other errors are its answer).
_SQLITE_FAILURES: tuple[type[BaseException], ...] = (sqlite3.DatabaseError, OSError)
#: Seconds a Redis cache operation (and connect) may take. redis-py's default is 5 s; a cache must
#: fail fast, since the call can always go on without it. ``?socket_timeout=`` in the URL wins.
REDIS_SOCKET_TIMEOUT = 0.5


class CacheBackend(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class BreakerSettings:
    """When a failing backend is skipped: after ``failures`` failed operations in a row, for
    ``cooldown`` seconds; then one probe operation decides whether it is back."""

    failures: int = 3
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.failures, int) or isinstance(self.failures, bool) or self.failures < 1:
            raise ArgumentError("failures", f"must be a positive int, got {self.failures!r}")
        if not isinstance(self.cooldown, (int, float)) or isinstance(self.cooldown, bool) or not self.cooldown > 0:
            raise ArgumentError("cooldown", f"must be a positive number of seconds, got {self.cooldown!r}")


class BackendSkipped(Exception):
    """The backend's circuit is open: the operation was not attempted."""

    def __init__(self, backend: str, retry_in: float):
        super().__init__(f"{backend} cache backend skipped after repeated failures (next try in {retry_in:.1f} s)")
        self.backend = backend
        self.retry_in = retry_in


class CircuitBreaker:
    """Runs a backend's operations (:meth:`run`) and stops running them while they keep failing.

    Closed: every operation runs; ``settings.failures`` availability errors in a row open it.
    Open: operations raise :class:`BackendSkipped` at once, for ``settings.cooldown`` seconds.
    Then one operation is let through as a probe (the others are still skipped): success closes
    the circuit, failure opens it for another cool-down. Opening and closing are logged once each.
    Only ``failure_types`` count as failures; any other outcome shows the backend is answering.
    (pybreaker holds one lock across every wrapped call, which would serialise all cache I/O.)
    """

    def __init__(
        self,
        name: str,
        failure_types: tuple[type[BaseException], ...],
        settings: BreakerSettings = BreakerSettings(),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.failure_types = failure_types
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()  # guards the state below, never held during backend I/O
        self._failures = 0
        self._opened_at: float | None = None  # None: closed
        self._probing = False

    @property
    def state(self) -> str:
        """"closed", "open" (skipping) or "half-open" (cool-down over: one operation probes)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "open" if not self._probing and self._remaining() > 0 else "half-open"

    def _remaining(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self.settings.cooldown - self._clock()

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)``, or :class:`BackendSkipped` at once while the circuit is open."""
        with self._lock:
            probe = False
            if self._opened_at is not None:
                remaining = self._remaining()
                if remaining > 0 or self._probing:
                    raise BackendSkipped(self.name, max(remaining, 0.0))
                self._probing = probe = True
        try:
            result = fn(*args)
        except self.failure_types:
            self._failed(probe)
            raise
        except Exception:
            self._answered(probe)  # it answered (with an error of its own): it is reachable
            raise
        except BaseException:
            if probe:  # interrupted: let the next operation probe instead
                with self._lock:
                    self._probing = False
            raise
        self._answered(probe)
        return result

    def _failed(self, probe: bool) -> None:
        with self._lock:
            self._failures += 1
            if probe:
                self._probing = False
            elif self._opened_at is not None or self._failures < self.settings.failures:
                return  # already open (an operation that started before), or not yet N in a row
            self._opened_at = self._clock()
        _logger.warning(
            "%s cache backend failed %d time(s) in a row%s: skipping it for %.0f s",
            self.name, self._failures, " (probe)" if probe else "", self.settings.cooldown,
        )

    def _answered(self, probe: bool) -> None:
        with self._lock:
            was_open = self._opened_at is not None
            if probe:
                self._probing = False
            if was_open and not probe:
                return  # an operation from before the circuit opened: the probe decides
            self._failures, self._opened_at = 0, None
        if was_open:
            _logger.info("%s cache backend answered again: using it again", self.name)


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

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_SQLITE_PATH,
        max_entries: int = 100_000,
        breaker: BreakerSettings = BreakerSettings(),
    ):
        self.path = Path(path)
        self.max_entries = max_entries
        self.breaker = CircuitBreaker("sqlite", _SQLITE_FAILURES, breaker)
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
        return self.breaker.run(self._get, key)

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        self.breaker.run(self._set, key, value, ttl)

    def _get(self, key: str) -> dict[str, Any] | None:
        db = self._connect()
        now = time.time()
        row = db.execute(
            "SELECT value FROM cache WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)", (key, now)
        ).fetchone()
        if row is None:
            return None
        db.execute("UPDATE cache SET used_at = ? WHERE key = ?", (now, key))
        return json.loads(row[0])

    def _set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
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

    def __init__(
        self,
        url: str,
        prefix: str = "mlflow_lite:cache:",
        socket_timeout: float = REDIS_SOCKET_TIMEOUT,
        breaker: BreakerSettings = BreakerSettings(),
    ):
        try:
            import redis
        except ImportError as exc:
            raise ArgumentError("backend", "backend='redis' needs the redis package: pip install 'mlflow-lite-plugin[redis]'") from exc
        if not isinstance(socket_timeout, (int, float)) or isinstance(socket_timeout, bool) or not socket_timeout > 0:
            raise ArgumentError("socket_timeout", f"must be a positive number of seconds, got {socket_timeout!r}")
        self.prefix = prefix
        # Options in the URL (?socket_timeout=2) override these keywords in redis-py.
        self._redis = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
        self._redis.ping()  # fail at configuration time, not on the first call
        self.breaker = CircuitBreaker("redis", (redis.ConnectionError, redis.TimeoutError, OSError), breaker)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.breaker.run(self._get, key)

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        self.breaker.run(self._set, key, value, ttl)

    def _get(self, key: str) -> dict[str, Any] | None:
        blob = self._redis.get(self.prefix + key)
        return None if blob is None else json.loads(blob)

    def _set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))
        self._redis.set(self.prefix + key, json.dumps(value), px=px)

    def clear(self) -> None:
        for batch in _batched(self._redis.scan_iter(match=self.prefix + "*", count=500), 500):
            self._redis.delete(*batch)

    def __len__(self) -> int:
        return sum(1 for _ in self._redis.scan_iter(match=self.prefix + "*", count=500))


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
