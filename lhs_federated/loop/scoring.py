"""Simulation only: the frozen release, the loop's champion and an oracle, scored per period.

What the benchmark and the timeline report compare, never part of a deployed
loop (it reads every simulated site's rows in one process, as the research
baselines do). On each period's held-out rows of each site:

- ``frozen``: the first release, never updated;
- ``loop``: the release the loop had promoted when the period began;
- ``oracle``: a logistic regression refitted on the period's own training
  rows of all sites together (scikit-learn, unpenalised), the best a model of
  that family could have done had it known the period in advance.

Each row also carries what the rows allow at all: the standard error of the
calibration slope a perfectly calibrated model with these risks would have
on these rows, and its chance of landing in [0.9, 1.1]
(:func:`slope_band_ceiling`), the ceiling of the benchmark's slope figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from lhs_federated.data.sources import load_sites
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.learning.metrics import clinical_metrics
from lhs_federated.learning.recalibration import personalise_risk, read_site_recalibration
from lhs_federated.learning.site import predict_at_site
from lhs_federated.study import Study

SCORED = ("auroc", "calibration_slope", "calibration_intercept", "brier")
SLOPE_BAND = (0.9, 1.1)


def calibrated_slope_se(risk: np.ndarray) -> float:
    """Standard error of the calibration slope a perfectly calibrated model would show.

    If the outcomes were drawn from ``risk`` itself, the logistic fit of the
    outcome on ``logit(risk)`` has true intercept 0 and slope 1, and its
    slope's asymptotic variance is the (slope, slope) element of the inverse
    Fisher information ``sum w [1, x; x, x^2]``, ``w = r (1 - r)``, ``x =
    logit(r)``. It depends only on the rows' risks: how well the slope of
    this many rows can be estimated at all.
    """
    r = np.clip(np.asarray(risk, float), 1e-12, 1 - 1e-12)
    x, w = np.log(r / (1 - r)), r * (1 - r)
    s0, s1, s2 = w.sum(), (w * x).sum(), (w * x * x).sum()
    det = s0 * s2 - s1 * s1
    return float(np.sqrt(s0 / det)) if det > 0 else float("nan")


def slope_band_ceiling(se: float, band: tuple[float, float] = SLOPE_BAND) -> float:
    """Chance a perfectly calibrated model's estimated slope lands in ``band`` (normal approx.)."""
    if not math.isfinite(se) or se <= 0:
        return float("nan")
    low, high = ((b - 1.0) / (se * math.sqrt(2.0)) for b in band)
    return 0.5 * (math.erf(high) - math.erf(low))


def score_period(
    study: Study, period: str, folders: dict[str, Path], *, oracle: bool
) -> list[dict[str, Any]]:
    """One row per site and model: the scored metrics on the period's test rows.

    ``study`` selects the period's rows (``train_periods = [period]``, split);
    ``folders`` are the releases scored, each applied at a site with that
    site's own recalibration if the release holds one.
    """
    sites = load_sites(study)
    models = {label: ReleasedModel.load(folder) for label, folder in folders.items()}
    personal = {label: read_site_recalibration(f / "model") for label, f in folders.items()}
    reference = next(iter(models.values()))
    standardizer = reference.standardizer
    fitted = None
    if oracle and standardizer is not None:
        x = np.vstack([standardizer.transform(s.train.features) for s in sites])
        y = np.concatenate([s.train.outcome for s in sites])
        fitted = LogisticRegression(C=1e6, max_iter=2000).fit(x, y)
    rows = []
    for site in sites:
        y = site.test.outcome
        predictions = {
            label: personalise_risk(
                predict_at_site(model.study, model.arrays, site.test.features, model.standardizer),
                personal[label].get(site.name),
            )
            for label, model in models.items()
        }
        if fitted is not None:
            predictions["oracle"] = fitted.predict_proba(
                standardizer.transform(site.test.features)
            )[:, 1]
        for label, p in predictions.items():
            report = clinical_metrics(y, p)
            se = calibrated_slope_se(p)
            rows.append(
                {"period": period, "site": site.name, "model": label, "n": len(y),
                 **{m: report.values[m] for m in SCORED}, "events": int(y.sum()),
                 "calibration_slope_se": se, "slope_band_ceiling": slope_band_ceiling(se)}
            )  # fmt: skip
    return rows
