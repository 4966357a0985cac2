"""Clinical prediction metrics with defined behaviour when a metric is undefined.

A small hospital's test split may hold only one outcome class; AUROC,
calibration slope and the like are then undefined. They are reported as
missing with a reason, never as an exception and never as a made-up number,
and aggregation across sites skips them (:func:`nan_weighted_mean`) instead of
letting one NaN turn the federation's average into NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lhs_federated.learning.binary_scores import (
    accuracy,
    average_precision,
    balanced_accuracy,
    brier,
    roc_auc,
)
from lhs_federated.learning.intervals import delong_interval

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
    "auroc_ci_low",
    "auroc_ci_high",
)
# Metrics averaged over sites (a mean of interval bounds is no interval).
MEAN_METRICS = tuple(m for m in METRIC_NAMES if m not in ("n", "auroc_ci_low", "auroc_ci_high"))

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
            "auroc_ci_low",
            "auroc_ci_high",
        ):
            undefined[name] = reason
        return MetricReport(values, undefined)
    values["auroc"] = roc_auc(y, p)
    interval = delong_interval(y, p)
    if interval is None:
        for name in ("auroc_ci_low", "auroc_ci_high"):
            undefined[name] = "no DeLong interval: fewer than 2 of a class, or AUROC 0 or 1"
    else:
        values["auroc_ci_low"], values["auroc_ci_high"] = interval
    values["auprc"] = average_precision(y, p)
    values["balanced_accuracy"] = balanced_accuracy(y, predicted)
    logit = np.log(np.clip(p, _EPS, 1 - _EPS) / (1 - np.clip(p, _EPS, 1 - _EPS)))
    intercept = _calibration_in_the_large(y, logit)
    if intercept is None:
        undefined["calibration_intercept"] = NOT_ESTIMABLE
    else:
        values["calibration_intercept"] = intercept
    if values["auroc"] in (0.0, 1.0):
        undefined["calibration_slope"] = (
            "predictions separate the outcomes perfectly; the slope is infinite"
        )
    elif (slope := _calibration_slope(y, logit)) is None:
        undefined["calibration_slope"] = NOT_ESTIMABLE
    else:
        values["calibration_slope"] = slope
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


def _calibration_slope(y: np.ndarray, logit: np.ndarray) -> float | None:
    """Slope b of the logistic recalibration model logit P(y) = a + b * logit(p)."""
    design = np.column_stack([np.ones_like(logit), logit])
    coefficients = _newton_logistic(y, design, offset=np.zeros_like(logit))
    return None if coefficients is None else float(coefficients[1])


def _calibration_in_the_large(y: np.ndarray, logit: np.ndarray) -> float | None:
    """Intercept a of logit P(y) = a + logit(p): 0 when mean risk is right."""
    coefficients = _newton_logistic(y, np.ones((len(y), 1)), offset=logit)
    return None if coefficients is None else float(coefficients[0])


NOT_ESTIMABLE = (
    "cannot be estimated: the recalibration fit does not converge (predicted risks at 0 or "
    "1 against the outcomes, or too few cases)"
)
_MAX_COEFFICIENT = 50.0  # on the logit scale: a factor of e^50 is no estimate


def _newton_logistic(y: np.ndarray, design: np.ndarray, *, offset: np.ndarray) -> np.ndarray | None:
    """Unpenalised logistic regression by damped Newton-Raphson (small designs only).

    Each step is halved until the log-likelihood improves, so predicted risks
    near 0 or 1 do not throw the iterations off (plain Newton steps there
    reached intercepts of 1e10). Returns ``None`` when no finite estimate
    exists: a coefficient leaves any plausible range (the outcomes are
    separated) or the iterations do not settle.
    """

    def log_likelihood(beta: np.ndarray) -> float:
        eta = offset + design @ beta
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    beta = np.zeros(design.shape[1])
    current = log_likelihood(beta)
    for _ in range(200):
        eta = offset + design @ beta
        mu = np.exp(-np.logaddexp(0.0, -eta))
        weights = np.maximum(mu * (1 - mu), 1e-300)
        gradient = design.T @ (y - mu)
        hessian = design.T @ (design * weights[:, None])
        try:
            step = np.linalg.solve(hessian + 1e-12 * np.eye(len(beta)), gradient)
        except np.linalg.LinAlgError:
            return None
        scale = 1.0
        while scale > 1e-8:
            candidate = beta + scale * step
            value = log_likelihood(candidate)
            if np.isfinite(value) and value >= current - 1e-12:
                break
            scale /= 2
        beta, current = candidate, value
        if not np.all(np.isfinite(beta)) or np.max(np.abs(beta)) > _MAX_COEFFICIENT:
            return None
        if np.max(np.abs(scale * step)) < 1e-10:
            return beta
    return None


def nan_weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Weighted mean over the defined (non-NaN) values; NaN if none is defined."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    defined = ~np.isnan(v) & (w > 0)
    if not defined.any():
        return float("nan")
    return float(np.sum(v[defined] * w[defined]) / np.sum(w[defined]))


@dataclass(frozen=True)
class FederationMeans:
    """The federation's means over sites: one definition for the CLI, summary and report.

    Attributes
    ----------
    counted : tuple of str
        Sites whose metrics enter the means.
    left_out : dict of str to str
        Sites shown but left out of the means, with the reason.
    mean : dict of str to float
        Unweighted mean over the counted sites where the metric is defined.
    weighted_mean : dict of str to float
        The same, weighted by each site's test rows.
    definition : str
        The definition in words, printed beside the means.
    """

    counted: tuple[str, ...]
    left_out: dict[str, str]
    mean: dict[str, float]
    weighted_mean: dict[str, float]
    definition: str


def too_small(report: MetricReport, min_cases: int) -> str:
    """Why a site's test split is too small to count in a mean ("" if it is not).

    A split needs ``min_cases`` rows and as many of each outcome class: with
    three rows, or one positive, an AUROC or accuracy says nothing. A count
    the site withheld (below its minimum cell size) counts as too small.
    """
    n = report.values.get("n", float("nan"))
    if np.isnan(n) or n < min_cases:
        return f"fewer than {min_cases} test rows"
    prevalence = report.values.get("prevalence", float("nan"))
    if np.isnan(prevalence):
        return f"fewer than {min_cases} positives or negatives (withheld)"
    positives = round(prevalence * n)
    if min(positives, n - positives) < min_cases:
        return f"fewer than {min_cases} positives or negatives in {int(n)} test rows"
    return ""


def federation_means(reports: Mapping[str, MetricReport], *, min_cases: int) -> FederationMeans:
    """Means over the sites whose test splits are large enough (see :func:`too_small`).

    If no site is large enough, every site counts (and the definition says so),
    rather than printing no figure at all.
    """
    left_out = {site: why for site, r in reports.items() if (why := too_small(r, min_cases))}
    counted = tuple(site for site in reports if site not in left_out)
    definition = (
        f"mean: over the {len(counted)} of {len(reports)} sites with at least {min_cases} test "
        f"rows and {min_cases} of each outcome class (evaluation.min_test_cases), undefined "
        "values skipped, each site weighing the same; weighted mean: the same sites weighted "
        "by test rows"
    )
    if not counted:
        counted, left_out = tuple(reports), {}
        definition = (
            f"mean: over all {len(counted)} sites, none having {min_cases} test rows and "
            f"{min_cases} of each outcome class; read every figure as unreliable"
        )
    weights = [reports[s].values.get("n", float("nan")) for s in counted]
    weights = [0.0 if np.isnan(w) else w for w in weights]

    def over(metric: str, w: Sequence[float]) -> float:
        return nan_weighted_mean([reports[s].values.get(metric, float("nan")) for s in counted], w)

    return FederationMeans(
        counted,
        left_out,
        {m: over(m, [1.0] * len(counted)) for m in MEAN_METRICS},
        {m: over(m, weights) for m in MEAN_METRICS},
        definition,
    )
