"""95% confidence intervals of the metrics a monitored site reports.

Each function takes outcomes and predicted risks and returns
``(estimate, low, high)``, NaN where undefined.

- AUROC: DeLong's interval, the one every run reports
  (:mod:`lhs_federated.learning.intervals`);
- calibration intercept and slope: Wald intervals from the information matrix
  of the recalibration fit (:mod:`lhs_federated.learning.recalibration`);
- observed/expected ratio: log-normal, ``SE(log O/E) = 1 / sqrt(O)``;
- Brier score: normal, from the spread of the squared errors.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from lhs_federated.learning.binary_scores import roc_auc
from lhs_federated.learning.intervals import delong_interval
from lhs_federated.learning.recalibration import fit_recalibration, linear_predictor

Z = float(norm.ppf(0.975))
NAN3 = (math.nan, math.nan, math.nan)


def auroc_interval(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """AUROC with its DeLong 95% interval (see :mod:`lhs_federated.learning.intervals`)."""
    if min(np.count_nonzero(y == 1), np.count_nonzero(y == 0)) < 2:
        return NAN3
    interval = delong_interval(y, p)
    return (roc_auc(y, p), *(interval or (math.nan, math.nan)))


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
