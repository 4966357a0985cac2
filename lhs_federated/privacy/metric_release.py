"""A site's own coarsening of the evaluation metrics it releases.

Metrics on a small test split are close to counts: a coordinator that sends a
constant model reads the prevalence (positives / n) as its accuracy, and models
that step on one feature read subgroup counts. The minimum cell size bounds
*n*, not what a crafted model makes a metric reveal about the rows. A site that
wants more than that adds Laplace noise calibrated to one patient's weight in
a proportion (scale ``noise / n``: ``noise = 2`` hides about two patients'
worth of change in an accuracy or a prevalence) and/or rounds what it
releases. Both are site policy (``[policy] metric_noise``, ``metric_decimals``
in ``site.toml``), applied after scoring and before the egress guard; the
coordinator can neither see nor change them. The noise is never seeded.
"""

from __future__ import annotations

import math

import numpy as np

from lhs_federated.learning.metrics import MetricReport

#: Metrics that are proportions or probabilities: kept in [0, 1] after noise.
UNIT_INTERVAL = frozenset(
    {"prevalence", "auroc", "auprc", "accuracy", "balanced_accuracy", "brier", "ece"}
)


def release_metrics(
    report: MetricReport,
    *,
    noise: float,
    decimals: int | None,
    rng: np.random.Generator | None = None,
) -> MetricReport:
    """The metrics a site releases: ``report`` with its noise and rounding applied.

    Parameters
    ----------
    report : MetricReport
        The site's metrics; ``n`` (the test rows, reported at discovery) is kept.
    noise : float
        Laplace scale in patients: each metric gets noise of scale ``noise / n``.
    decimals : int or None
        Decimal places kept (None: all).
    rng : numpy.random.Generator, optional
        Source of the noise (default: seeded from the operating system).
    """
    if noise <= 0 and decimals is None:
        return report
    rng = rng or np.random.default_rng()
    n = report.values.get("n", 0.0)
    values = {}
    for name, value in report.values.items():
        if name != "n" and not math.isnan(value):
            if noise > 0 and n > 0:
                value = float(value + rng.laplace(0.0, noise / n))
                if name in UNIT_INTERVAL:
                    value = min(1.0, max(0.0, value))
            if decimals is not None:
                value = round(value, decimals)
        values[name] = value
    return MetricReport(values, dict(report.undefined))
