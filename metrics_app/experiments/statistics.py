"""The statistics of an experiment: intervals, tests, the sequential verdict and the sample size it needs.

Pure functions over counts and arrays; nothing here reads the database. The
tests check each figure against scipy and statsmodels on known data, and the
sequential test's error rate by simulation (tests/experiments/).

- A rate's interval is Wilson's score interval; a difference of two rates has
  Newcombe's hybrid score interval (built from the two Wilson intervals) and
  the pooled two-proportion z-test's p-value.
- A difference of two means (cost per conversation, a conversation's mean
  latency) has Welch's t-test and its interval, with the Welch-Satterthwaite
  degrees of freedom.
- The verdict is a mixture sequential probability ratio test (mSPRT) on the
  difference of the two rates, with a normal mixing distribution of standard
  deviation `tau` (the minimum lift that matters). Its p-value is valid
  however often it is looked at: the chance that it ever falls below alpha
  when the arms do not differ is at most alpha (Ville's inequality), so an
  owner who looks daily and stops at the first "winner" is wrong at most
  5% of the time. A naive z-test looked at daily is wrong far more often.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

ALPHA = 0.05
CONFIDENCE = 0.95
POWER = 0.8
# Below this many conversations in either arm, or this many successes or failures in both together, the normal
# approximations behind the tests are poor: the verdict says "not enough data" and the sequential test waits.
MIN_CONVERSATIONS_PER_ARM = 100
MIN_OUTCOMES = 10
# The largest sample the power calculation searches: past it, the lift is too small to detect in practice.
MAX_SAMPLE = 100_000_000

_NORMAL = NormalDist()
_Z = _NORMAL.inv_cdf(1 - (1 - CONFIDENCE) / 2)  # 1.959964...

FloatArray = npt.NDArray[np.float64]
Counts = npt.ArrayLike  # counts so far: integers or floats, one per look
NORMAL_DF = 1e7


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """b minus a, with its interval and the p-value of the test named in `test`."""

    difference: float
    low: float
    high: float
    p_value: float
    test: str


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def wilson(successes: int, trials: int) -> Interval | None:
    """The rate successes/trials with Wilson's 95% score interval; None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    z2 = _Z * _Z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = _Z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def rate_difference(x_a: int, n_a: int, x_b: int, n_b: int) -> Difference | None:
    """Rate b minus rate a: Newcombe's hybrid score interval and the pooled two-proportion z-test."""
    a, b = wilson(x_a, n_a), wilson(x_b, n_b)
    if a is None or b is None:
        return None
    difference = b.value - a.value
    low = difference - math.sqrt((b.value - b.low) ** 2 + (a.high - a.value) ** 2)
    high = difference + math.sqrt((b.high - b.value) ** 2 + (a.value - a.low) ** 2)
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p_value = normal_two_sided_p(difference / se) if se > 0 else 1.0
    return Difference(difference, low, high, p_value, "two-proportion z-test (pooled); Newcombe interval")


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            result *= step
        if abs(step - 1.0) < 1e-15:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom.

    Past NORMAL_DF the normal distribution is used: it is then within 1e-6 of
    Student's, while the beta function's log-gamma terms lose more digits.
    """
    if df > NORMAL_DF:
        return normal_two_sided_p(t)
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def _student_t_density(t: float, df: float) -> float:
    if df > NORMAL_DF:
        return math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_scale - (df + 1) / 2 * math.log1p(t * t / df))


def student_t_quantile(probability: float, df: float) -> float:
    """The t with P(T <= t) = probability (0.5 < probability < 1): Newton's method from the normal quantile.

    Each step is kept inside the bracket known so far, so it cannot run away
    where the density is flat (one or two degrees of freedom).
    """
    tail = 2 * (1 - probability)
    low, high = 0.0, math.inf
    t = _NORMAL.inv_cdf(probability)
    for _ in range(100):
        excess = tail - student_t_two_sided_p(t, df)  # > 0: t is too large
        if excess > 0:
            high = t
        else:
            low = t
        step = excess / (2 * _student_t_density(t, df))
        following = t + step
        if not low < following < high:
            following = (low + high) / 2 if math.isfinite(high) else 2 * t
        if abs(following - t) <= 1e-13 * max(1.0, abs(t)):
            return following
        t = following
    return t


@dataclass(frozen=True)
class Sample:
    """What a mean's tests need of a sample: its size, mean and (n - 1) variance."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: FloatArray) -> Sample:
        values = np.asarray(values, dtype=np.float64)
        n = len(values)
        return cls(n, float(np.mean(values)) if n else 0.0, float(np.var(values, ddof=1)) if n > 1 else 0.0)

    @classmethod
    def from_sums(cls, n: int, total: float, squares: float) -> Sample:
        """From the count, sum and sum of squares, as a database sums them."""
        if n == 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        variance = max(0.0, (squares - total * mean) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, variance)


def mean_difference(a: Sample, b: Sample) -> Difference | None:
    """Mean of b minus mean of a: Welch's t-test and its 95% interval; None with fewer than 2 values in an arm."""
    if a.n < 2 or b.n < 2:
        return None
    share_a, share_b = a.variance / a.n, b.variance / b.n
    difference = b.mean - a.mean
    se2 = share_a + share_b
    test = "Welch's t-test"
    if se2 <= 0:
        return Difference(difference, difference, difference, 1.0 if difference == 0 else 0.0, test)
    df = se2 * se2 / (share_a * share_a / (a.n - 1) + share_b * share_b / (b.n - 1))
    se = math.sqrt(se2)
    half = student_t_quantile(1 - (1 - CONFIDENCE) / 2, df) * se
    return Difference(difference, difference - half, difference + half, student_t_two_sided_p(difference / se, df),
                      test)


def mean_interval(sample: Sample) -> Interval | None:
    """The mean with its 95% t interval; None without values (no interval with one)."""
    if sample.n == 0:
        return None
    if sample.n < 2:
        return Interval(sample.mean, sample.mean, sample.mean)
    half = student_t_quantile(1 - (1 - CONFIDENCE) / 2, sample.n - 1) * math.sqrt(sample.variance / sample.n)
    return Interval(sample.mean, sample.mean - half, sample.mean + half)


# --- The sequential test.


def log_mixture_ratio(n_a: Counts, x_a: Counts, n_b: Counts, x_b: Counts, tau: float) -> FloatArray:
    """log of the mSPRT's likelihood ratio for rate b minus rate a, elementwise (arrays of counts so far).

    With d the observed difference and V its variance under "no difference"
    (the pooled rate's), the ratio of the normal mixture N(0, tau^2) over
    the point 0 is sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2))).
    Where V is 0 (no data, or every conversation alike) the ratio is 0.
    """
    n_a, n_b = np.asarray(n_a, dtype=float), np.asarray(n_b, dtype=float)
    x_a, x_b = np.asarray(x_a, dtype=float), np.asarray(x_b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (x_a + x_b) / (n_a + n_b)
        variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
        difference = x_b / n_b - x_a / n_a
        t2 = tau * tau
        result = 0.5 * np.log(variance / (variance + t2)) + t2 * difference**2 / (2 * variance * (variance + t2))
    return np.where(np.isfinite(result) & (variance > 0), result, -np.inf)


def eligible(n_a: Counts, x_a: Counts, n_b: Counts, x_b: Counts) -> npt.NDArray[np.bool_]:
    """Where both arms have enough conversations, and both outcomes enough cases, for the test to count."""
    n_a, n_b = np.asarray(n_a), np.asarray(n_b)
    successes = np.asarray(x_a) + np.asarray(x_b)
    failures = n_a + n_b - successes
    return (n_a >= MIN_CONVERSATIONS_PER_ARM) & (n_b >= MIN_CONVERSATIONS_PER_ARM) & (
        successes >= MIN_OUTCOMES) & (failures >= MIN_OUTCOMES)


def always_valid_p_values(n_a: Counts, x_a: Counts, n_b: Counts, x_b: Counts, tau: float) -> FloatArray:
    """The always-valid p-value after each look (the last axis is time): the running minimum of 1 / ratio."""
    log_ratio = np.where(eligible(n_a, x_a, n_b, x_b), log_mixture_ratio(n_a, x_a, n_b, x_b, tau), -np.inf)
    p_values = np.minimum(1.0, np.exp(-log_ratio))
    return np.minimum.accumulate(p_values, axis=-1)


def first_crossing(p_values: FloatArray, alpha: float = ALPHA) -> int | None:
    """The index of the first look whose always-valid p-value is below alpha, or None."""
    below = np.flatnonzero(np.asarray(p_values) < alpha)
    return int(below[0]) if below.size else None


# --- How many conversations a lift needs.


def _sequential_threshold(variance: float, tau: float, alpha: float) -> float:
    """The |difference| at which the mSPRT's ratio reaches 1 / alpha, for a difference of this variance."""
    t2 = tau * tau
    return math.sqrt(2 * variance * (variance + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((variance + t2)
                                                                                             / variance)))


def sequential_power(total: float, baseline: float, lift: float, split: float, tau: float,
                     alpha: float = ALPHA) -> float:
    """The chance that the sequential test has a winner when `total` conversations (split as planned) are in.

    It is the chance that the difference observed at that moment is past the
    test's threshold, with a true difference of `lift` over `baseline`; a
    test looked at along the way has crossed at least as often.
    """
    other = baseline + lift
    n_a, n_b = total * split, total * (1 - split)
    pooled = split * baseline + (1 - split) * other
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    spread = math.sqrt(baseline * (1 - baseline) / n_a + other * (1 - other) / n_b)
    if variance <= 0 or spread <= 0:
        return 0.0
    return _NORMAL.cdf((abs(lift) - _sequential_threshold(variance, tau, alpha)) / spread)


@dataclass(frozen=True)
class SampleSize:
    """Conversations per arm for the sequential test (with POWER), and for a test looked at only once."""

    sequential_a: int
    sequential_b: int
    fixed_horizon_a: int
    fixed_horizon_b: int


def sample_size(baseline: float, lift: float, split: float, tau: float, alpha: float = ALPHA,
                power: float = POWER) -> SampleSize | None:
    """Conversations per arm to detect a true difference of `lift` (b minus a) from a rate of `baseline`.

    None when baseline + lift is not a rate, or no sample up to MAX_SAMPLE would do.
    The fixed-horizon figure is the classic one for a single look, from
    Cohen's h (2 asin sqrt p): what statsmodels' NormalIndPower answers.
    """
    other = baseline + lift
    if not (0 < baseline < 1 and 0 < other < 1 and lift != 0 and 0 < split < 1):
        return None
    if sequential_power(MAX_SAMPLE, baseline, lift, split, tau, alpha) < power:
        return None
    low, high = 2.0, float(MAX_SAMPLE)
    while high - low > 1:
        middle = math.floor((low + high) / 2)
        if sequential_power(middle, baseline, lift, split, tau, alpha) >= power:
            high = middle
        else:
            low = middle
    h = abs(2 * math.asin(math.sqrt(other)) - 2 * math.asin(math.sqrt(baseline)))
    ratio = (1 - split) / split
    fixed_a = ((_NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)) / h) ** 2 * (1 + 1 / ratio)
    return SampleSize(math.ceil(high * split), math.ceil(high * (1 - split)), math.ceil(fixed_a),
                      math.ceil(fixed_a * ratio))


# --- Whether the arms got the split that was planned.

SRM_ALPHA = 0.001  # the usual threshold for a sample-ratio mismatch: a real one is rarely subtle


@dataclass(frozen=True)
class SampleRatio:
    planned_share_a: float
    observed_share_a: float | None
    p_value: float | None

    @property
    def mismatch(self) -> bool:
        return self.p_value is not None and self.p_value < SRM_ALPHA


def sample_ratio(n_a: int, n_b: int, planned_share_a: float) -> SampleRatio:
    """The chi-square goodness-of-fit test of the observed split against the planned one (one degree of freedom)."""
    total = n_a + n_b
    if total == 0:
        return SampleRatio(planned_share_a, None, None)
    expected_a, expected_b = total * planned_share_a, total * (1 - planned_share_a)
    chi2 = (n_a - expected_a) ** 2 / expected_a + (n_b - expected_b) ** 2 / expected_b
    return SampleRatio(planned_share_a, n_a / total, math.erfc(math.sqrt(chi2 / 2)))
