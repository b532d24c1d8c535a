"""What every storage backend shares: outage errors, the circuit breaker, sync/async pairing.

Each backend (memory.py, sqlite.py, redis.py) offers the operations of the families that use it,
each with an async twin (``get``/``aget``...): the key-value store with TTL and LRU bound (exact
cache), the ledger's atomic reserve/settle/renew (budget), the schedule of timestamps (rate
limit), append-only logs (A/B tests) and short locks (single flight). A backend runs an operation
through :meth:`Storage.call` (sync) or :meth:`Storage.acall` (async): there, and only there, an
outage becomes :class:`StorageError` and the breaker counts it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from mlflow_lite_plugin.storage.breaker import BreakerSettings, CircuitBreaker
from mlflow_lite_plugin.storage.errors import StorageError

_T = TypeVar("_T")
_outage_types: dict[type[BaseException], type[StorageError]] = {}


def outage_type(cause: type[BaseException]) -> type[StorageError]:
    """:class:`StorageError` that is also a ``cause``: code that catches the backend's own error
    (``redis.ConnectionError``, ``sqlite3.OperationalError``) still catches it."""
    if cause not in _outage_types:
        _outage_types[cause] = type(f"Storage{cause.__name__}", (StorageError, cause), {})
    return _outage_types[cause]


class Storage:
    """A backend's connection handling. ``failures``: the backend's exceptions that mean "not
    available" (others are its answer); ``breaker``: skip the backend while it keeps failing
    (None: every operation tries, as a ledger that fails closed wants)."""

    kind = "storage"

    def __init__(self, failures: tuple[type[BaseException], ...] = (), breaker: BreakerSettings | None = None):
        self.failures = failures
        self.breaker = None if breaker is None else CircuitBreaker(self.kind, (StorageError,), breaker)

    def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)``: an outage raises :class:`StorageError`, through the breaker if any."""
        if self.breaker is None:
            return self._translated(fn, *args)
        return self.breaker.run(self._translated, fn, *args)

    async def acall(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """:meth:`call` for a coroutine function."""
        if self.breaker is None:
            return await self._atranslated(fn, *args)
        return await self.breaker.arun(self._atranslated, fn, *args)

    def _translated(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return fn(*args)
        except self.failures as exc:
            raise self._outage(exc) from exc

    async def _atranslated(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        try:
            return await fn(*args)
        except self.failures as exc:
            raise self._outage(exc) from exc

    def _outage(self, exc: BaseException) -> StorageError:
        return outage_type(type(exc))(self.kind, f"{self!r} failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Close this process's connections (the next operation opens new ones)."""


# -- operations written once, as generators that yield what to do and receive its outcome (sans
# I/O): ``drive`` does it with blocking calls, ``adrive`` with coroutines --


def drive(steps: Generator[Any, Any, _T], execute: Callable[[Any], Any]) -> _T:
    """Run ``steps``: ``execute`` each step it yields and send the outcome back; its result."""
    value, done = _advance(steps, None)
    while not done:
        value, done = _advance(steps, execute(value))
    return value


async def adrive(steps: Generator[Any, Any, _T], execute: Callable[[Any], Awaitable[Any]]) -> _T:
    """:func:`drive` with a coroutine function."""
    value, done = _advance(steps, None)
    while not done:
        value, done = _advance(steps, await execute(value))
    return value


def _advance(steps: Generator[Any, Any, Any], outcome: Any) -> tuple[Any, bool]:
    """(the next step, False), or (the result, True) once ``steps`` has returned."""
    try:
        return steps.send(outcome), False
    except StopIteration as done:
        return done.value, True
