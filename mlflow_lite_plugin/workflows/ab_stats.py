"""Two-sample tests and multiple-comparison corrections for A/B tests (pure functions).

- :func:`welch_t_test` compares two means without assuming equal variances (costs, latencies,
  ratings, numeric metrics).
- :func:`two_proportion_test` compares two pass rates with the pooled two-proportion z-test
  (validation passes, error rates, boolean metrics).
- :func:`holm` adjusts a family of p-values (Holm-Bonferroni step-down, family-wise error rate).

With ``sequential=True`` both tests give **always-valid** p-values and confidence intervals
(a confidence sequence) instead: the normal-mixture sequential probability ratio test (mSPRT) of
Johari, Pekelis and Walsh, "Always valid inference" (2017), on the same normal approximation.
For an estimate ``d`` with variance ``V`` and a N(0, tau^2) mixture over the true difference,

    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2))),   p = min(1, 1 / Lambda)

and ``p <= alpha`` has probability at most alpha under the null *at any data-dependent stopping
time*, so reports may be read after every observation and stopped at the first significant one.
``tau`` is ``SEQUENTIAL_EFFECT`` standard deviations of one observation: the test is most
sensitive to differences of about that size. The price is a wider interval, and a larger sample
than a fixed-size test needs for the same effect.

Degenerate data never yields NaN p-values:

- fewer than two values on a side gives no variance estimate, so no evidence (p = 1);
- two constant samples are certainly different if their constants differ (p = 0), else p = 1;
- two proportions that are both 0 or both 1 do not differ (p = 1).

numpy and scipy are imported inside the functions, so importing this module (and the package)
stays fast.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mlflow_lite_plugin.core.errors import ArgumentError

WELCH = "welch_t"
TWO_PROPORTION = "two_proportion_z"
SEQUENTIAL = "_msprt"  # suffix of the test name of a sequential test
SEQUENTIAL_EFFECT = 0.3  # the mixture's scale, in standard deviations of one observation


@dataclass(frozen=True)
class TestResult:
    """One two-sample test. ``diff`` is ``mean_a - mean_b`` (a proportion difference for
    :func:`two_proportion_test`); ``ci_low``/``ci_high`` bound it at ``confidence``."""

    __test__ = False  # not a pytest test class, despite the name

    test: str
    statistic: float
    p_value: float
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    diff: float
    ci_low: float
    ci_high: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: infinite figures (a certain difference, an unbounded interval) become None."""
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


def welch_t_test(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, sequential: bool = False
) -> TestResult:
    """Welch's unequal-variance t-test of ``mean(a) == mean(b)``, two-sided, with a
    Welch-Satterthwaite confidence interval for ``mean(a) - mean(b)``; always-valid (mSPRT)
    p-value and interval with ``sequential``."""
    from scipy import stats

    _check_confidence(confidence)
    xa, xb = _sample("a", a), _sample("b", b)
    (mean_a, var_a), (mean_b, var_b) = _moments(xa), _moments(xb)
    diff = mean_a - mean_b
    result = functools.partial(  # a partial, not a dict of keywords: mypy checks each field's type
        TestResult, mean_a=mean_a, mean_b=mean_b, n_a=len(xa), n_b=len(xb), diff=diff, confidence=confidence
    )
    if len(xa) < 2 or len(xb) < 2:  # no variance estimate: no evidence either way
        return result(WELCH, 0.0, 1.0, ci_low=-math.inf, ci_high=math.inf)
    se2_a, se2_b = var_a / len(xa), var_b / len(xb)
    se = math.sqrt(se2_a + se2_b)
    if se == 0.0:  # two constants: equal or certainly different
        if mean_a == mean_b:
            return result(WELCH, 0.0, 1.0, ci_low=0.0, ci_high=0.0)
        return result(WELCH, math.copysign(math.inf, diff), 0.0, ci_low=diff, ci_high=diff)
    t = diff / se
    if sequential:
        sd = math.sqrt((var_a + var_b) / 2)
        p, margin = _msprt(diff, se * se, se * se, sd, confidence)
        return result(WELCH + SEQUENTIAL, t, p, ci_low=diff - margin, ci_high=diff + margin)
    df = (se2_a + se2_b) ** 2 / (_ratio(se2_a, len(xa) - 1) + _ratio(se2_b, len(xb) - 1))
    p = float(2 * stats.t.sf(abs(t), df))
    margin = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return result(WELCH, t, min(p, 1.0), ci_low=diff - margin, ci_high=diff + margin)


def two_proportion_test(
    successes_a: int, n_a: int, successes_b: int, n_b: int, *, confidence: float = 0.95, sequential: bool = False
) -> TestResult:
    """Two-sided pooled z-test of ``p_a == p_b``, with a Wald interval for ``p_a - p_b``;
    always-valid (mSPRT) p-value and interval with ``sequential``.

    The normal approximation wants roughly 5+ successes and failures per side; the A/B test only
    runs it once each variant has its minimum sample size."""
    from scipy import stats

    _check_confidence(confidence)
    _check_counts("a", successes_a, n_a)
    _check_counts("b", successes_b, n_b)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    diff = p_a - p_b
    result = functools.partial(
        TestResult, mean_a=p_a, mean_b=p_b, n_a=n_a, n_b=n_b, diff=diff, confidence=confidence
    )
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    z = diff / se0 if se0 else 0.0  # se0 == 0: both all-pass or both all-fail, no evidence (p = 1)
    if sequential:
        p, margin = _msprt(diff, se0 * se0, se * se, math.sqrt(pooled * (1 - pooled)), confidence)
    else:
        margin = float(stats.norm.ppf(0.5 + confidence / 2)) * se
        p = float(2 * stats.norm.sf(abs(z))) if se0 else 1.0
    name = TWO_PROPORTION + SEQUENTIAL if sequential else TWO_PROPORTION
    return result(name, z, min(p, 1.0), ci_low=diff - margin, ci_high=diff + margin)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: reject where ``adjusted < alpha``
    and the family-wise error rate stays at most alpha. Uniformly more powerful than Bonferroni."""
    for p in p_values:
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ArgumentError("p_values", f"must be probabilities in [0, 1], got {p!r}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))  # step-down stays monotone
        adjusted[i] = running
    return adjusted


def _msprt(diff: float, v_test: float, v_interval: float, sd: float, confidence: float) -> tuple[float, float]:
    """(always-valid p-value, half-width of the confidence sequence) of an estimate ``diff``
    whose variance is ``v_test`` under the null and ``v_interval`` in general."""
    tau2 = (SEQUENTIAL_EFFECT * sd) ** 2
    p = 1.0
    if v_test > 0 and tau2 > 0:
        log_lambda = 0.5 * math.log(v_test / (v_test + tau2)) + diff * diff * tau2 / (2 * v_test * (v_test + tau2))
        p = math.exp(-log_lambda) if log_lambda > 0 else 1.0
    margin = 0.0
    if v_interval > 0 and tau2 > 0:
        # {theta : Lambda(diff - theta) < 1 / alpha}
        bound = math.log(1 / (1 - confidence)) + 0.5 * math.log((v_interval + tau2) / v_interval)
        margin = math.sqrt(2 * v_interval * (v_interval + tau2) / tau2 * bound)
    return min(p, 1.0), margin


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation as numpy's default); None if empty."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def _sample(name: str, values: Sequence[float]) -> Any:
    import numpy as np

    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) == 0:
        raise ArgumentError(name, "must be a non-empty list of numbers")
    if not np.all(np.isfinite(array)):
        raise ArgumentError(name, "must hold finite numbers only (no NaN or infinity)")
    return array


def _moments(x: Any) -> tuple[float, float]:
    """Mean and sample variance; identical values give exactly (value, 0), where numpy's sums
    would leave float dust (a false, "certain" difference between equal constants)."""
    if x.min() == x.max():
        return float(x[0]), 0.0
    return float(x.mean()), float(x.var(ddof=1))


def _ratio(se2: float, df: int) -> float:
    return se2 * se2 / df


def _check_counts(side: str, successes: int, n: int) -> None:
    for label, value in ((f"n_{side}", n), (f"successes_{side}", successes)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
            raise ArgumentError(label, f"must be a whole number >= 0, got {value!r}")
    if n == 0:
        raise ArgumentError(f"n_{side}", "must be at least 1")
    if successes > n:
        raise ArgumentError(f"successes_{side}", f"{successes} successes out of {n} trials")


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ArgumentError("confidence", f"must be a probability strictly between 0 and 1, got {confidence!r}")


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
