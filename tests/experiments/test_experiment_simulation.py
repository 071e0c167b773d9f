"""The verdict stays honest when staff look every day: simulated experiments, peeked at daily.

Each simulated experiment runs 30 days with a Poisson number of conversations
per day and arm; after every day the verdict is read as the service reads it
(metrics_app.experiments.statistics: the eligibility rule, the always-valid
p-value and its first crossing), and an owner who stops at the first
"winner" is counted. The rates are printed (run with -s to see them).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from metrics_app.experiments import statistics

EXPERIMENTS = 4000
DAYS = 30
PER_DAY = 40  # conversations per arm and day: 1,200 per arm in a month
MINIMUM_LIFT = 0.05


def simulate(rng: np.random.Generator, rate_a: float, rate_b: float, per_day: int = PER_DAY,
             days: int = DAYS) -> tuple[np.ndarray, ...]:
    """Cumulative conversations and bookings per arm after each day, one row per experiment."""
    daily_a = rng.poisson(per_day, (EXPERIMENTS, days))
    daily_b = rng.poisson(per_day, (EXPERIMENTS, days))
    return (daily_a.cumsum(1), rng.binomial(daily_a, rate_a).cumsum(1),
            daily_b.cumsum(1), rng.binomial(daily_b, rate_b).cumsum(1))


def winners(n_a, x_a, n_b, x_b) -> np.ndarray:
    """Which experiments an owner looking daily ends with a winner, by the service's test."""
    p_values = statistics.always_valid_p_values(n_a, x_a, n_b, x_b, MINIMUM_LIFT)
    return np.array([statistics.first_crossing(row) is not None for row in p_values])


def naive_winners(n_a, x_a, n_b, x_b) -> np.ndarray:
    """Which experiments a daily fixed-horizon z-test (p < 0.05 on any day) ends with a winner."""
    with np.errstate(divide="ignore", invalid="ignore"):  # a day with no bookings yet: no z, no winner
        pooled = (x_a + x_b) / (n_a + n_b)
        z = (x_b / n_b - x_a / n_a) / np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return (2 * stats.norm.sf(np.abs(z)) < 0.05).any(axis=1)


def upper_bound(hits: int, trials: int) -> float:
    """The one-sided 95% Clopper-Pearson upper bound of a rate."""
    return 1.0 if hits == trials else float(stats.beta.ppf(0.95, hits + 1, trials - hits))


def lower_bound(hits: int, trials: int) -> float:
    return 0.0 if hits == 0 else float(stats.beta.ppf(0.05, hits, trials - hits + 1))


@pytest.mark.parametrize("rate", [0.3, 0.1])
def test_an_aa_experiment_peeked_at_daily_rarely_finds_a_winner_while_a_naive_z_test_often_does(rate, capsys):
    rng = np.random.default_rng(20261201 + int(rate * 100))
    counts = simulate(rng, rate, rate)
    found = int(winners(*counts).sum())
    naive = int(naive_winners(*counts).sum())
    with capsys.disabled():
        print(f"\nA/A at {rate:.0%}, {EXPERIMENTS} experiments x {DAYS} daily looks: sequential false winners "
              f"{found / EXPERIMENTS:.2%} (95% upper bound {upper_bound(found, EXPERIMENTS):.2%}); naive daily "
              f"z-test {naive / EXPERIMENTS:.2%} (95% lower bound {lower_bound(naive, EXPERIMENTS):.2%})")
    assert upper_bound(found, EXPERIMENTS) <= 0.055
    assert lower_bound(naive, EXPERIMENTS) > 0.05


def test_a_real_lift_is_found_and_in_its_direction(capsys):
    rng = np.random.default_rng(7)
    counts = simulate(rng, 0.30, 0.38)
    found = winners(*counts)
    n_a, x_a, n_b, x_b = counts
    p_values = statistics.always_valid_p_values(n_a, x_a, n_b, x_b, MINIMUM_LIFT)
    wrong_way = 0
    for row, p in enumerate(p_values):
        crossed = statistics.first_crossing(p)
        if crossed is not None and x_b[row, crossed] / n_b[row, crossed] < x_a[row, crossed] / n_a[row, crossed]:
            wrong_way += 1
    with capsys.disabled():
        print(f"\nA 30% -> 38% booking rate: found in {found.mean():.2%} of {EXPERIMENTS} experiments, "
              f"the wrong way in {wrong_way}")
    assert lower_bound(int(found.sum()), EXPERIMENTS) >= 0.85
    assert wrong_way == 0


def test_the_sample_size_the_answer_gives_finds_the_lift_at_least_that_often(capsys):
    """At the conversations per arm the verdict says a lift needs, the lift is found in at least 80% of runs."""
    baseline, lift = 0.30, 0.05
    needed = statistics.sample_size(baseline, lift, 0.5, MINIMUM_LIFT)
    days = 30
    per_day = int(np.ceil(needed.sequential_a / days))
    rng = np.random.default_rng(11)
    found = winners(*simulate(rng, baseline, baseline + lift, per_day=per_day, days=days))
    with capsys.disabled():
        print(f"\n{needed.sequential_a} conversations per arm for +5 points from 30%: found in {found.mean():.2%}")
    assert lower_bound(int(found.sum()), EXPERIMENTS) >= statistics.POWER
