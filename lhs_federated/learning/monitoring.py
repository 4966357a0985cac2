"""What a site computes when a release is monitored, gated or recalibrated.

Free of Flower: the ClientApp's loop handlers turn messages into these calls.
Everything here obeys the site's minimum cell size before it is returned:

- :func:`monitor_at_site`: a release's discrimination and calibration on the
  site's evaluation rows, each with its 95% interval
  (:mod:`lhs_federated.learning.uncertainty`), and per-column histograms and
  moments of those rows (and, for a release's reference, of its training
  rows) for drift (:mod:`lhs_federated.learning.drift`);
- :func:`gate_at_site`: champion and challenger on the same rows, and the
  site's own verdict under the study's non-inferiority policy;
- :func:`recalibration_terms`: the score and information of a recalibration
  at the current parameters, summed by the coordinator into a Newton step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lhs_federated.data.sources import SiteData
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.drift import ColumnSummary, summarise_columns
from lhs_federated.learning.recalibration import (
    Recalibration,
    linear_predictor,
    personalise_risk,
    score_and_information,
)
from lhs_federated.learning.site import predict_at_site
from lhs_federated.learning.uncertainty import (
    auroc_interval,
    brier_interval,
    calibration_intervals,
    oe_interval,
)
from lhs_federated.study import Study

#: Metrics a monitoring reply holds; each but ``n`` and ``prevalence`` with ``_low``/``_high``.
MONITOR_METRICS = ("auroc", "calibration_intercept", "calibration_slope", "oe", "brier")
MONITOR_KEYS = (
    "n",
    "prevalence",
    "mean_risk",
    *(f"{m}{suffix}" for m in MONITOR_METRICS for suffix in ("", "_low", "_high")),
)


@dataclass(frozen=True)
class SiteMonitoring:
    """One site's monitoring of one model: metrics with intervals, column summaries."""

    values: dict[str, float]
    undefined: dict[str, str] = field(default_factory=dict)
    current: list[ColumnSummary] | None = None
    reference: list[ColumnSummary] | None = None


def score_with_intervals(y: np.ndarray, p: np.ndarray, *, min_cell_size: int) -> SiteMonitoring:
    """Metrics of predicted risks ``p`` with their 95% intervals, small cells withheld."""
    values = dict.fromkeys(MONITOR_KEYS, math.nan)
    n = len(y)
    values["n"] = float(n)
    if n < min_cell_size:
        reason = f"withheld: {n} rows, fewer than the site's minimum cell size"
        return SiteMonitoring(values, dict.fromkeys(MONITOR_KEYS[1:], reason))
    undefined: dict[str, str] = {}
    positives = int(y.sum())
    if min(positives, n - positives) < min_cell_size:
        reason = "withheld: fewer cases or non-cases than the site's minimum cell size"
        values["mean_risk"] = float(p.mean())
        return SiteMonitoring(
            values, {k: reason for k in MONITOR_KEYS if k not in ("n", "mean_risk")}
        )
    values["prevalence"] = positives / n
    values["mean_risk"] = float(p.mean())
    found = {
        "auroc": auroc_interval(y, p),
        "oe": oe_interval(y, p),
        "brier": brier_interval(y, p),
        **calibration_intervals(y, p),
    }
    for metric, (estimate, low, high) in found.items():
        values[metric], values[f"{metric}_low"], values[f"{metric}_high"] = estimate, low, high
        if math.isnan(estimate):
            undefined[metric] = "undefined on these rows"
    return SiteMonitoring(values, undefined)


def withhold_small_cells(summaries: list[ColumnSummary], k: int) -> list[ColumnSummary]:
    """Bin counts of 1 to k - 1 withheld (NaN); a column on fewer than k rows withheld whole."""
    out = []
    for s in summaries:
        if s.n < k:
            nan = np.full_like(s.counts, np.nan)
            out.append(ColumnSummary(nan, math.nan, math.nan, math.nan))
            continue
        counts = np.where((s.counts > 0) & (s.counts < k), np.nan, s.counts)
        out.append(ColumnSummary(counts, s.n, s.total, s.total_squares))
    return out


def monitor_at_site(
    study: Study,
    site: SiteData,
    arrays: dict[str, np.ndarray],
    *,
    standardizer: Standardizer,
    edges: list[np.ndarray],
    with_reference: bool,
    min_cell_size: int,
    site_params: list[float] | None = None,
) -> SiteMonitoring:
    """A model's performance and the data's drift on the site's evaluation rows.

    Drift is summarised on the encoded inputs before scaling (values in the
    contract's units), so the reference and the current period are comparable
    whatever scaling the model uses.
    """
    y = site.test.outcome
    p = y * 0.0
    if len(y):
        p = personalise_risk(
            predict_at_site(study, arrays, site.test.features, standardizer), site_params
        )
    scored = score_with_intervals(y, p, min_cell_size=min_cell_size)
    current = withhold_small_cells(summarise_columns(site.test.features, edges), min_cell_size)
    reference = None
    if with_reference:
        reference = withhold_small_cells(
            summarise_columns(site.train.features, edges), min_cell_size
        )
    return SiteMonitoring(scored.values, scored.undefined, current, reference)


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger is non-inferior to the champion at one site.

    Its AUROC may be at most ``auroc_margin`` below the champion's, and its
    calibration intercept and slope within the bounds, unless their 95%
    interval holds perfect calibration (the alert rules' reading of a bound:
    a site's few hundred rows put a well-calibrated model outside +-0.2 by
    chance one time in five) or they are no further from perfect than the
    champion's (the challenger is then non-inferior in calibration too).
    """

    auroc_margin: float = 0.01
    intercept_bound: float = 0.2
    slope_low: float = 0.8
    slope_high: float = 1.2

    def verdict(self, champion: dict[str, float], challenger: dict[str, float]) -> tuple[bool, str]:
        """Whether the challenger passes here, and why (or why not)."""
        auroc_c, auroc_n = challenger["auroc"], champion["auroc"]
        if math.isnan(auroc_c) or math.isnan(auroc_n):
            return False, "AUROC undefined or withheld at this site"
        if auroc_c < auroc_n - self.auroc_margin:
            return False, (
                f"AUROC {auroc_c:.3f} more than {self.auroc_margin:g} below the "
                f"champion's {auroc_n:.3f}"
            )
        bounds = (
            (
                "calibration_intercept",
                "intercept",
                -self.intercept_bound,
                self.intercept_bound,
                0.0,
            ),
            ("calibration_slope", "slope", self.slope_low, self.slope_high, 1.0),
        )
        for key, label, low, high, ideal in bounds:
            value = challenger[key]
            ci = (challenger.get(f"{key}_low", math.nan), challenger.get(f"{key}_high", math.nan))
            if math.isnan(value) or low <= value <= high:
                continue
            if not math.isnan(ci[0]) and ci[0] <= ideal <= ci[1]:
                continue  # outside the bounds by chance: its 95% CI holds perfect calibration
            if abs(value - ideal) <= abs(champion.get(key, math.nan) - ideal):
                continue  # no worse than the champion: replacing it costs nothing here
            return False, f"calibration {label} {value:.3f} outside [{low:g}, {high:g}]"
        return True, f"non-inferior (AUROC {auroc_c:.3f} vs {auroc_n:.3f}), calibrated"


def gate_at_site(
    study: Study,
    site: SiteData,
    champion: dict[str, np.ndarray],
    challenger: dict[str, np.ndarray],
    *,
    champion_standardizer: Standardizer,
    challenger_standardizer: Standardizer,
    policy: GatePolicy,
    min_cell_size: int,
    champion_params: list[float] | None = None,
    challenger_params: list[float] | None = None,
) -> tuple[SiteMonitoring, SiteMonitoring, bool, str]:
    """Champion and challenger scored on the same rows, and the site's verdict."""
    y, x = site.test.outcome, site.test.features
    scores = [
        score_with_intervals(
            y,
            personalise_risk(predict_at_site(study, arrays, x, standardizer), params),
            min_cell_size=min_cell_size,
        )
        for arrays, standardizer, params in (
            (champion, champion_standardizer, champion_params),
            (challenger, challenger_standardizer, challenger_params),
        )
    ]
    passed, reason = policy.verdict(scores[0].values, scores[1].values)
    return scores[0], scores[1], passed, reason


def recalibration_terms(
    study: Study,
    site: SiteData,
    arrays: dict[str, np.ndarray],
    params: np.ndarray,
    method: Recalibration,
    *,
    standardizer: Standardizer,
    site_params: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Score, information and row count of the site's training rows at ``params``.

    ``site_params``: the site's own recalibration in the release, applied
    first (a new per-site recalibration composes with it).
    """
    y = site.train.outcome
    risk = predict_at_site(study, arrays, site.train.features, standardizer)
    lp = linear_predictor(personalise_risk(risk, site_params))
    gradient, information = score_and_information(y, lp, params, method)
    return gradient, information, len(y)
