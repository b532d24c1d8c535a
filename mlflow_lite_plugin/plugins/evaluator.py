"""The ``mlflow_lite`` evaluator: ``mlflow.models.evaluate(..., evaluators=["mlflow_lite"])`` scores an LLM
app on what production cares about (cost, latency, tokens, cache hits, validation, errors), on the
custom metrics registered with ``ml.add_metric``, on SQuAD exact match and token F1 against
targets, and on the human ratings left on the traces it produced.

    result = mlflow.models.evaluate(model_uri, data, evaluators=["mlflow_lite"],
                                    model_type="question-answering", targets="answer")
    result.metrics["mlflow_lite/cost_total"], result.metrics["token_f1/mean"]

MLflow imports this module whenever it builds its evaluator registry, so it imports only what
MLflow and this package have loaded already; MLflow's tracking API is imported when an
evaluation runs.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
import string
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

from mlflow_lite_plugin.client import get_default_client
from mlflow_lite_plugin.controls.metrics import Metric, MetricResult
from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.core.response import Response, usage_dict
from mlflow_lite_plugin.feedback.human import numeric_ratings

_logger = logging.getLogger(__name__)

FLAVOR = "mlflow_lite"
MODEL_TYPES = frozenset({None, "text", "question-answering", "text-summarization", "mlflow_lite"})
TABLE_FILE = "mlflow_lite_eval_results.json"
TABLE_ARTIFACT = "mlflow_lite_eval_results"
PREFIX = "mlflow_lite/"
DETAIL_COLUMNS = frozenset({
    "text", "model", "cost", "latency", "prompt_tokens", "completion_tokens", "total_tokens",
    "cached", "validation_passed", "validation_errors", "trace_id", "error",
})
# Per-row figures each kind of prediction knows: the flavor reports everything; another pyfunc
# only what timing it row by row shows; given predictions nothing beyond their text.
ROW_FIGURES = {
    "mlflow_lite": (
        "model", "latency", "cost", "prompt_tokens", "completion_tokens", "total_tokens",
        "cached", "validation_passed", "validation_errors", "trace_id", "error",
    ),
    "pyfunc": ("latency", "error"),
    "given": (),
}


class LiteEvaluator(ModelEvaluator):
    """Production figures, custom metrics and QA scores of an LLM app, logged to the run.

    Use it with ``mlflow.models.evaluate(model, data, evaluators=["mlflow_lite"], model_type=...)``
    (``mlflow.evaluate`` is the same function); ``model_type`` is one of ``"text"``,
    ``"question-answering"``, ``"text-summarization"`` or ``"mlflow_lite"`` (``None`` is accepted
    too, but MLflow then insists on ``extra_metrics``). MLflow skips a named evaluator whose
    ``can_evaluate`` says no. With ``evaluators=None`` it runs next to MLflow's default evaluator,
    and each calls the model.

    Predictions: a model of the ``mlflow_lite`` flavor is asked for its details (text, cost,
    latency, tokens, cache, validation, trace, error per row). Any other model is called one row at
    a time, which gives its latency and errors; given predictions (``model=None``) give text only.
    Figures that are unknown are left out, never logged as 0.

    ``evaluator_config`` (``evaluator_config={"mlflow_lite": {...}}``):

    - ``metrics``: names of the ``ml.add_metric`` metrics to score (default: all of those
      registered on the default client; ``[]`` for none).
    - ``predictions_column``: the column holding the answer when a model returns a DataFrame or
      dicts (default: MLflow's ``predictions=``, else ``"predictions"``, else the first column).

    MLflow's ``extra_metrics`` and ``custom_artifacts`` are for its default evaluator and are not
    computed here. Per-row results go to the run as the table ``mlflow_lite_eval_results.json``.
    """

    @classmethod
    def can_evaluate(cls, *, model_type: str | None, evaluator_config: Mapping[str, Any] | None, **kwargs: Any) -> bool:
        return model_type in MODEL_TYPES

    def evaluate(
        self,
        *,
        model_type: str | None,
        dataset: Any,
        run_id: str,
        evaluator_config: Mapping[str, Any] | None,
        model: Any = None,
        extra_metrics: Sequence[Any] | None = None,
        custom_artifacts: Sequence[Any] | None = None,
        predictions: str | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        config = dict(evaluator_config or {})
        if extra_metrics or custom_artifacts:
            _logger.warning("mlflow_lite evaluator: extra_metrics and custom_artifacts are not computed "
                            "(register metrics with ml.add_metric instead)")
        metrics = select_metrics(config.get("metrics"))
        inputs = input_frame(dataset)
        targets = dataset.labels_data.tolist() if dataset.has_targets else None
        predicted = predict(model, inputs, dataset, config.get("predictions_column") or predictions)
        scored = score_metrics(predicted.rows, metrics)
        qa = qa_scores(predicted.rows, targets) if targets is not None else {}
        values = production_metrics(predicted)
        for name, results in scored.items():
            values.update(metric_aggregates(name, results))
        values.update(qa_means(qa))
        values.update(feedback_metrics(predicted.trace_ids()))
        table = results_table(inputs, predicted, targets, dataset.targets_name or "targets", scored, qa)
        artifacts = log_results(run_id, values, table, dataset, kwargs.get("model_id"))
        return EvaluationResult(metrics=values, artifacts=artifacts)


# -- predictions --


@dataclass
class Row:
    """One input's answer and what is known about it (None: unknown)."""

    text: str | None
    error: str | None = None
    latency: float | None = None
    model: str | None = None
    cost: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached: str | None = None  # "" when answered by the provider
    validation_passed: bool | None = None  # None when the call had no rules
    validation_errors: list[str] | None = None
    trace_id: str | None = None


@dataclass
class Predictions:
    rows: list[Row]
    source: str  # a key of ROW_FIGURES

    def trace_ids(self) -> list[str]:
        return list(dict.fromkeys(r.trace_id for r in self.rows if r.trace_id))


def input_frame(dataset: Any) -> pd.DataFrame:
    features = dataset.features_data
    if isinstance(features, pd.DataFrame):
        return features.reset_index(drop=True)
    return pd.DataFrame(features, columns=dataset.feature_names)


def predict(model: Any, inputs: pd.DataFrame, dataset: Any, column: str | None) -> Predictions:
    if model is None:
        if dataset.predictions_data is None:
            raise ArgumentError("model", "mlflow_lite evaluator needs a model or predictions to evaluate")
        return Predictions([Row(_text(v)) for v in dataset.predictions_data], "given")
    if FLAVOR in getattr(getattr(model, "metadata", None), "flavors", {}):
        return Predictions(lite_rows(model, inputs), "mlflow_lite")
    return Predictions([pyfunc_row(model, inputs.iloc[[i]], column) for i in range(len(inputs))], "pyfunc")


def lite_rows(model: Any, inputs: pd.DataFrame) -> list[Row]:
    """One batch call; the flavor reports each row's figures, failed rows included."""
    details = model.predict(inputs, params={"return_details": True})
    missing = DETAIL_COLUMNS - set(getattr(details, "columns", ()))
    if missing or len(details) != len(inputs):
        raise ArgumentError(
            "model", f"the mlflow_lite model did not return one row of details per input (missing {sorted(missing)})"
        )
    return [detail_row(record) for record in details.to_dict(orient="records")]


def detail_row(d: Mapping[str, Any]) -> Row:
    errors = None if _missing(d["validation_errors"]) else d["validation_errors"]
    return Row(
        text=_text(d["text"]),
        error=_text(d["error"]),
        latency=_number(d["latency"]),
        model=_text(d["model"]),
        cost=_number(d["cost"]),
        prompt_tokens=_count(d["prompt_tokens"]),
        completion_tokens=_count(d["completion_tokens"]),
        total_tokens=_count(d["total_tokens"]),
        cached=_text(d["cached"]),
        validation_passed=None if _missing(d["validation_passed"]) else bool(d["validation_passed"]),
        validation_errors=json.loads(errors) if isinstance(errors, str) else errors,
        trace_id=_text(d["trace_id"]),
    )


def pyfunc_row(model: Any, frame: pd.DataFrame, column: str | None) -> Row:
    """Rows are predicted one at a time so each has its own latency and its own error."""
    start = time.perf_counter()
    try:
        output = model.predict(frame)
    except Exception as exc:  # one failing input is an error row, not a failed evaluation
        _logger.warning("mlflow_lite evaluator: predict failed on a row: %s", exc)
        return Row(None, error=f"{type(exc).__name__}: {exc}", latency=time.perf_counter() - start)
    return Row(first_text(output, column), latency=time.perf_counter() - start)


def first_text(output: Any, column: str | None) -> str | None:
    """The answer in a one-row model output: a str, a list/Series/array of them, a DataFrame
    (``column``, else ``predictions``, else its first column) or a dict of them."""
    if output is None or isinstance(output, str):
        return output
    if isinstance(output, (pd.DataFrame, Mapping)):
        names = list(output.columns if isinstance(output, pd.DataFrame) else output)
        picked = next((n for n in (column, "predictions") if n in names), names[0] if names else None)
        return None if picked is None else first_text(output[picked], column)
    if isinstance(output, pd.Series):
        output = output.tolist()
    if isinstance(output, (list, tuple, np.ndarray)):
        return first_text(output[0], column) if len(output) else None
    return _text(output)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _number(value: Any) -> float | None:
    return None if _missing(value) or not math.isfinite(float(value)) else float(value)


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


# -- custom metrics --


def select_metrics(names: Any) -> list[Metric]:
    """The ``ml.add_metric`` metrics of the default client: all of them, or those named."""
    registry = get_default_client().metrics
    if names is None:
        names = registry.names()
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ArgumentError("evaluator_config", f"'metrics' must be a list of metric names, got {names!r}")
    unknown = [n for n in names if registry.get(n) is None]
    if unknown:
        known = ", ".join(registry.names()) or "none"
        raise ArgumentError(
            "evaluator_config", f"metrics {unknown} are not registered with ml.add_metric (registered: {known})"
        )
    return [registry.get(n) for n in names]  # type: ignore[misc]


def as_response(row: Row) -> Response:
    """The Response a metric taking ``(text, response)`` sees; unknown figures stay unknown."""
    known = row.prompt_tokens is not None and row.completion_tokens is not None
    return Response(
        text=row.text or "",
        model=row.model or "",
        usage=usage_dict(row.prompt_tokens, row.completion_tokens) if known else {},  # type: ignore[arg-type]
        cost=row.cost,
        latency=math.nan if row.latency is None else row.latency,
        cached=row.cached or None,
    )


def score_metrics(rows: Sequence[Row], metrics: Sequence[Metric]) -> dict[str, list[MetricResult | None]]:
    """Each metric on each answer (None for rows without one); a metric's error stays on its row."""
    responses = [None if r.text is None else as_response(r) for r in rows]
    return {
        m.name: [None if resp is None else m.evaluate(resp.text, resp) for resp in responses] for m in metrics
    }


def metric_aggregates(name: str, results: Sequence[MetricResult | None]) -> dict[str, float]:
    scored = [r for r in results if r is not None]
    numbers = [float(r.value) for r in scored if r.ok and isinstance(r.value, (bool, int, float))]
    key = metric_key(name)
    values = {f"{key}/error_count": float(sum(not r.ok for r in scored))}
    if numbers:
        values[f"{key}/mean"] = statistics.fmean(numbers)
    return values


def metric_key(name: str) -> str:
    """A metric name MLflow accepts as a key (letters, digits, ``_ - . space``)."""
    return re.sub(r"[^\w.\- ]", "_", name)


# -- question answering (SQuAD) --


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, target: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(target))


def token_f1(prediction: str, target: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(target).split()
    if not predicted or not expected:  # SQuAD v2: an empty answer is right only against an empty one
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def qa_scores(rows: Sequence[Row], targets: Sequence[Any]) -> dict[str, list[float | None]]:
    """Per-row ``exact_match`` and ``token_f1``: the best over a row's acceptable answers (a target
    may be a list); a row without an answer scores 0, as in SQuAD; a row without a target, None."""
    scores: dict[str, list[float | None]] = {"exact_match": [], "token_f1": []}
    for row, target in zip(rows, targets, strict=True):
        answers = _answers(target)
        for name, fn in (("exact_match", exact_match), ("token_f1", token_f1)):
            if not answers:
                scores[name].append(None)
            else:
                scores[name].append(0.0 if row.text is None else max(fn(row.text, a) for a in answers))
    return scores


def qa_means(qa: Mapping[str, Sequence[float | None]]) -> dict[str, float]:
    means = {name: [x for x in scores if x is not None] for name, scores in qa.items()}
    return {f"{name}/mean": statistics.fmean(xs) for name, xs in means.items() if xs}


def _answers(target: Any) -> list[str]:
    if isinstance(target, (list, tuple, np.ndarray)):
        return [str(t) for t in target if not _missing(t)]
    return [] if _missing(target) else [str(target)]


# -- aggregates --


def production_metrics(predicted: Predictions) -> dict[str, float]:
    rows = predicted.rows
    values = {f"{PREFIX}row_count": float(len(rows))}
    cost, tokens = known_total(rows, "cost"), known_total(rows, "total_tokens")
    if cost is not None and rows:
        values.update({f"{PREFIX}cost_total": cost, f"{PREFIX}cost_per_row": cost / len(rows)})
    if tokens is not None and rows:
        values.update({f"{PREFIX}tokens_total": tokens, f"{PREFIX}tokens_per_row": tokens / len(rows)})
    latencies = [r.latency for r in rows if r.latency is not None]
    if latencies:
        values[f"{PREFIX}latency_p50"] = float(np.percentile(latencies, 50))
        values[f"{PREFIX}latency_p95"] = float(np.percentile(latencies, 95))
    rates = {
        "cache_hit_rate": [bool(r.cached) for r in rows if r.error is None and r.cached is not None],
        "validation_pass_rate": [r.validation_passed for r in rows if r.validation_passed is not None],
        "error_rate": [r.error is not None for r in rows] if predicted.source != "given" else [],
    }
    values.update({f"{PREFIX}{name}": statistics.fmean(flags) for name, flags in rates.items() if flags})
    return values


def known_total(rows: Sequence[Row], field: str) -> float | None:
    """A figure summed over the rows; unknown (None) if an answered row lacks it, since a partial
    sum would understate it. A failed call adds its figure when it has one (usually nothing was
    billed)."""
    known = [v for r in rows if (v := getattr(r, field)) is not None]
    if not known or any(getattr(r, field) is None for r in rows if r.error is None):
        return None
    return float(sum(known))


def feedback_metrics(trace_ids: Sequence[str]) -> dict[str, float]:
    """``feedback/rating_mean`` and ``feedback/rating_count`` of the numeric HUMAN feedback named
    "rating" on these traces; nothing if there are no traces or one cannot be read."""
    if not trace_ids:
        return {}
    import mlflow

    mlflow.flush_trace_async_logging()
    ratings: list[float] = []
    for trace_id in trace_ids:
        trace = _read_trace(trace_id)
        if trace is None:  # a partial count would understate it
            return {}
        ratings += numeric_ratings(trace.info)
    values = {"feedback/rating_count": float(len(ratings))}
    if ratings:
        values["feedback/rating_mean"] = statistics.fmean(ratings)
    return values


def _read_trace(trace_id: str) -> Any:
    import mlflow

    try:
        trace = mlflow.get_trace(trace_id)
    except Exception as exc:
        trace, reason = None, str(exc)
    else:
        reason = "not found"
    if trace is None:
        _logger.warning("mlflow_lite evaluator: trace %s unreadable (%s); feedback not summarised", trace_id, reason)
    return trace


# -- logging --


def results_table(
    inputs: pd.DataFrame,
    predicted: Predictions,
    targets: Sequence[Any] | None,
    target_name: str,
    scored: Mapping[str, Sequence[MetricResult | None]],
    qa: Mapping[str, Sequence[float | None]],
) -> pd.DataFrame:
    """Inputs, outputs, targets and every per-row figure, one row per input."""
    columns: dict[str, list[Any]] = {"outputs": [r.text for r in predicted.rows]}
    if targets is not None:
        columns[target_name] = [t.tolist() if isinstance(t, np.ndarray) else t for t in targets]
    columns.update({f: [getattr(r, f) for r in predicted.rows] for f in ROW_FIGURES[predicted.source]})
    for name, results in scored.items():
        columns[f"{name}/score"] = [r.value if r else None for r in results]
        for part in ("rationale", "error"):
            if any(r is not None and getattr(r, part) for r in results):
                columns[f"{name}/{part}"] = [getattr(r, part) if r else None for r in results]
    columns.update({f"{name}/score": list(s) for name, s in qa.items()})
    table = inputs.copy()
    for name, values in columns.items():  # object columns: lists and None survive as JSON
        table[name] = pd.Series(values, index=table.index, dtype=object)
    return table


def log_results(
    run_id: str, values: Mapping[str, float], table: pd.DataFrame, dataset: Any, model_id: str | None
) -> dict[str, Any]:
    """Metrics (linked to the dataset and model, as MLflow's own evaluators do) and the table."""
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.models.evaluation.artifacts import JsonEvaluationArtifact
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.artifact_utils import get_artifact_uri

    client = MlflowClient()
    timestamp = int(time.time() * 1000)
    linked = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset.name and dataset.digest else {}
    metrics = [MlflowMetric(k, v, timestamp, 0, model_id=model_id, run_id=run_id, **linked) for k, v in values.items()]
    client.log_batch(run_id, metrics=metrics)
    client.log_table(run_id, data=table, artifact_file=TABLE_FILE)
    return {TABLE_ARTIFACT: JsonEvaluationArtifact(uri=get_artifact_uri(run_id, TABLE_FILE))}
