"""Storage in a SQLite file, shared by the processes of one host; it survives restarts.

The file's tables (their names and columns are a format: files written by earlier versions open):

- ``cache`` (key-value): ``key`` TEXT PRIMARY KEY, ``value`` (JSON), ``expires_at``, ``used_at``
  (the LRU order);
- ``budget_spend`` (scope, period, spent, updated_at), ``budget_reservations`` (id, scope, period,
  amount, created_at: when the lease was last renewed; the column keeps its first name) and
  ``budget_alerts`` (scope, period, threshold, fired_at): the budget ledger;
- ``ab_observations`` and ``ab_ratings``: the A/B test logs (:data:`LOGS`).

Connections: WAL mode (readers and one writer at once), a 30 s busy timeout, autocommit. Plain
operations use one connection per thread; the ledger uses one connection per process under a
lock, and its check-and-reserve is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken
before reading), so threads of a process queue on the lock instead of polling the file lock, and
``PRAGMA data_version`` (per connection) tells it when another process changed the file. A
forked child opens its own connections. Async twins run the operation in a worker thread (``core.offload``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mlflow_lite_plugin.core import offload
from mlflow_lite_plugin.storage.base import Storage
from mlflow_lite_plugin.storage.breaker import BreakerSettings
from mlflow_lite_plugin.storage.memory import expiry

_T = TypeVar("_T")

DEFAULT_MAX_ENTRIES = 100_000
BUSY_TIMEOUT = 30.0  # seconds a connection waits for another's write lock
EPSILON = 1e-9  # USD: float sums of many small costs must not refuse a reservation that fits exactly

_SCHEMAS = {
    "kv": (
        "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
        "expires_at REAL, used_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS cache_used_at ON cache (used_at)",
    ),
    "ledger": (
        "CREATE TABLE IF NOT EXISTS budget_spend (scope TEXT NOT NULL, period TEXT NOT NULL, "
        "spent REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (scope, period))",
        "CREATE TABLE IF NOT EXISTS budget_reservations (id TEXT NOT NULL, scope TEXT NOT NULL, "
        "period TEXT NOT NULL, amount REAL NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (id, scope, period))",
        "CREATE INDEX IF NOT EXISTS budget_reservations_bucket ON budget_reservations (scope, period)",
        "CREATE TABLE IF NOT EXISTS budget_alerts (scope TEXT NOT NULL, period TEXT NOT NULL, "
        "threshold REAL NOT NULL, fired_at REAL NOT NULL, PRIMARY KEY (scope, period, threshold))",
    ),
    "log": (
        "CREATE TABLE IF NOT EXISTS ab_observations (test TEXT NOT NULL, variant TEXT NOT NULL, "
        "cost REAL, latency REAL, validation INTEGER, metrics TEXT NOT NULL, error TEXT, trace_id TEXT, "
        "user_id TEXT, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ab_observations_test ON ab_observations (test)",
        "CREATE TABLE IF NOT EXISTS ab_ratings (test TEXT NOT NULL, trace_id TEXT NOT NULL, "
        "rating REAL NOT NULL, at REAL NOT NULL)",
    ),
}
#: The logs and their columns after ``test``, in row order; rows are listed in insertion order.
LOGS = {
    "ab_observations": ("variant", "cost", "latency", "validation", "metrics", "error", "trace_id", "user_id", "at"),
    "ab_ratings": ("trace_id", "rating", "at"),
}

Buckets = Sequence[tuple[str, str, float]]  # (scope, period, limit)
#: A reservation that did not fit: (index of the bucket, its spent, its reserved, the ledger version).
Miss = tuple[int, float, float, Any]


def enable_wal(db: sqlite3.Connection, timeout: float = BUSY_TIMEOUT) -> None:
    """Switch to WAL (persistent, so a no-op after the first time). Processes that open a new
    file together race for this switch, and SQLite reports the loser as "database is locked"
    at once, without its busy handler: retry it until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def connect(path: str | os.PathLike[str], *, shared: bool = False) -> sqlite3.Connection:
    """A connection with the settings every user of a shared file needs (autocommit, busy
    timeout); ``shared``: usable from any thread (the caller serialises it)."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=not shared)
    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    return db


class SQLiteStorage(Storage):
    """A SQLite file at ``path`` (its folder is created). ``max_entries``: the key-value LRU bound;
    ``breaker``: skip the file while it keeps failing (None: always try)."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        breaker: BreakerSettings | None = None,
    ):
        super().__init__((sqlite3.DatabaseError, OSError), breaker)
        offload.warm_up()  # the async twins' threads start now, not inside the first async call
        self.path = Path(path)
        self.max_entries = max_entries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.RLock()  # the shared connection and this process's transactions
        self._shared: tuple[int, sqlite3.Connection] | None = None
        self._prepared: set[str] = set()
        self.call(lambda: enable_wal(self._connect()))

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.path)!r})"

    @property
    def identity(self) -> tuple[str, ...]:
        """The same for every storage of this process on the same file."""
        return ("sqlite", os.path.realpath(self.path))

    # -- connections --

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own)."""
        held = getattr(self._local, "db", None)
        if held is None or held[0] != os.getpid():
            self._local.db = held = (os.getpid(), connect(self.path))
        return held[1]

    def _shared_connection(self) -> sqlite3.Connection:
        """The process's connection for the ledger (hold ``_lock``)."""
        if self._shared is None or self._shared[0] != os.getpid():
            db = connect(self.path, shared=True)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this safe; a commit costs no fsync
            self._shared = (os.getpid(), db)
        return self._shared[1]

    def prepare(self, family: str) -> None:
        """Create the tables of ``family`` ("kv", "ledger" or "log") if they are missing."""
        if family in self._prepared:
            return
        self.run(_create, _SCHEMAS[family], transaction=True)
        self._prepared.add(family)

    def run(self, op: Callable[..., _T], *args: Any, transaction: bool = False) -> _T:
        """``op(connection, *args)`` on this thread's connection, or with ``transaction`` in one
        ``BEGIN IMMEDIATE`` transaction on the process's shared connection (rolled back if it raises)."""
        return self.call(self._run, op, args, transaction)

    async def arun(self, op: Callable[..., _T], *args: Any, transaction: bool = False) -> _T:
        """:meth:`run` in a worker thread, so the event loop runs on meanwhile."""
        return await offload.offload(self.run, op, *args, transaction=transaction)

    def _run(self, op: Callable[..., _T], args: tuple[Any, ...], transaction: bool) -> _T:
        if not transaction:
            return op(self._connect(), *args)
        with self._lock:
            db = self._shared_connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = op(db, *args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    def _locked(self, op: Callable[..., _T], *args: Any) -> _T:
        """``op`` on the shared connection without a transaction (reads that must see what this
        process's transactions see, and a stable ``data_version``)."""

        def run() -> _T:
            with self._lock:
                return op(self._shared_connection(), *args)

        return self.call(run)

    def close(self) -> None:
        with self._lock:
            if self._shared is not None:
                self._shared[1].close()
                self._shared = None
        held = getattr(self._local, "db", None)
        if held is not None:
            held[1].close()
            self._local.db = None

    # -- key-value (exact cache) --

    def get(self, key: str) -> dict[str, Any] | None:
        self.prepare("kv")
        return self.run(_kv_get, key)

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        self.prepare("kv")
        self.run(_kv_set, key, value, ttl, self.max_entries)

    def clear(self) -> None:
        self.prepare("kv")
        self.run(_kv_clear)

    def count(self) -> int:
        self.prepare("kv")
        return self.run(_kv_count)

    # -- ledger (budget) --

    def ledger_reserve(self, buckets: Buckets, reservation_id: str, amount: float, ttl: float) -> Miss | None:
        """Atomically: drop leases older than ``ttl`` seconds, then reserve ``amount`` in every
        bucket if it fits all of them (None), else in none: the miss names the first bucket whose
        spend alone leaves no room, else the first full one."""
        self.prepare("ledger")
        return self.run(_ledger_reserve, buckets, reservation_id, amount, ttl, transaction=True)

    def ledger_settle(self, reservation_id: str, buckets: Sequence[tuple[str, str]], actual: float) -> list[float]:
        """Replace the reservation by ``actual`` spent in each bucket; each bucket's new spend."""
        self.prepare("ledger")
        return self.run(_ledger_settle, reservation_id, buckets, actual, transaction=True)

    def ledger_renew(self, reservation_ids: Sequence[str], buckets: Sequence[tuple[str, str]]) -> None:
        """Restart these reservations' leases (those settled or lapsed stay gone)."""
        self.prepare("ledger")
        self.run(_ledger_renew, reservation_ids, transaction=True)

    def ledger_bucket(self, scope: str, period: str, ttl: float) -> tuple[float, float]:
        """(spent, reserved by live leases) of one bucket."""
        self.prepare("ledger")
        return self._locked(_ledger_bucket, scope, period, ttl)

    def ledger_version(self) -> int:
        """Changes when another process changes the file (cheap: polled by waiting calls)."""
        self.prepare("ledger")
        return self._locked(_data_version)

    def ledger_mark(self, scope: str, period: str, threshold: float) -> bool:
        """Record that an alert fired for this bucket; True only the first time."""
        self.prepare("ledger")
        return self.run(_ledger_mark, scope, period, threshold, transaction=True)

    # -- logs (A/B tests) --

    def append(self, log: str, test: str, row: tuple[Any, ...]) -> None:
        self.prepare("log")
        self.run(_append, log, test, row)

    def rows(self, log: str, test: str) -> list[tuple[Any, ...]]:
        self.prepare("log")
        return self.run(_rows, log, test)

    # -- async twins (boilerplate of one shape: the operation in a worker thread) --

    async def aget(self, key: str) -> dict[str, Any] | None:
        return await offload.offload(self.get, key)

    async def aset(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        await offload.offload(self.set, key, value, ttl)

    async def aclear(self) -> None:
        await offload.offload(self.clear)

    async def acount(self) -> int:
        return await offload.offload(self.count)

    async def aledger_reserve(self, buckets: Buckets, reservation_id: str, amount: float, ttl: float) -> Miss | None:
        return await offload.offload(self.ledger_reserve, buckets, reservation_id, amount, ttl)

    async def aledger_settle(
        self, reservation_id: str, buckets: Sequence[tuple[str, str]], actual: float
    ) -> list[float]:
        return await offload.offload(self.ledger_settle, reservation_id, buckets, actual)

    async def aledger_renew(self, reservation_ids: Sequence[str], buckets: Sequence[tuple[str, str]]) -> None:
        await offload.offload(self.ledger_renew, reservation_ids, buckets)

    async def aledger_bucket(self, scope: str, period: str, ttl: float) -> tuple[float, float]:
        return await offload.offload(self.ledger_bucket, scope, period, ttl)

    async def aledger_version(self) -> int:
        return await offload.offload(self.ledger_version)

    async def aledger_mark(self, scope: str, period: str, threshold: float) -> bool:
        return await offload.offload(self.ledger_mark, scope, period, threshold)

    async def aappend(self, log: str, test: str, row: tuple[Any, ...]) -> None:
        await offload.offload(self.append, log, test, row)

    async def arows(self, log: str, test: str) -> list[tuple[Any, ...]]:
        return await offload.offload(self.rows, log, test)


# -- the operations (each takes the connection first) --


def _create(db: sqlite3.Connection, statements: Sequence[str]) -> None:
    for statement in statements:
        db.execute(statement)


def _kv_get(db: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    now = time.time()
    row = db.execute(
        "SELECT value FROM cache WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)", (key, now)
    ).fetchone()
    if row is None:
        return None
    db.execute("UPDATE cache SET used_at = ? WHERE key = ?", (now, key))
    return json.loads(row[0])


def _kv_set(db: sqlite3.Connection, key: str, value: dict[str, Any], ttl: float | None, max_entries: int) -> None:
    now = time.time()
    db.execute(
        "INSERT OR REPLACE INTO cache (key, value, expires_at, used_at) VALUES (?, ?, ?, ?)",
        (key, json.dumps(value), expiry(ttl), now),
    )
    db.execute("DELETE FROM cache WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
    db.execute(
        "DELETE FROM cache WHERE key IN (SELECT key FROM cache ORDER BY used_at DESC LIMIT -1 OFFSET ?)",
        (max_entries,),
    )


def _kv_clear(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM cache")


def _kv_count(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT COUNT(*) FROM cache WHERE expires_at IS NULL OR expires_at > ?", (time.time(),)).fetchone()
    return int(row[0])


def _fits(spent: float, reserved: float, amount: float, limit: float) -> bool:
    """A $0 reservation always fits (it cannot push spend anywhere)."""
    return amount <= 0 or spent + reserved + amount <= limit + EPSILON


def _ledger_reserve(
    db: sqlite3.Connection, buckets: Buckets, reservation_id: str, amount: float, ttl: float
) -> Miss | None:
    now = time.time()
    db.execute("DELETE FROM budget_reservations WHERE created_at < ?", (now - ttl,))
    checks = [(i, *_ledger_bucket(db, scope, period, ttl, now)) for i, (scope, period, _) in enumerate(buckets)]
    misses = [check for check in checks if not _fits(check[1], check[2], amount, buckets[check[0]][2])]
    if misses:
        hard = [check for check in misses if not _fits(check[1], 0.0, amount, buckets[check[0]][2])]
        index, spent, reserved = (hard or misses)[0]
        return index, spent, reserved, _data_version(db)
    db.executemany(
        "INSERT INTO budget_reservations (id, scope, period, amount, created_at) VALUES (?, ?, ?, ?, ?)",
        [(reservation_id, scope, period, amount, now) for scope, period, _ in buckets],
    )
    return None


def _ledger_settle(
    db: sqlite3.Connection, reservation_id: str, buckets: Sequence[tuple[str, str]], actual: float
) -> list[float]:
    now = time.time()
    db.execute("DELETE FROM budget_reservations WHERE id = ?", (reservation_id,))
    totals = []
    for scope, period in buckets:
        if actual > 0:
            db.execute(
                "INSERT INTO budget_spend (scope, period, spent, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (scope, period) DO UPDATE SET spent = spent + excluded.spent, "
                "updated_at = excluded.updated_at",
                (scope, period, actual, now),
            )
        totals.append(_spent(db, scope, period))
    return totals


def _ledger_renew(db: sqlite3.Connection, reservation_ids: Sequence[str]) -> None:
    now = time.time()
    db.executemany("UPDATE budget_reservations SET created_at = ? WHERE id = ?", [(now, i) for i in reservation_ids])


def _spent(db: sqlite3.Connection, scope: str, period: str) -> float:
    row = db.execute("SELECT spent FROM budget_spend WHERE scope = ? AND period = ?", (scope, period)).fetchone()
    return float(row[0]) if row else 0.0


def _ledger_bucket(
    db: sqlite3.Connection, scope: str, period: str, ttl: float, now: float | None = None
) -> tuple[float, float]:
    row = db.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE scope = ? AND period = ? AND created_at >= ?",
        (scope, period, (time.time() if now is None else now) - ttl),
    ).fetchone()
    return _spent(db, scope, period), float(row[0])


def _data_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def _ledger_mark(db: sqlite3.Connection, scope: str, period: str, threshold: float) -> bool:
    cursor = db.execute(
        "INSERT OR IGNORE INTO budget_alerts (scope, period, threshold, fired_at) VALUES (?, ?, ?, ?)",
        (scope, period, float(threshold), time.time()),
    )
    return cursor.rowcount == 1


def _append(db: sqlite3.Connection, log: str, test: str, row: tuple[Any, ...]) -> None:
    columns = LOGS[log]
    if len(row) != len(columns):
        raise ValueError(f"a row of {log} has {len(columns)} values ({', '.join(columns)}), got {len(row)}")
    db.execute(f"INSERT INTO {log} (test, {', '.join(columns)}) VALUES (?{', ?' * len(columns)})", (test, *row))


def _rows(db: sqlite3.Connection, log: str, test: str) -> list[tuple[Any, ...]]:
    order = "at" if log == "ab_observations" else "rowid"
    return db.execute(f"SELECT {', '.join(LOGS[log])} FROM {log} WHERE test = ? ORDER BY {order}", (test,)).fetchall()
