"""FedAvg with local fine-tuning before evaluation (``fedavg-ft``).

The server side of :mod:`lhs_federated.learning.personalisation`: Flower's FedAvg,
unchanged for training, whose evaluate messages also say how many local steps
(and at what learning rate) each site takes from the global model on its own
training rows before scoring it, the way FedProx's messages carry
``proximal-mu``. The site reads them back with :func:`fine_tuning_from_config`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from lhs_federated.apps import records
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
        self.fine_tuning = FineTuning(fine_tune_steps, fine_tune_learning_rate)

    @classmethod
    def check_params(cls, params: dict[str, Any], training: TrainingSpec) -> None:
        """Check the fine-tuning parameters when the study is loaded.

        Raises
        ------
        ValueError
            If the steps are not a positive integer or the rate not positive.
        """
        FineTuning(
            params.get("fine_tune_steps", DEFAULT_FINE_TUNE_STEPS),
            params.get("fine_tune_learning_rate"),
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluate messages, with the fine-tuning to apply first."""
        config[records.FINE_TUNE_STEPS] = self.fine_tuning.steps
        if self.fine_tuning.learning_rate is not None:
            config[records.FINE_TUNE_LEARNING_RATE] = float(self.fine_tuning.learning_rate)
        return super().configure_evaluate(server_round, arrays, config, grid)


def fine_tuning_from_config(config: ConfigRecord) -> FineTuning | None:
    """The fine-tuning an evaluate message asks for, if any."""
    if records.FINE_TUNE_STEPS not in config:
        return None
    rate = config.get(records.FINE_TUNE_LEARNING_RATE)
    return FineTuning(int(config[records.FINE_TUNE_STEPS]), None if rate is None else float(rate))
