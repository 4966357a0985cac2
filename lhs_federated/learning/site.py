"""What a site does for a study: describe its data, train, evaluate.

These functions are the whole of a site's work, free of Flower: the ClientApp
only turns messages into calls of them and their results back into messages.
A site's statistics respect its minimum cell size; its preprocessing uses the
federated statistics the server sends or, under FLamby's protocol, its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from torch import nn

from lhs_federated.data.encoding import encoded_columns, encoded_feature_names
from lhs_federated.data.sources import SiteData
from lhs_federated.data.split import site_seed
from lhs_federated.data.statistics import (
    ColumnSums,
    FederatedStatistics,
    Standardizer,
    federate,
)
from lhs_federated.errors import StudyRunError
from lhs_federated.learning.metrics import MetricReport, clinical_metrics
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import set_arrays
from lhs_federated.learning.training import LocalUpdate, predict_proba, train_local
from lhs_federated.study import Study


@dataclass(frozen=True)
class SiteSummary:
    """What a site discloses about its data before training.

    Counts below the site's minimum cell size are withheld (``None``), and so
    are the column sums of small cells (see
    :meth:`ColumnSums.suppress_small_cells`).
    """

    name: str
    n_train: int | None
    n_test: int | None
    positives_train: int | None
    positives_test: int | None
    sums: ColumnSums | None


def n_features(study: Study) -> int:
    """Width of the model input implied by the contract and encoding."""
    return len(encoded_feature_names(study.contract, study.preprocessing.one_hot))


def summarise_site(site: SiteData, study: Study, *, min_cell_size: int) -> SiteSummary:
    """The site's counts and, for federated scaling, its column sums.

    A site with fewer training rows than ``min_cell_size`` sends no sums.
    """

    def count(value: int) -> int | None:
        return value if value >= min_cell_size else None

    sums = None
    if study.preprocessing.scaling == "federated" and len(site.train.outcome) >= min_cell_size:
        sums = ColumnSums.of(site.train.features).suppress_small_cells(min_cell_size)
    return SiteSummary(
        name=site.name,
        n_train=count(len(site.train.outcome)),
        n_test=count(len(site.test.outcome)),
        positives_train=count(int(site.train.outcome.sum())),
        positives_test=count(int(site.test.outcome.sum())),
        sums=sums,
    )


def min_test_cases(study: Study) -> int:
    """Test rows, and cases of each class, a site needs to count in the federation's means."""
    return study.evaluation.min_test_cases or study.sites.min_cell_size


def variance_ddof(study: Study) -> int:
    """Delta degrees of freedom of the study's scales (0: divide by n, 1: by n - 1)."""
    return 1 if study.preprocessing.std_divisor == "n-1" else 0


def federated_statistics(
    study: Study, summaries: Iterable[SiteSummary]
) -> FederatedStatistics | None:
    """Global means and scales from the sites' column sums, with their departures.

    ``None`` unless the study uses federated scaling. Departures from the
    pooled statistics (columns some sites withheld) are listed, never hidden
    (see :func:`lhs_federated.data.statistics.federate`).

    Raises
    ------
    StudyRunError
        If no site could send its sums (all below the minimum cell size).
    """
    if study.preprocessing.scaling != "federated":
        return None
    sums = {s.name: s.sums for s in summaries}
    if all(part is None for part in sums.values()):
        raise StudyRunError(
            "federated scaling needs column sums from at least one site, but every "
            "site withheld them (each has fewer rows than its minimum cell size)."
        )
    return federate(
        sums,
        encoded_columns(study.contract, study.preprocessing.one_hot),
        ddof=variance_ddof(study),
        scale_indicators=study.preprocessing.indicators == "standardised",
    )


def federated_standardizer(study: Study, summaries: Iterable[SiteSummary]) -> Standardizer | None:
    """The standardizer of :func:`federated_statistics` (``None`` unless federated)."""
    statistics = federated_statistics(study, summaries)
    return None if statistics is None else statistics.standardizer


def own_standardizer(study: Study, features: np.ndarray) -> Standardizer:
    """Statistics of one table's own rows, under the study's rule for indicator columns.

    A site's own scaling (``scaling = "site"``), the pooled baseline's
    (``pooled_scaling = "pooled"``) and a released model applied to a new
    table under per-site scaling all use it.
    """
    unscaled = None
    if study.preprocessing.indicators == "centred":
        columns = encoded_columns(study.contract, study.preprocessing.one_hot)
        unscaled = np.array([c.indicator for c in columns], dtype=bool)
    return Standardizer.from_sums(
        ColumnSums.of(features), ddof=variance_ddof(study), unscaled=unscaled
    )


def site_standardizer(study: Study, site: SiteData, federated: Standardizer | None) -> Standardizer:
    """The preprocessing a site applies: federated, its own, or none."""
    scaling = study.preprocessing.scaling
    if scaling == "federated":
        if federated is None:
            raise ValueError("federated scaling needs the server's statistics in the message")
        return federated
    if scaling == "site":
        return own_standardizer(study, site.train.features)
    return Standardizer.identity(site.train.features.shape[1])


@dataclass(frozen=True)
class TrainingInputs:
    """What one round of local training starts from at a site.

    Attributes
    ----------
    model : torch.nn.Module
        The study's model holding the global arrays.
    features : ndarray
        The site's training rows, preprocessed with the round's statistics.
    outcome : ndarray
        Their outcomes.
    seed : int
        The round's seed at this site (batch order, dropout).
    """

    model: nn.Module
    features: np.ndarray
    outcome: np.ndarray
    seed: int


def training_inputs(
    study: Study,
    site: SiteData,
    arrays: dict[str, np.ndarray],
    *,
    server_round: int,
    standardizer: Standardizer,
) -> TrainingInputs:
    """The model, rows and seed of one round of local training from the global ``arrays``.

    Shared by plain training (:func:`train_at_site`) and DP-SGD
    (:func:`lhs_federated.privacy.site_round.train_site_round`), so both start a
    round from exactly the same state.
    """
    model = build_model(study.model, n_features(study), seed=study.seed)
    set_arrays(model, arrays)
    return TrainingInputs(
        model,
        standardizer.transform(site.train.features),
        site.train.outcome,
        site_seed(study.seed, site.name, server_round),
    )


def train_at_site(
    study: Study,
    site: SiteData,
    arrays: dict[str, np.ndarray],
    *,
    server_round: int,
    standardizer: Standardizer,
    proximal_mu: float = 0.0,
    correction: dict[str, np.ndarray] | None = None,
) -> LocalUpdate:
    """One round of (non-private) local training from the global ``arrays``.

    Sample-dp studies train through
    :func:`lhs_federated.privacy.site_round.train_site_round`, which checks and
    records the site's budget around DP-SGD. ``correction`` is SCAFFOLD's
    per-parameter drift correction (see :mod:`lhs_federated.learning.scaffold`);
    studies never combine the two (checked at study load).
    """
    inputs = training_inputs(
        study, site, arrays, server_round=server_round, standardizer=standardizer
    )
    return train_local(
        inputs.model,
        inputs.features,
        inputs.outcome,
        study.training,
        seed=inputs.seed,
        proximal_mu=proximal_mu,
        correction=correction,
    )


def predict_at_site(
    study: Study, arrays: dict[str, np.ndarray], features: np.ndarray, standardizer: Standardizer
) -> np.ndarray:
    """Predicted risk of the model ``arrays`` for a site's encoded rows."""
    model = build_model(study.model, n_features(study), seed=study.seed)
    set_arrays(model, arrays)
    return predict_proba(model, standardizer.transform(features))


def evaluate_at_site(
    study: Study, site: SiteData, arrays: dict[str, np.ndarray], *, standardizer: Standardizer
) -> MetricReport:
    """Clinical metrics of the global ``arrays`` on the site's test split."""
    return score_predictions(
        study, site.test.outcome, predict_at_site(study, arrays, site.test.features, standardizer)
    )


def score_predictions(study: Study, outcome: np.ndarray, probability: np.ndarray) -> MetricReport:
    """Clinical metrics of predicted risks, with the study's threshold and bins."""
    return clinical_metrics(
        outcome,
        probability,
        threshold=study.evaluation.threshold,
        bins=study.evaluation.calibration_bins,
    )
