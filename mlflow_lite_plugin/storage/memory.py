"""Storage in this process's memory: nothing is shared with other processes, nothing can fail.

Operations take a lock and never wait on I/O, so each async twin simply runs its sync operation.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from mlflow_lite_plugin.storage.base import Storage

DEFAULT_MAX_ENTRIES = 10_000


class MemoryStorage(Storage):
    """Key-value entries (JSON documents, LRU-bounded by ``max_entries``, with TTL), schedules
    (``clock``: monotonic seconds) and logs of this process; threads and asyncio tasks share it."""

    kind = "memory"

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, *, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[float | None, str]] = OrderedDict()
        self._schedule: dict[str, list[float]] = {}  # name -> [next_free, free_at]
        self._logs: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}

    def __repr__(self) -> str:
        return "MemoryStorage()"

    # -- key-value (exact cache): entries are JSON text, so a hit is a copy the caller may change --

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
            self._data[key] = (expiry(ttl), blob)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def count(self) -> int:
        now = time.time()
        with self._lock:
            return sum(1 for expires_at, _ in self._data.values() if expires_at is None or expires_at > now)

    # -- schedule (rate limit): per name, where the next reservation goes and when the last call
    # that started is paid for (see controls/ratelimit.py) --

    def schedule_reserve(
        self, names: Sequence[str], seconds: Sequence[float], max_wait: float | None
    ) -> tuple[bool, float]:
        """Book the earliest slot free in every named schedule, each moved on by its ``seconds``;
        ``(False, wait)`` without booking when the wait would pass ``max_wait``."""
        with self._lock:
            now = self._clock()
            slot = max([now] + [self._times(name)[0] for name in names])
            wait = slot - now
            if max_wait is not None and wait > max_wait:
                return False, wait
            for name, s in zip(names, seconds, strict=False):
                self._times(name)[0] = slot + s
        return True, wait

    def schedule_start(self, names: Sequence[str], seconds: Sequence[float]) -> float:
        """Start now if the calls that really started are paid for (returns 0.0), else the
        seconds until they are."""
        with self._lock:
            now = self._clock()
            remaining = max(self._times(name)[1] - now for name in names)
            if remaining > 0:
                return remaining
            for name, s in zip(names, seconds, strict=False):
                times = self._times(name)
                times[1] = now + s
                times[0] = max(times[0], times[1])  # a late start delays the schedule
        return 0.0

    def schedule_next_in(self, name: str) -> float:
        """Seconds until the next free slot of schedule ``name`` (0.0: free now)."""
        with self._lock:
            return max(0.0, self._times(name)[0] - self._clock())

    def schedule_forget(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._schedule.pop(name, None)

    def _times(self, name: str) -> list[float]:
        return self._schedule.setdefault(name, [0.0, 0.0])

    # -- logs (A/B observations and ratings): rows appended per test --

    def append(self, log: str, test: str, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._logs.setdefault(log, []).append((test, row))

    def rows(self, log: str, test: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [row for t, row in self._logs.get(log, ()) if t == test]

    # -- async twins (boilerplate of one shape: nothing here waits) --

    async def aget(self, key: str) -> dict[str, Any] | None:
        return self.get(key)

    async def aset(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        self.set(key, value, ttl)

    async def aclear(self) -> None:
        self.clear()

    async def acount(self) -> int:
        return self.count()

    async def aschedule_reserve(
        self, names: Sequence[str], seconds: Sequence[float], max_wait: float | None
    ) -> tuple[bool, float]:
        return self.schedule_reserve(names, seconds, max_wait)

    async def aschedule_start(self, names: Sequence[str], seconds: Sequence[float]) -> float:
        return self.schedule_start(names, seconds)

    async def aappend(self, log: str, test: str, row: tuple[Any, ...]) -> None:
        self.append(log, test, row)

    async def arows(self, log: str, test: str) -> list[tuple[Any, ...]]:
        return self.rows(log, test)


def expiry(ttl: float | None) -> float | None:
    """The wall-clock time an entry stored now with ``ttl`` seconds expires (None: never)."""
    return None if ttl is None else time.time() + ttl
