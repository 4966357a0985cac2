"""95% confidence intervals of the metrics a monitored site reports.

Kept in one small module so it can give way to :mod:`lhs_federated.learning.intervals`
(DeLong and Wald intervals of every run's metrics) without touching the
monitoring code: each function takes outcomes and predicted risks and returns
``(estimate, low, high)``, NaN where undefined.

- AUROC: DeLong's variance (structural components of the Mann-Whitney
  statistic), the interval symmetric on the logit scale so it stays in (0, 1);
- calibration intercept and slope: Wald intervals from the information matrix
  of the recalibration fit (:mod:`lhs_federated.learning.recalibration`);
- observed/expected ratio: log-normal, ``SE(log O/E) = 1 / sqrt(O)``;
- Brier score: normal, from the spread of the squared errors.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from lhs_federated.learning.recalibration import fit_recalibration, linear_predictor

Z = float(norm.ppf(0.975))
NAN3 = (math.nan, math.nan, math.nan)


def auroc_interval(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """AUROC with its DeLong 95% interval."""
    positives, negatives = p[y == 1], p[y == 0]
    m, n = len(positives), len(negatives)
    if m < 2 or n < 2:
        return NAN3
    ranks_all = rankdata(np.concatenate([positives, negatives]))
    ranks_pos, ranks_neg = rankdata(positives), rankdata(negatives)
    auc = (ranks_all[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (ranks_all[:m] - ranks_pos) / n  # each case's share of controls ranked below
    v01 = 1 - (ranks_all[m:] - ranks_neg) / m
    variance = np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n
    if not 0 < auc < 1 or variance <= 0:
        return (float(auc), math.nan, math.nan)
    logit = math.log(auc / (1 - auc))
    half = Z * math.sqrt(variance) / (auc * (1 - auc))
    return (float(auc), _expit(logit - half), _expit(logit + half))


def calibration_intervals(y: np.ndarray, p: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """Calibration intercept (in the large) and slope with Wald 95% intervals."""
    if y.min() == y.max():
        return {"calibration_intercept": NAN3, "calibration_slope": NAN3}
    lp = linear_predictor(p)
    (a,), cov_a = fit_recalibration(y, lp, "in-the-large")
    (_, b), cov_b = fit_recalibration(y, lp, "logistic")
    se_a, se_b = math.sqrt(cov_a[0, 0]), math.sqrt(cov_b[1, 1])
    return {
        "calibration_intercept": (float(a), a - Z * se_a, a + Z * se_a),
        "calibration_slope": (float(b), b - Z * se_b, b + Z * se_b),
    }


def oe_interval(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """Observed/expected events with a log-normal 95% interval."""
    observed, expected = float(y.sum()), float(p.sum())
    if observed == 0 or expected == 0:
        return NAN3
    ratio = observed / expected
    half = Z / math.sqrt(observed)
    return (ratio, ratio * math.exp(-half), ratio * math.exp(half))


def brier_interval(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """Brier score with a normal 95% interval."""
    errors = (p - y) ** 2
    if len(errors) < 2:
        return NAN3
    mean, se = float(errors.mean()), float(errors.std(ddof=1) / math.sqrt(len(errors)))
    return (mean, max(0.0, mean - Z * se), mean + Z * se)


def _expit(value: float) -> float:
    return 1 / (1 + math.exp(-value))
