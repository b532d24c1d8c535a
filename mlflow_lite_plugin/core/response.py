"""Response data class and the stream object returned by ``ml.stream``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.results import MetricResult, ValidationResult
    from mlflow_lite_plugin.tracing.tracer import TraceRef


@dataclass
class Response:
    """The answer to one call.

    ``model`` is the provider-qualified model that actually answered (after aliases and
    fallbacks); ``cost`` is USD, or None when the model has no known price; ``cached`` is None
    for a provider answer ("exact"/"semantic" for cache hits). ``cost`` and ``usage`` of an
    answer that was re-asked after failing validation include every attempt.
    """

    text: str
    model: str
    usage: dict[str, int]
    cost: float | None
    latency: float
    finish_reason: str | None = None
    cached: str | None = None
    provider: str | None = None
    requested_model: str | None = None
    time_to_first_token: float | None = None
    validation: ValidationResult | None = None  # set when the call had validate= rules
    metrics: dict[str, MetricResult] = field(default_factory=dict)  # the client's custom metrics
    raw: Any = field(default=None, repr=False, compare=False)
    _trace: TraceRef | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.text

    @property
    def trace_id(self) -> str | None:
        """MLflow trace id of this call (waits for the background trace writer; None if untraced)."""
        return self._trace.trace_id if self._trace is not None else None

    @property
    def prompt_tokens(self) -> int:
        return self.usage.get("prompt_tokens", 0)

    @property
    def completion_tokens(self) -> int:
        return self.usage.get("completion_tokens", 0)

    @property
    def total_tokens(self) -> int:
        return self.usage.get("total_tokens", 0)


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "total_tokens": int(prompt_tokens) + int(completion_tokens),
    }


class Stream:
    """Iterate for ``str`` chunks. After it is exhausted (or closed early), ``.response`` holds the
    full :class:`Response`; an early ``close()``/``break`` still traces the partial answer.

    Use it as a context manager, or call ``close()``, to finish the trace as soon as you stop
    reading; otherwise the trace is finished when the stream is garbage-collected.
    """

    def __init__(self, chunks: Generator[str, None, Response], on_close: Callable[[], Response | None]):
        self._chunks = chunks
        self._on_close = on_close
        self.response: Response | None = None
        self._parts: list[str] = []

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        try:
            chunk = next(self._chunks)
        except StopIteration as done:
            self.response = done.value
            raise
        self._parts.append(chunk)
        return chunk

    @property
    def text(self) -> str:
        """Everything received so far."""
        return "".join(self._parts)

    def close(self) -> None:
        """Stop reading: the connection is closed and the partial answer is traced."""
        if self.response is None:
            self._chunks.close()
            self.response = self._on_close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if sys.is_finalizing():  # too late to trace: MLflow has shut down
            return
        with contextlib.suppress(Exception):  # never raise from a finaliser
            self.close()
