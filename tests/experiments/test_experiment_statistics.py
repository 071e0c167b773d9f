"""Every interval, p-value and sample size of an experiment against scipy and statsmodels on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

from metrics_app.experiments import statistics

COUNTS = [(0, 10), (3, 10), (30, 100), (99, 100), (100, 100), (412, 1377), (1, 2)]


@pytest.mark.parametrize(("successes", "trials"), COUNTS)
def test_a_rate_has_wilsons_interval(successes, trials):
    found = statistics.wilson(successes, trials)
    low, high = proportion_confint(successes, trials, alpha=0.05, method="wilson")
    assert found.value == successes / trials
    assert found.low == pytest.approx(low, abs=1e-12)
    assert found.high == pytest.approx(high, abs=1e-12)


def test_a_rate_without_conversations_has_no_interval():
    assert statistics.wilson(0, 0) is None


@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"),
                         [(30, 100, 45, 110), (5, 150, 1, 140), (412, 1377, 455, 1390), (20, 200, 20, 200)])
def test_a_difference_of_rates_has_newcombes_interval_and_the_pooled_z_tests_p_value(x_a, n_a, x_b, n_b):
    found = statistics.rate_difference(x_a, n_a, x_b, n_b)
    low, high = confint_proportions_2indep(x_b, n_b, x_a, n_a, method="newcomb", compare="diff")
    _, p_value = proportions_ztest([x_b, x_a], [n_b, n_a])
    assert found.difference == pytest.approx(x_b / n_b - x_a / n_a, abs=1e-12)
    assert (found.low, found.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert found.p_value == pytest.approx(p_value, rel=1e-9, abs=1e-15)


def test_two_arms_where_nothing_ever_happens_do_not_differ():
    found = statistics.rate_difference(0, 120, 0, 130)
    assert found.difference == 0 and found.p_value == 1.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_difference_of_means_is_welchs_t_test_with_its_interval(seed):
    rng = np.random.default_rng(seed)
    a = rng.exponential(0.004, rng.integers(5, 400))
    b = rng.exponential(0.005, rng.integers(5, 400))
    found = statistics.mean_difference(statistics.Sample.of(a), statistics.Sample.of(b))
    reference = stats.ttest_ind(b, a, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert found.difference == pytest.approx(b.mean() - a.mean(), rel=1e-12)
    assert found.p_value == pytest.approx(reference.pvalue, rel=1e-8)
    assert (found.low, found.high) == (pytest.approx(interval.low, rel=1e-8), pytest.approx(interval.high, rel=1e-8))


@pytest.mark.parametrize("df", [1, 1.5, 2, 2.5, 7.3, 30, 1000, 1e6])
def test_students_t_distribution_matches_scipys(df):
    for t in (0.0, 0.1, 1.0, 1.96, 3.0, 10.0):
        # Within 1e-8: at a million degrees of freedom the log-gamma differences lose a few digits.
        assert statistics.student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-8, abs=1e-14)
    assert statistics.student_t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_past_ten_million_degrees_of_freedom_students_t_is_the_normal_within_a_millionth():
    assert statistics.student_t_two_sided_p(2.0, 1e9) == pytest.approx(2 * stats.t.sf(2.0, 1e9), rel=1e-6)
    assert statistics.student_t_quantile(0.975, 1e9) == pytest.approx(stats.t.ppf(0.975, 1e9), rel=1e-6)


def test_a_mean_has_its_t_interval():
    values = np.array([0.002, 0.004, 0.0031, 0.01, 0.0007, 0.0052])
    found = statistics.mean_interval(statistics.Sample.of(values))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert (found.low, found.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_an_arm_with_one_conversation_has_no_mean_difference():
    assert statistics.mean_difference(statistics.Sample.of(np.array([1.0])),
                                       statistics.Sample.of(np.array([1.0, 2.0]))) is None


@pytest.mark.parametrize(("baseline", "lift", "split"), [(0.3, 0.05, 0.5), (0.3, 0.05, 0.3), (0.1, 0.03, 0.5),
                                                         (0.2, -0.05, 0.5)])
def test_the_fixed_horizon_sample_size_is_statsmodels_normal_ind_power(baseline, lift, split):
    found = statistics.sample_size(baseline, lift, split, tau=abs(lift))
    h = abs(2 * math.asin(math.sqrt(baseline + lift)) - 2 * math.asin(math.sqrt(baseline)))
    ratio = (1 - split) / split
    nobs_a = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=ratio)
    # statsmodels also counts the far tail's (negligible) power, so its figure is a hair smaller.
    assert found.fixed_horizon_a == pytest.approx(math.ceil(nobs_a), abs=1)
    assert found.fixed_horizon_b == pytest.approx(math.ceil(nobs_a * ratio), abs=1)
    # Looking all along costs conversations: the sequential test needs more than a single look.
    assert found.sequential_a > found.fixed_horizon_a and found.sequential_b > found.fixed_horizon_b


def test_no_sample_size_when_the_lift_leaves_the_rates():
    assert statistics.sample_size(0.98, 0.05, 0.5, tau=0.05) is None
    assert statistics.sample_size(0.0, 0.05, 0.5, tau=0.05) is None


@pytest.mark.parametrize(("n_a", "n_b", "share"), [(480, 520, 0.5), (300, 700, 0.3), (5000, 5400, 0.5), (1, 0, 0.5)])
def test_the_sample_ratio_check_is_the_chi_square_goodness_of_fit(n_a, n_b, share):
    found = statistics.sample_ratio(n_a, n_b, share)
    total = n_a + n_b
    reference = stats.chisquare([n_a, n_b], [total * share, total * (1 - share)])
    assert found.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert found.mismatch == (reference.pvalue < 0.001)


def test_a_ten_percent_shortfall_over_ten_thousand_conversations_is_a_mismatch():
    assert statistics.sample_ratio(4700, 5300, 0.5).mismatch
    assert not statistics.sample_ratio(4950, 5050, 0.5).mismatch


def test_the_mixture_ratio_matches_its_formula():
    n_a, x_a, n_b, x_b, tau = 400, 120, 420, 160, 0.05
    pooled = (x_a + x_b) / (n_a + n_b)
    v = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    d = x_b / n_b - x_a / n_a
    expected = math.sqrt(v / (v + tau**2)) * math.exp(tau**2 * d**2 / (2 * v * (v + tau**2)))
    found = statistics.log_mixture_ratio(np.array([n_a]), np.array([x_a]), np.array([n_b]), np.array([x_b]), tau)
    assert math.exp(found[0]) == pytest.approx(expected, rel=1e-12)


def test_the_always_valid_p_value_never_rises_and_waits_for_enough_conversations():
    n = np.array([20, 60, 120, 200, 300])
    p_values = statistics.always_valid_p_values(n, n * 0.2, n, n * 0.45, tau=0.05)
    assert p_values[0] == p_values[1] == 1.0  # below the minimum sample the test does not count
    assert np.all(np.diff(p_values) <= 0)
    assert statistics.first_crossing(p_values) is not None


def test_a_sample_from_a_databases_sums_equals_the_sample_itself():
    values = np.random.default_rng(5).exponential(0.003, 5000)
    found = statistics.Sample.from_sums(len(values), float(values.sum()), float((values**2).sum()))
    assert found.mean == pytest.approx(values.mean(), rel=1e-12)
    assert found.variance == pytest.approx(values.var(ddof=1), rel=1e-9)
