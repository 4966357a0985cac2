"""Local fine-tuning: each site adapts the global model to its own rows before use.

Hospitals differ in case mix and in how they record data, so one global model
can sit systematically high or low at a given site. Fine-tuning (FedAvg plus
K local optimiser steps per site, as FLamby's ``FedAvgFineTuning``) lets each
site start from the federation's model and take a few steps on its own
training rows before it is scored. The fine-tuned model never leaves the site:
only the metrics of the personalised model do.

The strategy that asks for it is ``fedavg-ft`` (:mod:`lhs_federated.apps.fine_tuning`);
the same function runs at the site (evaluate messages) and in the simulation
path, so a simulated study's analysis scores exactly the model each site scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lhs_federated.data.sources import SiteData
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.site import train_at_site
from lhs_federated.study import Study

# Strategy names whose sites fine-tune before scoring (see apps/fine_tuning.py).
FINE_TUNING_STRATEGIES = frozenset({"fedavg-ft"})
DEFAULT_FINE_TUNE_STEPS = 10
#: The most local steps a site takes before scoring (a worker is never held for weeks).
MAX_FINE_TUNE_STEPS = 10_000


@dataclass(frozen=True)
class FineTuning:
    """Local steps a site takes from the global model before it is scored.

    Attributes
    ----------
    steps : int
        Optimiser steps on the site's training rows.
    learning_rate : float or None
        Their learning rate; ``None`` uses the study's local learning rate.
    """

    steps: int = DEFAULT_FINE_TUNE_STEPS
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        steps = self.steps
        if (
            isinstance(steps, bool)
            or not isinstance(steps, int)
            or not 1 <= steps <= MAX_FINE_TUNE_STEPS
        ):
            raise ValueError(
                f"fine_tune_steps must be an integer from 1 to {MAX_FINE_TUNE_STEPS}; got {steps!r}"
            )
        lr = self.learning_rate
        if lr is not None and (
            isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 10
        ):
            raise ValueError(f"fine_tune_learning_rate must be a number > 0 and <= 10; got {lr!r}")


def fine_tuning_of(study: Study) -> FineTuning | None:
    """The fine-tuning the study's strategy asks of its sites, if any."""
    if study.strategy.name not in FINE_TUNING_STRATEGIES:
        return None
    params = study.strategy.params
    return FineTuning(
        steps=params.get("fine_tune_steps", DEFAULT_FINE_TUNE_STEPS),
        learning_rate=params.get("fine_tune_learning_rate"),
    )


def personalise(
    study: Study,
    site: SiteData,
    arrays: dict[str, np.ndarray],
    *,
    standardizer: Standardizer,
    fine_tuning: FineTuning | None,
    server_round: int,
) -> dict[str, np.ndarray]:
    """The model a site scores: ``arrays`` fine-tuned on its rows, or as they are.

    Parameters
    ----------
    study : Study
        The study (its local optimiser and batch size are used).
    site : SiteData
        The site's rows; only its training split is used.
    arrays : dict of str to ndarray
        The global model.
    standardizer : Standardizer
        The site's preprocessing.
    fine_tuning : FineTuning or None
        How many steps, at what learning rate; ``None`` returns ``arrays``.
    server_round : int
        The round being scored; its seed (study seed, site, round) drives the
        shuffles, so every engine and the simulation path fine-tune identically.
    """
    if fine_tuning is None:
        return arrays
    training = dataclasses.replace(
        study.training,
        epochs=None,
        steps=fine_tuning.steps,
        learning_rate=fine_tuning.learning_rate or study.training.learning_rate,
    )
    update = train_at_site(
        dataclasses.replace(study, training=training),
        site,
        arrays,
        server_round=server_round,
        standardizer=standardizer,
    )
    return update.arrays
