"""Gated promotion of a registered model version: ``ml.promote``.

    ml.promote("support_bot", 3, alias="champion",
               require={"validation_pass_rate": 0.95, "cost_per_row": 0.002, "latency_p95": "<= 2.5"})

The figures are the evaluation metrics of that version: the ones ``mlflow.evaluate(...,
evaluators=["mlflow_lite"])`` logged for its model (``LoggedModel`` metrics, else its run's
metrics), or a fresh evaluation on ``data=``. A gate is a number (``>=`` it, or ``<=`` it for
figures where lower is better: cost, latency, tokens, errors), an operator string such as
``"<= 2.5"``, or a ``(operator, value)`` pair. A gate with no figure fails: promotion is refused
on missing evidence too. The alias moves only when every gate passes; the checked figures are
recorded on the version as the tag ``mlflow_lite.promotion.<alias>``.

Prompts are not promoted here: their gate is a signed approval, so their aliases move through
``ml.approve_prompt`` and ``ml.promote_prompt`` (``collaboration.py``), and ``promote`` on a prompt
name says so.
"""

from __future__ import annotations

import json
import operator
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.tracing import schema

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}
_LOWER_IS_BETTER = re.compile(r"cost|latency|tokens|error", re.I)
_PREFIX = "mlflow_lite/"


class PromotionRefusedError(MlflowLiteError):
    """A gate failed: ``failures`` maps each failing figure to (value or None, the requirement)."""

    def __init__(self, name: str, version: str, alias: str, failures: dict[str, tuple[float | None, str]]):
        lines = [
            f"{metric} = {'missing' if value is None else f'{value:.6g}'}, needs {needed}"
            for metric, (value, needed) in failures.items()
        ]
        super().__init__(f"Refused to move {alias!r} to {name} version {version}: " + "; ".join(lines))
        self.failures = failures


def promote(
    name: str,
    version: int | str,
    alias: str = "champion",
    *,
    require: Mapping[str, Any] | None = None,
    data: Any = None,
    **evaluate_kwargs: Any,
) -> dict[str, float]:
    """Move ``alias`` to ``version`` of registered model ``name`` if every gate in ``require``
    passes; raise :class:`PromotionRefusedError` with the failing figures otherwise. With
    ``data``, the version is evaluated on it first (``mlflow.evaluate`` with the mlflow_lite
    evaluator; ``targets=``, ``model_type=`` pass through). Returns the checked figures."""
    import mlflow
    from mlflow.exceptions import MlflowException

    gates = {metric: _gate(metric, rule) for metric, rule in (require or {}).items()}
    client = mlflow.MlflowClient()
    try:
        model_version = client.get_model_version(name, str(version))
    except MlflowException as exc:
        # MLflow keeps prompts out of the model API ("not found"): point at the approval workflow.
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" and client.get_prompt(name) is not None:
            raise ArgumentError(
                "name",
                f"{name!r} is a prompt: ml.promote moves model aliases; a prompt's move with ml.approve_prompt "
                "or ml.promote_prompt, which need its signed approval",
            ) from exc
        raise
    if data is not None:
        figures = _evaluate(name, model_version.version, data, evaluate_kwargs)
    else:
        figures = _logged_figures(client, model_version)
    checked: dict[str, float] = {}
    failures: dict[str, tuple[float | None, str]] = {}
    for metric, (symbol, threshold) in gates.items():
        value = _figure(figures, metric)
        if value is not None:
            checked[metric] = value
        if value is None or not _OPERATORS[symbol](value, threshold):
            failures[metric] = (value, f"{symbol} {threshold:g}")
    if failures:
        raise PromotionRefusedError(name, model_version.version, alias, failures)
    client.set_registered_model_alias(name, alias, model_version.version)
    record = {"figures": checked, "require": {m: f"{s} {t:g}" for m, (s, t) in gates.items()}, "at": time.time()}
    client.set_model_version_tag(name, model_version.version, schema.promotion_tag(alias), json.dumps(record))
    return checked


def _gate(metric: str, rule: Any) -> tuple[str, float]:
    if isinstance(rule, str):
        match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(-?[\d.eE+-]+)\s*", rule)
        if not match:
            raise ArgumentError("require", f"{metric}: {rule!r} is not a gate like '>= 0.95' or '<= 0.01'")
        return match.group(1), float(match.group(2))
    if isinstance(rule, (tuple, list)) and len(rule) == 2 and rule[0] in _OPERATORS:
        return rule[0], _number(metric, rule[1])
    symbol = "<=" if _LOWER_IS_BETTER.search(metric) else ">="
    return symbol, _number(metric, rule)


def _number(metric: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError("require", f"{metric}: the threshold must be a number, got {value!r}")
    return float(value)


def _figure(figures: Mapping[str, float], metric: str) -> float | None:
    for key in (metric, _PREFIX + metric):
        if key in figures:
            return float(figures[key])
    return None


def _logged_figures(client: Any, model_version: Any) -> dict[str, float]:
    """Latest value of each metric logged for the version's model, then its run's metrics."""
    import mlflow

    figures: dict[str, float] = {}
    if model_version.run_id:
        figures.update(client.get_run(model_version.run_id).data.metrics)
    if getattr(model_version, "model_id", None):
        logged = sorted(mlflow.get_logged_model(model_version.model_id).metrics or [], key=lambda m: m.timestamp)
        figures.update({m.key: m.value for m in logged})  # latest last, so it wins
    return figures


def _evaluate(name: str, version: str, data: Any, kwargs: Mapping[str, Any]) -> dict[str, float]:
    import mlflow

    with mlflow.start_run(run_name=f"promotion gate: {name} v{version}", nested=mlflow.active_run() is not None):
        result = mlflow.evaluate(f"models:/{name}/{version}", data, evaluators=["mlflow_lite"], **kwargs)
    return dict(result.metrics)
