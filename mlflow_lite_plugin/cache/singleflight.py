"""Single flight: identical calls in flight at once make one provider call.

Without it, N identical cache misses that arrive together all miss and all pay the provider (10
distinct prompts in 1000 batch rows made 15 provider calls). With it, the first miss of an
exact-cache key leads: it calls the provider as usual; the others wait for it and are then
answered from the cache it filled, as exact hits (``r.cached == "exact"``, ``$0``: they did not
pay). Coalescing is keyed on the exact-cache key and only where the exact cache applies, because
only there is one answer interchangeable with the other.

- **In one process** (threads and asyncio tasks alike) the waiters wait on the leader's flight.
- **Across replicas**, when the exact cache is Redis, the leader of each process also takes a
  short Redis lock (``SET NX PX``) on the key; a process that finds it taken polls the cache key
  for the answer instead of calling, until the lock is gone or ``wait`` seconds have passed.
- **A failed leader** (an error, a stream stopped early, an answer that is not cacheable) hands
  nothing on: its waiters then each make their own call, with their own retries and errors, so one
  transient error is never fanned out to every waiter. A waiter also goes on by itself after
  ``wait`` seconds (a leader that hangs, or whose process died holding the Redis lock) and never
  waits past its request's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.core import deadline
from mlflow_lite_plugin.storage.base import adrive, drive
from mlflow_lite_plugin.storage.errors import BackendSkipped

if TYPE_CHECKING:
    from mlflow_lite_plugin.storage.redis import RedisStorage

_logger = logging.getLogger(__name__)

Lookup = Callable[[], "dict[str, Any] | None"]
ALookup = Callable[[], Awaitable["dict[str, Any] | None"]]

DEFAULT_WAIT = 60.0  # seconds a waiter waits for a leader before it calls by itself
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # seconds between two polls of the Redis cache key


@dataclass
class _Flight:
    """One key's call in flight in this process; its waiters are threads or asyncio futures."""

    done: threading.Event = field(default_factory=threading.Event)
    futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self) -> None:
        with self.lock:
            self.done.set()
            futures, self.futures = self.futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # that loop has closed: its waiter is gone
                loop.call_soon_threadsafe(_resolve, future)

    async def wait_async(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self.lock:
            if self.done.is_set():
                return
            self.futures.append((loop, future))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(future, timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class Lease:
    """What a leader holds until its call ends: its flight here, and the Redis lock if taken."""

    key: str
    flight: _Flight
    token: str | None = None


class SingleFlight:
    """The in-flight calls of one exact cache. ``redis``: the cache's Redis storage, to coalesce
    across processes too (its locks go through the cache's circuit breaker: an open circuit means
    this process only); ``lock_ttl``: how long a Redis lock outlives a leader that died."""

    def __init__(self, redis: RedisStorage | None = None, *, wait: float = DEFAULT_WAIT,
                 lock_ttl: float = DEFAULT_WAIT, prefix: str = "mlflow_lite:flight:"):
        self.redis = redis
        self.wait = wait
        self.lock_ttl = lock_ttl
        self.prefix = prefix
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    # -- the two ways in: each returns (a leader's answer, None) or (None, a lease or None) --

    def join(self, key: str, lookup: Lookup) -> tuple[dict[str, Any] | None, Lease | None]:
        """Lead the call of ``key`` (returns a lease to :meth:`release`), or wait for its leader
        and return the answer it stored (``lookup`` reads the cache). ``(None, None)``: no
        answer came; call by yourself."""
        flight, leader = self._enter(key)
        if not leader:
            flight.done.wait(self._wait_time())
            return lookup(), None
        lease = Lease(key, flight)
        try:
            return drive(self._lead(lease), functools.partial(self._execute, lookup))
        except BaseException:  # interrupted while polling: nobody will release it later
            self.release(lease)
            raise

    async def ajoin(self, key: str, lookup: ALookup) -> tuple[dict[str, Any] | None, Lease | None]:
        """:meth:`join` for asyncio (``lookup`` is a coroutine function): waiting, reading the
        cache and the Redis lock never block the event loop."""
        flight, leader = self._enter(key)
        if not leader:
            await flight.wait_async(self._wait_time())
            return await lookup(), None
        lease = Lease(key, flight)
        try:
            return await adrive(self._lead(lease), functools.partial(self._aexecute, lookup))
        except BaseException:  # cancelled (a deadline) while polling: nobody will release it later
            await self.arelease(lease)
            raise

    def release(self, lease: Lease) -> None:
        """End the leader's flight (after it stored its answer, or failed): wake its waiters."""
        if self._land(lease):
            assert self.redis is not None and lease.token is not None
            _released(_attempt(self.redis.lock_release, self.prefix + lease.key, lease.token))

    async def arelease(self, lease: Lease) -> None:
        """:meth:`release` for asyncio."""
        if self._land(lease):
            assert self.redis is not None and lease.token is not None
            _released(await _aattempt(self.redis.alock_release, self.prefix + lease.key, lease.token))

    # -- internals --

    def _land(self, lease: Lease) -> bool:
        """End the flight in this process; True if this process also holds the Redis lock."""
        with self._lock:
            if self._flights.get(lease.key) is lease.flight:
                del self._flights[lease.key]
        lease.flight.finish()
        return lease.token is not None and self.redis is not None

    def _enter(self, key: str) -> tuple[_Flight, bool]:
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = _Flight()
            return flight, True

    def _wait_time(self) -> float:
        left = deadline.remaining()
        return self.wait if left is None else max(0.0, min(self.wait, left))

    # The leader's protocol is written once, as steps (sans I/O): ``_execute`` runs them with
    # blocking calls, ``_aexecute`` with coroutines. A Redis step's reply is its result, or the
    # exception it raised (Redis trouble means "coalesce in this process only", not a failure).

    def _execute(self, lookup: Lookup, step: _Step) -> Any:
        if isinstance(step, _Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, _Read):
            return lookup()
        assert self.redis is not None
        return _attempt(getattr(self.redis, step.op), *step.args)

    async def _aexecute(self, lookup: ALookup, step: _Step) -> Any:
        if isinstance(step, _Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, _Read):
            return await lookup()
        assert self.redis is not None
        return await _aattempt(getattr(self.redis, f"a{step.op}"), *step.args)

    def _lead(self, lease: Lease) -> Generator[_Step, Any, tuple[dict[str, Any] | None, Lease | None]]:
        """This process leads ``lease.key``; with Redis, find out whether another process does."""
        if self.redis is None:
            return None, lease
        answer, held = yield from self._try_lock(lease)
        started = time.monotonic()
        delay = _POLL_FIRST
        while answer is None and held is None:
            if time.monotonic() - started >= self._wait_time():
                return None, lease  # waited long enough: call, still leading this process
            yield _Sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            answer, held = yield from self._poll(lease)
        return answer, held

    def _try_lock(self, lease: Lease) -> Generator[_Step, Any, tuple[dict[str, Any] | None, Lease | None]]:
        """Take the Redis lock (lead every process), or find that another process leads:
        ``(None, None)`` then means "poll"."""
        token = uuid.uuid4().hex
        taken = yield _Redis("lock_acquire", (self.prefix + lease.key, token, self.lock_ttl))
        if isinstance(taken, BackendSkipped):  # the cache's circuit is open: coalesce in this process only
            return None, lease
        if isinstance(taken, Exception):  # Redis down: coalesce in this process only
            _logger.warning("single flight: the Redis lock is unavailable (coalescing in this process only): %s", taken)
            return None, lease
        if taken:
            lease.token = token
            return None, lease
        return (yield from self._poll(lease))

    def _poll(self, lease: Lease) -> Generator[_Step, Any, tuple[dict[str, Any] | None, Lease | None]]:
        """Another process leads: its answer, once stored, ends this process's flight too."""
        answer = yield _Read()
        if answer is None:
            held = yield _Redis("lock_held", (self.prefix + lease.key,))
            if held is True:
                return None, None  # still in flight there: poll again
            answer = yield _Read()  # it may have stored its answer just before it released
            if answer is None:
                return None, lease  # it failed: this process calls by itself
        self._land(lease)  # wake this process's waiters (this process holds no lock): the answer is in the cache
        return answer, None


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Read:
    """Read the cache key."""


@dataclass(frozen=True)
class _Redis:
    op: str  # a RedisStorage method with an async twin ``a<op>``
    args: tuple[Any, ...]


_Step = _Sleep | _Read | _Redis


def _released(outcome: Any) -> None:
    if isinstance(outcome, Exception):  # the lock then expires by itself
        _logger.warning("single flight: releasing the Redis lock failed: %s", outcome)


def _attempt(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or the exception it raised."""
    try:
        return fn(*args)
    except Exception as exc:
        return exc


async def _aattempt(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    try:
        return await fn(*args)
    except Exception as exc:
        return exc
