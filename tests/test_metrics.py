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

from lhs_federated.learning.intervals import delong_interval
from lhs_federated.learning.metrics import (
    MetricReport,
    clinical_metrics,
    expected_calibration_error,
    federation_means,
    nan_weighted_mean,
    too_small,
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


def _delong_variance_by_ranks(y, p):
    """DeLong's variance the fast way (Sun and Xu, 2014): midranks within and across classes."""
    from scipy.stats import rankdata

    positives, negatives = p[y == 1], p[y == 0]
    m, n = len(positives), len(negatives)
    everything = rankdata(np.r_[positives, negatives])
    v10 = (everything[:m] - rankdata(positives)) / n
    v01 = 1 - (everything[m:] - rankdata(negatives)) / m
    return v10.var(ddof=1) / m + v01.var(ddof=1) / n, v10.mean()


@pytest.mark.parametrize("n", [30, 400])
def test_delong_interval_matches_the_rank_formula_and_narrows_with_rows(n):
    from scipy.stats import norm

    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.3).astype(int)
    y[:2], y[2:4] = 1, 0
    p = np.round(1 / (1 + np.exp(-(y * 1.2 + rng.normal(0, 1, n)))), 2)  # ties too
    low, high = delong_interval(y, p)
    variance, auroc = _delong_variance_by_ranks(y, p)
    assert auroc == pytest.approx(roc_auc_score(y, p))
    half = norm.ppf(0.975) * np.sqrt(variance) / (auroc * (1 - auroc))
    logit = np.log(auroc / (1 - auroc))
    assert low == pytest.approx(1 / (1 + np.exp(-(logit - half))), rel=1e-9)
    assert high == pytest.approx(1 / (1 + np.exp(-(logit + half))), rel=1e-9)
    assert low < auroc < high


def test_intervals_of_tiny_splits_are_missing_with_a_reason():
    assert delong_interval(np.array([0, 1, 0]), np.array([0.2, 0.9, 0.4])) is None
    report = clinical_metrics(np.array([0, 1, 0]), np.array([0.2, 0.9, 0.4]))
    assert (
        np.isnan(report.values["auroc_ci_low"])
        and "fewer than 2" in report.undefined["auroc_ci_low"]
    )
    separated = clinical_metrics(np.r_[np.zeros(8), np.ones(4)], np.linspace(0.1, 0.9, 12))
    assert separated.values["auroc"] == 1.0 and np.isnan(separated.values["auroc_ci_high"])


def _report(n, positives, auroc, accuracy):
    return MetricReport(
        {"n": float(n), "prevalence": positives / n, "auroc": auroc, "accuracy": accuracy}
    )


def test_federation_means_leave_small_sites_out_and_say_so():
    reports = {
        "tiny": _report(3, 1, 0.0, 1.0),
        "few-cases": _report(40, 4, 0.9, 0.95),
        "a": _report(100, 30, 0.8, 0.75),
        "b": _report(300, 90, 0.7, 0.65),
    }
    means = federation_means(reports, min_cases=10)
    assert means.counted == ("a", "b")
    assert means.left_out == {
        "tiny": "fewer than 10 test rows",
        "few-cases": "fewer than 10 positives or negatives in 40 test rows",
    }
    assert means.mean["auroc"] == pytest.approx(0.75)
    assert means.weighted_mean["auroc"] == pytest.approx((0.8 * 100 + 0.7 * 300) / 400)
    assert "2 of 4 sites" in means.definition and "weighted by test rows" in means.definition
    withheld = MetricReport({"n": float("nan"), "auroc": float("nan")})
    assert "fewer than 10 test rows" in too_small(withheld, 10)


def test_federation_means_with_no_large_site_count_every_site_and_warn():
    means = federation_means(
        {"x": _report(3, 1, 0.5, 0.6), "y": _report(5, 2, 0.7, 0.8)}, min_cases=10
    )
    assert means.counted == ("x", "y") and means.left_out == {}
    assert means.mean["accuracy"] == pytest.approx(0.7) and "unreliable" in means.definition


def test_calibration_fit_near_risks_of_0_and_1_converges_to_the_true_estimate():
    from scipy.optimize import brentq

    y = np.array([0, 0, 1])
    p = np.array([1 - 1e-9, 1 - 1e-9, 1e-9])  # plain Newton steps went to 1e10 here
    report = clinical_metrics(y, p)
    logit = np.log(np.clip(p, 1e-7, 1 - 1e-7) / (1 - np.clip(p, 1e-7, 1 - 1e-7)))
    root = brentq(lambda a: np.sum(y - 1 / (1 + np.exp(-(a + logit)))), -60, 60)
    assert report.values["calibration_intercept"] == pytest.approx(root, abs=1e-6)


def test_a_calibration_slope_that_cannot_be_estimated_is_missing_with_its_reason():
    # Quasi-separation: only a tie keeps the AUROC below 1, so the slope's MLE is infinite.
    report = clinical_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9]))
    assert report.values["auroc"] == pytest.approx(0.875)
    assert math.isnan(report.values["calibration_slope"])
    assert report.undefined["calibration_slope"].startswith("cannot be estimated")
    assert abs(report.values["calibration_intercept"]) < 50
