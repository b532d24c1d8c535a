"""Client-side rate limits: requests and tokens per minute, queued fairly, with ``max_wait``.

Calls are *paced* (GCRA-style virtual scheduling): a call may start at ``max(now, next_free)``,
and starting moves ``next_free`` on by its cost over the rate (1 request, or its tokens). So:

- no 60 s window ever holds more than the limit, and a saturated limiter runs at exactly the
  limit, spread evenly: no bursts that trip the provider's own limits;
- slots are reserved under one lock in arrival order, so waiting callers start first-come,
  first-served; threads (``time.sleep``) and asyncio tasks (``await asyncio.sleep``) share one
  limit without blocking an event loop.

Tokens are the prompt plus ``max_tokens``; a token window can be exceeded by at most the last
call's tokens. The stage runs after the caches: a cache hit never reaches the provider, so it
never waits.
"""

from __future__ import annotations

import asyncio
import threading
import time
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
class Pace:
    """One paced limit: ``per_minute`` units (requests or tokens) per minute."""

    per_minute: float
    unit: str  # "requests" or "tokens"
    label: str
    next_free: float = 0.0  # the schedule: where the next reservation goes
    free_at: float = 0.0  # reality: when the last call that actually started has been paid for

    def earliest(self, now: float) -> float:
        return max(now, self.next_free)

    def reserve(self, slot: float, units: float) -> None:
        self.next_free = slot + self.seconds(units)

    def start(self, now: float, units: float) -> None:
        self.free_at = now + self.seconds(units)
        self.next_free = max(self.next_free, self.free_at)  # a late start delays the schedule

    def seconds(self, units: float) -> float:
        return units * 60.0 / self.per_minute


@dataclass
class RateLimit:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    model: str | None = None  # None: every model
    paces: list[Pace] = field(default_factory=list)

    def __post_init__(self) -> None:
        scope = self.model or "all models"
        if self.requests_per_minute:
            label = f"{self.requests_per_minute:g} requests/min ({scope})"
            self.paces.append(Pace(self.requests_per_minute, "requests", label))
        if self.tokens_per_minute:
            label = f"{self.tokens_per_minute:g} tokens/min ({scope})"
            self.paces.append(Pace(self.tokens_per_minute, "tokens", label))

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

    def add(self, limit: RateLimit) -> None:
        with self._lock:
            self.limits = [x for x in self.limits if x.model != limit.model] + [limit]

    def reserve(self, call: Call) -> tuple[list[tuple[Pace, float]], float]:
        """Book this call's place in the schedule (arrival order); returns its paces with their
        units and how long to wait. Raises RateLimitExceededError if that is over ``max_wait``."""
        paces = [p for lim in self.limits if lim.applies(call) for p in lim.paces]
        if not paces:
            return [], 0.0
        tokens = 0.0
        if any(p.unit == "tokens" for p in paces):  # counting tokens costs: only when limited
            tokens = float(call.prompt_tokens + int(call.request.params.get("max_tokens") or 0))
        costs = [(p, 1.0 if p.unit == "requests" else tokens) for p in paces]
        with self._lock:
            now = self._clock()
            slot = max(p.earliest(now) for p in paces)
            wait = slot - now
            if self.max_wait is not None and wait > self.max_wait:
                tightest = max(paces, key=lambda p: p.earliest(now))
                raise RateLimitExceededError(wait, self.max_wait, tightest.label)
            for pace, units in costs:
                pace.reserve(slot, units)
        if wait > 0:
            call.span.add_event("rate_limit_wait", {"seconds": round(wait, 4)})
            call.span.set_attributes({"mlflow_lite.rate_limit_wait_s": round(wait, 4)})
        return costs, wait

    def start(self, costs: list[tuple[Pace, float]]) -> float:
        """Start now if the calls that really started have been paid for; else how much longer.
        Sleeping threads wake late under load: checking real starts keeps every window honest."""
        with self._lock:
            now = self._clock()
            remaining = max((p.free_at - now for p, _ in costs), default=0.0)
            if remaining > 0:
                return remaining
            for pace, units in costs:
                pace.start(now, units)
            return 0.0

    def before(self, call: Call) -> Response | None:
        costs, wait = self.reserve(call)
        if costs:
            if wait > 0:
                time.sleep(wait)
            while (extra := self.start(costs)) > 0:
                time.sleep(extra)
        return None

    async def abefore(self, call: Call) -> Response | None:
        costs, wait = self.reserve(call)
        if costs:
            if wait > 0:
                await asyncio.sleep(wait)
            while (extra := self.start(costs)) > 0:
                await asyncio.sleep(extra)
        return None


def check_limit(name: str, value: float | None) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise ArgumentError(name, f"must be a positive number, got {value!r}")
