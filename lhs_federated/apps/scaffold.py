"""SCAFFOLD on Flower: the server's strategy and the site's message handling.

Flower has no SCAFFOLD, so this wraps its FedAvg: FedAvg still samples the
sites and computes the weighted average of everything the sites send; SCAFFOLD
adds the control variates around it (the maths is in
:mod:`lhs_federated.learning.scaffold`).

- ``configure_train`` sends the global model *and* the server's control
  variate ``c`` in the message's one ArrayRecord, ``c`` under names prefixed
  with :data:`records.SERVER_CONTROL_PREFIX`.
- A site (:class:`SiteControl`) corrects its local gradients by ``c - c_i``,
  keeps ``c_i`` in its node state (Flower's ``Context.state``, which persists
  per node across rounds on every engine), and replies with its model and
  ``delta_c_i`` (prefix :data:`records.CONTROL_DELTA_PREFIX`), one ArrayRecord.
- ``aggregate_train`` lets FedAvg average the replies, then steps the model
  ``x += eta_g * (mean(y_i) - x)`` and the control ``c += |S|/N * mean(delta_c_i)``.

Both means are FedAvg's, weighted by training rows; with every site taking
part, ``c`` then stays the weighted mean of the sites' ``c_i``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from lhs_federated.apps import records
from lhs_federated.learning.scaffold import drift_correction, refreshed_control, zero_control
from lhs_federated.learning.training import LocalUpdate
from lhs_federated.study import TrainingSpec

Arrays = dict[str, np.ndarray]


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al., 2020) as a wrapper of Flower's FedAvg.

    Parameters
    ----------
    server_learning_rate : float
        ``eta_g``, the server's step along the mean update (1: FedAvg's step).
    **fedavg_kwargs
        Flower FedAvg's own arguments (set by lhs-federated from the study).
    """

    def __init__(self, *, server_learning_rate: float = 1.0, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.server_learning_rate = server_learning_rate
        self.control: Arrays | None = None
        self._current: Arrays = {}
        self._n_nodes = 0

    @classmethod
    def check_params(cls, params: dict[str, Any], training: TrainingSpec) -> None:
        """SCAFFOLD's control-variate update (option II) assumes plain SGD.

        Raises
        ------
        ValueError
            If the study's local optimiser is not SGD without momentum.
        """
        if training.optimizer != "sgd" or training.momentum != 0:
            raise ValueError(
                "scaffold needs plain SGD at the sites (its control-variate update assumes "
                f"it); the study has training.optimizer = {training.optimizer!r}, "
                f"momentum = {training.momentum}. Set optimizer = 'sgd' and momentum = 0."
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages, carrying the server control variate too."""
        self._current = records.from_array_record(arrays)
        if self.control is None:
            self.control = zero_control(self._current)
        self._n_nodes = len(list(grid.get_node_ids()))
        outgoing = ArrayRecord(
            {
                **arrays,
                **{
                    records.SERVER_CONTROL_PREFIX + name: Array(value)
                    for name, value in self.control.items()
                },
            }
        )
        return super().configure_train(server_round, outgoing, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average with FedAvg, then step the model and the server control variate."""
        replies = list(replies)
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None or self.control is None:
            return averaged, metrics
        mean = records.from_array_record(averaged)
        share = sum(not reply.has_error() for reply in replies) / max(self._n_nodes, 1)
        self.control = {
            name: (value + share * mean[records.CONTROL_DELTA_PREFIX + name]).astype(np.float32)
            for name, value in self.control.items()
        }
        step = self.server_learning_rate
        model = {name: x + step * (mean[name] - x) for name, x in self._current.items()}
        return records.to_array_record(model), metrics


@dataclass(frozen=True)
class SiteControl:
    """A site's SCAFFOLD state for one training message.

    Attributes
    ----------
    server : dict of str to ndarray
        The server's control variate ``c`` from the message.
    own : dict of str to ndarray
        The site's own ``c_i`` from its node state (zeros the first time).
    """

    server: Arrays
    own: Arrays

    @classmethod
    def receive(cls, arrays: Arrays, context: Context) -> tuple[Arrays, SiteControl | None]:
        """Split a train message's arrays into the model and, for SCAFFOLD, the controls."""
        prefix = records.SERVER_CONTROL_PREFIX
        server = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
        model = {k: v for k, v in arrays.items() if not k.startswith(prefix)}
        if not server:
            return model, None
        stored = context.state.get(records.CLIENT_CONTROL)
        own = records.from_array_record(stored) if stored is not None else zero_control(model)
        return model, cls(server, own)

    @property
    def correction(self) -> Arrays:
        """``c - c_i``, added to the round's local gradients."""
        return drift_correction(self.server, self.own)

    def finish(
        self, global_arrays: Arrays, update: LocalUpdate, learning_rate: float, context: Context
    ) -> Arrays:
        """Store the new ``c_i`` in the node state; return ``delta_c_i`` to send.

        Parameters
        ----------
        global_arrays : dict of str to ndarray
            The model the round started from.
        update : LocalUpdate
            The site's local training result.
        learning_rate : float
            The local SGD learning rate.
        context : Context
            The node's context, whose state keeps ``c_i`` between rounds.
        """
        refreshed = refreshed_control(
            global_arrays,
            update.arrays,
            self.server,
            self.own,
            steps=update.steps,
            learning_rate=learning_rate,
        )
        context.state[records.CLIENT_CONTROL] = records.to_array_record(refreshed)
        return {
            records.CONTROL_DELTA_PREFIX + name: refreshed[name] - self.own[name]
            for name in refreshed
        }
