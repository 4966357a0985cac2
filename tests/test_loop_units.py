"""The learning loop's arithmetic: drift, recalibration, intervals, alerts, the gate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lhs_federated.learning.drift import (
    ColumnSummary,
    bin_edges,
    population_stability_index,
    standardised_mean_difference,
    summarise_columns,
)
from lhs_federated.learning.monitoring import GatePolicy, score_with_intervals
from lhs_federated.learning.recalibration import (
    fit_recalibration,
    fold_recalibration,
    identity,
    linear_predictor,
    newton_step,
    score_and_information,
)
from lhs_federated.learning.uncertainty import auroc_interval
from lhs_federated.loop.alerts import AlertRules, site_alerts
from lhs_federated.loop.card import pooled_estimate


def _sites(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three sites of different sizes: a score and outcomes from a miscalibrated truth."""
    rng = np.random.default_rng(seed)
    sites = []
    for n in (60, 250, 900):
        lp = rng.normal(-1.2, 1.1, n)
        y = (rng.random(n) < 1 / (1 + np.exp(-(0.4 + 0.7 * lp)))).astype(int)
        sites.append((lp, y))
    return sites


def test_federated_psi_and_smd_equal_those_of_the_pooled_rows() -> None:
    rng = np.random.default_rng(1)
    reference_sites = [rng.normal(50, 10, (n, 2)) for n in (40, 300)]
    current_sites = [rng.normal(53, 12, (n, 2)) for n in (80, 500)]
    current_sites[1][::7, 1] = np.nan  # missing values counted in no bin
    edges = [bin_edges(50, 10, indicator=False), bin_edges(0, 1, indicator=True)]

    def summed(tables: list[np.ndarray]) -> list[ColumnSummary]:
        parts = [summarise_columns(t, edges) for t in tables]
        return [a + b for a, b in zip(*parts, strict=True)]

    ref, cur = summed(reference_sites), summed(current_sites)
    pooled_ref, pooled_cur = np.vstack(reference_sites), np.vstack(current_sites)
    for j in range(2):
        x, r = pooled_cur[:, j][~np.isnan(pooled_cur[:, j])], pooled_ref[:, j]
        direct_smd = (x.mean() - r.mean()) / np.sqrt((x.var() + r.var()) / 2)
        assert standardised_mean_difference(cur[j], ref[j]) == pytest.approx(direct_smd, rel=1e-9)
        q = np.bincount(np.searchsorted(edges[j], x, side="right"), minlength=len(edges[j]) + 1)
        p = np.bincount(np.searchsorted(edges[j], r, side="right"), minlength=len(edges[j]) + 1)
        q, p = np.maximum(q / q.sum(), 1e-4), np.maximum(p / p.sum(), 1e-4)
        direct_psi = np.sum((q - p) * np.log(q / p))
        assert population_stability_index(cur[j].counts, ref[j].counts) == pytest.approx(direct_psi)
    assert population_stability_index(ref[0].counts, ref[0].counts) == 0.0
    assert population_stability_index(cur[0].counts, ref[0].counts) > 0.05


def test_federated_logistic_recalibration_equals_a_pooled_sklearn_fit() -> None:
    sites = _sites()
    params = identity("logistic")
    for _ in range(10):  # the coordinator's rounds: sum the sites' terms, one Newton step
        terms = [score_and_information(y, lp, params, "logistic") for lp, y in sites]
        params = newton_step(params, sum(t[0] for t in terms), sum(t[1] for t in terms))
    lp = np.concatenate([s[0] for s in sites])
    y = np.concatenate([s[1] for s in sites])
    pooled = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(lp[:, None], y)
    assert params[0] == pytest.approx(pooled.intercept_[0], abs=1e-6)
    assert params[1] == pytest.approx(pooled.coef_[0, 0], abs=1e-6)
    assert params[1] == pytest.approx(0.7, abs=0.15)


def test_recalibration_in_the_large_matches_observed_events() -> None:
    sites = _sites(2)
    params = identity("in-the-large")
    for _ in range(10):
        terms = [score_and_information(y, lp, params, "in-the-large") for lp, y in sites]
        params = newton_step(params, sum(t[0] for t in terms), sum(t[1] for t in terms))
    lp = np.concatenate([s[0] for s in sites])
    y = np.concatenate([s[1] for s in sites])
    expected = 1 / (1 + np.exp(-(params[0] + lp)))
    assert expected.sum() == pytest.approx(y.sum(), rel=1e-9)  # the MLE's score equation
    alone, _ = fit_recalibration(y, lp, "in-the-large")
    assert alone[0] == pytest.approx(params[0], abs=1e-9)


def test_recalibration_folds_into_the_output_layer() -> None:
    rng = np.random.default_rng(3)
    arrays = {
        "layers.0.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "layers.0.bias": rng.normal(size=4).astype(np.float32),
        "layers.2.weight": rng.normal(size=(1, 4)).astype(np.float32),
        "layers.2.bias": rng.normal(size=1).astype(np.float32),
    }
    h = np.maximum(0, rng.normal(size=(5, 3)) @ arrays["layers.0.weight"].T)
    lp = h @ arrays["layers.2.weight"].T[:, 0] + arrays["layers.2.bias"][0]
    folded = fold_recalibration(arrays, np.array([0.3, 0.8]), "logistic")
    new_lp = h @ folded["layers.2.weight"].T[:, 0] + folded["layers.2.bias"][0]
    np.testing.assert_allclose(new_lp, 0.3 + 0.8 * lp, rtol=1e-5)
    assert folded["layers.0.weight"] is arrays["layers.0.weight"]
    with pytest.raises(ValueError, match="not a linear layer"):
        fold_recalibration(
            {"a.bias": np.ones(1), "a.weight": np.ones((1, 2))}, identity("logistic"), "logistic"
        )


def test_delong_interval_brackets_sklearns_auroc() -> None:
    lp, y = _sites(4)[2]
    auc, low, high = auroc_interval(y, lp)
    assert auc == pytest.approx(roc_auc_score(y, lp))
    assert low < auc < high and high - low < 0.12
    assert np.isnan(auroc_interval(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]))[1])


def test_small_or_one_sided_sites_withhold_every_metric_with_a_reason() -> None:
    y, p = np.array([0, 1] * 4), np.linspace(0.1, 0.9, 8)
    few = score_with_intervals(y, p, min_cell_size=10)
    assert np.isnan(few.values["auroc"]) and "fewer than" in few.undefined["auroc"]
    rare = score_with_intervals(np.array([1] * 3 + [0] * 40), np.full(43, 0.1), min_cell_size=5)
    assert np.isnan(rare.values["prevalence"]) and "cases or non-cases" in rare.undefined["oe"]


@pytest.mark.parametrize(
    ("challenger", "passed", "why"),
    [
        (
            {"auroc": 0.795, "calibration_intercept": 0.05, "calibration_slope": 1.0},
            True,
            "non-inferior",
        ),
        (
            {"auroc": 0.780, "calibration_intercept": 0.05, "calibration_slope": 1.0},
            False,
            "more than 0.01 below",
        ),
        (
            {"auroc": 0.820, "calibration_intercept": -0.3, "calibration_slope": 1.0},
            False,
            "intercept -0.300 outside",
        ),
        (
            {"auroc": 0.820, "calibration_intercept": 0.0, "calibration_slope": 1.3},
            False,
            "slope 1.300 outside",
        ),
        (
            {"auroc": float("nan"), "calibration_intercept": 0.0, "calibration_slope": 1.0},
            False,
            "undefined or withheld",
        ),
    ],
)
def test_gate_verdict_at_a_site(challenger: dict, passed: bool, why: str) -> None:
    champion = {"auroc": 0.80, "calibration_intercept": 0.05, "calibration_slope": 0.95}
    verdict, reason = GatePolicy().verdict(champion, challenger)
    assert verdict is passed and why in reason


def test_gate_calibration_bounds_are_read_with_the_ci_and_the_champion() -> None:
    policy = GatePolicy()
    off = {"auroc": 0.80, "calibration_intercept": 0.3, "calibration_slope": 1.0}
    good = {"auroc": 0.80, "calibration_intercept": 0.0, "calibration_slope": 1.0}
    assert not policy.verdict(good, off)[0]
    chance = {**off, "calibration_intercept_low": -0.05, "calibration_intercept_high": 0.65}
    assert policy.verdict(good, chance)[0]  # its 95% CI holds 0
    worse_champion = {**good, "calibration_intercept": -0.5}
    assert policy.verdict(worse_champion, off)[0]  # closer to perfect than the champion


def _values(**given: float) -> dict[str, float | None]:
    base = {
        "auroc": 0.80, "auroc_low": 0.76, "auroc_high": 0.84,
        "calibration_intercept": 0.0, "calibration_intercept_low": -0.1,
        "calibration_intercept_high": 0.1, "calibration_slope": 1.0,
        "calibration_slope_low": 0.9, "calibration_slope_high": 1.1,
    }  # fmt: skip
    return {**base, **given}


@pytest.mark.parametrize(
    ("values", "psi", "fired"),
    [
        (_values(), {"age": 0.05}, []),
        (
            _values(
                calibration_intercept=-0.35,
                calibration_intercept_low=-0.5,
                calibration_intercept_high=-0.2,
            ),
            {},
            ["calibration_intercept"],
        ),
        # outside the bound but its CI holds 0: chance, no alert (require_ci)
        (
            _values(
                calibration_intercept=0.25,
                calibration_intercept_low=-0.05,
                calibration_intercept_high=0.55,
            ),
            {},
            [],
        ),
        (
            _values(calibration_slope=0.7, calibration_slope_low=0.6, calibration_slope_high=0.8),
            {},
            ["calibration_slope"],
        ),
        (_values(auroc=0.70, auroc_low=0.65, auroc_high=0.78), {}, ["auroc"]),
        (_values(auroc=0.74, auroc_low=0.66, auroc_high=0.82), {}, []),  # CI holds the reference
        (_values(), {"total_cholesterol": 0.4, "age": None}, ["psi:total_cholesterol"]),
    ],
)
def test_alert_rules(values: dict, psi: dict, fired: list[str]) -> None:
    alerts = site_alerts(
        AlertRules(), release="r@v1", period="2021Q1", site="north", values=values,
        reference_auroc=0.81, psi=psi,
    )  # fmt: skip
    assert [a.metric for a in alerts] == fired
    assert all(a.site == "north" and a.period == "2021Q1" for a in alerts)


def test_pooled_estimate_is_an_inverse_variance_mean() -> None:
    per_site = {
        "a": {"brier": 0.10, "brier_low": 0.08, "brier_high": 0.12},
        "b": {"brier": 0.20, "brier_low": 0.10, "brier_high": 0.30},
        "c": {"brier": None, "brier_low": None, "brier_high": None},
    }
    pooled = pooled_estimate(per_site, "brier")
    # weights 1/se^2 with se 0.02/z and 0.1/z: 25 to 1
    assert pooled["estimate"] == pytest.approx((25 * 0.10 + 0.20) / 26)
    assert pooled["sites"] == ["a", "b"] and pooled["low"] < pooled["estimate"] < pooled["high"]
    assert linear_predictor(np.array([0.5]))[0] == 0.0


def _monitor_reply(**changes: float) -> tuple:
    from lhs_federated.apps.loop_messages import monitoring_to_record
    from lhs_federated.learning.monitoring import SiteMonitoring

    y = np.array([0, 1] * 60)
    p = np.clip(0.3 + 0.4 * y + np.linspace(-0.2, 0.2, 120), 0.01, 0.99)
    scored = score_with_intervals(y, p, min_cell_size=10)
    edges = [bin_edges(0.5, 0.2, indicator=False)]
    summary = summarise_columns(p[:, None], edges)
    values = {**scored.values, **changes}
    return monitoring_to_record(SiteMonitoring(values, {}, summary, None)), [len(edges[0])]


@pytest.mark.parametrize(
    ("changes", "rows", "match"),
    [
        ({"auroc": 1.7}, 200, "'auroc' = 1.7 is outside"),
        ({"brier": float("inf")}, 200, "'brier' is inf"),
        ({}, 100, "n = 120 exceeds the 100 rows reported"),
    ],
)
def test_the_coordinator_rejects_implausible_monitoring_replies(changes, rows, match) -> None:
    from lhs_federated.apps.loop_messages import check_monitor_reply
    from lhs_federated.apps.reply_checks import ReplyRejectedError

    content, edge_counts = _monitor_reply(**changes)
    with pytest.raises(ReplyRejectedError, match=match):
        check_monitor_reply(content, edge_counts, rows)


def test_a_plain_monitoring_reply_passes_and_a_forged_histogram_does_not() -> None:
    from flwr.app import MetricRecord

    from lhs_federated.apps import records
    from lhs_federated.apps.loop_messages import check_monitor_reply
    from lhs_federated.apps.reply_checks import ReplyRejectedError

    content, edge_counts = _monitor_reply()
    check_monitor_reply(content, edge_counts, 120)
    drift = dict(content[records.DRIFT])
    drift["current-counts"] = [500.0] * (edge_counts[0] + 1)
    content[records.DRIFT] = MetricRecord(drift)
    with pytest.raises(ReplyRejectedError, match="holds more than n rows"):
        check_monitor_reply(content, edge_counts, 120)


def test_the_calibration_slope_se_a_calibrated_model_would_show() -> None:
    """The benchmark's ceiling: the slope SE at perfect calibration matches simulated fits."""
    from lhs_federated.learning.metrics import clinical_metrics
    from lhs_federated.loop.scoring import calibrated_slope_se, slope_band_ceiling

    rng = np.random.default_rng(3)
    risk = 1 / (1 + np.exp(-rng.normal(-1.5, 1.0, 1000)))
    se = calibrated_slope_se(risk)
    slopes = np.array(
        [
            clinical_metrics((rng.random(1000) < risk).astype(int), risk).values[
                "calibration_slope"
            ]
            for _ in range(300)
        ]
    )
    assert slopes.std() == pytest.approx(se, rel=0.12)
    inside = np.mean((slopes >= 0.9) & (slopes <= 1.1))
    assert inside == pytest.approx(slope_band_ceiling(se), abs=0.07)
    assert slope_band_ceiling(0.1 / 1.6449) == pytest.approx(0.90, abs=1e-3)
