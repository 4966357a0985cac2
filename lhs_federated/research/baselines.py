"""Pooled and local-only baselines: whether federation is worth it here, and for whom.

Two reference points a researcher needs beside every federated result, both
possible only in simulation, where one process holds every site's rows:

- **pooled**: the same model trained on the union of the sites' training
  splits, as if the rows could be pooled (the ceiling federation aims at);
- **local-only**: each site trains alone on its own rows (what a site gets
  without joining). Every local model is scored at every site's test split
  (the cross-site matrix), showing how far a single hospital's model travels.

Same model family, initialisation, preprocessing (each row scaled as its
site scales it in the federation), batch size and, by default, optimiser and
learning rate as the federated run. ``[baselines] pooled_scaling = "pooled"``
instead standardises the pooled model's training rows with the pooled rows'
own mean and scale, which is what FLamby's pooled baseline does
(``FedHeartDisease(pooled=True)`` normalises with the statistics of all
centres' training rows together); like FLamby's, that model is still scored at
each site on the rows as the site scales them. The training budget follows one rule:
each baseline gets the optimiser steps the federation spent on its rows.
A local model takes its site's local steps of every round
(``rounds x steps per round``); the pooled model takes all sites' steps
together (``rounds x sum of the sites' steps per round``), so it processes as
many rows as the whole federation did. With epoch-based training this is
``rounds x epochs`` epochs over the site's (or the pooled) rows.
``[baselines] epochs``, ``optimizer`` and ``learning_rate`` replace the rule
with a fixed protocol (FLamby trains its baselines for 50 epochs with Adam).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lhs_federated.data.sources import SiteData
from lhs_federated.data.split import site_seed
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.models import build_model
from lhs_federated.learning.site import n_features, own_standardizer
from lhs_federated.learning.training import planned_steps, train_local
from lhs_federated.study import Study, TrainingSpec

POOLED = "pooled"
LOCAL_PREFIX = "local:"


def local_name(site: str) -> str:
    """Name of a site's local-only model (``local:<site>``)."""
    return LOCAL_PREFIX + site


@dataclass(frozen=True)
class BaselineModel:
    """One trained baseline.

    Attributes
    ----------
    name : str
        ``pooled`` or ``local:<site>``.
    arrays : dict of str to ndarray
        The trained parameters.
    training : TrainingSpec
        The optimisation it got (``steps`` always set).
    n_rows : int
        Training rows it saw.
    """

    name: str
    arrays: dict[str, np.ndarray]
    training: TrainingSpec
    n_rows: int


def baseline_training(study: Study, n_rows: int, federation_steps: int) -> TrainingSpec:
    """The optimisation a baseline trained on ``n_rows`` rows gets.

    Parameters
    ----------
    study : Study
        The study, with its ``[training]`` and ``[baselines]`` tables.
    n_rows : int
        Rows the baseline trains on.
    federation_steps : int
        Optimiser steps the federation spent on those rows over all rounds
        (the default budget).
    """
    spec = study.baselines
    steps = federation_steps
    if spec.epochs is not None:
        steps = spec.epochs * math.ceil(n_rows / min(study.training.batch_size, n_rows))
    return dataclasses.replace(
        study.training,
        epochs=None,
        steps=steps,
        optimizer=spec.optimizer or study.training.optimizer,
        learning_rate=spec.learning_rate or study.training.learning_rate,
    )


def train_baselines(
    study: Study,
    sites: list[SiteData],
    standardizers: dict[str, Standardizer],
    *,
    on_trained: Callable[[int, int], None] | None = None,
) -> dict[str, BaselineModel]:
    """Train the pooled model and every site's local-only model.

    Parameters
    ----------
    study : Study
        The resolved study.
    sites : list of SiteData
        Every simulated site's split rows.
    standardizers : dict of str to Standardizer
        Each site's preprocessing, as the federation applies it.
    on_trained : callable, optional
        Called with (models trained, models to train) after each model, so a
        long analysis can show its progress.

    Returns
    -------
    dict of str to BaselineModel
        ``pooled`` first, then ``local:<site>`` in site order.
    """
    per_round = {s.name: planned_steps(len(s.train.outcome), study.training) for s in sites}
    pooled_x, pooled_y = pooled_training_rows(study, sites, standardizers)
    models = {
        POOLED: train_baseline(
            study, POOLED, pooled_x, pooled_y, study.rounds * sum(per_round.values())
        )
    }
    if on_trained is not None:
        on_trained(1, len(sites) + 1)
    for done, site in enumerate(sites, start=2):
        name = local_name(site.name)
        models[name] = train_baseline(
            study,
            name,
            standardizers[site.name].transform(site.train.features),
            site.train.outcome,
            study.rounds * per_round[site.name],
        )
        if on_trained is not None:
            on_trained(done, len(sites) + 1)
    return models


def pooled_training_rows(
    study: Study, sites: list[SiteData], standardizers: dict[str, Standardizer]
) -> tuple[np.ndarray, np.ndarray]:
    """The pooled model's training inputs and outcomes: every site's training rows.

    Scaled as each site scales them (``baselines.pooled_scaling = "sites"``), or
    standardised with the pooled rows' own statistics (``"pooled"``, FLamby's).
    """
    outcome = np.concatenate([s.train.outcome for s in sites])
    if study.baselines.pooled_scaling == "pooled":
        raw = np.vstack([s.train.features for s in sites])
        return own_standardizer(study, raw).transform(raw), outcome
    scaled = [standardizers[s.name].transform(s.train.features) for s in sites]
    return np.vstack(scaled), outcome


def train_baseline(
    study: Study, name: str, features: np.ndarray, outcome: np.ndarray, federation_steps: int
) -> BaselineModel:
    """Train one baseline model (``pooled`` or ``local:<site>``) on prepared rows.

    ``federation_steps`` is the default budget (see :func:`baseline_training`).
    """
    training = baseline_training(study, len(outcome), federation_steps)
    model = build_model(study.model, n_features(study), seed=study.seed)
    update = train_local(model, features, outcome, training, seed=site_seed(study.seed, name))
    return BaselineModel(name, update.arrays, training, len(outcome))
