"""The deadline of the request a call belongs to (a served model's request timeout).

A served request that timed out has already been answered with a 504, so work done for it after
that is wasted, and provider calls made for it are still paid. ``predict`` sets the deadline with
:func:`running`; every provider attempt then checks it (:func:`check`) and bounds its HTTP
``timeout`` by what is left (:func:`bound`), and waits (retry backoff, single flight) stop at it.
A context variable carries it, so it follows the call into asyncio tasks and batch threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import overload

from mlflow_lite_plugin.core.errors import MlflowLiteError

# Monotonic time at which the current request's answer is no longer wanted (None: no deadline).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("mlflow_lite_deadline", default=None)


class DeadlineExceededError(MlflowLiteError, TimeoutError):
    """The request's deadline passed before this call was answered; no further provider call was
    started for it. A served model answers it with a 504."""


@contextlib.contextmanager
def running(seconds: float | None) -> Iterator[None]:
    """Give the calls made inside this block ``seconds`` to finish (None: no deadline)."""
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the deadline (negative once passed); None without a deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def check(what: str) -> None:
    """Raise :class:`DeadlineExceededError` if the deadline has passed (``what`` would start)."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceededError(f"the request's deadline passed {-left:.2f} s ago: {what} was not started")


@overload
def bound(timeout: float) -> float: ...
@overload
def bound(timeout: None) -> float | None: ...
def bound(timeout: float | None) -> float | None:
    """``timeout`` (seconds, None: none) shortened to the time left before the deadline."""
    left = remaining()
    if left is None:
        return timeout
    left = max(left, 0.001)  # an HTTP client takes 0 as "no timeout"
    return left if timeout is None else min(timeout, left)
