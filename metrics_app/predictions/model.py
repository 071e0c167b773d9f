"""The likely-bookings regression and its scores: pure functions over numpy arrays; nothing here reads the database.

- Logistic regression with an L2 penalty on the standardised coefficients
  (not the intercept), fitted by Newton's method (iteratively reweighted least
  squares) with sample weights, for at most MAX_ITERATIONS steps. The
  objective is sum_i w_i log L_i - (l2 / 2) |beta|^2, so the penalty weighs as
  much as `l2` conversations whatever the number of prefixes (each
  conversation's prefixes weigh 1 together).
- The Brier score is the weighted mean of (p - y)^2; the base rate's is the
  same with p the training rate for every row.
- The reliability table cuts [0, 1] into RELIABILITY_BINS equal bins of the
  predicted probability, each with its rows, their weight, the weighted mean
  prediction and the weighted observed rate.

tests/predictions/ checks the fit against statsmodels and the scores against
a computation of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

DEFAULT_L2 = 1.0
MAX_ITERATIONS = 50
# Newton converges quadratically: a step this small in every coefficient is the optimum to float precision.
TOLERANCE = 1e-9
RELIABILITY_BINS = 10
# Logits are clipped here before exp(): past +-35 the probability is 1 or 0 to double precision anyway.
_LOGIT_LIMIT = 35.0


@dataclass(frozen=True)
class Fit:
    """A fitted regression in the standardised space: p = sigmoid(intercept + ((x - mean) / scale) . coefficients)."""

    intercept: float
    coefficients: FloatArray
    mean: FloatArray
    scale: FloatArray
    iterations: int
    converged: bool

    def probabilities(self, x: FloatArray) -> FloatArray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return sigmoid(self.intercept + z @ self.coefficients)

    def as_json(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "coefficients": self.coefficients.tolist(), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "iterations": self.iterations, "converged": self.converged}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fit:
        return cls(intercept=float(data["intercept"]),
                   coefficients=np.asarray(data["coefficients"], dtype=np.float64),
                   mean=np.asarray(data["mean"], dtype=np.float64), scale=np.asarray(data["scale"], dtype=np.float64),
                   iterations=int(data["iterations"]), converged=bool(data["converged"]))


def sigmoid(logit: FloatArray) -> FloatArray:
    result: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(logit, -_LOGIT_LIMIT, _LOGIT_LIMIT)))
    return result


def standardisation(x: FloatArray, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Weighted mean and standard deviation per column; a constant column gets scale 1 (its coefficient stays 0)."""
    total = weights.sum()
    mean = (weights @ x) / total
    variance = (weights @ (x - mean) ** 2) / total
    scale = np.sqrt(variance)
    scale[scale < 1e-12] = 1.0
    return mean, scale


def fit_logistic(
    x: FloatArray, y: FloatArray, weights: FloatArray, l2: float = DEFAULT_L2, max_iterations: int = MAX_ITERATIONS
) -> Fit:
    """The L2-penalised weighted logistic regression of y (0/1) on the columns of x, by Newton's method."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    mean, scale = standardisation(x, weights)
    design = np.hstack([np.ones((x.shape[0], 1)), (x - mean) / scale])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0  # the intercept is not shrunk: it carries the base rate
    beta = np.zeros(design.shape[1])
    rate = float(np.clip((weights @ y) / weights.sum(), 1e-6, 1 - 1e-6))
    beta[0] = np.log(rate / (1 - rate))
    converged = False
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007  (the count is reported)
        p = sigmoid(design @ beta)
        gradient = design.T @ (weights * (y - p)) - penalty * beta
        curvature = weights * p * (1 - p)
        hessian = (design * curvature[:, None]).T @ design + np.diag(penalty)
        # A tiny ridge keeps the solve defined when a column is constant and the penalty is 0.
        step = np.linalg.solve(hessian + 1e-10 * np.eye(len(beta)), gradient)
        beta = beta + step
        if np.max(np.abs(step)) < TOLERANCE:
            converged = True
            break
    return Fit(intercept=float(beta[0]), coefficients=beta[1:], mean=mean, scale=scale, iterations=iterations,
               converged=converged)


def brier(p: FloatArray, y: FloatArray, weights: FloatArray) -> float:
    """The weighted mean squared difference between the probabilities and the 0/1 outcomes."""
    return float((weights @ (np.asarray(p) - y) ** 2) / weights.sum())


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    rows: int
    weight: float
    mean_predicted: float | None
    observed_rate: float | None

    def as_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "prefixes": self.rows, "weight": self.weight,
                "mean_predicted": self.mean_predicted, "observed_rate": self.observed_rate}


def reliability(
    p: FloatArray, y: FloatArray, weights: FloatArray, bins: int = RELIABILITY_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins of p over [0, 1] (the last one closed at 1), each with its weighted mean p and rate of y."""
    p = np.asarray(p, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        chosen = index == b
        weight = float(weights[chosen].sum())
        rows = int(chosen.sum())
        table.append(ReliabilityBin(
            low=b / bins, high=(b + 1) / bins, rows=rows, weight=weight,
            mean_predicted=float(weights[chosen] @ p[chosen] / weight) if weight > 0 else None,
            observed_rate=float(weights[chosen] @ y[chosen] / weight) if weight > 0 else None,
        ))
    return table
