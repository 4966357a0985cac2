"""The cross-site matrix: every site's local-only model scored at every site, vectorised.

With K sites the matrix has K x K cells; scoring each cell with the full clinical
metrics (one model built, one prediction and ten metrics per cell) took hours at
1000 sites. Here each local model predicts all sites' test rows in one call, and
a block of models is scored at a site at once
(:func:`~lhs_federated.learning.binary_scores.auroc_columns`): the matrix costs
K predictions and K x (K / block) vectorised scorings. Only the matrix's
metrics (:data:`CROSS_SITE_METRICS`) are computed off the diagonal; the
diagonal (a site's own model at home) is the site's full metric report, so the
two always agree. Cells on fewer rows than the minimum cell size are withheld.

The matrix is written as ``cross_site.csv``
(:mod:`lhs_federated.research.cross_site_file`); ``summary.json`` keeps it too
while it is small (:data:`SUMMARY_MAX_SITES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lhs_federated.data.sources import SiteData
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.binary_scores import accuracy_columns, auroc_columns
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import set_arrays
from lhs_federated.learning.site import n_features
from lhs_federated.learning.training import predict_proba
from lhs_federated.research.cross_site_file import CROSS_SITE_METRICS
from lhs_federated.study import Study

#: Up to this many sites the matrix is also in ``summary.json`` (K x K numbers).
SUMMARY_MAX_SITES = 50
_BLOCK = 64  # models scored together: a block of predictions is rows x 64 floats


@dataclass(frozen=True)
class CrossSiteMatrix:
    """Each local model's metrics at every site and on all test rows together.

    Attributes
    ----------
    sites : list of str
        Site names: row ``i`` is site ``i``'s local model, column ``j`` site ``j``.
    values : dict of str to ndarray
        Per metric, a K x K array (NaN where undefined: a single-class split).
    all_sites : dict of str to ndarray
        Per metric, each model on all sites' test rows together.
    """

    sites: list[str]
    values: dict[str, np.ndarray]
    all_sites: dict[str, np.ndarray]

    def as_dict(self, metric: str) -> dict[str, dict[str, float | None]]:
        """The matrix of ``metric`` as nested dicts (``summary.json``'s form)."""
        matrix = self.values[metric]
        return {
            a: {b: _clean(matrix[i, j]) for j, b in enumerate(self.sites)}
            for i, a in enumerate(self.sites)
        }


def score_cross_site(
    study: Study,
    sites: list[SiteData],
    models: list[dict[str, np.ndarray]],
    standardizers: dict[str, Standardizer],
    *,
    min_cell_size: int,
) -> CrossSiteMatrix:
    """Score every site's local model (``models[i]`` for ``sites[i]``) at every site.

    Each row is scaled as its own site scales it, as in the federation. Under
    the disclosure control of a site's replies, a cell is withheld (NaN) when
    the site where it is scored has fewer test rows than ``min_cell_size``, and
    a whole row when its model was trained on fewer rows than that.
    """
    features = np.vstack([standardizers[s.name].transform(s.test.features) for s in sites])
    outcome = np.concatenate([s.test.outcome for s in sites]).astype(np.int64)
    ends = np.cumsum([len(s.test.outcome) for s in sites])
    places = [slice(end - len(s.test.outcome), end) for s, end in zip(sites, ends, strict=True)]
    k = len(sites)
    values = {m: np.full((k, k), np.nan) for m in CROSS_SITE_METRICS}
    all_sites = {m: np.full(k, np.nan) for m in CROSS_SITE_METRICS}
    threshold = study.evaluation.threshold
    model = build_model(study.model, n_features(study), seed=study.seed)
    for start in range(0, k, _BLOCK):
        block = range(start, min(k, start + _BLOCK))
        risks = np.empty((len(outcome), len(block)))
        for column, i in enumerate(block):
            set_arrays(model, models[i])
            risks[:, column] = predict_proba(model, features)
        for j, rows in enumerate(places):
            values["auroc"][block, j] = auroc_columns(outcome[rows], risks[rows])
            values["accuracy"][block, j] = accuracy_columns(outcome[rows], risks[rows], threshold)
        all_sites["auroc"][block] = auroc_columns(outcome, risks)
        all_sites["accuracy"][block] = accuracy_columns(outcome, risks, threshold)
    few_test = np.array([len(s.test.outcome) < min_cell_size for s in sites])
    few_train = np.array([len(s.train.outcome) < min_cell_size for s in sites])
    for metric in CROSS_SITE_METRICS:
        values[metric][:, few_test] = np.nan
        values[metric][few_train, :] = np.nan
        all_sites[metric][few_train] = np.nan
    return CrossSiteMatrix([s.name for s in sites], values, all_sites)


def _clean(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
