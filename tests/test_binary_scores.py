"""The numpy scores equal scikit-learn's bit for bit, on random inputs with ties."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
)

from lhs_federated.learning import binary_scores


def _cases(count: int):
    rng = np.random.default_rng(7)
    for case in range(count):
        n = int(rng.integers(2, 120))
        y = rng.integers(0, 2, n)
        y[0], y[-1] = 0, 1  # both classes, as clinical_metrics guarantees
        p = rng.random(n)
        if case % 3 == 0:
            p = np.round(p, 1)  # many ties
        if case % 4 == 0:
            p = p.astype(np.float32).astype(np.float64)  # the models' float32 risks
        yield y, p


def test_scores_equal_scikit_learn_exactly():
    for y, p in _cases(600):
        predicted = (p >= 0.5).astype(int)
        assert binary_scores.roc_auc(y, p) == roc_auc_score(y, p)
        assert binary_scores.average_precision(y, p) == average_precision_score(y, p)
        assert binary_scores.accuracy(y, predicted) == accuracy_score(y, predicted)
        assert binary_scores.balanced_accuracy(y, predicted) == balanced_accuracy_score(
            y, predicted
        )
        assert binary_scores.brier(y, p) == brier_score_loss(y, p, pos_label=1)


def test_column_scores_match_per_model_scores():
    rng = np.random.default_rng(3)
    for y, p in _cases(100):
        columns = np.column_stack([p, np.round(rng.random(len(y)), 1), 1 - p])
        auroc = binary_scores.auroc_columns(y, columns)
        accuracy = binary_scores.accuracy_columns(y, columns, 0.4)
        for k in range(columns.shape[1]):
            assert auroc[k] == pytest.approx(roc_auc_score(y, columns[:, k]), abs=1e-12)
            assert accuracy[k] == accuracy_score(y, (columns[:, k] >= 0.4).astype(int))


def test_column_auroc_is_undefined_for_one_class():
    y = np.zeros(5, dtype=int)
    assert np.isnan(binary_scores.auroc_columns(y, np.random.rand(5, 3))).all()
    assert np.isnan(binary_scores.accuracy_columns(y[:0], np.empty((0, 2)), 0.5)).all()
