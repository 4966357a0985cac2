"""FedAvg with local fine-tuning before evaluation (``fedavg-ft``).

The server side of :mod:`lhs_federated.learning.personalisation`: Flower's FedAvg,
unchanged. How many local steps (and at what learning rate) each site takes
from the global model before scoring it is part of the *study* (its
``[strategy.params]``), which the site approved and reads from the study a
message carries (:func:`~lhs_federated.learning.personalisation.fine_tuning_of`),
never from the message's config: a coordinator cannot make a site fine-tune
in a study that does not declare it, nor for more steps than it declares.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg

from lhs_federated.learning.personalisation import DEFAULT_FINE_TUNE_STEPS, FineTuning
from lhs_federated.study import TrainingSpec


class FedAvgFineTuning(FedAvg):
    """FedAvg whose sites fine-tune the global model locally before scoring it.

    Parameters
    ----------
    fine_tune_steps : int
        Local optimiser steps each site takes before evaluation.
    fine_tune_learning_rate : float, optional
        Their learning rate (default: the study's local learning rate).
    **fedavg_kwargs
        Flower FedAvg's own arguments (set by lhs-federated from the study).
    """

    def __init__(
        self,
        *,
        fine_tune_steps: int = DEFAULT_FINE_TUNE_STEPS,
        fine_tune_learning_rate: float | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        FineTuning(fine_tune_steps, fine_tune_learning_rate)  # checked; sites read the study's

    @classmethod
    def check_params(cls, params: dict[str, Any], training: TrainingSpec) -> None:
        """Check the fine-tuning parameters when the study is loaded.

        Raises
        ------
        ValueError
            If the steps are not an integer from 1 to 10000 or the rate not in (0, 10].
        """
        FineTuning(
            params.get("fine_tune_steps", DEFAULT_FINE_TUNE_STEPS),
            params.get("fine_tune_learning_rate"),
        )
