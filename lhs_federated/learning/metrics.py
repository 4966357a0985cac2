"""Clinical prediction metrics with defined behaviour when a metric is undefined.

A small hospital's test split may hold only one outcome class; AUROC,
calibration slope and the like are then undefined. They are reported as
missing with a reason, never as an exception and never as a made-up number,
and aggregation across sites skips them (:func:`nan_weighted_mean`) instead of
letting one NaN turn the federation's average into NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lhs_federated.learning.binary_scores import (
    accuracy,
    average_precision,
    balanced_accuracy,
    brier,
    roc_auc,
)

METRIC_NAMES = (
    "n",
    "prevalence",
    "auroc",
    "auprc",
    "accuracy",
    "balanced_accuracy",
    "brier",
    "calibration_slope",
    "calibration_intercept",
    "ece",
)

_EPS = 1e-7


@dataclass(frozen=True)
class MetricReport:
    """Metric values (NaN where undefined) and the reason each is undefined."""

    values: dict[str, float]
    undefined: dict[str, str] = field(default_factory=dict)


def clinical_metrics(
    y_true: np.ndarray, probability: np.ndarray, *, threshold: float = 0.5, bins: int = 10
) -> MetricReport:
    """Score predicted probabilities against observed binary outcomes.

    Parameters
    ----------
    y_true : array of shape (n,)
        Observed outcomes, 0 or 1.
    probability : array of shape (n,)
        Predicted probability of the positive class.
    threshold : float
        Cut-off for accuracy and balanced accuracy.
    bins : int
        Number of equal-width probability bins for the expected calibration
        error (ECE).

    Returns
    -------
    MetricReport
        ``n``, ``prevalence``, ``auroc``, ``auprc``, ``accuracy``,
        ``balanced_accuracy``, ``brier``, ``calibration_slope``,
        ``calibration_intercept`` (calibration-in-the-large) and ``ece``.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.clip(np.asarray(probability, dtype=float), 0.0, 1.0)
    n = len(y)
    values: dict[str, float] = {name: float("nan") for name in METRIC_NAMES}
    undefined: dict[str, str] = {}
    values["n"] = float(n)
    if n == 0:
        for name in METRIC_NAMES[1:]:
            undefined[name] = "no test rows"
        return MetricReport(values, undefined)
    predicted = (p >= threshold).astype(int)
    values["prevalence"] = float(y.mean())
    values["accuracy"] = accuracy(y, predicted)
    values["brier"] = brier(y, p)
    values["ece"] = expected_calibration_error(y, p, bins=bins)
    if y.min() == y.max():
        reason = f"single-class test set (all {n} rows are {'positive' if y[0] else 'negative'})"
        for name in (
            "auroc",
            "auprc",
            "balanced_accuracy",
            "calibration_slope",
            "calibration_intercept",
        ):
            undefined[name] = reason
        return MetricReport(values, undefined)
    values["auroc"] = roc_auc(y, p)
    values["auprc"] = average_precision(y, p)
    values["balanced_accuracy"] = balanced_accuracy(y, predicted)
    logit = np.log(np.clip(p, _EPS, 1 - _EPS) / (1 - np.clip(p, _EPS, 1 - _EPS)))
    values["calibration_intercept"] = _calibration_in_the_large(y, logit)
    if values["auroc"] in (0.0, 1.0):
        undefined["calibration_slope"] = (
            "predictions separate the outcomes perfectly; the slope is infinite"
        )
    else:
        values["calibration_slope"] = _calibration_slope(y, logit)
    return MetricReport(values, undefined)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, *, bins: int) -> float:
    """Share-weighted mean gap between predicted and observed risk per bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(p[members].mean() - y[members].mean())
    return float(error)


def _calibration_slope(y: np.ndarray, logit: np.ndarray) -> float:
    """Slope b of the logistic recalibration model logit P(y) = a + b * logit(p)."""
    design = np.column_stack([np.ones_like(logit), logit])
    coefficients = _newton_logistic(y, design, offset=np.zeros_like(logit))
    return float(coefficients[1])


def _calibration_in_the_large(y: np.ndarray, logit: np.ndarray) -> float:
    """Intercept a of logit P(y) = a + logit(p): 0 when mean risk is right."""
    coefficients = _newton_logistic(y, np.ones((len(y), 1)), offset=logit)
    return float(coefficients[0])


def _newton_logistic(y: np.ndarray, design: np.ndarray, *, offset: np.ndarray) -> np.ndarray:
    """Unpenalised logistic regression by Newton-Raphson (small designs only)."""
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        eta = np.clip(offset + design @ beta, -30, 30)
        mu = 1 / (1 + np.exp(-eta))
        weights = np.maximum(mu * (1 - mu), 1e-12)
        gradient = design.T @ (y - mu)
        hessian = design.T @ (design * weights[:, None])
        step = np.linalg.solve(hessian + 1e-10 * np.eye(len(beta)), gradient)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def nan_weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Weighted mean over the defined (non-NaN) values; NaN if none is defined."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    defined = ~np.isnan(v) & (w > 0)
    if not defined.any():
        return float("nan")
    return float(np.sum(v[defined] * w[defined]) / np.sum(w[defined]))
