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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow_lite_plugin.core import deadline
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError, check_number
from mlflow_lite_plugin.core.pipeline import STAGE_ORDER, Call, Settings, Stage
from mlflow_lite_plugin.core.response import Response
from mlflow_lite_plugin.storage.memory import MemoryStorage
from mlflow_lite_plugin.storage.redis import RedisStorage
from mlflow_lite_plugin.tracing import schema


class RateLimitExceededError(MlflowLiteError):
    """The call would have waited longer than ``max_wait`` for a rate-limit slot."""

    def __init__(self, wait: float, max_wait: float, limit: str):
        super().__init__(f"rate limit {limit}: the next slot is {wait:.1f}s away, more than max_wait={max_wait:g}s")
        self.wait = wait
        self.max_wait = max_wait


@dataclass(frozen=True)
class RateLimitSettings(Settings):
    """One ``set_rate_limit`` call: the limit of ``model`` (None: every model), and the
    ``max_wait`` and schedule (``backend`` "memory", or "redis" at ``url``: shared by every
    process using it) of all limits. With neither rate, the limit of ``model`` is removed."""

    stage = "rate_limit"
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    model: str | None = None
    max_wait: float | None = None
    backend: str = "memory"
    url: str | None = None

    def __post_init__(self) -> None:
        check_number("requests_per_minute", self.requests_per_minute)
        check_number("tokens_per_minute", self.tokens_per_minute)
        check_number("max_wait", self.max_wait, unit="seconds")
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ArgumentError("model", f"must be a model name or None (every model), got {self.model!r}")
        if self.backend not in ("memory", "redis"):
            raise ArgumentError("backend", f"must be 'memory' or 'redis', got {self.backend!r}")
        if self.backend == "redis" and not self.url:
            raise ArgumentError("url", "backend='redis' needs url='redis://host:port/db'")


@dataclass
class Pace:
    """One paced limit: ``per_minute`` units (requests or tokens) per minute."""

    per_minute: float
    unit: str  # "requests" or "tokens"
    label: str
    scope: str = "*"  # the model it limits, "*" for all

    @property
    def name(self) -> str:
        """Its schedule's name in the storage (``requests:gpt-4o``, ``tokens:*``)."""
        return f"{self.unit}:{self.scope}"

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


class _Schedule:
    """Books calls in a storage's schedule of timestamps, one schedule per pace (its
    :attr:`Pace.name`): where the next reservation goes, and when the calls that really started
    are paid for (a late start delays the schedule)."""

    storage: MemoryStorage | RedisStorage

    def reserve(self, costs: Costs, max_wait: float | None) -> float:
        """The seconds to wait for this call's slot, booked; RateLimitExceededError over ``max_wait``."""
        ok, wait = self.storage.schedule_reserve(*_booking(costs), max_wait)
        if not ok:
            raise _too_long(costs, wait, float(max_wait or 0))
        return wait

    async def areserve(self, costs: Costs, max_wait: float | None) -> float:
        ok, wait = await self.storage.aschedule_reserve(*_booking(costs), max_wait)
        if not ok:
            raise _too_long(costs, wait, float(max_wait or 0))
        return wait

    def start(self, costs: Costs) -> float:
        """0.0 once the call has started (the paces charged), else the seconds to wait first."""
        return self.storage.schedule_start(*_booking(costs))

    async def astart(self, costs: Costs) -> float:
        return await self.storage.aschedule_start(*_booking(costs))

    def forget(self, paces: Sequence[Pace]) -> None:
        """Start these paces' schedules afresh."""


class LocalSchedule(_Schedule):
    """The schedule of one process: threads and asyncio tasks of this process share it."""

    storage: MemoryStorage

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.storage = MemoryStorage(clock=clock)

    def forget(self, paces: Sequence[Pace]) -> None:
        self.storage.schedule_forget([p.name for p in paces])

    def next_slot_in(self, pace: Pace) -> float:
        """Seconds until ``pace``'s next free slot."""
        return self.storage.schedule_next_in(pace.name)


class RedisSchedule(_Schedule):
    """One schedule shared by every process that uses the same Redis: one limit for all replicas
    (a limit set again keeps the schedule the others are booking in). Redis's clock."""

    def __init__(self, url: str, prefix: str = "mlflow_lite:ratelimit"):
        self.storage = RedisStorage(url, prefix="{" + prefix + "}:")  # one hash tag: every key in one cluster slot


def _booking(costs: Costs) -> tuple[list[str], list[float]]:
    """The schedules' names and the seconds this call moves each on by."""
    return [p.name for p, _ in costs], [p.seconds(units) for p, units in costs]


def _too_long(costs: Costs, wait: float, max_wait: float) -> RateLimitExceededError:
    return RateLimitExceededError(wait, max_wait, " and ".join(p.label for p, _ in costs))


class RateLimitStage(Stage):
    name = "rate_limit"
    order = STAGE_ORDER[name]
    settings_type = RateLimitSettings

    def __init__(self, max_wait: float | None = None, schedule: LocalSchedule | RedisSchedule | None = None):
        self.limits: list[RateLimit] = []
        self.max_wait = max_wait
        self.schedule = schedule or LocalSchedule()

    @classmethod
    def from_settings(
        cls, settings: RateLimitSettings, previous: Stage | None, **context: Any
    ) -> RateLimitStage | None:
        """The installed stage with this limit added (its other limits keep their schedule); None
        once no limit is left."""
        stage = previous if isinstance(previous, RateLimitStage) else cls()
        stage.configure(settings)
        return stage if stage.limits else None

    def configure(self, settings: RateLimitSettings) -> None:
        """Apply one ``set_rate_limit`` call (see :class:`RateLimitSettings`)."""
        if settings.backend == "redis":
            self.schedule = RedisSchedule(settings.url)  # type: ignore[arg-type]
        elif isinstance(self.schedule, RedisSchedule):
            self.schedule = LocalSchedule()
        self.max_wait = settings.max_wait
        if settings.requests_per_minute is None and settings.tokens_per_minute is None:
            self.limits = [x for x in self.limits if x.model != settings.model]
        else:
            self.add(RateLimit(settings.requests_per_minute, settings.tokens_per_minute, model=settings.model))

    def add(self, limit: RateLimit) -> None:
        self.limits = [x for x in self.limits if x.model != limit.model] + [limit]
        self.schedule.forget(limit.paces)  # a new limit starts with a free schedule

    def describe(self) -> dict[str, Any]:
        limits = [
            {k: v for k, v in (("model", x.model), ("requests_per_minute", x.requests_per_minute),
                               ("tokens_per_minute", x.tokens_per_minute)) if v is not None}
            for x in self.limits
        ]
        backend = "redis" if isinstance(self.schedule, RedisSchedule) else "memory"
        return {"limits": limits, "max_wait": self.max_wait, "backend": backend} if limits else {}

    def summary(self) -> str:
        """E.g. ``60 rpm; gpt-4o: 30000 tpm`` (a limit without a model applies to all models)."""
        described = []
        for limit in self.limits:
            rates = [
                f"{rate:g} {unit}"
                for rate, unit in ((limit.requests_per_minute, "rpm"), (limit.tokens_per_minute, "tpm"))
                if rate
            ]
            described.append((f"{limit.model}: " if limit.model else "") + ", ".join(rates))
        return "; ".join(described)

    def status(self) -> dict[str, Any] | None:
        """Seconds until each limit's next free slot in this process's schedule (None for a Redis
        schedule: its state is in Redis)."""
        if not isinstance(self.schedule, LocalSchedule):
            return None
        paces = [p for limit in self.limits for p in limit.paces]
        return {"next_slot_in_s": {p.label: round(self.schedule.next_slot_in(p), 4) for p in paces}}

    def costs(self, call: Call) -> Costs:
        """Each pace that limits this call, with the units it takes of it."""
        paces = [p for lim in self.limits if lim.applies(call) for p in lim.paces]
        tokens = 0.0
        if any(p.unit == "tokens" for p in paces):  # counting tokens costs: only when limited
            tokens = float(call.prompt_tokens + int(call.request.params.get("max_tokens") or 0))
        return [(p, 1.0 if p.unit == "requests" else tokens) for p in paces]

    def reserve(self, call: Call) -> tuple[Costs, float]:
        """Book this call's place in the schedule (arrival order): its costs and how long to
        wait. Raises RateLimitExceededError if that is over ``max_wait``."""
        costs = self.costs(call)
        if not costs:
            return [], 0.0
        return costs, self._waiting(call, self.schedule.reserve(costs, deadline.bound(self.max_wait)))

    async def areserve(self, call: Call) -> tuple[Costs, float]:
        """:meth:`reserve` with the schedule's async twin."""
        if any(limit.tokens_per_minute and limit.applies(call) for limit in self.limits):
            await call.pricing.aload_tokenizers(call.models[:1])
        costs = self.costs(call)
        if not costs:
            return [], 0.0
        return costs, self._waiting(call, await self.schedule.areserve(costs, deadline.bound(self.max_wait)))

    @staticmethod
    def _waiting(call: Call, wait: float) -> float:
        if wait > 0:
            call.span.add_event("rate_limit_wait", {"seconds": round(wait, 4)})
            call.span.set_attributes({schema.RATE_LIMIT_WAIT_S: round(wait, 4)})
        return wait

    def before(self, call: Call) -> Response | None:
        costs, wait = self.reserve(call)  # max_wait never runs past the request's deadline
        if costs:
            if wait > 0:
                time.sleep(wait)
            # Sleepers wake late under load: start only once the calls that really started are
            # paid for, so no window is ever over the limit.
            while (extra := self.schedule.start(costs)) > 0:
                time.sleep(extra)
        return None

    async def abefore(self, call: Call) -> Response | None:
        costs, wait = await self.areserve(call)
        if costs:
            if wait > 0:
                await asyncio.sleep(wait)
            while (extra := await self.schedule.astart(costs)) > 0:
                await asyncio.sleep(extra)
        return None
