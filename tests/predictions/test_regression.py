"""The regression against statsmodels, and the Brier score and reliability table against sums of the test's own."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.optimize import minimize

from metrics_app.predictions import model


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 600
    x = rng.normal(size=(n, 4)) * [1.0, 5.0, 0.2, 1.0] + [0.0, 3.0, 1.0, 0.0]
    x[:, 3] = (x[:, 3] > 0.5).astype(float)  # a 0/1 column, as most features are
    weights = 1.0 / rng.integers(1, 6, size=n)  # a conversation's share, as the prefixes weigh
    logit = x @ [1.0, -0.3, 2.0, 0.8] - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y, weights


def standardised(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    mean = np.average(x, axis=0, weights=weights)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weights))
    return sm.add_constant((x - mean) / scale)


def test_without_penalty_it_finds_the_weighted_maximum_likelihood_of_statsmodels(data) -> None:
    x, y, weights = data
    fit = model.fit_logistic(x, y, weights, l2=0.0)
    design = standardised(x, weights)
    reference = sm.GLM(y, design, family=sm.families.Binomial(), freq_weights=weights).fit()
    assert fit.converged
    np.testing.assert_allclose([fit.intercept, *fit.coefficients], reference.params, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.probabilities(x), reference.predict(design), rtol=1e-7, atol=1e-10)


def test_with_the_l2_penalty_it_matches_statsmodels_ridge_and_a_direct_minimisation(data) -> None:
    x, y, weights = data
    fit = model.fit_logistic(x, y, weights, l2=3.0)
    ours = np.r_[fit.intercept, fit.coefficients]
    design = standardised(x, weights)
    # statsmodels minimises -loglike / n + alpha |beta|^2 / 2 (n rows); ours -loglike + l2 |beta|^2 / 2.
    alpha = np.r_[0.0, np.full(x.shape[1], 3.0 / len(y))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sm.GLM(y, design, family=sm.families.Binomial(), freq_weights=weights).fit_regularized(
            alpha=alpha, L1_wt=0.0, maxiter=1000, cnvrg_tol=1e-12)
    # Its coordinate descent stops about 1e-4 short of the optimum, whatever its tolerance: our objective is
    # lower at our coefficients, and scipy's BFGS on the same objective lands on ours.
    np.testing.assert_allclose(ours, reference.params, atol=5e-4)

    def objective(beta: np.ndarray) -> float:
        p = 1 / (1 + np.exp(-(design @ beta)))
        return float(-(weights @ (y * np.log(p) + (1 - y) * np.log(1 - p))) + 1.5 * np.sum(beta[1:] ** 2))

    assert objective(ours) <= objective(reference.params)
    direct = minimize(objective, np.zeros(len(ours)), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(ours, direct.x, atol=1e-6)
    np.testing.assert_allclose(fit.probabilities(x), 1 / (1 + np.exp(-(design @ direct.x))), atol=1e-7)


def test_the_penalised_fit_sets_the_gradient_of_its_objective_to_zero(data) -> None:
    x, y, weights = data
    fit = model.fit_logistic(x, y, weights, l2=10.0)
    design = standardised(x, weights)
    beta = np.r_[fit.intercept, fit.coefficients]
    p = 1 / (1 + np.exp(-(design @ beta)))
    gradient = design.T @ (weights * (y - p)) - 10.0 * np.r_[0.0, fit.coefficients]
    assert np.max(np.abs(gradient)) < 1e-8
    # The penalty shrinks: the penalised coefficients are smaller than the unpenalised ones.
    assert np.linalg.norm(fit.coefficients) < np.linalg.norm(model.fit_logistic(x, y, weights, l2=0.0).coefficients)


def test_a_constant_column_keeps_a_zero_coefficient_and_the_fit_its_bounded_steps(data) -> None:
    x, y, weights = data
    with_constant = np.hstack([x, np.full((len(y), 1), 7.0)])
    fit = model.fit_logistic(with_constant, y, weights)
    assert fit.converged and fit.iterations <= model.MAX_ITERATIONS
    assert fit.coefficients[-1] == pytest.approx(0.0, abs=1e-12)
    stopped = model.fit_logistic(x, y, weights, max_iterations=1)
    assert stopped.iterations == 1 and not stopped.converged


def test_a_stored_fit_predicts_the_same_probabilities_after_a_round_trip_through_json(data) -> None:
    x, y, weights = data
    fit = model.fit_logistic(x, y, weights)
    again = model.Fit.from_json(fit.as_json())
    np.testing.assert_array_equal(fit.probabilities(x), again.probabilities(x))


def test_the_brier_score_is_the_weighted_mean_squared_error() -> None:
    p = np.array([0.9, 0.2, 0.5, 0.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    w = np.array([1.0, 0.5, 0.5, 2.0])
    by_hand = (1.0 * 0.01 + 0.5 * 0.04 + 0.5 * 0.25 + 2.0 * 1.0) / 4.0
    assert model.brier(p, y, w) == pytest.approx(by_hand)


def test_the_reliability_table_has_ten_equal_bins_with_weighted_means(data) -> None:
    rng = np.random.default_rng(3)
    p = np.r_[rng.random(500), 0.0, 1.0, 0.1, 0.3]  # the edges: 0 in the first bin, 1 in the last, 0.1 in the second
    y = (rng.random(len(p)) < p).astype(float)
    w = rng.uniform(0.1, 1.0, size=len(p))
    table = model.reliability(p, y, w)
    assert [(b.low, b.high) for b in table] == [(i / 10, (i + 1) / 10) for i in range(10)]
    assert sum(b.rows for b in table) == len(p)
    for b in table:
        inside = [(pi, yi, wi) for pi, yi, wi in zip(p, y, w, strict=True)
                  if b.low <= pi < b.high or (b.high == 1.0 and pi == 1.0)]
        assert b.rows == len(inside)
        total = sum(wi for _, _, wi in inside)
        assert b.weight == pytest.approx(total)
        assert b.mean_predicted == pytest.approx(sum(pi * wi for pi, _, wi in inside) / total)
        assert b.observed_rate == pytest.approx(sum(yi * wi for _, yi, wi in inside) / total)


def test_an_empty_bin_has_no_means() -> None:
    table = model.reliability(np.array([0.05, 0.95]), np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    assert table[4].rows == 0 and table[4].mean_predicted is None and table[4].observed_rate is None
