"""Confidence intervals of per-site metrics, so a reader sees how little 3 rows say.

A site's AUROC on a dozen test patients can be anything from 0.4 to 1.0 by
chance. Each site computes the interval on its own test split (never more
than the metric itself discloses) and sends its bounds beside the metric:

- AUROC: DeLong's variance (DeLong, DeLong and Clarke-Pearson, 1988), from
  the structural components of the Mann-Whitney statistic; the interval is
  symmetric on the logit scale so it stays inside (0, 1).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata


def delong_interval(
    y_true: np.ndarray, score: np.ndarray, *, level: float = 0.95
) -> tuple[float, float] | None:
    """DeLong confidence interval of the AUROC of ``score`` against ``y_true``.

    Parameters
    ----------
    y_true : array of shape (n,)
        Observed outcomes, 0 or 1.
    score : array of shape (n,)
        Predicted risk (any monotone score).
    level : float
        Coverage of the interval.

    Returns
    -------
    tuple of float or None
        ``(low, high)``; ``None`` when it cannot be estimated: fewer than two
        positives or negatives, or an AUROC of exactly 0 or 1 (no variance).
    """
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(score, dtype=float)
    positives, negatives = s[y == 1], s[y == 0]
    m, n = len(positives), len(negatives)
    if m < 2 or n < 2:
        return None
    # The structural components from mid-ranks (ties count one half): O(n log n)
    # time and O(n) memory, however large a hospital's test split.
    ranks = rankdata(np.concatenate([positives, negatives]))
    v10 = (ranks[:m] - rankdata(positives)) / n  # each case's share of controls ranked below
    v01 = 1 - (ranks[m:] - rankdata(negatives)) / m  # each control's share of cases above
    auroc = float(v10.mean())
    variance = float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    if not 0.0 < auroc < 1.0 or variance <= 0:
        return None
    z = float(norm.ppf(0.5 + level / 2))
    logit = math.log(auroc / (1 - auroc))
    half = z * math.sqrt(variance) / (auroc * (1 - auroc))  # delta method on the logit scale
    return _expit(logit - half), _expit(logit + half)


def _expit(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))
