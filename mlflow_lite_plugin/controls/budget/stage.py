"""Spending limits: a shared ledger, reserve-then-settle, refusal before the provider is called.

    ml.set_budget(daily_limit=10.0)                  # $10/day (UTC midnight to midnight)
    ml.set_alert(threshold=0.80, email="you@company.com")
    ml.budget_status()                               # spent, reserved, remaining, limit, resets_at

How a call is accounted (the ``budget`` stage, order 100, before the caches and the provider):

1. ``before``: the call's *worst-case* cost is reserved atomically in the ledger (see
   :meth:`BudgetStage.worst_case`): the prompt (images, tool and response-format definitions
   included) plus every completion it may return (``n``, ``best_of``, ``candidate_count``...)
   of ``max_tokens`` each (the largest of ``max_tokens``/``max_completion_tokens``/...,
   else the model's ``max_output_tokens`` from LiteLLM's price map, else
   :data:`DEFAULT_MAX_OUTPUT_TOKENS`), for every answer a validation re-ask may add, each at the
   highest rate of the dearest model among the primary and its fallbacks. If spent + this
   reservation would pass a limit, the call is refused at once with :class:`BudgetExceededError`
   and the provider is never called. If only
   the reservations of calls in flight stand in the way, the call waits (up to ``max_wait``
   seconds) for them to settle, since they usually cost less than their worst case, then tries
   again; past ``max_wait`` it is refused. Check and reserve are one transaction (SQLite
   ``BEGIN IMMEDIATE``, Redis Lua script), so threads, processes and hosts sharing a ledger
   cannot overspend together.
2. ``after`` (every answer, also cache hits and partial streams): the reservation is replaced by
   the actual cost of the call (``call.spent``; $0 for a cache hit). Alerts whose threshold the
   period's spend crossed fire, once per period per threshold, across processes.
3. ``on_error``: the reservation is released; attempts that were answered (and paid) before the
   failure still count, as does the streamed part of a stream that broke; a failure before any
   answer costs $0. The trace's ``mlflow_lite.cost_usd`` is the same figure.

Periods are calendar days (and/or months) in ``timezone`` (UTC by default): a call is charged to
the period in which it was reserved. Scopes: one budget for everything (``"global"``), one per
primary model (``"model"``), or one per value of a request tag (``"tag:user"``: each user has the
limit; calls without the tag share the ``"(untagged)"`` bucket).

Models without a known price: by default a budget *refuses* them (:class:`UnpricedModelError`),
because their cost cannot be bounded nor recorded, and a limit that silently lets unbounded
spending through is not a limit. Free local runtimes (ollama, ...) and ``lite/echo`` are priced
at $0, so they are not affected; set a price with ``set_model_price`` or pass
``on_unknown_price="allow"`` to let them through (warned once per model, counted as $0, marked on
the trace).

The ledger fails closed: if it cannot be reached before a call, the call is refused with
:class:`BudgetLedgerError`. Settling after an answer never fails the call (the error is logged).
A call's reservation is a lease of ``reservation_ttl`` seconds (60 by default) that one
background thread per process renews every third of it while the call runs, however long that
is. A process that died stops renewing, so its reservations are ignored (and deleted) within
``reservation_ttl``; a settle that arrives later still records the cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mlflow_lite_plugin.core import deadline
from mlflow_lite_plugin.storage.sqlite import enable_wal
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError, TracedError, check_number
from mlflow_lite_plugin.core.pipeline import Call, Stage
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.controls.budget.alerts import Alert
    from mlflow_lite_plugin.core.model_names import ModelRef
    from mlflow_lite_plugin.core.pipeline import Pipeline
    from mlflow_lite_plugin.core.response import Response

_logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_TOKENS = 4096  # when neither the call nor LiteLLM's price map bounds the output
DEFAULT_RESERVATION_TTL = 60.0  # seconds: a lease not renewed for this long is abandoned
# Seconds a call waits for the reservations of calls in flight to settle before it is refused:
# long enough for a few LLM answers to come back, short enough not to hang a served request.
DEFAULT_MAX_WAIT = 30.0
_POLL = 0.1  # seconds between looks for other processes' settles while waiting
_RECHECK = 1.0  # seconds: at most this long between retries (nothing announces a lapsed lease)
DEFAULT_LEDGER_PATH_ENV = "MLFLOW_LITE_BUDGET_PATH"
_EPSILON = 1e-9  # USD: float sums of many small costs must not refuse a call that fits exactly

PERIODS = ("daily", "monthly")
UNTAGGED = "(untagged)"


# -- errors --


class BudgetExceededError(TracedError):
    """A call was refused before the provider was called: it could push spend past a limit.

    Attributes: ``spent`` and ``reserved`` (USD, in the period, ``reserved`` by calls in
    flight), ``limit``, ``requested`` (this call's worst-case cost), ``period`` ("daily" or
    "monthly"), ``period_key``, ``scope``, ``resets_at`` (aware datetime, or None when raised
    by a ledger directly) and ``waited`` (seconds spent waiting for calls in flight to settle).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        spent: float = 0.0,
        reserved: float = 0.0,
        limit: float = 0.0,
        requested: float = 0.0,
        scope: str = "global",
        period: str | None = None,
        period_key: str | None = None,
        resets_at: datetime | None = None,
        waited: float = 0.0,
    ):
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.requested = requested
        self.scope = scope
        self.period = period
        self.period_key = period_key
        self.resets_at = resets_at
        self.waited = waited
        super().__init__(message or self._default_message())

    def _default_message(self) -> str:
        period = f"{self.period} budget" if self.period else f"budget {self.period_key or ''}".rstrip()
        reset = f"; it resets at {self.resets_at.isoformat()}" if self.resets_at is not None else ""
        waited = f" (after waiting {self.waited:.1f}s for them to settle)" if self.waited > 0 else ""
        return (
            f"Budget exceeded ({self.scope}): this call could cost up to {usd(self.requested)}, but the "
            f"{period} of {usd(self.limit)} has {usd(self.spent)} spent and {usd(self.reserved)} reserved "
            f"by calls in flight{waited}{reset}."
        )


class UnpricedModelError(BudgetExceededError):
    """A budget is set and the model has no known price, so its cost cannot be bounded.
    Set one with ``set_model_price`` or configure the budget with ``on_unknown_price="allow"``."""


class BudgetLedgerError(MlflowLiteError):
    """The budget ledger could not be read or written before a call: the call is refused."""


# -- configuration --


@dataclass(frozen=True)
class Budget:
    """What to enforce: USD limits per calendar day and/or month, in ``timezone``, per ``scope``.

    ``scope``: "global" (one budget), "model" (one per primary model) or "tag:<name>" (one per
    value of request tag ``<name>``, e.g. ``tags={"user": "alice"}``).
    ``on_unknown_price``: "refuse" (default) or "allow" (counted as $0, warned).
    ``max_wait``: seconds a call may wait for calls in flight to settle when only their
    reservations stand in the way (0: refuse at once; None: wait as long as they take).
    """

    daily_limit: float | None = None
    monthly_limit: float | None = None
    timezone: str = "UTC"
    scope: str = "global"
    on_unknown_price: str = "refuse"
    max_wait: float | None = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        for name in ("daily_limit", "monthly_limit"):
            check_number(name, getattr(self, name), unit="USD")
        check_number("max_wait", self.max_wait, allow_zero=True, unit="seconds")
        if self.daily_limit is None and self.monthly_limit is None:
            raise ArgumentError("daily_limit", "give daily_limit= and/or monthly_limit= (USD)")
        if not isinstance(self.timezone, str):
            raise ArgumentError("timezone", f"must be an IANA time zone name such as 'UTC', got {self.timezone!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ArgumentError(
                "timezone", f"unknown time zone {self.timezone!r} (use an IANA name such as 'Europe/Paris')"
            ) from exc
        if not isinstance(self.scope, str) or not (
            self.scope in ("global", "model") or re.fullmatch(r"tag:\S+", self.scope)
        ):
            raise ArgumentError("scope", f"must be 'global', 'model' or 'tag:<name>', got {self.scope!r}")
        if self.on_unknown_price not in ("refuse", "allow"):
            raise ArgumentError("on_unknown_price", f"must be 'refuse' or 'allow', got {self.on_unknown_price!r}")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def limits(self) -> list[tuple[str, float]]:
        """(period, limit) pairs, daily first."""
        pairs = [("daily", self.daily_limit), ("monthly", self.monthly_limit)]
        return [(period, float(limit)) for period, limit in pairs if limit is not None]


@dataclass(frozen=True)
class Period:
    """One calendar period in a time zone: its ledger key, start and end (aware datetimes)."""

    name: str  # "daily" or "monthly"
    key: str  # "daily:2024-05-01@UTC"
    start: datetime
    end: datetime


def current_period(name: str, now: datetime, zone: ZoneInfo) -> Period:
    """The ``name`` ("daily"/"monthly") period containing ``now`` in ``zone``."""
    if now.tzinfo is None:
        raise ArgumentError("clock", "must return timezone-aware datetimes (e.g. datetime.now(timezone.utc))")
    local = now.astimezone(zone)
    if name == "daily":
        start = datetime(local.year, local.month, local.day)
        end = start + timedelta(days=1)
        label = f"{start:%Y-%m-%d}"
    elif name == "monthly":
        start = datetime(local.year, local.month, 1)
        end = datetime(local.year + 1, 1, 1) if local.month == 12 else datetime(local.year, local.month + 1, 1)
        label = f"{start:%Y-%m}"
    else:
        raise ArgumentError("period", f"must be 'daily' or 'monthly', got {name!r}")
    # Wall-clock midnight in the zone; normalised through UTC so a DST gap cannot shift it.
    start_at = start.replace(tzinfo=zone).astimezone(dt_timezone.utc).astimezone(zone)
    end_at = end.replace(tzinfo=zone).astimezone(dt_timezone.utc).astimezone(zone)
    return Period(name, f"{name}:{label}@{zone.key}", start_at, end_at)


def usd(amount: float) -> str:
    """$10.00, $9.9951, $0.000012: at least cents, up to 6 decimals, no trailing zeros past cents."""
    text = f"{amount:,.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"${whole}.{decimals.ljust(2, '0')}"


# -- ledgers --


@dataclass(frozen=True)
class Reservation:
    """A worst-case amount held in one or more (scope, period) buckets until settled.
    ``waited``: seconds the reservation waited for calls in flight to settle."""

    id: str
    buckets: tuple[tuple[str, str], ...]
    amount: float
    waited: float = field(default=0.0, compare=False)


class Ledger(Protocol):
    def reserve_many(
        self,
        buckets: Sequence[tuple[str, str, float]],
        amount: float,
        *,
        max_wait: float | None = 0.0,
        lease: bool = False,
    ) -> Reservation: ...

    async def areserve_many(
        self,
        buckets: Sequence[tuple[str, str, float]],
        amount: float,
        *,
        max_wait: float | None = 0.0,
        lease: bool = False,
    ) -> Reservation: ...

    def settle(self, reservation: Reservation, actual: float) -> list[float]: ...

    def release(self, reservation: Reservation) -> list[float]: ...

    def spent(self, scope_key: str, period_key: str) -> float: ...

    def reserved(self, scope_key: str, period_key: str) -> float: ...

    def mark_alert_fired(self, scope_key: str, period_key: str, threshold: float) -> bool: ...


class _Miss(NamedTuple):
    """A reservation that did not fit, and the ledger's change counter when it was checked."""

    error: BudgetExceededError
    version: Any


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
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that event loop is closed
                pass

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
            raise BudgetExceededError(
                spent=error.spent,
                reserved=error.reserved,
                limit=error.limit,
                requested=error.requested,
                scope=error.scope,
                period_key=error.period_key,
                waited=waited,
            )
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
        self._held: dict[_LedgerBase, dict[str, Reservation]] = {}
        self._due: dict[_LedgerBase, float] = {}
        self._thread: threading.Thread | None = None

    def hold(self, ledger: _LedgerBase, reservation: Reservation) -> None:
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

    def drop(self, ledger: _LedgerBase, reservation: Reservation) -> None:
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


class _LedgerBase:
    reservation_ttl: float
    _signal: _Signal

    def reserve(
        self, scope_key: str, period_key: str, amount: float, limit: float, *, max_wait: float | None = 0.0
    ) -> Reservation:
        """Hold ``amount`` USD in one bucket if spent + reserved + amount <= ``limit``; else raise
        :class:`BudgetExceededError`. Returns the :class:`Reservation` (``.id``) to settle."""
        return self.reserve_many([(scope_key, period_key, limit)], amount, max_wait=max_wait)

    def reserve_many(
        self,
        buckets: Sequence[tuple[str, str, float]],
        amount: float,
        *,
        max_wait: float | None = 0.0,
        lease: bool = False,
    ) -> Reservation:
        """Reserve ``amount`` in every (scope, period, limit) bucket, or in none (raises
        :class:`BudgetExceededError`). When only reservations stand in the way (spent + amount
        fits every limit), wait up to ``max_wait`` seconds (None: no bound) for them to settle,
        retrying atomically. ``lease=True``: this process renews the reservation until it is
        settled (a call in flight); otherwise it lapses after ``reservation_ttl`` seconds."""
        amount, waiter = self._check_amount(amount), _Waiter(max_wait, self.reservation_ttl)
        while True:
            seen = self._signal.generation
            outcome = self._try_reserve(buckets, amount)
            if isinstance(outcome, Reservation):
                return self._hold(outcome, waiter, lease)
            waiter.refused(outcome.error, amount)
            while (pause := waiter.pause()) is not None:
                if self._signal.wait(seen, pause) or self._version() != outcome.version:
                    break

    async def areserve_many(
        self,
        buckets: Sequence[tuple[str, str, float]],
        amount: float,
        *,
        max_wait: float | None = 0.0,
        lease: bool = False,
    ) -> Reservation:
        """:meth:`reserve_many` for asyncio: waiting does not block the event loop."""
        amount, waiter = self._check_amount(amount), _Waiter(max_wait, self.reservation_ttl)
        while True:
            seen = self._signal.generation
            outcome = self._try_reserve(buckets, amount)
            if isinstance(outcome, Reservation):
                return self._hold(outcome, waiter, lease)
            waiter.refused(outcome.error, amount)
            while (pause := waiter.pause()) is not None:
                if await self._signal.await_change(seen, pause) or self._version() != outcome.version:
                    break

    def _hold(self, reservation: Reservation, waiter: _Waiter, lease: bool) -> Reservation:
        if lease:
            _leases.hold(self, reservation)
        return replace(reservation, waited=waiter.waited) if waiter.refusals else reservation

    def settle(self, reservation: Reservation, actual: float) -> list[float]:
        """Replace the reservation by ``actual`` USD spent; returns each bucket's new spend."""
        _leases.drop(self, reservation)  # first: a settle that fails must not renew it forever
        totals = self._apply_settle(reservation, self._check_amount(actual))
        self._signal.notify()
        return totals

    def release(self, reservation: Reservation) -> list[float]:
        """Drop a reservation without spending (the call failed before anything was paid)."""
        return self.settle(reservation, 0.0)

    # -- what each backend implements --

    def _try_reserve(self, buckets: Sequence[tuple[str, str, float]], amount: float) -> Reservation | _Miss:
        """One atomic check-and-reserve; on a miss, the refusal names a bucket whose spend alone
        leaves no room if there is one (waiting cannot help there)."""
        raise NotImplementedError

    def _apply_settle(self, reservation: Reservation, actual: float) -> list[float]:
        raise NotImplementedError

    def _version(self) -> Any:
        """A value that changes when another process changes the ledger (cheap: polled)."""
        raise NotImplementedError

    def _renew(self, reservations: Sequence[Reservation]) -> None:
        """Restart the leases of these reservations (those already settled or lapsed stay gone)."""
        raise NotImplementedError

    @staticmethod
    def _check_amount(amount: float) -> float:
        if amount is None:
            raise ArgumentError("amount", "is required (USD)")
        check_number("amount", amount, allow_zero=True, unit="USD")
        return float(amount)


def _refused(bucket: tuple[str, str, float], spent: float, reserved: float, amount: float) -> BudgetExceededError:
    scope_key, period_key, limit = bucket
    return BudgetExceededError(
        spent=spent, reserved=reserved, limit=limit, requested=amount, scope=scope_key, period_key=period_key
    )


def _fits(spent: float, reserved: float, amount: float, limit: float) -> bool:
    """A $0 reservation always fits (it cannot push spend anywhere)."""
    return amount <= 0 or spent + reserved + amount <= limit + _EPSILON


def default_ledger_path() -> Path:
    """``$MLFLOW_LITE_BUDGET_PATH``, else ``~/.mlflow-lite/budget.db``: one file per user and host,
    whatever the working directory, so every process of the host shares the same spend."""
    configured = os.environ.get(DEFAULT_LEDGER_PATH_ENV)
    return Path(configured) if configured else Path.home() / ".mlflow-lite" / "budget.db"


class SQLiteLedger(_LedgerBase):
    """A SQLite file shared by the processes of one host; survives restarts.

    Check-and-reserve is one ``BEGIN IMMEDIATE`` transaction (the database write lock is taken
    before reading), so no two processes can both see room for the last dollar. WAL mode, a busy
    timeout, and one connection per process guarded by a lock (threads of a process queue on the
    lock instead of polling the file lock). A call waiting for room is woken by settles in its
    process at once, and sees other processes' through ``PRAGMA data_version`` (polled).
    ``budget_reservations.created_at`` is when the lease was last renewed (the column keeps its
    first name so ledger files written before leases still open).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, reservation_ttl: float = DEFAULT_RESERVATION_TTL):
        check_number("reservation_ttl", reservation_ttl, unit="seconds")
        self.path = Path(path) if path is not None else default_ledger_path()
        self.reservation_ttl = float(reservation_ttl)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._signal = _signal_for("sqlite", os.path.realpath(self.path))
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._pid = -1
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS budget_spend (scope TEXT NOT NULL, period TEXT NOT NULL, "
                "spent REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (scope, period))"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS budget_reservations (id TEXT NOT NULL, scope TEXT NOT NULL, "
                "period TEXT NOT NULL, amount REAL NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (id, scope, period))"
            )
            db.execute("CREATE INDEX IF NOT EXISTS budget_reservations_bucket ON budget_reservations (scope, period)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS budget_alerts (scope TEXT NOT NULL, period TEXT NOT NULL, "
                "threshold REAL NOT NULL, fired_at REAL NOT NULL, PRIMARY KEY (scope, period, threshold))"
            )

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # a forked child opens its own
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=30000")
            enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._db, self._pid = db, os.getpid()
        return self._db

    class _Tx:
        def __init__(self, ledger: SQLiteLedger):
            self.ledger = ledger

        def __enter__(self) -> sqlite3.Connection:
            self.ledger._lock.acquire()
            try:
                self.db = self.ledger._connect()
                self.db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.ledger._lock.release()
                raise
            return self.db

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
            finally:
                self.ledger._lock.release()

    def _transaction(self) -> SQLiteLedger._Tx:
        return SQLiteLedger._Tx(self)

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("DELETE FROM budget_reservations WHERE created_at < ?", (now - self.reservation_ttl,))

    def _try_reserve(self, buckets: Sequence[tuple[str, str, float]], amount: float) -> Reservation | _Miss:
        reservation = Reservation(uuid.uuid4().hex, tuple((s, p) for s, p, _ in buckets), amount)
        now = time.time()
        with self._transaction() as db:
            self._expire(db, now)
            checks = [(bucket, *self._bucket(db, bucket[0], bucket[1])) for bucket in buckets]
            misses = [check for check in checks if not _fits(check[1], check[2], amount, check[0][2])]
            if misses:
                hard = [check for check in misses if not _fits(check[1], 0.0, amount, check[0][2])]
                bucket, spent, reserved = (hard or misses)[0]
                version = db.execute("PRAGMA data_version").fetchone()[0]
                return _Miss(_refused(bucket, spent, reserved, amount), version)
            db.executemany(
                "INSERT INTO budget_reservations (id, scope, period, amount, created_at) VALUES (?, ?, ?, ?, ?)",
                [(reservation.id, s, p, amount, now) for s, p in reservation.buckets],
            )
        return reservation

    def _version(self) -> int:
        with self._lock:
            return int(self._connect().execute("PRAGMA data_version").fetchone()[0])

    def _renew(self, reservations: Sequence[Reservation]) -> None:
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "UPDATE budget_reservations SET created_at = ? WHERE id = ?", [(now, r.id) for r in reservations]
            )

    def _apply_settle(self, reservation: Reservation, actual: float) -> list[float]:
        now = time.time()
        totals = []
        with self._transaction() as db:
            db.execute("DELETE FROM budget_reservations WHERE id = ?", (reservation.id,))
            for scope, period in reservation.buckets:
                if actual > 0:
                    db.execute(
                        "INSERT INTO budget_spend (scope, period, spent, updated_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (scope, period) DO UPDATE SET spent = spent + excluded.spent, "
                        "updated_at = excluded.updated_at",
                        (scope, period, actual, now),
                    )
                totals.append(self._spent(db, scope, period))
        return totals

    def _spent(self, db: sqlite3.Connection, scope: str, period: str) -> float:
        row = db.execute("SELECT spent FROM budget_spend WHERE scope = ? AND period = ?", (scope, period)).fetchone()
        return float(row[0]) if row else 0.0

    def _bucket(self, db: sqlite3.Connection, scope: str, period: str) -> tuple[float, float]:
        row = db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations "
            "WHERE scope = ? AND period = ? AND created_at >= ?",
            (scope, period, time.time() - self.reservation_ttl),
        ).fetchone()
        return self._spent(db, scope, period), float(row[0])

    def spent(self, scope_key: str, period_key: str) -> float:
        with self._lock:
            return self._spent(self._connect(), scope_key, period_key)

    def reserved(self, scope_key: str, period_key: str) -> float:
        with self._lock:
            return self._bucket(self._connect(), scope_key, period_key)[1]

    def mark_alert_fired(self, scope_key: str, period_key: str, threshold: float) -> bool:
        """Record that the ``threshold`` alert fired for this bucket; True only the first time."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO budget_alerts (scope, period, threshold, fired_at) VALUES (?, ?, ?, ?)",
                (scope_key, period_key, float(threshold), time.time()),
            )
            return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# Redis: every key of the ledger shares the {hash tag}, so the scripts also run on Redis Cluster.
# Per bucket: "spent" (a float string), "res" (hash: reservation id -> amount) and "rests"
# (sorted set: reservation id scored by when its lease was last renewed, in Redis server time);
# per ledger: "changes", a counter every settle bumps, which waiting calls poll.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id, amount, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n, keyttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local hard, soft = nil, nil  -- the first bucket whose spend alone leaves no room, else the first full one
for i = 1, n do
  local sk, hk, zk = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local stale = redis.call('ZRANGEBYSCORE', zk, '-inf', '(' .. tostring(now - ttl))
  for _, sid in ipairs(stale) do
    redis.call('HDEL', hk, sid)
    redis.call('ZREM', zk, sid)
  end
  local spent = tonumber(redis.call('GET', sk) or '0')
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', hk)) do reserved = reserved + tonumber(v) end
  local limit = tonumber(ARGV[5 + i])
  if amount > 0 and spent + reserved + amount > limit + 1e-9 then
    local miss = {0, i, tostring(spent), tostring(reserved)}
    if spent + amount > limit + 1e-9 then hard = hard or miss else soft = soft or miss end
  end
end
local refusal = hard or soft
if refusal then
  refusal[5] = redis.call('GET', KEYS[3 * n + 1]) or '0'
  return refusal
end
for i = 1, n do
  redis.call('HSET', KEYS[3 * i - 1], id, ARGV[2])
  redis.call('ZADD', KEYS[3 * i], now, id)
  redis.call('EXPIRE', KEYS[3 * i - 1], keyttl)
  redis.call('EXPIRE', KEYS[3 * i], keyttl)
end
return {1}
"""

_SETTLE_LUA = """
local id, actual, keyttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local totals = {}
for i = 1, (#KEYS - 1) / 3 do
  local sk, hk, zk = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  redis.call('HDEL', hk, id)
  redis.call('ZREM', zk, id)
  if actual > 0 then
    redis.call('INCRBYFLOAT', sk, ARGV[2])
    redis.call('EXPIRE', sk, keyttl)
  end
  totals[i] = redis.call('GET', sk) or '0'
end
redis.call('INCR', KEYS[#KEYS])
redis.call('EXPIRE', KEYS[#KEYS], keyttl)
return totals
"""

_RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, zk in ipairs(KEYS) do
  for _, id in ipairs(ARGV) do redis.call('ZADD', zk, 'XX', now, id) end
end
return 0
"""

_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local live = redis.call('ZRANGEBYSCORE', KEYS[3], tostring(now - tonumber(ARGV[1])), '+inf')
local reserved = 0
for _, id in ipairs(live) do reserved = reserved + tonumber(redis.call('HGET', KEYS[2], id) or '0') end
return {redis.call('GET', KEYS[1]) or '0', tostring(reserved)}
"""


class RedisLedger(_LedgerBase):
    """A ledger in Redis, shared by every host that points at it. Check-and-reserve and settle
    are Lua scripts (EVALSHA, EVAL on a cache miss): Redis runs each atomically. Timestamps are
    Redis server time, so hosts with skewed clocks agree on which reservations are stale. A call
    waiting for room is woken by settles in its process at once, and polls the ``changes``
    counter for other processes' and hosts'."""

    KEY_TTL = 100 * 24 * 3600  # seconds: longer than any period, refreshed on every write

    def __init__(
        self, url: str, *, prefix: str = "mlflow_lite:{budget}:", reservation_ttl: float = DEFAULT_RESERVATION_TTL
    ):
        try:
            import redis
        except ImportError as exc:
            raise ArgumentError(
                "backend", "backend='redis' needs the redis package: pip install 'mlflow-lite-plugin[redis]'"
            ) from exc
        check_number("reservation_ttl", reservation_ttl, unit="seconds")
        self.url = url
        self.prefix = prefix
        self.reservation_ttl = float(reservation_ttl)
        self._redis = redis.Redis.from_url(url)
        self._redis.ping()  # fail at configuration time, not on the first call
        self._reserve = self._redis.register_script(_RESERVE_LUA)
        self._settle = self._redis.register_script(_SETTLE_LUA)
        self._bucket = self._redis.register_script(_BUCKET_LUA)
        self._renew_script = self._redis.register_script(_RENEW_LUA)
        self._changes = f"{prefix}changes"
        self._signal = _signal_for("redis", url, prefix)

    def __repr__(self) -> str:
        return f"RedisLedger({self.url!r})"

    def _keys(self, scope: str, period: str) -> list[str]:
        base = f"{self.prefix}{scope}|{period}"
        return [f"{base}:spent", f"{base}:res", f"{base}:rests"]

    def _try_reserve(self, buckets: Sequence[tuple[str, str, float]], amount: float) -> Reservation | _Miss:
        reservation = Reservation(uuid.uuid4().hex, tuple((s, p) for s, p, _ in buckets), amount)
        keys = [key for s, p, _ in buckets for key in self._keys(s, p)] + [self._changes]
        args = [reservation.id, repr(amount), repr(self.reservation_ttl), len(buckets), self.KEY_TTL]
        result = self._reserve(keys=keys, args=args + [repr(float(limit)) for _, _, limit in buckets])
        if int(result[0]) != 1:
            bucket = buckets[int(result[1]) - 1]
            return _Miss(_refused(bucket, float(result[2]), float(result[3]), amount), int(result[4]))
        return reservation

    def _version(self) -> int:
        return int(self._redis.get(self._changes) or 0)

    def _renew(self, reservations: Sequence[Reservation]) -> None:
        keys = sorted({self._keys(s, p)[2] for r in reservations for s, p in r.buckets})
        self._renew_script(keys=keys, args=[r.id for r in reservations])

    def _apply_settle(self, reservation: Reservation, actual: float) -> list[float]:
        keys = [key for s, p in reservation.buckets for key in self._keys(s, p)] + [self._changes]
        totals = self._settle(keys=keys, args=[reservation.id, repr(actual), self.KEY_TTL])
        return [float(total) for total in totals]

    def spent(self, scope_key: str, period_key: str) -> float:
        return float(self._redis.get(self._keys(scope_key, period_key)[0]) or 0.0)

    def reserved(self, scope_key: str, period_key: str) -> float:
        return float(self._bucket(keys=self._keys(scope_key, period_key), args=[repr(self.reservation_ttl)])[1])

    def mark_alert_fired(self, scope_key: str, period_key: str, threshold: float) -> bool:
        key = f"{self.prefix}{scope_key}|{period_key}:alert:{float(threshold)!r}"
        return bool(self._redis.set(key, str(time.time()), nx=True, ex=self.KEY_TTL))


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


# -- the pipeline stage --


def _utc_now() -> datetime:
    return datetime.now(dt_timezone.utc)


# Upper bound of the tokens a re-ask adds besides the answer it quotes and the reply
# instruction: the message's own wording and the fixed text of its errors.
REASK_PROMPT_TOKENS = 512
# Tokens a provider may wrap around each tool/function definition besides its JSON text.
DEFINITION_OVERHEAD_TOKENS = 16

# Parameters that make a provider answer, and bill, several completions (OpenAI n and best_of,
# Gemini candidate_count, Cohere num_generations); the largest given counts.
CHOICE_PARAMS = ("n", "best_of", "candidate_count", "num_generations")
# Parameters that bound each completion's tokens (OpenAI, Anthropic, Gemini, Hugging Face, Ollama).
OUTPUT_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens", "num_predict")
# Parameters whose content the provider adds to the prompt.
DEFINITION_PARAMS = ("tools", "functions", "response_format", "tool_choice")


def _param_values(call: Call, names: Sequence[str]) -> list[tuple[str, Any]]:
    """(name, value) of the given parameters, at the top level and in the dicts LiteLLM
    forwards as they are (``extra_body``, Gemini's ``generation_config``, Ollama's ``options``)."""
    params = call.request.params
    scopes = [params] + [
        params[key] for key in ("extra_body", "generation_config", "generationConfig", "options")
        if isinstance(params.get(key), dict)
    ]
    return [(name, scope[name]) for scope in scopes for name in names if scope.get(name) is not None]


def _count(value: Any) -> int | None:
    """A number >= 1 rounded up, None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        return None
    try:
        return math.ceil(value)
    except (OverflowError, ValueError):  # infinity
        return None


def _choices(call: Call) -> int:
    """How many completions the provider bills for one attempt (``n=16``: 16)."""
    counts = [1]
    for name, value in _param_values(call, CHOICE_PARAMS):
        count = _count(value)
        if count is None:
            # A budget cannot bound what it cannot read: refuse before the provider is called.
            raise ArgumentError(name, f"must be a whole number of completions >= 1, got {value!r}")
        counts.append(count)
    return max(counts)


def _max_output_tokens(call: Call, model: ModelRef) -> int:
    """The most tokens one completion may have: the largest limit the call gives, else the
    model's output limit."""
    given = [count for _, value in _param_values(call, OUTPUT_PARAMS) if (count := _count(value))]
    return max(given) if given else _model_output_limit(model.name)


def _rate_conditions(call: Call) -> dict[str, Any]:
    """What decides which of a model's conditional rates can apply (``Pricing.highest_price``):
    the service tier asked for, prompt-cache writes (``cache_control`` anywhere in the request)
    and audio (``modalities``/``audio`` parameters or ``input_audio`` parts)."""
    params = call.request.params
    tier = params.get("service_tier")
    text = json.dumps([call.request.messages, params], default=str)
    return {
        "service_tier": tier if isinstance(tier, str) else None,
        "cache_writes": "cache_control" in text,
        "audio": "audio" in params or "input_audio" in text or "audio" in str(params.get("modalities", "")),
    }


def _prompt_tokens(call: Call, model: ModelRef) -> int:
    """Prompt tokens with ``model``'s tokenizer (a fallback's may count more), images included,
    plus the tool, function and response-format definitions the provider adds to the prompt."""
    tokens = call.prompt_tokens if model == call.models[0] else call.pricing.count_tokens(model, call.request.messages)
    for _, value in _param_values(call, DEFINITION_PARAMS):
        if isinstance(value, str):  # tool_choice="auto"
            continue
        if callable(getattr(value, "model_json_schema", None)):  # response_format=<a pydantic model>
            value = value.model_json_schema()
        items = len(value) if isinstance(value, (list, tuple)) else 1
        text = json.dumps(value, default=str)
        tokens += call.pricing.count_tokens(model, text) + DEFINITION_OVERHEAD_TOKENS * items
    return tokens


def _reask_tokens(call: Call, model: ModelRef, out: int) -> int:
    """The most a re-ask adds to the prompt: the quoted answer, the reply instruction (a JSON
    Schema is spelled out in it) and the errors, each of which may quote the answer and the
    schema (up to the validator's listed-error cap for schema errors)."""
    validator = call.request.validator
    if validator is None:
        return 0
    from mlflow_lite_plugin.controls.validation.rules import _MAX_SCHEMA_ERRORS, ValidationResult

    instruction = call.pricing.count_tokens(model, validator.repair_prompt(ValidationResult(False, [], [])))
    quoting = _MAX_SCHEMA_ERRORS if "schema" in validator.describe() else 1
    return out + instruction + REASK_PROMPT_TOKENS + quoting * (out + instruction)


_output_limits: dict[str, int] = {}


def _model_output_limit(name: str) -> int:
    """``max_output_tokens`` of a model in LiteLLM's (local) price map."""
    if name not in _output_limits:
        from mlflow_lite_plugin.core.model_names import litellm_module

        limit = None
        try:
            info = litellm_module().get_model_info(model=name)
            limit = info.get("max_output_tokens") or info.get("max_tokens")
        except Exception:
            pass
        known = isinstance(limit, (int, float)) and limit > 0
        _output_limits[name] = int(limit) if known else DEFAULT_MAX_OUTPUT_TOKENS
    return _output_limits[name]


@dataclass
class _Held:
    reservation: Reservation
    scope: str
    periods: list[tuple[Period, float]]  # (period, limit)


class BudgetStage(Stage):
    """Refuses calls that could pass the budget; records what calls cost in a shared ledger.

    ``clock`` returns the current aware datetime (injectable for tests). ``alerts`` are
    :class:`~mlflow_lite_plugin.controls.budget.alerts.Alert` configs, one per threshold.
    """

    name = "budget"
    order = 420  # after the caches (a hit is free even when the budget is spent), before rate limits

    def __init__(
        self,
        budget: Budget,
        ledger: Ledger | None = None,
        *,
        alerts: Sequence[Alert] = (),
        clock: Callable[[], datetime] | None = None,
    ):
        if not isinstance(budget, Budget):
            raise ArgumentError("budget", f"must be an ml Budget, got {type(budget).__name__}")
        self.budget = budget
        self.ledger: Ledger = ledger if ledger is not None else SQLiteLedger()
        self.alerts: list[Alert] = []
        for alert in alerts:
            self.add_alert(alert)
        self.clock = clock or _utc_now
        self._unpriced_warned: set[str] = set()

    # -- configuration --

    def add_alert(self, alert: Alert) -> None:
        """Add an alert (replacing one with the same threshold)."""
        from mlflow_lite_plugin.controls.budget.alerts import Alert

        if not isinstance(alert, Alert):
            raise ArgumentError("alert", f"must be an Alert, got {type(alert).__name__}")
        others = [a for a in self.alerts if a.threshold != alert.threshold]
        self.alerts = sorted([*others, alert], key=lambda a: a.threshold)

    def remove_alerts(self) -> None:
        self.alerts = []

    # -- scopes and periods --

    def scope_key(self, call: Call | None = None, *, model: str | None = None, tag: str | None = None) -> str:
        """The ledger scope of a call (or of ``model``/``tag`` value, for status)."""
        scope = self.budget.scope
        if scope == "global":
            return "global"
        if scope == "model":
            name = call.models[0].name if call is not None else model
            if not name:
                raise ArgumentError("model", "this budget is per model: say which model (provider-qualified name)")
            return f"model:{name}"
        tag_name = scope.partition(":")[2]
        value = call.request.tags.get(tag_name) if call is not None else tag
        return f"tag:{tag_name}={value or UNTAGGED}"

    def periods(self, now: datetime | None = None) -> list[tuple[Period, float]]:
        now = now or self.clock()
        zone = self.budget.zone
        return [(current_period(name, now, zone), limit) for name, limit in self.budget.limits()]

    # -- worst case --

    def worst_case(self, call: Call) -> tuple[float, list[str]]:
        """The most this call can cost (USD), and the models among its candidates with no price.

        Each answer (the first, then each re-ask after a failed validation) may come from any
        model of the chain: the bound adds up, answer by answer, the dearest model's bill, at its
        highest rates (``Pricing.highest_price``), for every completion it may return
        (``n``...), each of the most tokens allowed, after a prompt of the messages, images and
        definitions, grown by the re-asks before it. Raises :class:`ArgumentError` for a
        completion count it cannot read."""
        choices = _choices(call)
        bounds: list[tuple[int, int, int, Any]] = []  # (prompt, output, re-ask growth, price)
        unpriced = []
        conditions = _rate_conditions(call)
        for model in call.models:
            if call.pricing.price(model) is None:
                unpriced.append(model.name)
                continue
            out = _max_output_tokens(call, model)
            reask = _reask_tokens(call, model, out) if call.request.max_answers > 1 else 0
            prompt = _prompt_tokens(call, model)
            largest = prompt + (call.request.max_answers - 1) * reask + out  # for long-context tiers
            price = call.pricing.highest_price(model, tokens=largest, **conditions)
            bounds.append((prompt, out, reask, price))
        total = 0.0
        for k in range(call.request.max_answers):
            total += max(
                (price.cost(prompt + k * reask, choices * out) for prompt, out, reask, price in bounds), default=0.0
            )
        return total, unpriced

    # -- hooks --

    def before(self, call: Call) -> Response | None:
        scope, amount, periods = self._request(call)
        buckets = [(scope, p.key, limit) for p, limit in periods]
        try:
            max_wait = deadline.bound(self.budget.max_wait)  # never past the request's deadline
            reservation = self.ledger.reserve_many(buckets, amount, max_wait=max_wait, lease=True)
        except BudgetExceededError as refused:
            raise self._refuse(call, refused, periods) from None
        except Exception as exc:
            raise self._unreachable(call, exc) from exc
        self._hold(call, reservation, scope, periods)
        return None

    async def abefore(self, call: Call) -> Response | None:
        scope, amount, periods = self._request(call)
        buckets = [(scope, p.key, limit) for p, limit in periods]
        try:
            max_wait = deadline.bound(self.budget.max_wait)
            reservation = await self.ledger.areserve_many(buckets, amount, max_wait=max_wait, lease=True)
        except BudgetExceededError as refused:
            raise self._refuse(call, refused, periods) from None
        except Exception as exc:
            raise self._unreachable(call, exc) from exc
        self._hold(call, reservation, scope, periods)
        return None

    def _request(self, call: Call) -> tuple[str, float, list[tuple[Period, float]]]:
        """The call's scope, worst-case cost and (period, limit) buckets, longest period first:
        when several limits are reached, the refusal names the one that resets last (waiting for
        the daily reset does not help if the month is spent)."""
        scope = self.scope_key(call)
        amount, unpriced = self.worst_case(call)
        if unpriced:
            self._unpriced(call, scope, unpriced)
        return scope, amount, sorted(self.periods(), key=lambda item: item[0].end, reverse=True)

    def _hold(self, call: Call, reservation: Reservation, scope: str, periods: list[tuple[Period, float]]) -> None:
        call.state[self.name] = _Held(reservation, scope, periods)
        call.span.set_attributes(
            {schema.BUDGET_SCOPE: scope, schema.BUDGET_RESERVED_USD: reservation.amount}
        )
        if reservation.waited:
            call.span.add_event("budget_wait", {"seconds": round(reservation.waited, 4)})
            call.span.set_attributes({schema.BUDGET_WAIT_S: round(reservation.waited, 4)})

    @staticmethod
    def _unreachable(call: Call, exc: Exception) -> BudgetLedgerError:
        call.span.add_event("budget_unavailable", {"error": repr(exc)})
        return BudgetLedgerError(f"The budget ledger could not be reached, so the call was refused: {exc}")

    def after(self, call: Call, response: Response) -> None:
        self._settle(call, call.spent)

    def on_error(self, call: Call, error: BaseException) -> None:
        # call.spent: the answered attempts, and the text a broken stream delivered (the
        # pipeline adds it before this hook runs); the trace records the same figure.
        self._settle(call, call.spent)

    # -- internals --

    def _unpriced(self, call: Call, scope: str, models: list[str]) -> None:
        if self.budget.on_unknown_price == "refuse":
            period, limit = self.periods()[0]
            error = UnpricedModelError(
                f"Budget refused the call: no known price for {', '.join(map(repr, models))}, so its cost "
                f"cannot be bounded by the {period.name} budget of {usd(limit)}. Set one with "
                f"set_model_price({models[0]!r}, input_per_million=..., output_per_million=...) or set the "
                f"budget with on_unknown_price='allow'.",
                limit=limit,
                scope=scope,
                period=period.name,
                period_key=period.key,
                resets_at=period.end,
            )
            call.span.add_event("budget_refused", {"reason": "unknown_price", "models": ", ".join(models)})
            call.span.set_attributes({schema.BUDGET_REFUSED: True})
            raise error
        for name in models:
            if name not in self._unpriced_warned:
                self._unpriced_warned.add(name)
                _logger.warning(
                    "Budget: no known price for model %r; its calls are allowed and counted as $0. "
                    "Set a price with set_model_price(...) to enforce the budget on it.",
                    name,
                )
        call.span.add_event("budget_unpriced_model", {"models": ", ".join(models), "counted_usd": 0.0})

    def _refuse(
        self, call: Call, refused: BudgetExceededError, periods: list[tuple[Period, float]]
    ) -> BudgetExceededError:
        period = next((p for p, _ in periods if p.key == refused.period_key), periods[0][0])
        error = BudgetExceededError(
            spent=refused.spent,
            reserved=refused.reserved,
            limit=refused.limit,
            requested=refused.requested,
            scope=refused.scope,
            period=period.name,
            period_key=period.key,
            resets_at=period.end,
            waited=refused.waited,
        )
        call.span.add_event(
            "budget_exceeded",
            {
                "scope": error.scope,
                "period": period.name,
                "spent_usd": error.spent,
                "reserved_usd": error.reserved,
                "limit_usd": error.limit,
                "requested_usd": error.requested,
                "resets_at": period.end.isoformat(),
                "waited_s": round(error.waited, 4),
                "message": str(error),
            },
        )
        call.span.set_attributes({schema.BUDGET_REFUSED: True, schema.BUDGET_SCOPE: error.scope})
        self._fire(call, error.scope, period, error.limit, error.spent, refused=True)
        return error

    def _settle(self, call: Call, actual: float) -> None:
        held: _Held | None = call.state.pop(self.name, None)
        if held is None:  # refused, or already settled (a closed stream)
            return
        try:
            totals = self.ledger.settle(held.reservation, max(0.0, actual))
        except Exception as exc:  # the call is answered (and paid): never fail it here
            _logger.error("Budget: could not record $%s spent by a call: %s", actual, exc)
            call.span.add_event("budget_settle_failed", {"error": repr(exc), "spent_usd": actual})
            return
        attributes: dict[str, Any] = {schema.BUDGET_CHARGED_USD: actual}
        for (period, limit), total in zip(held.periods, totals):
            attributes[schema.budget_spent_attribute(period.name)] = total
            attributes[schema.budget_limit_attribute(period.name)] = limit
            self._fire(call, held.scope, period, limit, total)
        call.span.set_attributes(attributes)

    def _fire(self, call: Call, scope: str, period: Period, limit: float, spent: float, refused: bool = False) -> None:
        if not self.alerts:
            return
        from mlflow_lite_plugin.controls.budget.alerts import fire_crossed

        try:
            fire_crossed(
                self.alerts,
                self.ledger,
                scope=scope,
                period=period,
                limit=limit,
                spent=spent,
                span=call.span,
                refused=refused,
            )
        except Exception as exc:  # alerts never fail or block a call
            _logger.error("Budget alert check failed: %s", exc)

    # -- status --

    def status(
        self, *, model: str | None = None, tag: str | None = None, now: datetime | None = None
    ) -> dict[str, Any]:
        """Spend of the current period(s) for a scope: the binding period (least remaining) at the
        top level, every configured period under ``"periods"``. ``remaining`` = limit - spent -
        reserved (reserved: calls in flight), never below 0. Times are ISO 8601 in the budget's
        time zone."""
        scope = self.scope_key(model=model, tag=tag)
        periods = {}
        for period, limit in self.periods(now):
            spent = self.ledger.spent(scope, period.key)
            reserved = self.ledger.reserved(scope, period.key)
            periods[period.name] = {
                "spent": spent,
                "reserved": reserved,
                "remaining": max(0.0, limit - spent - reserved),
                "limit": limit,
                "period": period.name,
                "period_start": period.start.isoformat(),
                "resets_at": period.end.isoformat(),
            }
        binding = min(periods.values(), key=lambda p: p["remaining"])
        return {
            **binding,
            "scope": scope,
            "timezone": self.budget.timezone,
            "alerts": [a.threshold for a in self.alerts],
            "periods": periods,
        }


# -- helpers for Client wiring --


def set_budget(
    pipeline: Pipeline,
    daily_limit: float | None = None,
    *,
    monthly_limit: float | None = None,
    timezone: str = "UTC",
    scope: str = "global",
    backend: str = "sqlite",
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    on_unknown_price: str = "refuse",
    enabled: bool = True,
    clock: Callable[[], datetime] | None = None,
    max_wait: float | None = DEFAULT_MAX_WAIT,
) -> BudgetStage | None:
    """Install (or replace, keeping its alerts; or remove with ``enabled=False``) the budget stage."""
    existing = pipeline.get(BudgetStage.name)
    if not enabled:
        pipeline.remove(BudgetStage.name)
        return None
    budget = Budget(daily_limit, monthly_limit, timezone, scope, on_unknown_price, max_wait)
    alerts = existing.alerts if isinstance(existing, BudgetStage) else ()
    stage = BudgetStage(budget, make_ledger(backend, path=path, url=url), alerts=alerts, clock=clock)
    pipeline.add(stage)
    return stage


def budget_stage(pipeline: Pipeline) -> BudgetStage:
    stage = pipeline.get(BudgetStage.name)
    if not isinstance(stage, BudgetStage):
        raise ArgumentError("budget", "no budget is set: call set_budget(daily_limit=...) first")
    return stage


def set_alert(pipeline: Pipeline, threshold: float = 0.8, **options: Any) -> Alert:
    """Add an alert (replacing one at the same threshold) to the pipeline's budget."""
    from mlflow_lite_plugin.controls.budget.alerts import Alert

    alert = Alert(threshold, **options)
    budget_stage(pipeline).add_alert(alert)
    return alert


def budget_status(pipeline: Pipeline, *, model: str | None = None, tag: str | None = None) -> dict[str, Any]:
    return budget_stage(pipeline).status(model=model, tag=tag)


__all__ = [
    "Budget",
    "BudgetExceededError",
    "BudgetLedgerError",
    "BudgetStage",
    "Period",
    "RedisLedger",
    "Reservation",
    "SQLiteLedger",
    "UnpricedModelError",
    "budget_status",
    "current_period",
    "make_ledger",
    "set_alert",
    "set_budget",
]
