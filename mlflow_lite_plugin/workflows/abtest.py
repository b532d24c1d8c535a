"""A/B tests of LLM variants: sticky assignment, observations, significance tests, a winner.

    test = ml.ab_test(
        variants={"A": {"model": "claude-3-5-sonnet", "prompt": "Answer briefly: {input}"},
                  "B": {"model": "gpt-4o", "prompt": "Answer briefly: {input}"}},
        split=[0.5, 0.5])
    r = test.query(input="How do I reset my password?", user_id="u1")   # r.variant == "A" or "B"
    print(test.report())                    # per-variant figures, tests, the winner; logged to MLflow
    test.promote_winner(registered_model="support_bot")     # for model_uri variants

**Variants.** Each is a dict:

- ``model``, ``prompt`` (a ``str.format`` template over the keywords given to ``query``, e.g.
  ``"... {input}"``; without a placeholder, ``input`` is appended after a blank line; without a
  prompt, ``input`` is the prompt), optional ``system``, ``params`` (any ``query`` keyword:
  ``temperature``, ``api_base``, ``fallbacks``...) and ``validate`` (rules);
- or ``template`` (a built-in or Prompt Registry template, as ``query_with_template``) with
  optional ``model``, ``system``, ``params`` and ``validate``;
- or ``model_uri`` (an ``mlflow_lite`` flavor model such as ``"models:/support_bot/3"``, loaded
  with ``ml.load_model``) with optional ``params``.

The variant's settings win over the same keywords given to ``query``, so a call cannot blur the
difference under test. Calls are traced with the tags ``ab_test`` and ``ab_variant``.

**Assignment.** A user id maps to a variant through sha256(test name, user id), read as a number
in [0, 1) and placed in the cumulative ``split`` buckets: the same user always gets the same
variant, in every process, and different tests split users independently. Without a user id the
variant is random. The test name defaults to a hash of the variants (secrets left out), so
processes that configure the same test agree on it; changing ``split`` keeps the name.

**Observations.** Each answer records its variant, cost, latency, validation result (None without
rules), numeric and boolean custom metrics, provider errors, trace id and user id. They live in
memory, or in a SQLite file (``path=``, WAL mode) that several processes share. Recording happens
on a background thread, because an answer's trace id is only known once its trace is written.
Ratings are human feedback named ``rating`` on the answers' MLflow traces (as
``mlflow.log_feedback`` with a ``HUMAN`` source logs them), plus ``test.add_rating``.

**The decision rule.** ``report()`` decides with these steps:

1. Until every variant with traffic has ``min_samples`` answers (default 30), the status is
   ``"collecting"`` and there is no winner.
2. Each metric is compared for every pair of variants that both have ``min_samples`` values of
   it. Quality metrics are the validation pass rate, ratings, the error rate and custom metrics;
   efficiency metrics are cost and latency. Pass/fail figures (validation, errors, boolean
   metrics) use the two-proportion z-test; the others use Welch's t-test.
3. All those p-values form **one family**, adjusted with Holm's method. The winner is decided
   from all of them together, so the chance that any false difference enters the decision is
   at most ``1 - confidence`` (default 0.95). A difference counts when its adjusted p-value is
   below ``1 - confidence``.
4. Variant V beats W when either of these holds:
   - V is significantly better than W on some quality metric and significantly worse on none;
   - no quality metric differs significantly, and V is significantly better on cost or latency
     and significantly worse on neither.
5. The winner is the variant that beats every other variant. Otherwise the status is one of:
   - ``"trade-off"``: some pair conflicts, better on one metric and worse on another;
   - ``"no significant difference"``: nothing differs significantly;
   - ``"no winner"``: there are differences, but no variant beats all the others.

Lower is better for cost, latency and the error rate. Higher is better for the pass rate,
ratings and custom metrics, unless ``goals={"toxicity": "min"}`` says otherwise.
``"ignore"`` leaves a metric out of the tests. A custom metric named like a built-in figure is
reported as ``metric.<name>``.

**Limits.**

- "No significant difference" is not proof of equivalence. With few samples, a real loss of
  quality can go undetected, so choose ``min_samples`` for the effect size you care about.
- By default each report is a fixed-sample test. Reading reports repeatedly and stopping at the
  first winner raises the false-positive rate (to about 24% at 0.95 over 20 looks, in
  ``tests/test_stats.py``), so either plan ``min_samples`` up front and decide once, or pass
  ``sequential=True``: every test then uses always-valid p-values and confidence sequences
  (mSPRT, see ``stats.py``), which keep the error rate under ``1 - confidence`` however often the
  report is read, at the cost of wider intervals and larger samples for the same effect.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import numbers
import random
import re
import statistics
import string
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow_lite_plugin.client import Client, build_call_request, get_default_client
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError, ProviderError, ValidationError, did_you_mean
from mlflow_lite_plugin.core.jsonsafe import json_safe
from mlflow_lite_plugin.core.providers import is_secret
from mlflow_lite_plugin.core.request import PIPELINE_KEYWORDS, check_tags, known_keywords
from mlflow_lite_plugin.core.response import Response
from mlflow_lite_plugin.feedback.human import numeric_ratings
from mlflow_lite_plugin.storage.memory import MemoryStorage
from mlflow_lite_plugin.storage.sqlite import SQLiteStorage
from mlflow_lite_plugin.tracing import schema
from mlflow_lite_plugin.workflows import ab_stats as stats

_logger = logging.getLogger(__name__)

# Direction of the built-in figures; custom metrics default to "max".
BUILTIN_GOALS = {"validation": "max", "rating": "max", "error_rate": "min", "cost": "min", "latency": "min"}
EFFICIENCY_METRICS = frozenset({"cost", "latency"})
GOALS = ("min", "max", "ignore")
REPORT_ARTIFACT = "ab_test_report.json"
STATUS_COLLECTING = "collecting"
STATUS_WINNER = "winner"
STATUS_TRADE_OFF = "trade-off"
STATUS_NO_DIFFERENCE = "no significant difference"
STATUS_NO_WINNER = "no winner"

_SPEC_KEYS = ("model", "prompt", "system", "params", "validate", "template", "model_uri")
_SET_BY_VARIANT = ("model", "prompt", "messages", "system")  # a call may not override what is under test
_LABELS = {"validation": "validation pass rate", "rating": "rating", "error_rate": "error rate",
           "cost": "cost", "latency": "latency"}
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


class ABTestError(MlflowLiteError):
    """An A/B test cannot do what was asked: no winner to promote, or a winner that is not a
    registered model version."""


# -- observations --


@dataclass
class Observation:
    """One answer (or provider failure) of one variant."""

    variant: str
    cost: float | None = None
    latency: float | None = None
    validation: bool | None = None  # None: the call had no validation rules
    metrics: dict[str, float | bool] = field(default_factory=dict)  # numeric and boolean custom metrics
    error: str | None = None  # the provider error's class name
    trace_id: str | None = None
    user_id: str | None = None
    at: float = field(default_factory=time.time)

    @classmethod
    def from_response(cls, variant: str, response: Response, *, user_id: str | None = None) -> Observation:
        """Reads ``response.trace_id``, so this waits for the trace to be written."""
        metrics = {
            name: result.value
            for name, result in response.metrics.items()
            if result.ok and isinstance(result.value, (bool, int, float))  # labels are not compared
        }
        validation = response.validation.passed if response.validation is not None else None
        return cls(variant, response.cost, response.latency, validation, metrics, None, response.trace_id, user_id)


class ObservationStore:
    """Observations and ratings of A/B tests in a storage's logs: this process's memory, or a
    SQLite file (WAL mode) shared by the processes of a host."""

    def __init__(self, storage: MemoryStorage | SQLiteStorage):
        self.storage = storage
        if isinstance(storage, SQLiteStorage):
            storage.prepare("log")  # an unusable file fails when the test is made, not on a record

    def add(self, test: str, o: Observation) -> None:
        validation = None if o.validation is None else int(o.validation)
        row = (o.variant, o.cost, o.latency, validation, json.dumps(o.metrics), o.error, o.trace_id, o.user_id, o.at)
        self.storage.append("ab_observations", test, row)

    def observations(self, test: str) -> list[Observation]:
        return [
            Observation(v, cost, latency, None if passed is None else bool(passed), json.loads(metrics), error,
                        trace_id, user_id, at)
            for v, cost, latency, passed, metrics, error, trace_id, user_id, at in self.storage.rows(
                "ab_observations", test
            )
        ]

    def add_rating(self, test: str, trace_id: str, rating: float) -> None:
        self.storage.append("ab_ratings", test, (trace_id, rating, time.time()))

    def ratings(self, test: str) -> dict[str, list[float]]:
        return _group((trace_id, rating) for trace_id, rating, _ in self.storage.rows("ab_ratings", test))


def _group(pairs: Iterable[tuple[str, float]]) -> dict[str, list[float]]:
    grouped: dict[str, list[float]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


# -- the report --


@dataclass
class VariantStats:
    """Figures of one variant. Means are None until there is a value to average."""

    name: str
    weight: float
    n: int  # answers and provider failures
    errors: int
    error_rate: float | None
    cost_mean: float | None
    cost_total: float
    latency_mean: float | None
    latency_p50: float | None
    latency_p95: float | None
    validation_pass_rate: float | None
    validation_n: int
    rating_mean: float | None
    rating_n: int  # answers with at least one rating
    metrics: dict[str, float] = field(default_factory=dict)  # custom metric means (booleans: rate of True)
    metric_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Comparison:
    """One metric, one pair of variants. ``diff = mean_a - mean_b`` with its (unadjusted)
    confidence interval; ``better`` is set only when the Holm-adjusted p-value is significant."""

    metric: str
    a: str
    b: str
    kind: str  # "quality" or "efficiency"
    goal: str  # "min" or "max"
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    test: str | None = None  # None: not tested (see note)
    statistic: float | None = None
    p_value: float | None = None
    adjusted_p: float | None = None
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    significant: bool = False
    better: str | None = None
    note: str | None = None


@dataclass
class ABReport:
    """What an A/B test shows so far; ``str(report)`` is a readable table."""

    test: str
    status: str  # "collecting", "winner", "trade-off", "no significant difference", "no winner"
    winner: str | None
    reason: str
    confidence: float
    min_samples: int
    variants: dict[str, VariantStats]
    comparisons: list[Comparison]
    run_id: str | None = None  # the MLflow run it was logged to
    sequential: bool = False  # always-valid p-values: safe to read after every answer

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def __str__(self) -> str:
        headline = f"A/B test {self.test!r}: " + (f"winner {self.winner}" if self.winner else self.status)
        settings = f"(confidence {self.confidence:g}, at least {self.min_samples} samples per variant" + \
            (", sequential)" if self.sequential else ")")
        return "\n\n".join([f"{headline} {settings}\n{self.reason}", _variant_table(self), _comparison_table(self)])


def build_report(
    test: str,
    weights: Mapping[str, float],
    observations: Sequence[Observation],
    ratings: Mapping[str, Sequence[float]],
    *,
    min_samples: int,
    confidence: float,
    goals: Mapping[str, str],
    sequential: bool = False,
) -> ABReport:
    """The report of ``observations`` (``ratings`` maps trace ids to their ratings); see the
    module docstring for the decision rule. Pure: no MLflow."""
    groups: dict[str, list[Observation]] = {name: [] for name in weights}
    for o in observations:
        if o.variant in groups:  # a variant no longer configured is left out
            groups[o.variant].append(o)
    values = {name: _values(group, ratings) for name, group in groups.items()}
    variants = {name: _variant_stats(name, weights[name], groups[name], values[name]) for name in weights}
    active = [name for name in weights if weights[name] > 0 or groups[name]]
    comparisons = _compare(active, values, goals, min_samples, confidence, sequential)
    status, winner, reason = _decide(active, groups, comparisons, min_samples)
    return ABReport(test, status, winner, reason, confidence, min_samples, variants, comparisons,
                    sequential=sequential)


def _values(group: Sequence[Observation], ratings: Mapping[str, Sequence[float]]) -> dict[str, list[Any]]:
    """Per metric, the values of one variant: floats, or bools for pass/fail figures."""
    values: dict[str, list[Any]] = {
        "validation": [o.validation for o in group if o.validation is not None],
        "rating": [statistics.fmean(ratings[t]) for o in group if (t := o.trace_id) is not None and t in ratings],
        "error_rate": [o.error is not None for o in group],
        "cost": [o.cost for o in group if o.cost is not None],
        "latency": [o.latency for o in group if o.latency is not None],
    }
    for o in group:
        for name, value in o.metrics.items():
            values.setdefault(f"metric.{name}" if name in BUILTIN_GOALS else name, []).append(value)
    return values


def _variant_stats(
    name: str, weight: float, group: Sequence[Observation], values: dict[str, list[Any]]
) -> VariantStats:
    custom = {metric: v for metric, v in values.items() if metric not in BUILTIN_GOALS}
    return VariantStats(
        name=name,
        weight=weight,
        n=len(group),
        errors=sum(values["error_rate"]),
        error_rate=_mean(values["error_rate"]),
        cost_mean=_mean(values["cost"]),
        cost_total=float(sum(values["cost"])),
        latency_mean=_mean(values["latency"]),
        latency_p50=stats.percentile(values["latency"], 50),
        latency_p95=stats.percentile(values["latency"], 95),
        validation_pass_rate=_mean(values["validation"]),
        validation_n=len(values["validation"]),
        rating_mean=_mean(values["rating"]),
        rating_n=len(values["rating"]),
        metrics={metric: _mean(v) for metric, v in custom.items() if v},  # type: ignore[misc]
        metric_counts={metric: len(v) for metric, v in custom.items()},
    )


def _compare(
    active: Sequence[str], values: Mapping[str, dict[str, list[Any]]], goals: Mapping[str, str], min_samples: int,
    confidence: float, sequential: bool,
) -> list[Comparison]:
    metrics = list(BUILTIN_GOALS) + sorted({m for v in values.values() for m in v} - set(BUILTIN_GOALS))
    comparisons = []
    for metric in metrics:
        goal = goals.get(metric, BUILTIN_GOALS.get(metric, "max"))
        if goal == "ignore" or not any(values[v].get(metric) for v in active):
            continue
        for a, b in itertools.combinations(active, 2):
            comparisons.append(_comparison(metric, goal, a, b, values[a].get(metric, []), values[b].get(metric, []),
                                           min_samples, confidence, sequential))
    tested = [c for c in comparisons if c.p_value is not None]
    alpha = 1 - confidence
    for c, adjusted in zip(tested, stats.holm([c.p_value for c in tested]), strict=True):  # type: ignore[misc]
        c.adjusted_p = adjusted
        c.significant = adjusted < alpha and c.diff != 0
        if c.significant:
            c.better = c.a if ((c.diff or 0) > 0) == (c.goal == "max") else c.b
    return comparisons


def _comparison(
    metric: str, goal: str, a: str, b: str, va: list[Any], vb: list[Any], min_samples: int, confidence: float,
    sequential: bool,
) -> Comparison:
    c = Comparison(metric, a, b, "efficiency" if metric in EFFICIENCY_METRICS else "quality", goal,
                   len(va), len(vb), _mean(va), _mean(vb))
    short = [f"{name} has {len(v)}/{min_samples}" for name, v in ((a, va), (b, vb)) if len(v) < min_samples]
    if short:
        c.note = "not tested yet: " + ", ".join(short) + " values"
        return c
    if all(isinstance(x, bool) for x in itertools.chain(va, vb)):
        result = stats.two_proportion_test(sum(va), len(va), sum(vb), len(vb), confidence=confidence,
                                           sequential=sequential)
    else:
        result = stats.welch_t_test([float(x) for x in va], [float(x) for x in vb], confidence=confidence,
                                    sequential=sequential)
    c.test, c.statistic, c.p_value = result.test, result.statistic, result.p_value
    c.diff, c.ci_low, c.ci_high = result.diff, result.ci_low, result.ci_high
    return c


def _decide(
    active: Sequence[str], groups: Mapping[str, list[Observation]], comparisons: Sequence[Comparison], min_samples: int
) -> tuple[str, str | None, str]:
    short = [f"{name} has {len(groups[name])}/{min_samples} samples" for name in active
             if len(groups[name]) < min_samples]
    if short:
        return STATUS_COLLECTING, None, "Collecting: " + ", ".join(short) + "."
    for v in active:
        others = [w for w in active if w != v]
        reasons = [_beats(v, w, comparisons) for w in others]
        if all(reasons):
            return STATUS_WINNER, v, "; ".join(reasons) + "." + _untested(comparisons)  # type: ignore[arg-type]
    found = (_conflict(v, w, comparisons) for v, w in itertools.combinations(active, 2))
    conflicts = [c for c in found if c]
    if conflicts:
        return STATUS_TRADE_OFF, None, "Trade-off: " + "; ".join(conflicts) + "." + _untested(comparisons)
    if not any(c.significant for c in comparisons):
        return STATUS_NO_DIFFERENCE, None, "No significant difference on any metric." + _untested(comparisons)
    return STATUS_NO_WINNER, None, "No variant beats all the others." + _untested(comparisons)


def _pair(v: str, w: str, comparisons: Sequence[Comparison], kind: str) -> tuple[list[Comparison], list[Comparison]]:
    """Significant differences of one kind between v and w: (v better, v worse)."""
    pair = [c for c in comparisons if {c.a, c.b} == {v, w} and c.kind == kind and c.significant]
    return [c for c in pair if c.better == v], [c for c in pair if c.better == w]


def _beats(v: str, w: str, comparisons: Sequence[Comparison]) -> str | None:
    """Why v beats w (see the decision rule), or None."""
    better, worse = _pair(v, w, comparisons, "quality")
    if better and not worse:
        return f"{v} beats {w} on {_evidence(v, better)} and is not significantly worse on any quality metric"
    if better or worse:
        return None
    better, worse = _pair(v, w, comparisons, "efficiency")
    if better and not worse:
        return f"{v} beats {w} on {_evidence(v, better)} with no significant difference in quality"
    return None


def _conflict(v: str, w: str, comparisons: Sequence[Comparison]) -> str | None:
    for kind in ("quality", "efficiency"):
        better, worse = _pair(v, w, comparisons, kind)
        if better and worse:
            return f"{v} is better than {w} on {_evidence(v, better)} but worse on {_evidence(w, worse)}"
        if better or worse:
            return None  # settled at this level
    return None


def _evidence(v: str, comparisons: Sequence[Comparison]) -> str:
    parts = []
    for c in comparisons:
        mine, theirs = (c.mean_a, c.mean_b) if c.a == v else (c.mean_b, c.mean_a)
        parts.append(f"{_LABELS.get(c.metric, c.metric)} ({_fmt(c.metric, mine)} vs {_fmt(c.metric, theirs)}, "
                     f"adjusted p={c.adjusted_p:.2g})")
    return " and ".join(parts)


def _untested(comparisons: Sequence[Comparison]) -> str:
    pending = sorted({_LABELS.get(c.metric, c.metric) for c in comparisons if c.note})
    return f" Not tested yet (too few values): {', '.join(pending)}." if pending else ""


def _mean(values: Sequence[Any]) -> float | None:
    return float(sum(values)) / len(values) if values else None


# -- the test --


@dataclass
class _Variant:
    """A parsed variant spec; ``prepare`` resolves templates and loads flavor models."""

    name: str
    spec: dict[str, Any]
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    template: Any = None
    model_uri: str | None = None
    variables: frozenset[str] = frozenset()  # the call keywords this variant fills its prompt with
    app: Any = None  # the loaded LiteModel of a model_uri variant
    registered: tuple[str, str] | None = None  # (registered model, version) it was loaded from

    def prepare(self) -> None:
        if self.model_uri is not None:
            self._load()
        elif self.template is not None:
            from mlflow_lite_plugin.prompts import templates

            self.variables = frozenset(templates.resolve_template(self.template).variables)
            _check_params(self)
        else:
            self.variables = frozenset(_placeholders(self.prompt) or ("input",))
            _check_params(self)

    def _load(self) -> None:
        import mlflow
        from mlflow.store.artifact.utils.models import get_model_name_and_version, is_models_uri

        from mlflow_lite_plugin.flavor.model import load_model

        uri = self.model_uri
        assert uri is not None  # only a model_uri variant loads a model
        if is_models_uri(uri):
            resolved = get_model_name_and_version(mlflow.MlflowClient(), uri)
            if len(resolved) == 2:  # pin an alias or "latest" to the version actually served
                self.registered = (resolved[0], str(resolved[1]))
                uri = f"models:/{resolved[0]}/{resolved[1]}"
        self.app = load_model(uri)
        names = list(self.app.variables)
        self.variables = frozenset(names + (["input"] if len(names) == 1 else []))

    def call(self, client: Client, variables: dict[str, Any], kwargs: dict[str, Any]) -> Response:
        if self.app is not None:
            _share_metrics(client, self.app.client)
            if "input" in variables and "input" not in self.app.variables:  # input fills the one variable
                variables.setdefault(self.app.variables[0], variables.pop("input"))
            return self.app.query(**variables, **kwargs)
        own: dict[str, Any] = {k: v for k, v in (("model", self.model), ("system", self.system)) if v is not None}
        if self.template is not None:
            return client.query_with_template(self.template, **own, **variables, **kwargs)
        return client.query(self._render(variables), **own, **kwargs)

    def _render(self, variables: Mapping[str, Any]) -> str:
        prompt = self.prompt or "{input}"
        names = _placeholders(prompt)
        for name in names or ("input",):
            if name not in variables:
                raise ArgumentError(name, f"variant {self.name!r} needs it for its prompt {prompt!r}")
        if not names:
            return f"{prompt}\n\n{variables['input']}"
        return prompt.format(**{name: variables[name] for name in names})


class ABTest:
    """An A/B test of LLM variants (see the module docstring).

    ``variants`` maps names to specs; ``split`` is a list of weights in that order or a dict of
    name to weight (non-negative, summing to 1; default: equal). ``min_samples`` answers per
    variant are needed before a winner; ``confidence`` is 1 minus the family-wise error rate;
    ``sequential=True`` makes every test always valid, for reading reports as answers arrive;
    ``goals`` sets the direction of custom metrics ("min", "max") or leaves a metric out
    ("ignore"). ``path`` stores observations in a SQLite file shared by processes; ``client``
    runs the calls (default: the client behind ``ml.query``).
    """

    def __init__(
        self,
        variants: Mapping[str, Mapping[str, Any]],
        split: Sequence[float] | Mapping[str, float] | None = None,
        *,
        name: str | None = None,
        client: Client | None = None,
        min_samples: int = 30,
        confidence: float = 0.95,
        goals: Mapping[str, str] | None = None,
        path: str | Path | None = None,
        sequential: bool = False,
    ):
        if not isinstance(variants, Mapping) or len(variants) < 2:
            raise ArgumentError("variants", f"must be a dict of at least two named variants, got {variants!r}")
        self._variants = {v: _parse_variant(v, spec) for v, spec in variants.items()}
        self.weights = _weights(list(self._variants), split)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ArgumentError("name", f"must be a non-empty string, got {name!r}")
        self.name = name or "ab-" + hashlib.sha256(_canonical(variants).encode()).hexdigest()[:12]
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
            raise ArgumentError("min_samples", f"must be a whole number >= 2, got {min_samples!r}")
        if not isinstance(confidence, float) or not 0.5 <= confidence < 1:
            raise ArgumentError("confidence", f"must be a probability in [0.5, 1), such as 0.95, got {confidence!r}")
        if not isinstance(sequential, bool):
            raise ArgumentError("sequential", f"must be True or False, got {sequential!r}")
        self.min_samples = min_samples
        self.confidence = confidence
        self.sequential = sequential
        self.goals = _goals(goals)
        self.store = ObservationStore(SQLiteStorage(path) if path is not None else MemoryStorage())
        self._client = client
        self._random = random.Random()
        self._lock = threading.Lock()  # guards _pending
        self._prepare_lock = threading.Lock()
        self._prepared = False
        self._all_variables: frozenset[str] = frozenset()
        self._pending: set[Future[None]] = set()

    def __repr__(self) -> str:
        return f"ABTest(name={self.name!r}, split={self.weights!r})"

    @property
    def variants(self) -> list[str]:
        return list(self._variants)

    @property
    def client(self) -> Client:
        return self._client or get_default_client()

    # -- traffic --

    def assign(self, user_id: Any = None) -> str:
        """The variant of ``user_id`` (sticky: a hash of the test name and the id); random without one."""
        if user_id is None:
            u = self._random.random()
        else:
            digest = hashlib.sha256(f"{self.name}\x00{user_id}".encode()).digest()
            u = int.from_bytes(digest[:8], "big") / 2**64
        chosen = None
        upper = 0.0
        for variant, weight in self.weights.items():
            if weight > 0:
                upper += weight
                chosen = variant
                if u < upper:
                    break
        return chosen  # type: ignore[return-value]  # the last bucket also takes the float dust below 1

    def query(self, user_id: Any = None, **kwargs: Any) -> Response:
        """Answer with the user's variant: keywords are the prompts' variables (``input=``...) and
        ``query`` keywords. Returns the variant's Response with ``r.variant`` set; a provider or
        validation error is recorded for the variant (its ``.variant`` set) and re-raised."""
        for key in _SET_BY_VARIANT:
            if key in kwargs:
                raise ArgumentError(key, "is set by each variant of the A/B test; pass the prompt's variables instead")
        self._prepare()
        variant = self._variants[self.assign(user_id)]
        variables, call_kwargs = self._route(variant, kwargs)
        uid = None if user_id is None else str(user_id)
        try:
            response = variant.call(self.client, variables, call_kwargs)
        except ValidationError as error:
            error.variant = variant.name  # type: ignore[attr-defined]
            self._record_later(variant.name, error.response, uid, error)
            raise
        except ProviderError as error:
            error.variant = variant.name  # type: ignore[attr-defined]
            self._record_later(variant.name, None, uid, error)
            raise
        response.variant = variant.name  # type: ignore[attr-defined]
        self._record_later(variant.name, response, uid)
        return response

    def record(self, variant: str, response: Response, *, user_id: Any = None) -> None:
        """Count an answer of ``variant`` obtained outside ``query`` (e.g. a stream's ``.response``)."""
        if variant not in self._variants:
            raise ArgumentError("variant", f"{variant!r} is not a variant of this test ({', '.join(self._variants)})")
        if not isinstance(response, Response):
            raise ArgumentError("response", f"must be an ml.Response, got {type(response).__name__}")
        self._record_later(variant, response, None if user_id is None else str(user_id))

    def add_rating(self, trace: str | Response, rating: float) -> None:
        """A rating of one answer collected outside MLflow (by trace id or Response); combined
        with the HUMAN ``rating`` feedback on its trace."""
        trace_id = trace.trace_id if isinstance(trace, Response) else trace
        if not isinstance(trace_id, str) or not trace_id:
            raise ArgumentError("trace", f"must be a trace id or a traced Response, got {trace!r}")
        if isinstance(rating, bool) or not isinstance(rating, numbers.Real) or not math.isfinite(rating):
            raise ArgumentError("rating", f"must be a finite number, got {rating!r}")
        self.store.add_rating(self.name, trace_id, float(rating))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every answer so far is recorded (report() does this first)."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout)

    # -- results --

    def report(self, *, log: bool = True, feedback: bool = True) -> ABReport:
        """Figures, tests and the winner so far (see the decision rule). ``log`` records it to a new
        MLflow run; ``feedback`` reads HUMAN ``rating`` feedback from the answers' traces."""
        self.flush()
        observations = self.store.observations(self.name)
        ratings = self.store.ratings(self.name)
        if feedback:
            ids = {o.trace_id for o in observations if o.trace_id and o.variant in self._variants}
            for trace_id, values in _trace_ratings(ids).items():
                ratings.setdefault(trace_id, []).extend(values)
        report = build_report(
            self.name, self.weights, observations, ratings,
            min_samples=self.min_samples, confidence=self.confidence, goals=self.goals, sequential=self.sequential,
        )
        if log:
            report.run_id = _log_report(report, self._params())
        return report

    def promote_winner(self, registered_model: str | None = None, *, alias: str = "champion") -> Promotion:
        """Point ``alias`` of ``registered_model`` (default: the one in the winner's URI) at the
        winning variant's model version. Raises ABTestError while there is no winner, or when the
        winner is not a registered model version. The report is logged; the version gets the tag
        ``mlflow_lite.ab_test.<alias>`` with the test, variant, reason and run id."""
        import mlflow

        if not isinstance(alias, str) or not alias.strip():
            raise ArgumentError("alias", f"must be a non-empty alias name, got {alias!r}")
        report = self.report()
        if report.winner is None:
            raise ABTestError(f"A/B test {self.name!r} has no winner yet ({report.reason}); {alias!r} was not moved")
        variant = self._variants[report.winner]
        if variant.model_uri is None:
            raise ABTestError(
                f"The winner {variant.name!r} is a model and prompt, not a registered model version; "
                "use model_uri variants (models:/name/version) to promote a winner"
            )
        client = mlflow.MlflowClient()
        model, version = variant.registered or _registered_version(client, variant.model_uri, registered_model)
        if registered_model is not None and model != registered_model:
            model, version = _registered_version(client, f"models:/{model}/{version}", registered_model)
        client.set_registered_model_alias(model, alias, version)
        record = {"test": self.name, "variant": variant.name, "reason": report.reason, "run_id": report.run_id}
        client.set_model_version_tag(model, version, schema.ab_test_alias_tag(alias), json.dumps(record))
        _logger.info("A/B test %r: moved %r of %s to version %s (%s)", self.name, alias, model, version, variant.name)
        return Promotion(model, version, alias, variant.name, report)

    # -- internals --

    def _prepare(self) -> None:
        """Resolve templates and load flavor models once, so every variant's settings are checked
        on the first call, whichever variant it goes to."""
        if self._prepared:
            return
        with self._prepare_lock:
            if not self._prepared:
                for variant in self._variants.values():
                    variant.prepare()
                self._all_variables = frozenset().union(*(v.variables for v in self._variants.values()))
                self._prepared = True

    def _route(self, variant: _Variant, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split a call's keywords into this variant's variables and query keywords; another
        variant's variables are dropped."""
        query_names = known_keywords() | PIPELINE_KEYWORDS
        variables: dict[str, Any] = {}
        call_kwargs: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in variant.variables:
                variables[key] = value
            elif key in query_names:
                call_kwargs[key] = value
            elif key not in self._all_variables:
                hint = did_you_mean(key, sorted(self._all_variables | query_names), cutoff=0.75)
                raise ArgumentError(
                    key, f"is neither a variable of any variant ({', '.join(sorted(self._all_variables))}) "
                    f"nor a query argument.{hint}"
                )
        call_kwargs.update(variant.params)  # the variant's settings are what is under test
        tags = check_tags(call_kwargs.get("tags"))
        call_kwargs["tags"] = {**tags, "ab_test": self.name, "ab_variant": variant.name}
        return variables, call_kwargs

    def _record_later(
        self, variant: str, response: Response | None, user_id: str | None, error: MlflowLiteError | None = None
    ) -> None:
        """Record off the caller's path: the trace id is known only once the trace is written."""

        def record() -> None:
            if response is not None:
                observation = Observation.from_response(variant, response, user_id=user_id)
            else:
                observation = Observation(variant, error=type(error).__name__, user_id=user_id)
            observation.trace_id = observation.trace_id or getattr(error, "trace_id", None)
            self.store.add(self.name, observation)

        future = _recorder().submit(record)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._recorded)

    def _recorded(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.exception() is not None:  # never fails a call; the answer is just not counted
            _logger.warning("A/B test %r could not record an answer: %s", self.name, future.exception())

    def _params(self) -> dict[str, str]:
        params = {
            "test": self.name,
            "split": json.dumps(self.weights),
            "min_samples": str(self.min_samples),
            "confidence": str(self.confidence),
            "sequential": str(self.sequential),
            "goals": json.dumps(self.goals, sort_keys=True),
        }
        params.update({f"variant.{name}": _canonical(v.spec) for name, v in self._variants.items()})
        return {_key(k): v if len(v) <= _MAX_PARAM_LENGTH else v[: _MAX_PARAM_LENGTH - 3] + "..."
                for k, v in params.items()}


@dataclass
class Promotion:
    """What ``promote_winner`` did, and the report behind it."""

    registered_model: str
    version: str
    alias: str
    variant: str
    report: ABReport


def ab_test(
    variants: Mapping[str, Mapping[str, Any]],
    split: Sequence[float] | Mapping[str, float] | None = None,
    *,
    name: str | None = None,
    client: Client | None = None,
    **options: Any,
) -> ABTest:
    """Start an A/B test (see :class:`ABTest`): ``ml.ab_test(variants={...}, split=[0.5, 0.5])``."""
    return ABTest(variants, split, name=name, client=client, **options)


# -- helpers --


def _parse_variant(name: Any, spec: Any) -> _Variant:
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError("variants", f"variant names must be non-empty strings, got {name!r}")
    if not isinstance(spec, Mapping):
        raise ArgumentError(
            "variants", f"variant {name!r} must be a dict such as {{'model': 'gpt-4o', 'prompt': '... {{input}}'}}, "
            f"got {type(spec).__name__}"
        )
    for key in spec:
        if key not in _SPEC_KEYS:
            hint = did_you_mean(key, _SPEC_KEYS)
            raise ArgumentError(
                "variants", f"variant {name!r} has an unknown key {key!r}.{hint} Known: {', '.join(_SPEC_KEYS)}"
            )
    if not spec:
        raise ArgumentError("variants", f"variant {name!r} is empty: give a model and prompt, a template or model_uri")
    kinds = [k for k in ("model_uri", "template", "prompt") if k in spec]
    if "model_uri" in spec and set(spec) - {"model_uri", "params"}:
        raise ArgumentError(
            "variants", f"variant {name!r}: a model_uri variant takes its model, prompt and rules from the logged "
            f"model; only params may be added, got {', '.join(sorted(set(spec) - {'model_uri'}))}"
        )
    if len(kinds) > 1:
        raise ArgumentError("variants", f"variant {name!r} gives both {kinds[0]} and {kinds[1]}; give one of them")
    for key in ("model", "prompt", "system", "model_uri"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ArgumentError("variants", f"variant {name!r}: {key} must be a non-empty string, got {value!r}")
    if "template" in spec and not spec["template"]:
        raise ArgumentError("variants", f"variant {name!r}: template must be a template name or Template")
    params = spec.get("params") or {}
    if not isinstance(params, Mapping):
        raise ArgumentError("variants", f"variant {name!r}: params must be a dict of query keywords, got {params!r}")
    for key in _SET_BY_VARIANT:
        if key in params:
            raise ArgumentError("variants", f"variant {name!r}: give {key} as the variant's own key, not in params")
    params = dict(params)
    if spec.get("validate") is not None:
        params["validate"] = spec["validate"]
    if spec.get("prompt") is not None:
        _placeholders(spec["prompt"], name)
    return _Variant(
        name, dict(spec), model=spec.get("model"), prompt=spec.get("prompt"), system=spec.get("system"),
        params=params, template=spec.get("template"), model_uri=spec.get("model_uri"),
    )


def _placeholders(prompt: str | None, variant: str | None = None) -> tuple[str, ...]:
    """The ``{name}`` placeholders of a prompt; ArgumentError (naming the variant) if malformed."""
    if prompt is None:
        return ()
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None]
    except ValueError as exc:
        raise ArgumentError("variants", f"variant {variant!r}: the prompt is not a valid template ({exc}); "
                            "write a literal brace as {{ or }}") from None
    for f in fields:
        if not re.fullmatch(r"[A-Za-z_]\w*", f):
            raise ArgumentError("variants", f"variant {variant!r}: placeholder {{{f}}} must be a plain name (input)")
    return tuple(dict.fromkeys(fields))


def _check_params(variant: _Variant) -> None:
    """The variant's query keywords, checked as a call would check them."""
    try:
        build_call_request(model="check", prompt="check", messages=None, system=None, kwargs=variant.params)
    except ArgumentError as exc:
        raise ArgumentError("variants", f"variant {variant.name!r}: {exc}") from None


def _weights(names: list[str], split: Any) -> dict[str, float]:
    if split is None:
        return {n: 1 / len(names) for n in names}
    if isinstance(split, Mapping):
        unknown = [k for k in split if k not in names]
        missing = [n for n in names if n not in split]
        if unknown or missing:
            problem = f"unknown variant(s) {unknown}" if unknown else f"no weight for {missing}"
            raise ArgumentError("split", f"{problem}; the variants are {names}")
        values = [split[n] for n in names]
    elif isinstance(split, Iterable) and not isinstance(split, (str, bytes)):  # a list, tuple, numpy array...
        values = list(split)
        if len(values) != len(names):
            raise ArgumentError("split", f"has {len(values)} weights for {len(names)} variants ({', '.join(names)})")
    else:
        raise ArgumentError("split", f"must be a list of weights or a dict of variant to weight, got {split!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ArgumentError("split", f"weights must be non-negative numbers, got {value!r}")
    if abs(sum(values) - 1) > 1e-9:
        raise ArgumentError("split", f"weights must sum to 1, got {sum(values):g}; give fractions such as [0.5, 0.5]")
    if sum(1 for v in values if v > 0) < 2:
        raise ArgumentError("split", "at least two variants need a positive weight to compare anything")
    return {n: float(v) for n, v in zip(names, values, strict=True)}


def _goals(goals: Any) -> dict[str, str]:
    if goals is None:
        return {}
    if not isinstance(goals, Mapping):
        raise ArgumentError("goals", f"must be a dict of metric name to 'min', 'max' or 'ignore', got {goals!r}")
    for metric, goal in goals.items():
        if goal not in GOALS:
            raise ArgumentError("goals", f"{metric}: must be 'min', 'max' or 'ignore', got {goal!r}")
    return dict(goals)


def _canonical(value: Any) -> str:
    """Stable JSON of a config without secrets: callables by name, so processes agree on it."""
    def clean(item: Any) -> Any:
        if isinstance(item, Mapping):
            return {str(k): clean(v) for k, v in item.items() if not is_secret(str(k))}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        if item is None or isinstance(item, (str, int, float, bool)):
            return item
        return getattr(item, "__qualname__", type(item).__qualname__)

    return json.dumps(clean(value), sort_keys=True)


def _share_metrics(source: Client, target: Client) -> None:
    """A flavor model has its own client: score its answers with the test client's metrics too."""
    for name in source.list_metrics():
        metric = source.metrics.get(name)
        mine = target.metrics.get(name)
        if metric is not None and (mine is None or mine.fn is not metric.fn):
            target.add_metric(name, metric.fn, description=metric.description)


def _registered_version(client: Any, uri: str, registered_model: str | None) -> tuple[str, str]:
    """(registered model, version) of a model URI: parsed from models:/name/version (or an alias),
    else looked up among the versions registered from the same logged model or run."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version, is_models_uri

    model_id = run_id = None
    if is_models_uri(uri):
        resolved = get_model_name_and_version(client, uri)
        if len(resolved) == 2 and registered_model in (None, resolved[0]):
            return resolved[0], str(resolved[1])
        if len(resolved) == 2:
            version = client.get_model_version(resolved[0], str(resolved[1]))
            model_id, run_id = _model_id(version), version.run_id
        else:
            model_id = resolved[0]
            run_id = client.get_logged_model(model_id).source_run_id
    elif uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
    found = [
        v for v in (client.search_model_versions(f"run_id = '{run_id}'") if run_id else [])
        if (registered_model is None or v.name == registered_model) and (model_id is None or _model_id(v) == model_id)
    ]
    if len(found) != 1:
        target = f"registered model {registered_model!r}" if registered_model else "the model registry"
        problem = "is not a version of" if not found else "matches several versions in"
        raise ABTestError(f"The winner's model {uri} {problem} {target}; register it or pass registered_model=")
    return found[0].name, str(found[0].version)


def _model_id(version: Any) -> str | None:
    """The logged model behind a registered version (search results leave ``model_id`` empty;
    the source URI ``models:/<model_id>`` still names it)."""
    if version.model_id:
        return str(version.model_id)
    source = version.source or ""
    return source[len("models:/"):] if source.startswith("models:/m-") else None


def _trace_ratings(trace_ids: Iterable[str]) -> dict[str, list[float]]:
    """HUMAN feedback named "rating" on these MLflow traces (the numbers, see ``numeric_ratings``)."""
    import mlflow

    def read(trace_id: str) -> tuple[str, list[float]]:
        try:
            trace = mlflow.get_trace(trace_id, silent=True)
        except Exception as exc:  # an unreachable store must not break the report
            _logger.warning("Could not read the feedback of trace %s: %s", trace_id, exc)
            return trace_id, []
        return trace_id, numeric_ratings(trace.info) if trace is not None else []

    ids = sorted(trace_ids)
    if not ids:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
        return {trace_id: values for trace_id, values in pool.map(read, ids) if values}


def _log_report(report: ABReport, params: Mapping[str, str]) -> str:
    """One MLflow run per report: params (test, split, variants), per-variant figures and p-values
    as metrics, the full report as a JSON artifact."""
    import mlflow

    tags = {schema.AB_TEST: report.test, schema.AB_TEST_STATUS: report.status}
    if report.winner:
        tags[schema.AB_TEST_WINNER] = report.winner
    with mlflow.start_run(run_name=f"ab_test {report.test}", nested=mlflow.active_run() is not None, tags=tags) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics(_report_metrics(report))
        mlflow.log_dict(report.to_dict(), REPORT_ARTIFACT)
    return str(run.info.run_id)


def _report_metrics(report: ABReport) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, s in report.variants.items():
        for figure, value in asdict(s).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and figure != "weight":
                metrics[_key(f"{name}.{figure}")] = float(value)
        for metric, value in s.metrics.items():
            metrics[_key(f"{name}.metric.{metric}")] = value
    for c in report.comparisons:
        if c.p_value is not None:
            metrics[_key(f"p_value.{c.metric}.{c.a}_vs_{c.b}")] = c.p_value
            metrics[_key(f"p_adjusted.{c.metric}.{c.a}_vs_{c.b}")] = c.adjusted_p  # type: ignore[assignment]
    return metrics


def _key(name: str) -> str:
    """An MLflow param/metric key: letters, digits and ``_-. :`` only."""
    return re.sub(r"[^\w\-. :]", "_", name)


_recorder_pool: ThreadPoolExecutor | None = None
_recorder_lock = threading.Lock()


def _recorder() -> ThreadPoolExecutor:
    """One background thread records the answers of every test (in order, off the caller's path)."""
    global _recorder_pool
    with _recorder_lock:
        if _recorder_pool is None:
            _recorder_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-lite-abtest")
        return _recorder_pool


# -- tables --


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "cost":
        return f"${value:.3g}"
    if metric == "latency":
        return f"{value:.3g}s"
    return f"{value:.3g}"


def _variant_table(report: ABReport) -> str:
    custom = sorted({m for s in report.variants.values() for m in s.metrics})
    header = ["variant", "weight", "n", "errors", "cost mean", "cost total", "latency mean", "p50", "p95",
              "pass rate", "rating (n)", *custom]
    rows = [header]
    for s in report.variants.values():
        rating = f"{_fmt('rating', s.rating_mean)} ({s.rating_n})" if s.rating_n else "-"
        rows.append([
            s.name, f"{s.weight:.3g}", str(s.n), str(s.errors), _fmt("cost", s.cost_mean), f"${s.cost_total:.3g}",
            _fmt("latency", s.latency_mean), _fmt("latency", s.latency_p50), _fmt("latency", s.latency_p95),
            _fmt("rate", s.validation_pass_rate), rating, *(_fmt(m, s.metrics.get(m)) for m in custom),
        ])
    return _table(rows)


def _comparison_table(report: ABReport) -> str:
    if not report.comparisons:
        return "No comparisons yet."
    rows = [["metric", "pair", "means", "test", "p", "adjusted p", "better"]]
    for c in report.comparisons:
        tested = c.p_value is not None
        rows.append([
            _LABELS.get(c.metric, c.metric), f"{c.a} vs {c.b}",
            f"{_fmt(c.metric, c.mean_a)} vs {_fmt(c.metric, c.mean_b)}", c.test or "-",
            f"{c.p_value:.2g}" if tested else "-", f"{c.adjusted_p:.2g}" if tested else "-",
            c.better or ("-" if tested else c.note or "-"),
        ])
    return _table(rows)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
