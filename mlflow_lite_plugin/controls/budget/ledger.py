"""The budget ledger: what was spent and is reserved per (scope, period) bucket, shared by every
process (SQLite file) or host (Redis) that uses the same storage.

A :class:`Ledger` runs on a storage backend (``storage/sqlite.py``, ``storage/redis.py``), which
owns the connections, the tables and keys, and the atomic operations: check-and-reserve (a SQLite
``BEGIN IMMEDIATE`` transaction, a Redis Lua script), settle, lease renewal. The ledger adds what
is the same on every backend: waiting for calls in flight to settle (woken at once by settles in
this process, polling the storage's change counter for the others), and the leases that one
background thread per process renews while calls run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow_lite_plugin.controls.budget.errors import BudgetExceededError
from mlflow_lite_plugin.core.errors import ArgumentError, check_number
from mlflow_lite_plugin.storage.base import adrive, drive
from mlflow_lite_plugin.storage.redis import RedisStorage
from mlflow_lite_plugin.storage.sqlite import SQLiteStorage

_logger = logging.getLogger(__name__)

DEFAULT_RESERVATION_TTL = 60.0  # seconds: a lease not renewed for this long is abandoned
_POLL = 0.1  # seconds between looks for other processes' settles while waiting
_RECHECK = 1.0  # seconds: at most this long between retries (nothing announces a lapsed lease)
DEFAULT_LEDGER_PATH_ENV = "MLFLOW_LITE_BUDGET_PATH"
_EPSILON = 1e-9  # USD: float sums of many small costs must not refuse a call that fits exactly

Buckets = Sequence[tuple[str, str, float]]  # (scope, period, limit)


@dataclass(frozen=True)
class Reservation:
    """A worst-case amount held in one or more (scope, period) buckets until settled.
    ``waited``: seconds the reservation waited for calls in flight to settle."""

    id: str
    buckets: tuple[tuple[str, str], ...]
    amount: float
    waited: float = field(default=0.0, compare=False)


class _Signal:
    """Wakes the calls of this process waiting on one ledger storage (threads and asyncio tasks)
    as soon as a reservation there is settled; ``generation`` counts settles so one that lands
    between a refusal and the wait is not missed."""

    def __init__(self) -> None:
        self.generation = 0
        self._reset()

    def _reset(self) -> None:  # also in a forked child, where another thread may hold the lock
        self._cond = threading.Condition()
        self._futures: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def notify(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()
            futures, self._futures = self._futures, set()
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, seen: int, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a settle happened since ``seen``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.generation != seen, timeout)

    async def await_change(self, seen: int, timeout: float) -> bool:
        """:meth:`wait` for asyncio: the event loop runs on meanwhile."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        with self._cond:
            if self.generation != seen:
                return True
            self._futures.add(entry)
        try:
            await asyncio.wait([entry[1]], timeout=timeout)
        finally:
            with self._cond:
                self._futures.discard(entry)
        return self.generation != seen


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_signals: dict[tuple[str, ...], _Signal] = {}
_signals_lock = threading.Lock()


def _signal_for(*storage: str) -> _Signal:
    """One signal per ledger storage: ledgers of this process opened on the same file (or Redis
    prefix) wake each other's waiting calls."""
    with _signals_lock:
        return _signals.setdefault(storage, _Signal())


class _Waiter:
    """One reservation's wait for calls in flight to settle: when to give up, when to retry."""

    def __init__(self, max_wait: float | None, ttl: float):
        check_number("max_wait", max_wait, allow_zero=True, unit="seconds")
        self.started = time.monotonic()
        self.deadline = None if max_wait is None else self.started + max_wait
        # Nothing announces a dead process's lease lapsing, so retry now and then anyway.
        self.recheck_every = min(_RECHECK, ttl / 4)
        self.next_try = self.started
        self.refusals = 0

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started if self.refusals else 0.0

    def refused(self, error: BudgetExceededError, amount: float) -> None:
        """Raise ``error`` if waiting cannot help (spent alone leaves no room) or time is up."""
        waited = self.waited
        self.refusals += 1
        now = time.monotonic()
        if error.spent + amount > error.limit + _EPSILON or (self.deadline is not None and now >= self.deadline):
            if not waited:
                raise error
            raise error.refined(waited=waited)
        self.next_try = now + self.recheck_every

    def pause(self) -> float | None:
        """Seconds to sleep before looking for a change again; None when it is time to retry."""
        now = time.monotonic()
        until = self.next_try if self.deadline is None else min(self.next_try, self.deadline)
        return None if now >= until else min(_POLL, until - now)


class _Leases:
    """The reservations of this process's calls in flight, renewed by one daemon thread: a
    ledger's every third of its ``reservation_ttl``, so a live call keeps its lease however long
    it runs, and a dead process's lapse within one TTL."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:  # also in a forked child: the parent's calls and thread are not its own
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._held: dict[Ledger, dict[str, Reservation]] = {}
        self._due: dict[Ledger, float] = {}
        self._thread: threading.Thread | None = None

    def hold(self, ledger: Ledger, reservation: Reservation) -> None:
        with self._lock:
            held = self._held.setdefault(ledger, {})
            first = not held
            if first:
                self._due[ledger] = time.monotonic() + ledger.reservation_ttl / 3
            held[reservation.id] = reservation
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlflow-lite-budget-leases", daemon=True)
                self._thread.start()
        if first:
            self._wake.set()  # this ledger may be due before the thread would wake

    def drop(self, ledger: Ledger, reservation: Reservation) -> None:
        with self._lock:
            held = self._held.get(ledger)
            if held is not None and held.pop(reservation.id, None) is not None and not held:
                del self._held[ledger], self._due[ledger]

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                now = time.monotonic()
                due = [(ledger, list(held.values())) for ledger, held in self._held.items() if self._due[ledger] <= now]
                for ledger, _ in due:
                    self._due[ledger] = now + ledger.reservation_ttl / 3
                next_due = min(self._due.values(), default=None)
            for ledger, reservations in due:
                try:
                    ledger._renew(reservations)
                except Exception as exc:  # the lease runs on: retried a third of a TTL later
                    _logger.warning(
                        "Budget: could not renew %d reservation(s) in %r: %s", len(reservations), ledger, exc
                    )
            self._wake.wait(None if next_due is None else max(0.0, next_due - time.monotonic()))


_leases = _Leases()


def _after_fork() -> None:
    _leases._reset()
    for signal in _signals.values():
        signal._reset()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork)


class _Try:
    """A step of :meth:`Ledger._reserving`: one atomic check-and-reserve."""

    def __init__(self, buckets: Buckets, reservation: Reservation):
        self.buckets = buckets
        self.reservation = reservation


class _Wait:
    """A step of :meth:`Ledger._reserving`: wait up to ``pause`` seconds for a settle here
    (since ``seen``) or a change by another process (since ``version``); replies True if one came."""

    def __init__(self, seen: int, pause: float, version: Any):
        self.seen = seen
        self.pause = pause
        self.version = version


_Step = _Try | _Wait


class Ledger:
    """The budget ledger on ``storage`` (a :class:`~mlflow_lite_plugin.storage.sqlite.SQLiteStorage`
    or :class:`~mlflow_lite_plugin.storage.redis.RedisStorage`). A reservation is a lease of
    ``reservation_ttl`` seconds: one a process stopped renewing is ignored (and deleted) after it."""

    def __init__(self, storage: SQLiteStorage | RedisStorage, *, reservation_ttl: float = DEFAULT_RESERVATION_TTL):
        check_number("reservation_ttl", reservation_ttl, unit="seconds")
        self.storage = storage
        self.reservation_ttl = float(reservation_ttl)
        self._signal = _signal_for(*storage.identity)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.storage!r})"

    def reserve(
        self, scope_key: str, period_key: str, amount: float, limit: float, *, max_wait: float | None = 0.0
    ) -> Reservation:
        """Hold ``amount`` USD in one bucket if spent + reserved + amount <= ``limit``; else raise
        :class:`BudgetExceededError`. Returns the :class:`Reservation` (``.id``) to settle."""
        return self.reserve_many([(scope_key, period_key, limit)], amount, max_wait=max_wait)

    def reserve_many(
        self, buckets: Buckets, amount: float, *, max_wait: float | None = 0.0, lease: bool = False
    ) -> Reservation:
        """Reserve ``amount`` in every (scope, period, limit) bucket, or in none (raises
        :class:`BudgetExceededError`). When only reservations stand in the way (spent + amount
        fits every limit), wait up to ``max_wait`` seconds (None: no bound) for them to settle,
        retrying atomically. ``lease=True``: this process renews the reservation until it is
        settled (a call in flight); otherwise it lapses after ``reservation_ttl`` seconds."""
        return drive(self._reserving(buckets, amount, max_wait, lease), self._step)

    async def areserve_many(
        self, buckets: Buckets, amount: float, *, max_wait: float | None = 0.0, lease: bool = False
    ) -> Reservation:
        """:meth:`reserve_many` for asyncio: the storage's async twins, and waiting does not
        block the event loop."""
        return await adrive(self._reserving(buckets, amount, max_wait, lease), self._astep)

    def _step(self, step: _Step) -> Any:
        if isinstance(step, _Try):
            return self.storage.ledger_reserve(
                step.buckets, step.reservation.id, step.reservation.amount, self.reservation_ttl
            )
        return self._signal.wait(step.seen, step.pause) or self.storage.ledger_version() != step.version

    async def _astep(self, step: _Step) -> Any:
        if isinstance(step, _Try):
            return await self.storage.aledger_reserve(
                step.buckets, step.reservation.id, step.reservation.amount, self.reservation_ttl
            )
        return await self._signal.await_change(step.seen, step.pause) or (
            await self.storage.aledger_version() != step.version
        )

    def _reserving(
        self, buckets: Buckets, amount: float, max_wait: float | None, lease: bool
    ) -> Generator[_Step, Any, Reservation]:
        """The one implementation of a reservation and its wait, as the steps its sync and async
        drivers run."""
        amount, waiter = self._check_amount(amount), _Waiter(max_wait, self.reservation_ttl)
        scopes = tuple((scope, period) for scope, period, _ in buckets)
        while True:
            seen = self._signal.generation
            reservation = Reservation(uuid.uuid4().hex, scopes, amount)
            miss = yield _Try(buckets, reservation)
            if miss is None:
                if lease:
                    _leases.hold(self, reservation)
                return replace(reservation, waited=waiter.waited) if waiter.refusals else reservation
            index, spent, reserved, version = miss
            scope_key, period_key, limit = buckets[index]
            refusal = BudgetExceededError(
                spent=spent, reserved=reserved, limit=limit, requested=amount, scope=scope_key, period_key=period_key
            )
            waiter.refused(refusal, amount)
            while (pause := waiter.pause()) is not None:
                if (yield _Wait(seen, pause, version)):
                    break

    def settle(self, reservation: Reservation, actual: float) -> list[float]:
        """Replace the reservation by ``actual`` USD spent; returns each bucket's new spend."""
        _leases.drop(self, reservation)  # first: a settle that fails must not renew it forever
        totals = self.storage.ledger_settle(reservation.id, reservation.buckets, self._check_amount(actual))
        self._signal.notify()
        return totals

    async def asettle(self, reservation: Reservation, actual: float) -> list[float]:
        """:meth:`settle` through the storage's async twin."""
        _leases.drop(self, reservation)
        totals = await self.storage.aledger_settle(reservation.id, reservation.buckets, self._check_amount(actual))
        self._signal.notify()
        return totals

    def release(self, reservation: Reservation) -> list[float]:
        """Drop a reservation without spending (the call failed before anything was paid)."""
        return self.settle(reservation, 0.0)

    def spent(self, scope_key: str, period_key: str) -> float:
        return self.storage.ledger_bucket(scope_key, period_key, self.reservation_ttl)[0]

    def reserved(self, scope_key: str, period_key: str) -> float:
        return self.storage.ledger_bucket(scope_key, period_key, self.reservation_ttl)[1]

    def mark_alert_fired(self, scope_key: str, period_key: str, threshold: float) -> bool:
        """Record that the ``threshold`` alert fired for this bucket; True only the first time."""
        return self.storage.ledger_mark(scope_key, period_key, threshold)

    def close(self) -> None:
        self.storage.close()

    def _renew(self, reservations: Sequence[Reservation]) -> None:
        """Restart the leases of these reservations (those already settled or lapsed stay gone)."""
        buckets = sorted({bucket for r in reservations for bucket in r.buckets})
        self.storage.ledger_renew([r.id for r in reservations], buckets)

    @staticmethod
    def _check_amount(amount: float) -> float:
        if amount is None:
            raise ArgumentError("amount", "is required (USD)")
        check_number("amount", amount, allow_zero=True, unit="USD")
        return float(amount)


def default_ledger_path() -> Path:
    """``$MLFLOW_LITE_BUDGET_PATH``, else ``~/.mlflow-lite/budget.db``: one file per user and host,
    whatever the working directory, so every process of the host shares the same spend."""
    configured = os.environ.get(DEFAULT_LEDGER_PATH_ENV)
    return Path(configured) if configured else Path.home() / ".mlflow-lite" / "budget.db"


class SQLiteLedger(Ledger):
    """A ledger in a SQLite file (``path``, else :func:`default_ledger_path`) shared by the
    processes of one host; survives restarts. Other processes' settles are seen through
    ``PRAGMA data_version`` (polled)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, reservation_ttl: float = DEFAULT_RESERVATION_TTL):
        check_number("reservation_ttl", reservation_ttl, unit="seconds")
        self.path = Path(path) if path is not None else default_ledger_path()
        storage = SQLiteStorage(self.path)
        storage.prepare("ledger")
        super().__init__(storage, reservation_ttl=reservation_ttl)

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"


class RedisLedger(Ledger):
    """A ledger in Redis, shared by every host that points at it. Timestamps are Redis server
    time, so hosts with skewed clocks agree on which reservations are stale; other processes'
    settles are seen through the ``changes`` counter (polled)."""

    def __init__(
        self, url: str, *, prefix: str = "mlflow_lite:{budget}:", reservation_ttl: float = DEFAULT_RESERVATION_TTL
    ):
        check_number("reservation_ttl", reservation_ttl, unit="seconds")
        self.url = url
        self.prefix = prefix
        super().__init__(RedisStorage(url, prefix=prefix), reservation_ttl=reservation_ttl)

    def __repr__(self) -> str:
        return f"RedisLedger({self.url!r})"


def make_ledger(
    backend: str = "sqlite",
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    reservation_ttl: float = DEFAULT_RESERVATION_TTL,
) -> SQLiteLedger | RedisLedger:
    if backend == "sqlite":
        return SQLiteLedger(path, reservation_ttl=reservation_ttl)
    if backend == "redis":
        if not url:
            raise ArgumentError("url", "backend='redis' needs url='redis://host:port/db'")
        return RedisLedger(url, reservation_ttl=reservation_ttl)
    raise ArgumentError("backend", f"must be 'sqlite' or 'redis', got {backend!r}")
