from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
)

from lhs_federated.learning.metrics import (
    clinical_metrics,
    expected_calibration_error,
    nan_weighted_mean,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    logit = rng.normal(size=400)
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.4 + 1.5 * logit)))).astype(int)
    return y, 1 / (1 + np.exp(-logit))


def test_metrics_match_scikit_learn(scored):
    y, p = scored
    values = clinical_metrics(y, p, threshold=0.5).values
    assert values["n"] == 400 and values["prevalence"] == pytest.approx(y.mean())
    assert values["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert values["auprc"] == pytest.approx(average_precision_score(y, p))
    assert values["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert values["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert values["brier"] == pytest.approx(brier_score_loss(y, p))


def test_calibration_recovers_the_miscalibration(scored):
    y, p = scored
    values = clinical_metrics(y, p).values
    # y was drawn with logit 0.4 + 1.5 * logit(p): slope about 1.5, intercept positive
    assert values["calibration_slope"] == pytest.approx(1.5, abs=0.3)
    assert values["calibration_intercept"] > 0.2
    perfect = clinical_metrics(y, 1 / (1 + np.exp(-(0.4 + 1.5 * np.log(p / (1 - p)))))).values
    assert perfect["calibration_slope"] == pytest.approx(1.0, abs=0.25)
    assert abs(perfect["calibration_intercept"]) < 0.25


def test_ece_of_a_known_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.7])
    # bins: {0.1, 0.1} gap 0.1; {0.7} gap 0.3; {0.9} gap 0.1
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(
        0.5 * 0.1 + 0.25 * 0.3 + 0.25 * 0.1
    )


def test_single_class_test_set_is_undefined_with_a_reason():
    report = clinical_metrics(np.zeros(12, dtype=int), np.linspace(0.1, 0.6, 12))
    for name in (
        "auroc",
        "auprc",
        "balanced_accuracy",
        "calibration_slope",
        "calibration_intercept",
    ):
        assert math.isnan(report.values[name])
        assert report.undefined[name] == "single-class test set (all 12 rows are negative)"
    assert report.values["accuracy"] == pytest.approx(9 / 12)  # 3 of 12 called positive
    assert not math.isnan(report.values["brier"])


def test_perfect_separation_has_no_finite_slope():
    report = clinical_metrics(np.array([0, 0, 1, 1]), np.array([0.2, 0.3, 0.6, 0.9]))
    assert report.values["auroc"] == 1.0
    assert "separate the outcomes perfectly" in report.undefined["calibration_slope"]


def test_no_rows():
    report = clinical_metrics(np.array([], dtype=int), np.array([]))
    assert report.values["n"] == 0 and report.undefined["auroc"] == "no test rows"


def test_nan_weighted_mean_skips_undefined_sites():
    assert nan_weighted_mean([0.8, float("nan"), 0.6], [1, 5, 3]) == pytest.approx((0.8 + 1.8) / 4)
    assert math.isnan(nan_weighted_mean([float("nan")], [1]))
