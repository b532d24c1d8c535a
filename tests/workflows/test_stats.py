"""Statistics of the A/B tests on synthetic data with a known truth (fixed seeds): agreement with
scipy and hand-computed values, calibration under the null, power, Holm, degenerate data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.workflows.ab_stats import holm, percentile, two_proportion_test, welch_t_test


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(1.0, 1.0, size=37)
    b = rng.normal(1.4, 2.5, size=64)  # unequal sizes and variances: Welch's case
    result = welch_t_test(a, b, confidence=0.9)
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-10)
    ci = expected.confidence_interval(0.9)
    assert (result.ci_low, result.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert result.diff == pytest.approx(a.mean() - b.mean())
    assert (result.n_a, result.n_b, result.test) == (37, 64, "welch_t")


def test_welch_degenerate_data_gives_no_nan():
    same = welch_t_test([2.0] * 5, [2.0] * 8)
    assert (same.p_value, same.statistic, same.ci_low, same.ci_high) == (1.0, 0.0, 0.0, 0.0)
    # two constants that differ (deterministic costs of two models) are certainly different
    apart = welch_t_test([3e-05] * 5, [1e-06] * 8)
    assert apart.p_value == 0.0 and apart.statistic == math.inf
    assert apart.ci_low == apart.ci_high == pytest.approx(3e-05 - 1e-06)
    # identical values never leave float dust in the variance
    assert welch_t_test([0.1] * 3, [0.1] * 7).p_value == 1.0
    # one side constant: the other's variance carries the test
    varied = np.array([1.0, 2.0, 3.0, 2.0, 1.5])
    one = welch_t_test([1.0] * 10, varied)
    t = (1.0 - varied.mean()) / math.sqrt(varied.var(ddof=1) / 5)  # Welch df reduce to n_b - 1 = 4
    assert one.statistic == pytest.approx(t) and one.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 4))
    # a single value has no variance estimate: no evidence either way
    single = welch_t_test([5.0], [1.0, 1.1, 0.9])
    assert single.p_value == 1.0 and single.to_dict()["ci_low"] is None and single.to_dict()["ci_high"] is None
    with pytest.raises(ArgumentError, match="non-empty"):
        welch_t_test([], [1.0, 2.0])
    with pytest.raises(ArgumentError, match="finite"):
        welch_t_test([1.0, float("nan")], [1.0, 2.0])


def test_two_proportion_matches_hand_computed_z():
    # 45/100 vs 30/100: pooled p = 0.375, se = sqrt(0.375 * 0.625 * (1/100 + 1/100))
    z = (0.45 - 0.30) / math.sqrt(0.375 * 0.625 * 0.02)
    p = math.erfc(abs(z) / math.sqrt(2))  # two-sided normal tail
    result = two_proportion_test(45, 100, 30, 100)
    assert z == pytest.approx(2.19089, abs=1e-5) and p == pytest.approx(0.028459, abs=1e-6)
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.diff == pytest.approx(0.15)
    wald = 1.959964 * math.sqrt(0.45 * 0.55 / 100 + 0.30 * 0.70 / 100)
    assert result.ci_low == pytest.approx(0.15 - wald, abs=1e-6)
    assert result.ci_high == pytest.approx(0.15 + wald, abs=1e-6)
    assert two_proportion_test(30, 100, 45, 100).statistic == pytest.approx(-z)


def test_two_proportion_degenerate_and_bad_counts():
    assert two_proportion_test(40, 40, 35, 35).p_value == 1.0  # both always pass
    assert two_proportion_test(0, 40, 0, 35).p_value == 1.0  # both always fail
    assert two_proportion_test(40, 40, 0, 40).p_value < 1e-15  # all pass vs all fail
    assert two_proportion_test(np.int64(3), np.int64(10), 5, 10).n_a == 10  # numpy counts work
    with pytest.raises(ArgumentError, match="successes_a"):
        two_proportion_test(11, 10, 5, 10)
    with pytest.raises(ArgumentError, match="n_b"):
        two_proportion_test(1, 10, 0, 0)
    with pytest.raises(ArgumentError, match="n_a"):
        two_proportion_test(1, -1, 0, 5)
    with pytest.raises(ArgumentError, match="confidence"):
        two_proportion_test(1, 10, 2, 10, confidence=1.0)


def _rejection_rate(pvalues: list[float], alpha: float = 0.05) -> float:
    return sum(p < alpha for p in pvalues) / len(pvalues)


def test_welch_false_positive_rate_under_the_null_is_calibrated():
    rng = np.random.default_rng(20261125)
    # skewed, unequal sizes: costs and latencies look like this
    pvalues = [welch_t_test(rng.lognormal(0, 0.5, 40), rng.lognormal(0, 0.5, 60)).p_value for _ in range(400)]
    assert 0.02 <= _rejection_rate(pvalues) <= 0.09


def test_two_proportion_false_positive_rate_under_the_null_is_calibrated():
    rng = np.random.default_rng(7)
    pvalues = [
        two_proportion_test(int(rng.binomial(200, 0.3)), 200, int(rng.binomial(150, 0.3)), 150).p_value
        for _ in range(400)
    ]
    assert 0.02 <= _rejection_rate(pvalues) <= 0.09


def test_welch_detects_a_real_difference():
    rng = np.random.default_rng(11)
    # a 0.3 standard-deviation shift with n=200 per arm: power about 0.85
    pvalues = [welch_t_test(rng.normal(0, 1, 200), rng.normal(0.3, 1, 200)).p_value for _ in range(200)]
    assert _rejection_rate(pvalues) > 0.8


def test_two_proportion_detects_a_real_difference():
    rng = np.random.default_rng(12)
    # validation pass rates 0.70 vs 0.85 with n=200 per arm: power about 0.95
    pvalues = [two_proportion_test(int(rng.binomial(200, 0.70)), 200, int(rng.binomial(200, 0.85)), 200).p_value
               for _ in range(200)]
    assert _rejection_rate(pvalues) > 0.8


def test_holm_on_a_known_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []
    # Holm rejects at least what Bonferroni rejects
    p = [0.011, 0.02, 0.04, 0.3]
    assert sum(x < 0.05 for x in holm(p)) >= sum(x * len(p) < 0.05 for x in p)
    with pytest.raises(ArgumentError, match="p_values"):
        holm([0.1, 1.5])


def test_percentile_is_numpys_linear_percentile():
    values = [0.3, 0.1, 0.9, 0.5, 0.2]
    assert percentile(values, 95) == pytest.approx(np.percentile(values, 95))
    assert percentile(values, 50) == 0.3 and percentile([], 50) is None


# -- sequential (always-valid) tests --

LOOKS = range(25, 501, 25)  # a report read after every 25 answers per variant, 20 times


def _peeking(seed: int, effect: float, *, proportions: bool, sequential: bool, runs: int = 200) -> tuple[float, float]:
    """(share of runs where some look was significant at 0.05, share where every look's interval
    held the true difference)."""
    rng = np.random.default_rng(seed)
    significant = covered = 0
    for _ in range(runs):
        if proportions:
            a, b = rng.random(500) < 0.5 + effect, rng.random(500) < 0.5
        else:
            a, b = rng.normal(effect, 1.0, 500), rng.normal(0.0, 1.0, 500)
        results = [two_proportion_test(int(a[:n].sum()), n, int(b[:n].sum()), n, sequential=sequential)
                   if proportions else welch_t_test(a[:n], b[:n], sequential=sequential) for n in LOOKS]
        significant += any(r.p_value < 0.05 for r in results)
        covered += all(r.ci_low <= effect <= r.ci_high for r in results)
    return significant / runs, covered / runs


@pytest.mark.parametrize("proportions", [False, True], ids=["means", "proportions"])
def test_peeking_breaks_fixed_tests_and_not_sequential_ones(proportions):
    fixed_fpr, fixed_coverage = _peeking(11, 0.0, proportions=proportions, sequential=False)
    fpr, coverage = _peeking(11, 0.0, proportions=proportions, sequential=True)
    assert fixed_fpr > 0.12 and fixed_coverage < 0.88  # the problem: 20 looks at 0.95 is not 0.95
    assert fpr <= 0.05 and coverage >= 0.95  # always valid, at every look


@pytest.mark.parametrize("proportions, effect", [(False, 0.3), (True, 0.15)], ids=["means", "proportions"])
def test_sequential_tests_still_find_real_differences(proportions, effect):
    power, coverage = _peeking(12, effect, proportions=proportions, sequential=True)
    assert power >= 0.9 and coverage >= 0.95


def test_sequential_results_are_named_and_wider():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.3, 1.0, 200), rng.normal(0.0, 1.0, 200)
    fixed, always = welch_t_test(a, b), welch_t_test(a, b, sequential=True)
    assert (fixed.test, always.test) == ("welch_t", "welch_t_msprt")
    assert always.p_value > fixed.p_value and always.ci_high - always.ci_low > fixed.ci_high - fixed.ci_low
    assert always.diff == fixed.diff and always.ci_low < always.diff < always.ci_high
    assert two_proportion_test(60, 100, 40, 100, sequential=True).test == "two_proportion_z_msprt"
    assert two_proportion_test(100, 100, 100, 100, sequential=True).p_value == 1.0  # degenerate: no NaN
