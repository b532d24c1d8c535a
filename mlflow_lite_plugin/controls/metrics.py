"""Custom metrics: functions scored on every answer, logged to its trace as MLflow feedback.

    ml.add_metric("brand_voice", lambda text: check_brand_compliance(text))
    r = ml.query(...)
    r.metrics["brand_voice"].value

A metric is called with the answer text (and the :class:`Response` too, if it takes a second
argument). It may return a bool, a number, a string label, or ``(value, rationale)``. A metric
that raises, or returns anything else, is recorded as an error on that answer; the call itself
still succeeds. The evaluation plugin scores the same registry.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.core.offload import offload
from mlflow_lite_plugin.core.pipeline import STAGE_ORDER, Call, Stage
from mlflow_lite_plugin.core.results import MetricResult  # re-exported: the response carries it
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.response import Response

_logger = logging.getLogger(__name__)

# Names the pipeline itself logs as feedback on a trace.
RESERVED_NAMES = frozenset({schema.VALIDATION})


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., Any]
    description: str | None = None

    @property
    def source_id(self) -> str:
        """Identifies the code behind the feedback in MLflow (module and function name)."""
        module = getattr(self.fn, "__module__", None) or ""
        qualname = getattr(self.fn, "__qualname__", None) or type(self.fn).__name__
        return f"{module}.{qualname}" if module else qualname

    def evaluate(self, text: str, response: Response) -> MetricResult:
        try:
            raw = self.fn(text, response) if _takes_two(self.fn) else self.fn(text)
        except Exception as exc:  # a broken metric must not fail the call
            return MetricResult(None, error=f"{type(exc).__name__}: {exc}")
        return _normalise(raw)


class Metrics:
    """The metrics of a client, evaluated in the pipeline by :class:`MetricsStage`."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def add(self, name: str, fn: Callable[..., Any], *, description: str | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ArgumentError("name", f"must be a non-empty metric name, got {name!r}")
        if name in RESERVED_NAMES:
            raise ArgumentError("name", f"{name!r} is reserved for the pipeline's own feedback; pick another name")
        if not callable(fn):
            raise ArgumentError("fn", f"must be a callable taking the answer text, got {type(fn).__name__}")
        with self._lock:  # replaced whole so a concurrent evaluate() sees the old or new dict
            self._metrics = {**self._metrics, name: Metric(name, fn, description)}

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._metrics:
                known = ", ".join(sorted(self._metrics)) or "none"
                raise ArgumentError("name", f"no metric named {name!r} (registered: {known})")
            self._metrics = {k: v for k, v in self._metrics.items() if k != name}

    def names(self) -> list[str]:
        return list(self._metrics)

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def __len__(self) -> int:
        return len(self._metrics)

    def evaluate(self, text: str, response: Response) -> dict[str, MetricResult]:
        return {name: metric.evaluate(text, response) for name, metric in self._metrics.items()}


class MetricsStage(Stage):
    """Scores every answer (cached ones too) with the client's metrics; a stream stopped early is
    not an answer and is not scored."""

    name = "metrics"
    order = STAGE_ORDER[name]

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> dict[str, Any]:
        names = self.metrics.names()
        return {"metrics": names} if names else {}

    def summary(self) -> str:
        """E.g. ``words, polite``."""
        return ", ".join(self.metrics.names())

    async def aafter(self, call: Call, response: Response) -> None:
        # Metrics are the user's functions (a judge may call a model): never on the event loop.
        if len(self.metrics):
            await offload(self.after, call, response)

    def after(self, call: Call, response: Response) -> None:
        if not len(self.metrics) or response.finish_reason == "cancelled":
            return
        response.metrics = self.metrics.evaluate(response.text, response)
        for name, result in response.metrics.items():
            metric = self.metrics.get(name)
            call.span.set_attributes({schema.metric_attribute(name): result.value if result.ok else "error"})
            call.span.log_feedback(
                name,
                result.value,
                rationale=result.rationale,
                error=result.error,
                source_type="CODE",
                source_id=metric.source_id if metric else name,
            )
            if not result.ok:
                _logger.warning("Metric %r failed on this answer (the call goes on): %s", name, result.error)


def _takes_two(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature take the text only
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _normalise(raw: Any) -> MetricResult:
    rationale = None
    if isinstance(raw, tuple):
        if len(raw) != 2:
            return MetricResult(None, error=f"returned a tuple of {len(raw)} items; expected (value, rationale)")
        raw, rationale = raw
        rationale = None if rationale is None else str(rationale)
    if hasattr(raw, "item") and callable(raw.item):  # numpy scalars
        raw = raw.item()
    if isinstance(raw, (bool, str)):
        return MetricResult(raw, rationale)
    if isinstance(raw, (int, float)):
        if isinstance(raw, float) and not math.isfinite(raw):
            return MetricResult(None, rationale, error=f"returned {raw}, not a finite number")
        return MetricResult(raw, rationale)
    return MetricResult(
        None,
        rationale,
        error=f"returned {type(raw).__name__}; a metric returns a bool, number, str or (value, rationale)",
    )
