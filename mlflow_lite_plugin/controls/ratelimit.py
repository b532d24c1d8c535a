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

from mlflow_lite_plugin.core import deadline
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.core.pipeline import Call, Stage
from mlflow_lite_plugin.core.response import Response
from mlflow_lite_plugin.tracing import schema


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
    scope: str = "*"  # the model it limits, "*" for all
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
            self.paces.append(Pace(self.requests_per_minute, "requests", label, self.model or "*"))
        if self.tokens_per_minute:
            label = f"{self.tokens_per_minute:g} tokens/min ({scope})"
            self.paces.append(Pace(self.tokens_per_minute, "tokens", label, self.model or "*"))

    def applies(self, call: Call) -> bool:
        return self.model is None or self.model in (call.request.model, call.models[0].name)


Costs = list[tuple[Pace, float]]  # each applicable pace with the units this call takes of it


class LocalSchedule:
    """The schedule of one process: threads and asyncio tasks of this process share it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()

    def reserve(self, costs: Costs, max_wait: float | None) -> float:
        with self._lock:
            now = self._clock()
            slot = max(p.earliest(now) for p, _ in costs)
            wait = slot - now
            if max_wait is not None and wait > max_wait:
                raise _too_long(costs, wait, max_wait)
            for pace, units in costs:
                pace.reserve(slot, units)
        return wait

    def start(self, costs: Costs) -> float:
        with self._lock:
            now = self._clock()
            remaining = max(p.free_at - now for p, _ in costs)
            if remaining > 0:
                return remaining
            for pace, units in costs:
                pace.start(now, units)
            return 0.0


# The same two steps as LocalSchedule, atomically in Redis with its clock, for every process and
# host that points at it. Floats go back as strings: Lua numbers would be truncated to integers.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local slot = now
for i, key in ipairs(KEYS) do
  local next_free = tonumber(redis.call('GET', key) or '0')
  if next_free > slot then slot = next_free end
end
local wait = slot - now
if tonumber(ARGV[1]) >= 0 and wait > tonumber(ARGV[1]) then return {0, tostring(wait)} end
for i, key in ipairs(KEYS) do
  local next_free = slot + tonumber(ARGV[i + 1])
  redis.call('SET', key, tostring(next_free), 'PX', math.ceil((next_free - now) * 1000) + 60000)
end
return {1, tostring(wait)}
"""
_START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = #ARGV
local remaining = 0
for i = 1, n do
  local free_at = tonumber(redis.call('GET', KEYS[i]) or '0')
  if free_at - now > remaining then remaining = free_at - now end
end
if remaining > 0 then return tostring(remaining) end
for i = 1, n do
  local free_at = now + tonumber(ARGV[i])
  local ttl = math.ceil(tonumber(ARGV[i]) * 1000) + 60000
  redis.call('SET', KEYS[i], tostring(free_at), 'PX', ttl)
  local next_free = tonumber(redis.call('GET', KEYS[n + i]) or '0')
  if free_at > next_free then redis.call('SET', KEYS[n + i], tostring(free_at), 'PX', ttl) end
end
return '0'
"""


class RedisSchedule:
    """One schedule shared by every process that uses the same Redis: one limit for all replicas."""

    def __init__(self, url: str, prefix: str = "mlflow_lite:ratelimit"):
        try:
            import redis
        except ImportError as exc:
            raise ArgumentError("backend", "backend='redis' needs: pip install 'mlflow-lite-plugin[redis]'") from exc
        self._redis = redis.Redis.from_url(url)
        self._redis.ping()  # fail at configuration time, not on the first call
        self._reserve = self._redis.register_script(_RESERVE)
        self._start = self._redis.register_script(_START)
        self.prefix = "{" + prefix + "}"  # one hash tag: every key in one cluster slot

    def _key(self, pace: Pace, which: str) -> str:
        return f"{self.prefix}:{pace.unit}:{pace.scope}:{which}"

    def reserve(self, costs: Costs, max_wait: float | None) -> float:
        keys = [self._key(p, "next") for p, _ in costs]
        args = [-1 if max_wait is None else max_wait] + [p.seconds(u) for p, u in costs]
        ok, wait = self._reserve(keys=keys, args=args)
        if not int(ok):
            raise _too_long(costs, float(wait), float(max_wait or 0))
        return float(wait)

    def start(self, costs: Costs) -> float:
        keys = [self._key(p, "free") for p, _ in costs] + [self._key(p, "next") for p, _ in costs]
        return float(self._start(keys=keys, args=[p.seconds(u) for p, u in costs]))


def _too_long(costs: Costs, wait: float, max_wait: float) -> RateLimitExceededError:
    return RateLimitExceededError(wait, max_wait, " and ".join(p.label for p, _ in costs))


class RateLimitStage(Stage):
    name = "rate_limit"
    order = 450  # after the caches and the budget, right before the provider

    def __init__(self, max_wait: float | None = None, schedule: LocalSchedule | RedisSchedule | None = None):
        self.limits: list[RateLimit] = []
        self.max_wait = max_wait
        self.schedule = schedule or LocalSchedule()

    def add(self, limit: RateLimit) -> None:
        self.limits = [x for x in self.limits if x.model != limit.model] + [limit]

    def reserve(self, call: Call) -> tuple[Costs, float]:
        """Book this call's place in the schedule (arrival order): its costs and how long to
        wait. Raises RateLimitExceededError if that is over ``max_wait``."""
        paces = [p for lim in self.limits if lim.applies(call) for p in lim.paces]
        if not paces:
            return [], 0.0
        tokens = 0.0
        if any(p.unit == "tokens" for p in paces):  # counting tokens costs: only when limited
            tokens = float(call.prompt_tokens + int(call.request.params.get("max_tokens") or 0))
        costs = [(p, 1.0 if p.unit == "requests" else tokens) for p in paces]
        wait = self.schedule.reserve(costs, deadline.bound(self.max_wait))  # never past the request's deadline
        if wait > 0:
            call.span.add_event("rate_limit_wait", {"seconds": round(wait, 4)})
            call.span.set_attributes({schema.RATE_LIMIT_WAIT_S: round(wait, 4)})
        return costs, wait

    def before(self, call: Call) -> Response | None:
        costs, wait = self.reserve(call)
        if costs:
            if wait > 0:
                time.sleep(wait)
            # Sleepers wake late under load: start only once the calls that really started are
            # paid for, so no window is ever over the limit.
            while (extra := self.schedule.start(costs)) > 0:
                time.sleep(extra)
        return None

    async def abefore(self, call: Call) -> Response | None:
        costs, wait = self.reserve(call)
        if costs:
            if wait > 0:
                await asyncio.sleep(wait)
            while (extra := self.schedule.start(costs)) > 0:
                await asyncio.sleep(extra)
        return None
