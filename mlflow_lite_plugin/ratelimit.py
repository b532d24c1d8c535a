"""Client-side rate limits: requests and tokens per minute, queued fairly, with ``max_wait``.

Each call reserves the earliest *slot* (a start time) at which every applicable sliding window
still has room, under one lock. Slots never move backwards, so callers start in arrival order
(FIFO), and threads (``time.sleep``) and asyncio tasks (``await asyncio.sleep``) share one limit
without blocking an event loop. A sliding window, unlike a token bucket, guarantees that no
``window`` seconds ever hold more than the limit.

The stage runs after the caches: a cache hit never reaches the provider, so it never waits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .errors import ArgumentError, MlflowLiteError
from .pipeline import Call, Stage
from .response import Response


class RateLimitExceededError(MlflowLiteError):
    """The call would have waited longer than ``max_wait`` for a rate-limit slot."""

    def __init__(self, wait: float, max_wait: float, limit: str):
        super().__init__(f"rate limit {limit}: the next slot is {wait:.1f}s away, more than max_wait={max_wait:g}s")
        self.wait = wait
        self.max_wait = max_wait


@dataclass
class Window:
    """A sliding window: at most ``limit`` units (requests or tokens) in any ``seconds``."""

    limit: float
    seconds: float
    label: str
    unit: str  # "requests" or "tokens"
    _log: deque[tuple[float, float]] = field(default_factory=deque)  # (slot, units)

    def earliest(self, now: float, units: float) -> float:
        """The first time >= now at which ``units`` more fit in the window."""
        if units > self.limit:
            units = self.limit  # a single oversized call still runs, alone in its window
        while self._log and self._log[0][0] <= now - self.seconds:
            self._log.popleft()
        used = sum(u for _, u in self._log)
        if used + units <= self.limit:
            return now
        # Walk forward through the expiries until enough has left the window.
        for slot, u in self._log:
            used -= u
            if used + units <= self.limit:
                return slot + self.seconds
        return now  # unreachable: the log empties eventually

    def record(self, slot: float, units: float) -> None:
        self._log.append((slot, min(units, self.limit)))


@dataclass
class RateLimit:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    model: str | None = None  # None: every model
    window: float = 60.0  # seconds; limits scale with it (tests use short windows)
    windows: list[Window] = field(default_factory=list)

    def __post_init__(self) -> None:
        scale = self.window / 60.0
        scope = self.model or "all models"
        if self.requests_per_minute:
            label = f"{self.requests_per_minute:g} requests/min ({scope})"
            self.windows.append(Window(self.requests_per_minute * scale, self.window, label, "requests"))
        if self.tokens_per_minute:
            label = f"{self.tokens_per_minute:g} tokens/min ({scope})"
            self.windows.append(Window(self.tokens_per_minute * scale, self.window, label, "tokens"))

    def applies(self, call: Call) -> bool:
        return self.model is None or self.model in (call.request.model, call.models[0].name)


class RateLimitStage(Stage):
    name = "rate_limit"
    order = 450  # after the caches, right before the provider

    def __init__(self, max_wait: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.limits: list[RateLimit] = []
        self.max_wait = max_wait
        self._clock = clock
        self._lock = threading.Lock()
        self._last_slot = 0.0

    def add(self, limit: RateLimit) -> None:
        with self._lock:
            self.limits = [x for x in self.limits if x.model != limit.model] + [limit]

    def reserve(self, call: Call) -> float:
        """Reserve this call's slot; returns how long to wait for it (or raises if > max_wait)."""
        tokens = call.prompt_tokens + int(call.request.params.get("max_tokens") or 0)
        with self._lock:
            now = self._clock()
            windows = [
                (w, 1.0 if w.unit == "requests" else float(tokens))
                for lim in self.limits
                if lim.applies(call)
                for w in lim.windows
            ]
            if not windows:
                return 0.0
            slot = max(now, self._last_slot)  # FIFO: never ahead of an earlier caller
            # Find a slot that fits every window (a later slot only frees more room).
            for _ in range(64):
                later = max(w.earliest(slot, units) for w, units in windows)
                if later <= slot:
                    break
                slot = later
            wait = slot - now
            if self.max_wait is not None and wait > self.max_wait:
                tightest = max(windows, key=lambda wu: wu[0].earliest(now, wu[1]))[0]
                raise RateLimitExceededError(wait, self.max_wait, tightest.label)
            for window, units in windows:
                window.record(slot, units)
            self._last_slot = slot
        if wait > 0:
            call.span.add_event("rate_limit_wait", {"seconds": round(wait, 4)})
            call.span.set_attributes({"mlflow_lite.rate_limit_wait_s": round(wait, 4)})
        return wait

    def before(self, call: Call) -> Response | None:
        wait = self.reserve(call)
        if wait > 0:
            time.sleep(wait)
        return None

    async def abefore(self, call: Call) -> Response | None:
        wait = self.reserve(call)
        if wait > 0:
            await asyncio.sleep(wait)
        return None


def check_limit(name: str, value: float | None) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise ArgumentError(name, f"must be a positive number, got {value!r}")
