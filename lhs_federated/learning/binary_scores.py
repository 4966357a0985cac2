"""Binary classification scores in plain numpy: scikit-learn's arithmetic without its checks.

:func:`~lhs_federated.learning.metrics.clinical_metrics` runs once per site per
round and, in a simulation's analysis, once per model per site. scikit-learn's
metric functions spend ~99% of their time validating their inputs (parameter
constraints, target-type inference, dataframe detection: ~9 ms a call against
~50 µs of arithmetic on a hospital's test split), which made scoring the
slowest part of a 100-site study. The inputs here are already checked: 0/1
outcomes with both classes present, probabilities in [0, 1], equal lengths.

The scalar functions repeat scikit-learn's operations in the same order
(sorting, cumulative sums, dropped collinear ROC points, trapezoids), so they
return bit-for-bit the values of ``roc_auc_score``, ``average_precision_score``,
``accuracy_score``, ``balanced_accuracy_score`` and ``brier_score_loss``
(``tests/test_metrics.py`` checks it on random inputs with ties).
:func:`auroc_columns` and :func:`accuracy_columns` score many models' predictions
on one site's rows at once (the cross-site matrix); their AUROC is the
Mann-Whitney form, equal to the trapezoid to rounding (~1e-15).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _curve_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct threshold, highest first."""
    order = np.argsort(p, kind="stable")[::-1]
    p_sorted = p[order]
    y_sorted = y[order].astype(np.float64)
    thresholds = np.concatenate([np.nonzero(np.diff(p_sorted))[0], [len(y) - 1]])
    tps = np.cumsum(y_sorted, dtype=np.float64)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    return tps, fps


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve, as ``sklearn.metrics.roc_auc_score``."""
    tps, fps = _curve_counts(y, p)
    if len(fps) > 2:  # drop collinear points, as roc_curve(drop_intermediate=True)
        keep = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]])
        tps, fps = tps[keep], fps[keep]
    tps = np.concatenate([[0.0], tps])
    fps = np.concatenate([[0.0], fps])
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision, as ``sklearn.metrics.average_precision_score``."""
    tps, fps = _curve_counts(y, p)
    ps = tps + fps
    precision = np.concatenate([np.flip(np.where(ps != 0, tps / ps, 0.0)), [1.0]])
    recall = np.concatenate([np.flip(tps / tps[-1]), [0.0]])
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Share of rows predicted right, as ``sklearn.metrics.accuracy_score``."""
    return float(np.average(y == predicted))


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of sensitivity and specificity, as ``sklearn.metrics.balanced_accuracy_score``."""
    positive = y == 1
    true_positive = np.count_nonzero(predicted[positive] == 1)
    true_negative = np.count_nonzero(predicted[~positive] == 0)
    per_class = np.array([true_negative, true_positive]) / np.array(
        [np.count_nonzero(~positive), np.count_nonzero(positive)]
    )
    return float(np.mean(per_class))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the risk, as ``sklearn.metrics.brier_score_loss``."""
    labels = np.stack((1 - y, y), axis=1).astype(np.float64)
    risks = np.stack((1 - p, p), axis=1)
    score = np.average(np.sum((labels - risks) ** 2, axis=1))
    score *= 0.5
    return float(score)


def auroc_columns(y: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``probabilities`` (n rows x m models) against ``y``.

    The Mann-Whitney statistic from mid-ranks (ties count one half); NaN for
    every column when ``y`` holds one class only.
    """
    positive = y == 1
    n_positive = int(np.count_nonzero(positive))
    n_negative = len(y) - n_positive
    if n_positive == 0 or n_negative == 0:
        return np.full(probabilities.shape[1], np.nan)
    ranks = rankdata(probabilities, axis=0)
    rank_sum = ranks[positive].sum(axis=0)
    return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def accuracy_columns(y: np.ndarray, probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Accuracy of every column of ``probabilities`` at ``threshold`` (NaN without rows)."""
    if len(y) == 0:
        return np.full(probabilities.shape[1], np.nan)
    return np.mean((probabilities >= threshold) == (y[:, None] == 1), axis=0)
