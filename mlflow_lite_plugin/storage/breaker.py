"""A circuit breaker: a backend that keeps failing (a hung Redis) is skipped for a while instead of
costing every operation a timeout."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.storage.errors import BackendSkipped

_logger = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class BreakerSettings:
    """When a failing backend is skipped: after ``failures`` failed operations in a row, for
    ``cooldown`` seconds; then one probe operation decides whether it is back."""

    failures: int = 3
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.failures, int) or isinstance(self.failures, bool) or self.failures < 1:
            raise ArgumentError("failures", f"must be a positive int, got {self.failures!r}")
        if not isinstance(self.cooldown, (int, float)) or isinstance(self.cooldown, bool) or not self.cooldown > 0:
            raise ArgumentError("cooldown", f"must be a positive number of seconds, got {self.cooldown!r}")


class CircuitBreaker:
    """Runs a backend's operations (:meth:`run`, :meth:`arun`) and stops running them while they
    keep failing.

    Closed: every operation runs; ``settings.failures`` availability errors in a row open it.
    Open: operations raise :class:`BackendSkipped` at once, for ``settings.cooldown`` seconds.
    Then one operation is let through as a probe (the others are still skipped): success closes
    the circuit, failure opens it for another cool-down. Opening and closing are logged once each.
    Only ``failure_types`` count as failures; any other outcome shows the backend is answering.
    (pybreaker holds one lock across every wrapped call, which would serialise all storage I/O.)
    """

    def __init__(
        self,
        name: str,
        failure_types: tuple[type[BaseException], ...],
        settings: BreakerSettings = BreakerSettings(),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.failure_types = failure_types
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()  # guards the state below, never held during backend I/O
        self._failures = 0
        self._opened_at: float | None = None  # None: closed
        self._probing = False

    @property
    def state(self) -> str:
        """ "closed", "open" (skipping) or "half-open" (cool-down over: one operation probes)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "open" if not self._probing and self._remaining() > 0 else "half-open"

    def _remaining(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self.settings.cooldown - self._clock()

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)``, or :class:`BackendSkipped` at once while the circuit is open."""
        probe = self._admit()
        try:
            result = fn(*args)
        except BaseException as exc:
            self._outcome(probe, exc)
            raise
        self._outcome(probe, None)
        return result

    async def arun(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """:meth:`run` for a coroutine function (``CancelledError`` counts as an interruption)."""
        probe = self._admit()
        try:
            result = await fn(*args)
        except BaseException as exc:
            self._outcome(probe, exc)
            raise
        self._outcome(probe, None)
        return result

    def _admit(self) -> bool:
        """Raise :class:`BackendSkipped` while open; True when this operation is the probe."""
        with self._lock:
            if self._opened_at is None:
                return False
            remaining = self._remaining()
            if remaining > 0 or self._probing:
                raise BackendSkipped(self.name, max(remaining, 0.0))
            self._probing = True
            return True

    def _outcome(self, probe: bool, error: BaseException | None) -> None:
        if isinstance(error, self.failure_types):
            self._failed(probe)
        elif error is None or isinstance(error, Exception):
            self._answered(probe)  # it answered (maybe with an error of its own): it is reachable
        elif probe:  # interrupted: let the next operation probe instead
            with self._lock:
                self._probing = False

    def _failed(self, probe: bool) -> None:
        with self._lock:
            self._failures += 1
            if probe:
                self._probing = False
            elif self._opened_at is not None or self._failures < self.settings.failures:
                return  # already open (an operation that started before), or not yet N in a row
            self._opened_at = self._clock()
        _logger.warning(
            "%s storage failed %d time(s) in a row%s: skipping it for %.0f s",
            self.name,
            self._failures,
            " (probe)" if probe else "",
            self.settings.cooldown,
        )

    def _answered(self, probe: bool) -> None:
        with self._lock:
            was_open = self._opened_at is not None
            if probe:
                self._probing = False
            if was_open and not probe:
                return  # an operation from before the circuit opened: the probe decides
            self._failures, self._opened_at = 0, None
        if was_open:
            _logger.info("%s storage answered again: using it again", self.name)
