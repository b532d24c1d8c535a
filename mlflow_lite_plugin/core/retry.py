"""Which provider attempts a call makes: retries of transient errors, then the fallback chain."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow_lite_plugin.core.errors import ProviderError
from mlflow_lite_plugin.core.model_names import ModelRef

BACKOFF_BASE = 0.5  # seconds before the first retry without Retry-After
BACKOFF_CAP = 20.0  # never wait longer than this between two attempts


@dataclass(frozen=True)
class Attempt:
    model: ModelRef
    number: int  # 1-based over the whole call
    retry: int  # 0 for the first try of this model


class AttemptPlan:
    """Iterate for attempts; report each failure with :meth:`failed`, which returns how long to
    wait before the next attempt or re-raises when the plan is exhausted.

    Transient errors (429, 5xx, timeouts, connection) retry the same model up to ``num_retries``
    times, honouring Retry-After, then move to the next fallback; other errors move on at once.
    """

    def __init__(self, models: list[ModelRef], num_retries: int):
        self.models = models
        self.num_retries = num_retries
        self._next: Attempt | None = Attempt(models[0], 1, 0)
        self.errors: list[ProviderError] = []

    def __iter__(self) -> Iterator[Attempt]:
        while self._next is not None:
            attempt, self._next = self._next, None
            yield attempt

    def failed(self, attempt: Attempt, error: ProviderError) -> float:
        self.errors.append(error)
        index = self.models.index(attempt.model)
        if error.transient and attempt.retry < self.num_retries:
            self._next = Attempt(attempt.model, attempt.number + 1, attempt.retry + 1)
            return self._delay(error, attempt.retry)
        if index + 1 < len(self.models):
            self._next = Attempt(self.models[index + 1], attempt.number + 1, 0)
            return 0.0
        raise error

    @staticmethod
    def _delay(error: ProviderError, retry: int) -> float:
        if error.retry_after is not None:
            return min(error.retry_after, BACKOFF_CAP)
        # Exponential backoff with full jitter, so concurrent callers do not retry in lockstep.
        return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**retry))
