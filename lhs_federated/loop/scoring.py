"""Simulation only: the frozen release, the loop's champion and an oracle, scored per period.

What the benchmark and the timeline report compare, never part of a deployed
loop (it reads every simulated site's rows in one process, as the research
baselines do). On each period's held-out rows of each site:

- ``frozen``: the first release, never updated;
- ``loop``: the release the loop had promoted when the period began;
- ``oracle``: a logistic regression refitted on the period's own training
  rows of all sites together (scikit-learn, unpenalised), the best a model of
  that family could have done had it known the period in advance.
"""

from __future__ import annotations

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
            rows.append(
                {"period": period, "site": site.name, "model": label, "n": len(y),
                 **{m: report.values[m] for m in SCORED}}
            )  # fmt: skip
    return rows
